"""A small compiled training script: a model keeps four layers' weights in one bank and takes
each with `bank[i]` inside a torch.compile'd forward (Inductor fuses the select_backward into
its backward kernels); plain torch.optim SGD.

    python compiled_bank.py --steps 8
"""

import argparse
import os

import torch
import torch.distributed as dist


class Banked(torch.nn.Module):
    def __init__(self, width: int, layers: int) -> None:
        super().__init__()
        self.bank = torch.nn.Parameter(torch.randn(layers, width, width) / width**0.5)
        self.scale = torch.nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.bank.size(0)):
            w = self.bank[i]
            x = torch.relu(x @ w) * self.scale
        return x.square().mean()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args()
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = Banked(args.width, 4)
    step_model = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    for _ in range(args.steps):
        loss = step_model(torch.randn(32, args.width))
        loss.backward()
        opt.step()
        opt.zero_grad()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
