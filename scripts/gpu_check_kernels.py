"""GPU self-check of the transpose kernels (trainer/kernels.py) against torch.

Run from the repository root on a CUDA machine:
    python scripts/gpu_check_kernels.py [--shape 768 50304] [--json out.json]

Checks transpose_copy / transpose_add against torch at the LM head's shape (float32 exact,
bfloat16 within one rounding) plus a few ragged shapes, then times them against the eager
strided copies the optimizer's `--tie-copy eager` uses, for several grid sizes, and reports
each kernel's grid and blocks per SM as the profiler records them. Exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainer import kernels

RAGGED = [(1, 1), (65, 130), (1000, 37), (768, 50257)]


def check(M: int, N: int, dtype: torch.dtype, programs: int | None = None,
          block: int = kernels.BLOCK, warps: int = kernels.NUM_WARPS) -> list[str]:
    """Compare both kernels with torch on one (M, N) shape; return failure messages."""
    failures = []
    src = torch.randn(N, M, device="cuda").to(dtype)
    dst = torch.full((M, N), float("nan"), device="cuda", dtype=dtype)
    kernels.transpose_copy(dst, src, programs, block, warps)
    if not torch.equal(dst, src.T):
        failures.append(f"transpose_copy {M}x{N} {dtype} block {block}")
    base = torch.randn(M, N, device="cuda").to(dtype)
    dst = base.clone()
    kernels.transpose_add(dst, src, programs, block, warps)
    expected = (base.float() + src.T.float()).to(dtype)
    ok = torch.equal(dst, expected) if dtype == torch.float32 else torch.allclose(
        dst.float(), expected.float(), rtol=2**-7, atol=0)
    if not ok:
        failures.append(f"transpose_add {M}x{N} {dtype} block {block}")
    torch.cuda.synchronize()
    return failures


def time_us(fn: Callable[[], None], iters: int = 50) -> float:
    """Median microseconds per call, by CUDA events."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000)
    return sorted(times)[len(times) // 2]


def kernel_launches(fn: Callable[[], None]) -> list[dict]:
    """The GPU kernels one call launches, with grid and blocks per SM, from a profiler trace."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA,
                                            torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json.gz"
        prof.export_chrome_trace(str(path))
        with gzip.open(path, "rt") as f:
            events = json.load(f)["traceEvents"]
    return [e for e in events if e.get("cat") == "kernel"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(768, 50304),
                        help="dst shape (d, vocab): lm_head's; src is its transpose")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not torch.cuda.is_available() or not kernels.triton_available():
        print("error: needs a CUDA GPU and Triton")
        return 2
    M, N = args.shape
    props = torch.cuda.get_device_properties(0)
    import triton

    print(f"{props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}, "
          f"triton {triton.__version__}; default grid {kernels.max_programs(torch.device('cuda'))}")

    failures = []
    for dtype in (torch.float32, torch.bfloat16):
        failures += check(M, N, dtype)
        failures += check(M, N, dtype, programs=7)
        failures += check(M, N, dtype, block=128, warps=8)
        for m, n in RAGGED:
            failures += check(m, n, dtype)
            failures += check(m, n, dtype, block=32, warps=2)
    print("correctness:", "OK" if not failures else "FAILED " + ", ".join(failures))

    sms = props.multi_processor_count
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        src = torch.randn(N, M, device="cuda").to(dtype)
        dst = torch.empty(M, N, device="cuda", dtype=dtype)
        moved = {"copy": 2 * dst.numel() * dst.element_size(),
                 "add": 3 * dst.numel() * dst.element_size()}
        variants: list[tuple[str, str, Callable[[], None]]] = [
            ("copy", "eager dst.copy_(src.T)", lambda d=dst, s=src: d.copy_(s.T)),
            ("add", "eager dst.add_(src.T)", lambda d=dst, s=src: d.add_(s.T)),
        ]
        tunings = [(programs, kernels.BLOCK, kernels.NUM_WARPS)
                   for programs in (None, sms // 4, sms, 2 * sms, 8 * sms)]
        tunings += [(None, 128, 8), (sms, 128, 8), (None, 32, 2)]
        for programs, block, warps in tunings:
            label = f"g={programs or 'dflt'} b={block} w={warps}"
            for op, fn in (("copy", kernels.transpose_copy), ("add", kernels.transpose_add)):
                variants.append((op, f"transpose_{op} {label}",
                                 lambda d=dst, s=src, f=fn, p=programs, b=block, w=warps:
                                 f(d, s, p, b, w)))
        for op, name, fn in variants:
            us = time_us(fn)
            launched = kernel_launches(fn)
            grid = launched[0]["args"].get("grid") if launched else None
            per_sm = launched[0]["args"].get("blocks per SM") if launched else None
            kernel = launched[0]["name"][:40] if launched else "?"
            rows.append(dict(dtype=str(dtype).removeprefix("torch."), variant=name, us=us,
                             gbps=moved[op] / us / 1e3, kernel=kernel, grid=grid,
                             blocks_per_sm=per_sm))

    print(f"\n{'dtype':9} {'variant':38} {'us':>9} {'GB/s':>7} {'blocks/SM':>9}  kernel, grid")
    for r in rows:
        bps = f"{r['blocks_per_sm']:.1f}" if isinstance(r["blocks_per_sm"], (int, float)) else "?"
        print(f"{r['dtype']:9} {r['variant']:38} {r['us']:9.1f} {r['gbps']:7.0f} {bps:>9}  "
              f"{r['kernel']}, {r['grid']}")
    if args.json:
        args.json.write_text(json.dumps({"device": props.name, "shape": [M, N],
                                         "failures": failures, "rows": rows}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
