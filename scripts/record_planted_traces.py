"""Record small two-rank GPU traces that each plant one pathology, plus a control without it.

Run on a machine with 2 GPUs:
    torchrun --standalone --nproc-per-node 2 scripts/record_planted_traces.py --out tests/data/gpu

Each scenario trains a toy workload for 11 steps and profiles steps 6..10 (with_stack and
record_shapes on), writing <out>/<scenario>/rank{R}.pt.trace.json.gz. The tests in
tests/tracekit/ assert that tracekit finds each planted pathology at the lines marked below
("# planted: ...") and stays quiet on the controls.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile, record_function, schedule

PROFILED_STEPS = range(6, 11)


def record(name: str, out: Path, step_fn: Callable[[int], None]) -> None:
    """Run step_fn for steps 0..10 and keep a trace of steps 6..10 on every rank."""
    rank = dist.get_rank()
    run_dir = out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f"rank{rank}.pt.trace.json"

    def export(prof: torch.profiler.profile) -> None:
        prof.export_chrome_trace(str(tmp))

    sched = schedule(wait=PROFILED_STEPS.start - 1, warmup=1, active=len(PROFILED_STEPS), repeat=1)
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with profile(activities=activities, schedule=sched, on_trace_ready=export,
                 record_shapes=True, with_stack=True) as prof:
        for step in range(PROFILED_STEPS.stop):
            step_fn(step)
            prof.step()
    torch.cuda.synchronize()
    with open(tmp, "rb") as src, gzip.open(f"{tmp}.gz", "wb", compresslevel=9) as dst:
        shutil.copyfileobj(src, dst)
    tmp.unlink()
    dist.barrier()


# --- select_backward: a parameter bank indexed per layer --------------------------------------

def bank_step_fn(index: bool, compiled: bool) -> Callable[[int], None]:
    dev = torch.device("cuda")
    bank = torch.nn.Parameter(torch.randn(4, 1024, 1024, device=dev) * 0.03)
    x = torch.randn(512, 1024, device=dev)

    def forward_index(x: torch.Tensor) -> torch.Tensor:
        for i in range(bank.size(0)):
            w = bank[i]  # planted: select_backward
            x = torch.relu(x @ w)
        return x.square().mean()

    def forward_unbind(x: torch.Tensor) -> torch.Tensor:
        for w in bank.unbind(0):
            x = torch.relu(x @ w)
        return x.square().mean()

    forward = forward_index if index else forward_unbind
    if compiled:
        forward = torch.compile(forward)

    def step(step: int) -> None:
        bank.grad = None
        loss = forward(x)
        loss.backward()
        dist.all_reduce(bank.grad)
        with torch.no_grad():
            bank.sub_(bank.grad, alpha=1e-3)

    return step


# --- sm_contention: an elementwise copy that fills every SM beside NCCL -----------------------

try:
    import triton
    import triton.language as tl

    @triton.jit
    def bounded_transpose_kernel(src_ptr, dst_ptr, M, N, n_programs, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        tiles_m = tl.cdiv(M, BLOCK)
        tiles_n = tl.cdiv(N, BLOCK)
        for tile in range(pid, tiles_m * tiles_n, n_programs):
            tm = tile // tiles_n
            tn = tile % tiles_n
            rm = tm * BLOCK + tl.arange(0, BLOCK)
            rn = tn * BLOCK + tl.arange(0, BLOCK)
            mask = (rm[:, None] < M) & (rn[None, :] < N)
            block = tl.load(src_ptr + rm[:, None] * N + rn[None, :], mask=mask)
            tl.store(dst_ptr + rn[None, :] * M + rm[:, None], block, mask=mask)
except ImportError:  # the control scenario needs Triton; the others do not
    triton = None


def transpose_copy_bounded(dst: torch.Tensor, src: torch.Tensor) -> None:
    """dst = src.T with a persistent Triton kernel on 16 SMs only (the control)."""
    m, n = src.shape
    programs = 16
    bounded_transpose_kernel[(programs,)](src, dst, m, n, programs, BLOCK=64)


def contention_step_fn(eager: bool) -> Callable[[int], None]:
    dev = torch.device("cuda")
    lm_head = torch.randn(768, 50304, device=dev)
    embed = torch.empty(50304, 768, device=dev)
    bucket = torch.randn(64 * 1024 * 1024, device=dev)
    second_bucket = torch.randn(64 * 1024 * 1024, device=dev)

    def tie_copy() -> None:
        with record_function("tie:lm_head->embed"):
            if eager:
                embed.copy_(lm_head.T)  # planted: sm_contention
            else:
                transpose_copy_bounded(embed, lm_head)

    def step(step: int) -> None:
        with record_function("comm:all_reduce:alone"):
            dist.all_reduce(bucket)  # the baseline: nothing runs beside it
        torch.cuda.synchronize()
        # Two collectives queue on the NCCL stream; the second becomes ready while the copies
        # below hold the SMs.
        with record_function("comm:all_reduce:first"):
            first = dist.all_reduce(bucket, async_op=True)
        with record_function("comm:all_reduce:queued"):
            queued = dist.all_reduce(second_bucket, async_op=True)
        for _ in range(4):
            tie_copy()
        first.wait()
        queued.wait()
        torch.cuda.synchronize()

    return step


# --- comm_gap: collectives issued late by the CPU, or waiting on compute ----------------------

def busy_cpu(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def comm_gap_step_fn(late: bool) -> Callable[[int], None]:
    dev = torch.device("cuda")
    buckets = [torch.randn(8 * 1024 * 1024, device=dev) for _ in range(4)]
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)

    def step(step: int) -> None:
        works = []
        for i, bucket in enumerate(buckets):
            if late and i == 1:
                with record_function("cpu:busy"):
                    busy_cpu(0.002)  # planted: comm_gap late launch
            if late and i == 2:
                with record_function("compute:before_comm"):
                    bucket.add_((a @ a @ a).float().mean())  # planted: comm_gap waits on compute
            with record_function(f"comm:all_reduce:bucket{i}"):
                works.append(dist.all_reduce(bucket, async_op=True))
        if not late:
            with record_function("compute:after_comm"):
                buckets[0].add_((a @ a @ a).float().mean())
        for work in works:
            work.wait()
        torch.cuda.synchronize()

    return step


# --- slow_step: one step waits on data ---------------------------------------------------------

def slow_step_fn(wait: bool) -> Callable[[int], None]:
    dev = torch.device("cuda")
    w = torch.nn.Parameter(torch.randn(2048, 2048, device=dev) * 0.02)
    x = torch.randn(4096, 2048, device=dev)

    def step(step: int) -> None:
        with record_function("data:next_batch"):
            batch = x * 1.0
        if wait and step == 8:
            with record_function("data:wait_shard"):
                time.sleep(0.15)  # planted: slow_step
        w.grad = None
        loss = torch.relu(batch @ w).square().mean()
        loss.backward()
        dist.all_reduce(w.grad)
        with torch.no_grad():
            w.sub_(w.grad, alpha=1e-3)
        torch.cuda.synchronize()

    return step


SCENARIOS: dict[str, Callable[[], Callable[[int], None]]] = {
    "select_backward_index": lambda: bank_step_fn(index=True, compiled=False),
    "select_backward_unbind": lambda: bank_step_fn(index=False, compiled=False),
    "select_backward_compiled": lambda: bank_step_fn(index=True, compiled=True),
    "sm_contention_eager": lambda: contention_step_fn(eager=True),
    "sm_contention_triton": lambda: contention_step_fn(eager=False),
    "comm_gap_late": lambda: comm_gap_step_fn(late=True),
    "comm_gap_none": lambda: comm_gap_step_fn(late=False),
    "slow_step_wait": lambda: slow_step_fn(wait=True),
    "slow_step_none": lambda: slow_step_fn(wait=False),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    dist.init_process_group("nccl")
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    for name, make in SCENARIOS.items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        record(name, args.out, make())
        if dist.get_rank() == 0:
            print(f"{name}: {time.perf_counter() - started:.1f}s", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
