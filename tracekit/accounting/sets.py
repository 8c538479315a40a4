"""A rank's GPU time as interval sets: busy, compute, communication (hidden and exposed), idle.

Everything is measured inside the GPU-side step windows (`tracekit.link.steptime`'s GPU
period: from the end of the previous step's GPU work to the end of this step's, so idle time
before a step's first kernel counts), or, in a trace without ProfilerStep spans, inside one
window from the first to the last GPU event. In every window

    wall = compute + exposed communication + idle

where busy is the union of kernels, memcpy and memset over all streams; compute the union of
everything that is not communication; communication the union of communication kernels,
hidden where compute runs beside it and exposed where nothing does; idle the rest. The step
time a finding can honestly claim lies in `lost` = idle + exposed communication, or (for
wasted work) in the busy time of the kernels it blames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tracekit.intervals import (
    EMPTY,
    Intervals,
    as_set,
    intersect_intervals,
    length_within,
    subtract_intervals,
    union_intervals,
)
from tracekit.link.steptime import step_table
from tracekit.trace import Trace


@dataclass
class GpuSets:
    """One rank's interval sets (pairs of sorted disjoint start/end arrays, trace clock, us)."""

    steps: np.ndarray
    """Step number of each window (-1: the whole trace, when it has no ProfilerStep spans)."""
    windows: Intervals
    busy: Intervals
    compute: Intervals
    comm: Intervals
    hidden_comm: Intervals
    exposed_comm: Intervals
    idle: Intervals

    @property
    def lost(self) -> Intervals:
        """Idle or exposed communication: the step time nothing useful hides."""
        return union_intervals(np.concatenate([self.idle[0], self.exposed_comm[0]]),
                               np.concatenate([self.idle[1], self.exposed_comm[1]]))

    def per_window(self, a: Intervals) -> np.ndarray:
        """Length of interval set `a` inside each step window."""
        return length_within(a, self.windows[0], self.windows[1])


def step_windows(trace: Trace) -> tuple[np.ndarray, Intervals]:
    """(steps, windows): each step's GPU period, steps in order; windows never overlap.
    The first step's window starts at the earlier of its CPU and GPU starts.

    A step whose GPU period is unknown (no GPU work launched in it) has no window. Without
    ProfilerStep spans, one window (step -1) covers the trace's GPU events.
    """
    if len(trace.steps):
        table = step_table(trace).dropna(subset=["gpu_from", "gpu_end"])
        lo = table["gpu_from"].to_numpy(dtype=np.float64, copy=True)
        hi = table["gpu_end"].to_numpy(dtype=np.float64)
        # The first step has no previous GPU end: it starts with its CPU span when that is
        # earlier (GPU work running then, e.g. the warm-up step's, is in the trace as busy).
        if len(lo):
            lo[0] = min(lo[0], float(table["cpu_ts"].iloc[0]))
        # A window starts no earlier than the previous one ended (kept disjoint).
        if len(hi) > 1:
            lo[1:] = np.maximum(lo[1:], np.maximum.accumulate(hi)[:-1])
        keep = hi > lo
        return table["step"].to_numpy(dtype=np.int64)[keep], (lo[keep], hi[keep])
    ts, end = gpu_events(trace)
    if len(ts) == 0:
        return np.zeros(0, dtype=np.int64), EMPTY
    return np.array([-1]), (np.array([ts.min()]), np.array([end.max()]))


def gpu_events(trace: Trace) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of every kernel, memcpy and memset."""
    k, m = trace.kernels, trace.gpu_mem
    return (np.concatenate([k["ts"].to_numpy(np.float64), m["ts"].to_numpy(np.float64)]),
            np.concatenate([k["end"].to_numpy(np.float64), m["end"].to_numpy(np.float64)]))


def comm_mask(kernels: pd.DataFrame) -> np.ndarray:
    """Communication kernels (the loader's and linker's recognition: `is_nccl`)."""
    return kernels["is_nccl"].to_numpy(dtype=bool)


def gpu_sets(trace: Trace) -> GpuSets:
    """The rank's interval sets, computed once per trace (cached on it)."""
    cached = trace.__dict__.get("_gpu_sets")
    if cached is not None:
        return cached
    steps, windows = step_windows(trace)
    k, m = trace.kernels, trace.gpu_mem
    is_comm = comm_mask(k)
    k_ts, k_end = k["ts"].to_numpy(np.float64), k["end"].to_numpy(np.float64)
    comm = intersect_intervals(as_set((k_ts[is_comm], k_end[is_comm])), windows)
    compute = intersect_intervals(as_set((
        np.concatenate([k_ts[~is_comm], m["ts"].to_numpy(np.float64)]),
        np.concatenate([k_end[~is_comm], m["end"].to_numpy(np.float64)]))), windows)
    busy = union_intervals(np.concatenate([comm[0], compute[0]]),
                           np.concatenate([comm[1], compute[1]]))
    idle = subtract_intervals(windows, busy)
    sets = GpuSets(steps=steps, windows=windows, busy=busy, compute=compute, comm=comm,
                   hidden_comm=intersect_intervals(comm, compute),
                   exposed_comm=subtract_intervals(comm, compute), idle=idle)
    trace.__dict__["_gpu_sets"] = sets
    return sets


def exposed_spans(trace: Trace, spans: tuple[np.ndarray, np.ndarray]) -> Intervals:
    """The part of `spans` (any intervals) that the rank's steps lose: idle or exposed comm."""
    return intersect_intervals(as_set(spans), gpu_sets(trace).lost)


def exposed_us(trace: Trace, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Lost time (idle or exposed communication) inside each window [start, end)."""
    return length_within(gpu_sets(trace).lost, starts, ends)


