"""Benchmark the timeline on a synthetic run of many kernels: build time and file size.

    python -m tests.browser.bench --kernels 100000 --out /tmp/timeline_100k.html

The run is made directly as frames (the `tracekit.trace` schema), not as JSON, so the numbers
measure the timeline alone. Its shape imitates a training step: a compute stream of short
kernels of every category, a comm stream of fewer, longer NCCL kernels, a main and an autograd
CPU thread of ops that launched them. For how fast the page draws and zooms in a browser,
see tests/browser/zoom_bench.py (headless chromium).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tracekit.trace import Run, Trace

CATEGORIES = np.array(["gemm", "attention", "elementwise", "reduction", "triton", "other"])
NAMES = {
    "gemm": "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1",
    "attention": "flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false>>",
    "elementwise": "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor>",
    "reduction": "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float>>",
    "triton": "triton_poi_fused_add_mul_select_backward_2",
    "other": "void at::native::index_elementwise_kernel<128, 4>",
}
NCCL_NAME = "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)"


def empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


def synthetic_trace(rank: int, world: int, n_kernels: int, n_steps: int,
                    rng: np.random.Generator) -> Trace:
    """One rank: n_kernels kernels over n_steps steps, 1 in 20 of them NCCL on stream 20.

    Every step launches the same sequence (same names, grids, ops and lines), as training
    does; only the timings vary.
    """
    n_ops = n_kernels // 2
    period = max(2, (n_kernels // n_steps) // 2 * 2)  # kernels per step, even
    op_pos = np.arange(n_ops) % (period // 2)
    op_gap = rng.exponential(8.0, n_ops)
    op_ts = np.cumsum(op_gap + 2.0)
    op_dur = op_gap * 0.6 + 1.0
    tids = np.where(np.arange(n_ops) % 3 == 0, 200, 100)  # one in three on the autograd thread
    op_names = np.array(["aten::mm", "aten::mul", "aten::add_", "aten::copy_",
                         "aten::select_backward"])[op_pos % 5]
    ops = pd.DataFrame({
        "name": op_names, "pid": 1, "tid": tids, "ts": op_ts, "dur": op_dur,
        "end": op_ts + op_dur, "depth": 0, "parent": -1, "external_id": np.arange(n_ops),
        "seq": -1, "fwd_tid": -1, "input_dims": "", "input_strides": "", "input_types": "",
        "kernel_file": "", "kernel_name": "", "step": -1, "fwd_op_idx": -1,
        "src_file": "trainer/model.py", "src_line": 100 + op_pos % 97,
        "src_function": "forward", "src_line_exact": False})
    is_nccl = np.arange(n_kernels) % period % 20 == 0
    dur = np.where(is_nccl, rng.uniform(50, 400, n_kernels), rng.exponential(12.0, n_kernels))
    stream = np.where(is_nccl, 20, 7)
    ts = np.empty(n_kernels)
    for s in (7, 20):  # kernels of one stream run back to back with small gaps
        m = stream == s
        ts[m] = 50.0 + np.cumsum(dur[m] + rng.exponential(2.0, m.sum())) - dur[m]
    position = np.arange(n_kernels) % period
    category = np.where(is_nccl, "nccl", CATEGORIES[position % len(CATEGORIES)])
    names = np.where(is_nccl, NCCL_NAME, pd.Series(category).map(NAMES).to_numpy())
    grid_x = rng.integers(1, 20000, period)[np.arange(n_kernels) % period]
    kernels = pd.DataFrame({
        "name": names, "ts": ts, "dur": dur, "end": ts + dur, "device": rank, "stream": stream,
        "correlation": np.arange(n_kernels), "external_id": np.arange(n_kernels) // 2,
        "grid_x": grid_x, "grid_y": 1, "grid_z": 1, "block_x": 128, "block_y": 1, "block_z": 1,
        "blocks_per_sm": grid_x / 132.0, "warps_per_sm": grid_x * 4 / 132.0, "registers": 32,
        "shared_mem": 0, "occupancy": 50.0, "is_nccl": is_nccl,
        "collective": np.where(is_nccl, "allreduce", None),
        "in_nelems": np.where(is_nccl, 1 << 20, np.nan),
        "out_nelems": np.where(is_nccl, 1 << 20, np.nan), "group_size": world,
        "dtype": "Float", "pg_name": "0", "category": category,
        "launch_idx": -1, "op_idx": np.arange(n_kernels) // 2, "step": -1,
        "is_comm_stream": is_nccl})
    end = float(max(kernels["end"].max(), ops["end"].max()))
    edges = np.linspace(0.0, end, n_steps + 1)
    steps = pd.DataFrame({"step": np.arange(n_steps) + 1, "cpu_ts": edges[:-1],
                          "cpu_end": edges[1:], "gpu_ts": edges[:-1] + 30.0,
                          "gpu_end": edges[1:] + 30.0})
    annotations = pd.DataFrame({
        "name": [f"ProfilerStep#{s}" for s in steps["step"]], "side": "cpu", "pid": 1,
        "tid": 100, "stream": -1, "ts": steps["cpu_ts"], "dur": steps["cpu_end"] - steps["cpu_ts"],
        "end": steps["cpu_end"], "external_id": -1})
    mem = empty(["name", "kind", "ts", "dur", "end", "device", "stream", "correlation",
                 "external_id", "bytes"])
    return Trace(path=Path(f"synthetic/rank{rank}.pt.trace.json.gz"), rank=rank,
                 world_size=world, kernels=kernels, gpu_mem=mem, ops=ops,
                 launches=empty(["name", "pid", "tid", "ts", "dur", "end", "correlation",
                                 "external_id", "is_kernel_launch"]),
                 python=empty(["name", "pid", "tid", "ts", "dur", "end", "depth", "parent",
                               "file", "line", "function", "is_user"]),
                 flows=empty(["id", "src_tid", "src_ts", "dst_tid", "dst_ts"]),
                 annotations=annotations, steps=steps, num_sms=132, linked=True)


def synthetic_run(n_kernels: int = 100_000, ranks: int = 2, n_steps: int = 5,
                  seed: int = 0) -> Run:
    """A Run of `ranks` ranks sharing n_kernels kernels between them."""
    rng = np.random.default_rng(seed)
    traces = [synthetic_trace(r, ranks, n_kernels // ranks, n_steps, rng) for r in range(ranks)]
    return Run(path=Path("synthetic"), traces=traces)


def main() -> None:
    from tracekit.timeline import write_timeline_html

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", type=int, default=100_000)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/timeline_bench.html"))
    args = parser.parse_args()
    run = synthetic_run(args.kernels, args.ranks)
    start = time.perf_counter()
    write_timeline_html(run, [], args.out)
    took = time.perf_counter() - start
    size = args.out.stat().st_size / 1e6
    print(f"{args.kernels:,} kernels ({args.ranks} ranks, plus {args.kernels // 2:,} CPU ops): "
          f"HTML in {took:.2f} s, {size:.1f} MB -> {args.out}")


if __name__ == "__main__":
    main()
