"""A compact modded-nanogpt-style GPT trainer that records torch.profiler traces."""
