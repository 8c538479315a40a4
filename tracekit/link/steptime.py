"""The step time every detector measures severity against, and per-step tables.

A finding's severity is its cost per step as a share of a step (tracekit.finding). That share
must not depend on which detector or rank reports it: two ranks losing the same 280 us per step
get the same severity. So severity uses one number per run, `run_step_us`: the median over
ranks of each rank's median step, where a step lasts the longer of its CPU span (the loop's wall
time) and its GPU period (from the end of the previous step's GPU work, so idle GPU time counts).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from tracekit.trace import Run, Trace


def step_table(trace: Trace) -> pd.DataFrame:
    """Per ProfilerStep: step, cpu_ts, cpu_end, cpu_us, gpu_from, gpu_end, gpu_us."""
    steps = trace.steps.sort_values("step").reset_index(drop=True)
    table = pd.DataFrame({
        "step": steps["step"].astype(int), "cpu_ts": steps["cpu_ts"],
        "cpu_end": steps["cpu_end"], "cpu_us": steps["cpu_end"] - steps["cpu_ts"]})
    gpu_end = steps["gpu_end"].astype(float)
    # The GPU period starts where the previous step's GPU work ended (idle before counts).
    previous_end = gpu_end.shift(1)
    table["gpu_from"] = previous_end.where(previous_end.notna(), steps["gpu_ts"])
    table["gpu_end"] = gpu_end
    table["gpu_us"] = table["gpu_end"] - table["gpu_from"]
    return table


def median_step_us(trace: Trace) -> float | None:
    """Median step time of a rank (the larger of CPU span and GPU period per step), or None."""
    if trace.steps.empty:
        return None
    table = step_table(trace)
    times = table[["cpu_us", "gpu_us"]].max(axis=1, skipna=True).dropna()
    return float(times.median()) if len(times) else None


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
