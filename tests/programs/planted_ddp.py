"""A plain data-parallel training program with one switchable performance bug ("plant").

Not this project's trainer: an MLP trained with DistributedDataParallel (or FSDP2's
`fully_shard`), torch.optim.AdamW and a torch.utils.data DataLoader over a synthetic dataset,
written the way a user would. tracekit's tests check that each plant is found at its line.

    torchrun --standalone --nproc-per-node 2 tests/programs/planted_ddp.py --plant item --out DIR
    torchrun --standalone --nproc-per-node 2 tests/programs/planted_ddp.py --smoke --out DIR  # CPU

Plants (--plant; the line of each is marked `# planted: <name>`):
  none       the control: DDP's bucketed all-reduce overlaps the backward pass
  straggler  rank 1 sleeps before every backward pass, so rank 0 waits in the all-reduce
  item       `loss.item()` every step: the CPU waits for the GPU and loses its lead
  pageable   the loader does not pin its batches and the copy to the GPU is blocking
  loader     num_workers=0 with an expensive __getitem__: the GPU waits for the input
  tiny       2000 tiny in-place updates per step: the GPU waits for kernel launches

Every run trains `--warmup` steps, times `--timed` steps without the profiler (the median step
time is the plant's effect when compared with the control), then records `--profiled` steps
with torch.profiler (with_stack, record_shapes) into <out>/rank{R}.pt.trace.json.gz, and rank 0
writes <out>/timing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.profiler import ProfilerActivity, profile, schedule
from torch.utils.data import DataLoader, Dataset

PLANTS = ("none", "straggler", "item", "pageable", "loader", "tiny")


class SyntheticBatches(Dataset):
    """Whole batches of random inputs and targets, held in shared memory (like a memory-mapped
    dataset); reading one takes `decode_ms` of waiting, standing in for decoding it."""

    def __init__(self, batch: int, in_dim: int, out_dim: int, decode_ms: float):
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(4, batch, in_dim, generator=generator).share_memory_()
        self.targets = torch.randn(4, batch, out_dim, generator=generator).share_memory_()
        self.decode_s = decode_ms / 1000

    def __len__(self) -> int:
        return 1 << 30  # endless: the loader's workers never run dry

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(self.decode_s)
        slot = index % len(self.inputs)
        return self.inputs[slot], self.targets[slot]


def mlp(in_dim: int, width: int, depth: int, out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(in_dim, width), nn.GELU()]
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.GELU()]
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


# --- the plants: one statement each ------------------------------------------------------------

def fetch(batches):
    return next(batches)  # planted: loader (num_workers=0: __getitem__ runs here)


def to_device_pinned(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    return tensor.to(device, non_blocking=True)


def to_device_pageable(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    return tensor.to(device)  # planted: pageable (unpinned source, blocking copy)


def straggle(seconds: float) -> None:
    time.sleep(seconds)  # planted: straggler (rank 1 only)


def log_loss(loss: torch.Tensor) -> float:
    return loss.item()  # planted: item


def tiny_updates(scale: torch.Tensor, count: int) -> None:
    for _ in range(count):
        scale.mul_(0.9999)  # planted: tiny


# --- training ----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plant", choices=PLANTS, default="none")
    p.add_argument("--parallel", choices=("ddp", "fsdp2"), default="ddp")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on CPU with gloo (CI)")
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--in-dim", type=int, default=1024)
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--out-dim", type=int, default=64)
    p.add_argument("--workers", type=int, default=4, help="loader workers, except --plant loader")
    p.add_argument("--decode-ms", type=float, default=12.0)
    p.add_argument("--straggle-ms", type=float, default=15.0)
    p.add_argument("--tiny-ops", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--timed", type=int, default=40, help="unprofiled steps timed")
    p.add_argument("--timed-profiled", type=int, default=15,
                   help="steps timed under the same profiler settings, trace not kept")
    p.add_argument("--profiled", type=int, default=3, help="steps recorded into the trace")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.in_dim, args.width, args.depth, args.out_dim = 32, 16, 32, 1, 4
        args.workers, args.decode_ms, args.straggle_ms, args.tiny_ops = 0, 1.0, 1.0, 20
        args.warmup, args.timed, args.timed_profiled, args.profiled = 1, 2, 2, 2
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    cuda = torch.cuda.is_available() and not args.smoke
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    dist.init_process_group("nccl" if cuda else "gloo")
    torch.manual_seed(0)

    model = mlp(args.in_dim, args.width, args.depth, args.out_dim).to(device)
    if args.parallel == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        model = fully_shard(model)
    else:
        model = DistributedDataParallel(model, device_ids=[local_rank] if cuda else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    scale = torch.ones(16, device=device)

    dataset = SyntheticBatches(args.batch, args.in_dim, args.out_dim, args.decode_ms)
    workers = 0 if args.plant == "loader" else args.workers
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                        pin_memory=cuda and args.plant != "pageable",
                        persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    to_device = to_device_pageable if args.plant == "pageable" else to_device_pinned
    batches = iter(loader)
    losses: list[float] = []

    def train_step() -> None:
        x, y = fetch(batches)
        x, y = to_device(x, device), to_device(y, device)
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x), y)
        if args.plant == "straggler" and rank == 1:
            straggle(args.straggle_ms / 1000)
        loss.backward()
        optimizer.step()
        if args.plant == "tiny":
            with torch.no_grad():
                tiny_updates(scale, args.tiny_ops)
        if args.plant == "item":
            losses.append(log_loss(loss))

    def timed_steps(count: int, step: Callable[[], None]) -> list[float]:
        """Step times in ms from one mark at every step boundary (CUDA events: no sync)."""
        marks: list[torch.cuda.Event | float] = []
        for _ in range(count + 1):
            if cuda:
                marks.append(torch.cuda.Event(enable_timing=True))
                marks[-1].record()
            else:
                marks.append(time.perf_counter())
            if len(marks) <= count:
                step()
        if cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) for a, b in pairwise(marks)]
        return [(b - a) * 1000 for a, b in pairwise(marks)]

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])

    def profiled(active: int, export: Path | None) -> profile:
        def on_trace_ready(prof: profile) -> None:
            if export is not None:
                prof.export_chrome_trace(str(export))  # gzipped: the name ends in .gz

        return profile(activities=activities, record_shapes=True, with_stack=True,
                       schedule=schedule(wait=0, warmup=1, active=active, repeat=1),
                       on_trace_ready=on_trace_ready)

    def profiled_step(prof: profile) -> Callable[[], None]:
        def step() -> None:
            train_step()
            prof.step()
        return step

    for _ in range(args.warmup):
        train_step()
    unprofiled_ms = timed_steps(args.timed, train_step)
    with profiled(args.timed_profiled + 1, None) as prof:  # timed, then thrown away
        profiled_step(prof)()  # the profiler's warmup step
        profiled_ms = timed_steps(args.timed_profiled, profiled_step(prof))
    for _ in range(2):
        train_step()
    args.out.mkdir(parents=True, exist_ok=True)
    with profiled(args.profiled, args.out / f"rank{rank}.pt.trace.json.gz") as prof:
        for _ in range(1 + args.profiled):
            profiled_step(prof)()

    gathered: list[dict[str, list[float]] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, {"unprofiled": unprofiled_ms, "profiled": profiled_ms})
    if rank == 0:
        summary = {
            "plant": args.plant, "parallel": args.parallel, "device": str(device),
            "world_size": dist.get_world_size(),
            "median_step_ms": {
                kind: {r: statistics.median(g[kind]) for r, g in enumerate(gathered)}
                for kind in ("unprofiled", "profiled")},
            "step_ms": gathered,
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "torch": torch.__version__,
            "nccl": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
            "gpu": torch.cuda.get_device_name(device) if cuda else None,
        }
        (args.out / "timing.json").write_text(json.dumps(summary, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Every output is written and the process group is gone. On CPU, torch's C++ teardown after
    # two profiler windows and a gloo group has aborted once in CI ("terminate called without an
    # active exception", after timing.json and both traces were complete), so leave without it.
    # (Imported here: the plants' line numbers are those of the recorded traces.)
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
