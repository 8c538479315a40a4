"""Which ProfilerStep every event belongs to, CPU side and GPU side.

CPU events (ops, launches, CPU annotations) belong to the CPU step span that contains them. GPU
work must not be placed by comparing its time with CPU spans: the CPU runs ahead, so a kernel of
step N often executes while the CPU is already in step N+1. A kernel belongs to the step its
launch was issued in; that is exactly how Kineto builds the GPU-side ProfilerStep annotation
(and it stays unambiguous where GPU spans of consecutive steps overlap on different streams).
Work without a launch in the trace falls back to the GPU-side step spans.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracekit.load.steps import gpu_spans_from_launches, step_of_times
from tracekit.trace import Trace

SPAN_SLACK_US = 1.0
"""A GPU-side step annotation covers its launched work when it misses it by at most this."""


def _cpu_step(trace: Trace, t: np.ndarray) -> np.ndarray:
    steps = trace.steps
    return step_of_times(steps["cpu_ts"].to_numpy(), steps["cpu_end"].to_numpy(),
                         steps["step"].to_numpy(), t)


def gpu_step_at(trace: Trace, t: np.ndarray) -> np.ndarray:
    """GPU-side step whose span holds each time (-1 if none)."""
    steps = trace.steps.dropna(subset=["gpu_ts", "gpu_end"])
    return step_of_times(steps["gpu_ts"].to_numpy(), steps["gpu_end"].to_numpy(),
                         steps["step"].to_numpy(), t)


def assign_steps(trace: Trace) -> None:
    """Add `step` to ops, launches, annotations, kernels and gpu_mem (-1 outside any step)."""
    trace.ops["step"] = _cpu_step(trace, trace.ops["ts"].to_numpy())
    trace.launches["step"] = _cpu_step(trace, trace.launches["ts"].to_numpy())
    annotations = trace.annotations
    is_gpu = (annotations["side"] == "gpu").to_numpy()
    step = _cpu_step(trace, annotations["ts"].to_numpy())
    if is_gpu.any():
        step[is_gpu] = gpu_step_at(trace, annotations["ts"].to_numpy()[is_gpu])
    annotations["step"] = step
    launch_step = trace.launches["step"].to_numpy()
    for gpu in (trace.kernels, trace.gpu_mem):
        launch = gpu["launch_idx"].to_numpy()
        step = np.full(len(gpu), -1, dtype=np.int64)
        has_launch = launch >= 0
        step[has_launch] = launch_step[launch[has_launch]]
        orphan = step < 0
        if orphan.any():
            step[orphan] = gpu_step_at(trace, gpu["ts"].to_numpy()[orphan])
        gpu["step"] = step
    _fill_gpu_spans(trace)


def _fill_gpu_spans(trace: Trace) -> None:
    """Steps without a GPU-side annotation, or whose annotation does not cover the GPU work
    launched in them, get first..last GPU work launched in them. On CUDA the two agree to the
    nanosecond (Kineto builds the annotation that way); ROCm traces carry 18 us GPU-side
    ProfilerStep spans that cover none of the step's kernels."""
    steps = trace.steps
    if not trace.has_gpu or steps.empty:
        return
    spans = gpu_spans_from_launches(steps, trace.kernels, trace.gpu_mem, trace.launches)
    ts, end = spans["gpu_ts"].to_numpy(), spans["gpu_end"].to_numpy()
    ann_ts, ann_end = steps["gpu_ts"].to_numpy(), steps["gpu_end"].to_numpy()
    known = ~np.isnan(ts) & ~np.isnan(end)
    with np.errstate(invalid="ignore"):
        uncovered = known & ((ts < ann_ts - SPAN_SLACK_US) | (end > ann_end + SPAN_SLACK_US))
    replace = (np.isnan(ann_ts) | uncovered) & known | np.isnan(ann_ts)
    if not replace.any():
        return
    steps.loc[replace, "gpu_ts"] = ts[replace]
    steps.loc[replace, "gpu_end"] = end[replace]


def comm_streams(kernels: pd.DataFrame) -> np.ndarray:
    """is_comm_stream per kernel: its (device, stream) runs at least one NCCL/RCCL kernel."""
    if len(kernels) == 0:
        return np.zeros(0, dtype=bool)
    nccl = kernels.loc[kernels["is_nccl"], ["device", "stream"]].drop_duplicates()
    key = kernels["device"].to_numpy() * (1 << 32) + kernels["stream"].to_numpy()
    comm = nccl["device"].to_numpy() * (1 << 32) + nccl["stream"].to_numpy()
    return np.isin(key, comm)
