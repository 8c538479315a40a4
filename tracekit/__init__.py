"""Find why a PyTorch training step is slow, from its torch.profiler traces."""
