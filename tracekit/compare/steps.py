"""Step times of two runs side by side, and whether they differ (Welch's t, Mann-Whitney U).
The step times themselves are `tracekit.link.steptime`'s."""

from __future__ import annotations

import numpy as np

from tracekit.compare.schema import Distribution, StepComparison
from tracekit.link.steptime import (
    COMPARE_FROM_STEP,
    has_gpu_steps,
    logged_step_ms,
    profiled_step_ms,
)
from tracekit.trace import Run, Trace


def _significance(base: list[float], new: list[float], comp: StepComparison) -> None:
    """Welch's t-test and Mann-Whitney U over step times (two-sided), when scipy is present."""
    if len(base) < 2 or len(new) < 2:
        comp.note += " Too few steps for a significance test (need 2+ per run)."
        return
    try:
        from scipy import stats
    except ImportError:
        comp.note += " scipy is not installed: no significance test."
        return
    if np.std(base) == 0 and np.std(new) == 0:
        comp.note += " Step times are constant in both runs: no significance test."
        return
    welch = stats.ttest_ind(new, base, equal_var=False)
    mwu = stats.mannwhitneyu(new, base, alternative="two-sided")
    comp.welch_t, comp.welch_p = float(welch.statistic), float(welch.pvalue)
    comp.mannwhitney_u, comp.mannwhitney_p = float(mwu.statistic), float(mwu.pvalue)


def compare_steps(base_run: Run, new_run: Run, base_traces: list[Trace],
                  new_traces: list[Trace], skip_below: int = COMPARE_FROM_STEP) -> StepComparison:
    """Step time of each run and the difference; both runs always use the same source.

    steps.jsonl (every step, not only profiled ones) when both runs have it, and no --rank
    filter (it is rank 0's wall clock); else the GPU-side ProfilerStep spans when both runs have
    them (the CPU runs ahead of the GPU, so CPU spans measure launch time); else CPU spans.
    """
    base_log = logged_step_ms(base_run, skip_below)
    new_log = logged_step_ms(new_run, skip_below)
    all_ranks = (len(base_traces) == len(base_run.traces)
                 and len(new_traces) == len(new_run.traces))
    if base_log and new_log and all_ranks:
        source, base_ms, new_ms = "steps.jsonl", base_log, new_log
        note = f"steps.jsonl wall time, steps >= {skip_below}."
    elif has_gpu_steps(base_traces) and has_gpu_steps(new_traces):
        source = "gpu ProfilerStep"
        base_ms = profiled_step_ms(base_traces, "gpu")
        new_ms = profiled_step_ms(new_traces, "gpu")
        note = ("GPU-side ProfilerStep spans (previous step's GPU end to this step's), "
                "slowest rank per step.")
    else:
        source = "cpu ProfilerStep"
        base_ms = profiled_step_ms(base_traces, "cpu")
        new_ms = profiled_step_ms(new_traces, "cpu")
        note = "CPU ProfilerStep spans, slowest rank per step."
    comp = StepComparison(source=source, base=Distribution.of(base_ms),
                          new=Distribution.of(new_ms), note=note)
    if comp.base is None or comp.new is None:
        comp.source = None
        comp.note = "No step times in one of the runs (no steps.jsonl, no ProfilerStep spans)."
        return comp
    comp.delta_mean_ms = comp.new.mean_ms - comp.base.mean_ms
    comp.delta_median_ms = comp.new.median_ms - comp.base.median_ms
    if comp.base.mean_ms > 0:
        comp.pct_change_mean = 100.0 * comp.delta_mean_ms / comp.base.mean_ms
    _significance(comp.base.values_ms, comp.new.values_ms, comp)
    return comp
