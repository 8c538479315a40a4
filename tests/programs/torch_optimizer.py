"""A small training script using torch.optim (AdamW for weights, SGD for biases): two
optimizers per step, gloo all-reduce of gradients when started by torchrun.

    python torch_optimizer.py --steps 12 --width 64
"""

import argparse
import os

import torch
import torch.distributed as dist


def all_reduce_grads(model: torch.nn.Module) -> None:
    for p in model.parameters():
        dist.all_reduce(p.grad)
        p.grad /= dist.get_world_size()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args()
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(args.width, args.width), torch.nn.GELU(),
                                torch.nn.Linear(args.width, 1))
    weights = [p for p in model.parameters() if p.ndim == 2]
    biases = [p for p in model.parameters() if p.ndim == 1]
    adam = torch.optim.AdamW(weights, lr=1e-3)
    sgd = torch.optim.SGD(biases, lr=1e-2)
    for _ in range(args.steps):
        x = torch.randn(32, args.width)
        loss = model(x).square().mean()
        loss.backward()
        if distributed:
            all_reduce_grads(model)
        adam.step()
        sgd.step()
        adam.zero_grad()
        sgd.zero_grad()
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
