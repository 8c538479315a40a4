"""A small training script with a hand-written optimizer (no torch.optim): `sgd_step` updates
the weights in place, after a gloo all-reduce when started by torchrun.

    python hand_step.py --steps 12
"""

import argparse
import os

import torch
import torch.distributed as dist


def sgd_step(params: list[torch.Tensor], lr: float) -> None:
    with torch.no_grad():
        for p in params:
            if dist.is_initialized():
                dist.all_reduce(p.grad)
                p.grad /= dist.get_world_size()
            p -= lr * p.grad
            p.grad = None


def forward(bank: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    for i in range(bank.size(0)):
        x = torch.tanh(x @ bank[i])
    return x.square().mean()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    bank = torch.randn(4, 32, 32, requires_grad=True)  # four layers' weights in one tensor
    for _ in range(args.steps):
        loss = forward(bank, torch.randn(16, 32))
        loss.backward()
        sgd_step([bank], lr=1e-2)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
