"""Step time: the one definition every detector, comparison and report uses.

Severity. A finding's severity is its cost per step as a share of a step (tracekit.finding).
That share must not depend on which detector or rank reports it: two ranks losing the same
280 us per step get the same severity. So severity uses one number per run, `run_step_us`: the
median over ranks of each rank's median step, where a step lasts the longer of its CPU span (the
loop's wall time) and its GPU period (from the end of the previous step's GPU work, so idle GPU
time counts).

GPU period. CPU ProfilerStep spans tile the CPU timeline, so a CPU span is the step. GPU spans
cover only the step's kernels: a step whose kernels started late because the CPU stalled (data
wait, sync) would look as fast as the others. So on the GPU side a step lasts from the previous
step's GPU end to its own GPU end (`gpu_period_start`). Severity takes the previous profiled
step whatever its number; the comparison (`profiled_step_ms`) only the step numbered one less,
and the first profiled step, which has no predecessor in the trace, uses its own span.

Warm-up. The first steps of steps.jsonl include compilation and allocator warm-up: slow_step
leaves out the first SLOW_STEP_WARMUP_ROWS logged rows, the comparison the steps numbered below
COMPARE_FROM_STEP (`logged_step_ms`). Both also leave out the steps whose time is the
profiler's own (its trace export, a split recording's stack window: `profiler_steps`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from tracekit.link.profiler_steps import NOT_THE_PROGRAM, profiler_touch
from tracekit.trace import Run, Trace


def step_table(trace: Trace) -> pd.DataFrame:
    """Per ProfilerStep: step, cpu_ts, cpu_end, cpu_us, gpu_from, gpu_end, gpu_us."""
    steps = trace.steps.sort_values("step").reset_index(drop=True)
    table = pd.DataFrame({
        "step": steps["step"].astype(int), "cpu_ts": steps["cpu_ts"],
        "cpu_end": steps["cpu_end"], "cpu_us": steps["cpu_end"] - steps["cpu_ts"]})
    gpu_end = steps["gpu_end"].astype(float)
    table["gpu_from"] = gpu_period_start(steps, consecutive_only=False)
    table["gpu_end"] = gpu_end
    table["gpu_us"] = table["gpu_end"] - table["gpu_from"]
    return table


def gpu_period_start(ordered: pd.DataFrame, consecutive_only: bool) -> pd.Series:
    """Where each step's GPU period starts (steps sorted by number): the previous step's GPU
    end (idle GPU time before the step counts), else the step's own GPU start. With
    `consecutive_only`, the previous row counts only when it is the step numbered one less."""
    previous_end = ordered["gpu_end"].shift(1)
    follows = previous_end.notna()
    if consecutive_only:
        follows &= ordered["step"].diff().eq(1)
    return ordered["gpu_ts"].where(~follows, previous_end)


def median_step_us(trace: Trace) -> float | None:
    """Median step time of a rank (the larger of CPU span and GPU period per step; on a trace
    with GPU work, over the steps that ran some), or None."""
    steps = trace.steps
    if steps.empty:
        return None
    # step_table's columns, on arrays: every detector asks this once per rank.
    order = np.argsort(steps["step"].to_numpy(), kind="stable")
    cpu_us = (steps["cpu_end"].to_numpy(dtype=np.float64)
              - steps["cpu_ts"].to_numpy(dtype=np.float64))[order]
    gpu_ts = steps["gpu_ts"].to_numpy(dtype=np.float64)[order]
    gpu_end = steps["gpu_end"].to_numpy(dtype=np.float64)[order]
    previous_end = np.r_[np.nan, gpu_end[:-1]]
    gpu_us = gpu_end - np.where(np.isnan(previous_end), gpu_ts, previous_end)
    times = np.fmax(cpu_us, gpu_us)
    if not np.isnan(gpu_end).all():
        # As the step accounting: on a GPU trace the steps that ran GPU work. A step that
        # launched none (the profiler's last, cut short by its export) is no step of the job.
        times = times[~np.isnan(gpu_end)]
    times = times[~np.isnan(times)]
    return float(np.median(times)) if len(times) else None


def run_step_us(run: Run) -> float | None:
    """The run's step time for severities: the median of the ranks' median steps (None when
    no rank has ProfilerStep spans; severities then fall back to absolute costs)."""
    if run.context is not None:  # this Run holds some ranks: the value over all of them
        return run.context.step_us
    return step_us_over_ranks(median_step_us(t) for t in run.traces)


def step_us_over_ranks(per_rank: Iterable[float | None]) -> float | None:
    """The median of the ranks' median steps (ranks without steps left out)."""
    known = [m for m in per_rank if m]
    return float(np.median(known)) if known else None


SLOW_STEP_WARMUP_ROWS = 2
"""slow_step leaves the first rows of steps.jsonl out of its median (see slow_step)."""
COMPARE_FROM_STEP = 1
"""The comparison of two runs takes steps.jsonl wall times from this step number on."""


def logged_step_ms(run: Run, skip_below: int = COMPARE_FROM_STEP) -> list[float] | None:
    """Wall times from steps.jsonl, without the first steps (compilation, warmup) and the
    steps whose time is the profiler's (see the module docstring)."""
    log = run.steps_log
    if log is None or log.empty or "wall_ms" not in log:
        return None
    if "step" in log:
        own = ~profiler_touch(log, run.manifest).isin(NOT_THE_PROGRAM)
        log = log[(log["step"] >= skip_below) & own]
    values = pd.to_numeric(log["wall_ms"], errors="coerce").dropna()
    return [float(v) for v in values] or None


def rank_step_ms(steps: pd.DataFrame, side: str) -> pd.DataFrame:
    """One rank's step durations (ms) from its ProfilerStep spans: the CPU span, or the GPU
    period from the previous step's GPU end (see the module docstring)."""
    ordered = steps.sort_values("step")
    start, end = ordered[f"{side}_ts"], ordered[f"{side}_end"]
    if side == "gpu":
        start = gpu_period_start(ordered, consecutive_only=True)
    return pd.DataFrame({"step": ordered["step"].to_numpy(),
                         "ms": ((end - start) / 1000.0).to_numpy()})


def profiled_step_ms(traces: list[Trace], side: str) -> list[float]:
    """Per ProfilerStep number, the slowest rank's duration (a step is as slow as its last rank)."""
    frames = [rank_step_ms(t.steps, side) for t in traces if not t.steps.empty]
    if not frames:
        return []
    both = pd.concat(frames, ignore_index=True).dropna()
    return [float(v) for v in both.groupby("step")["ms"].max().sort_index()]


def has_gpu_steps(traces: list[Trace]) -> bool:
    return any(not t.steps.empty and t.steps["gpu_ts"].notna().any() for t in traces)
