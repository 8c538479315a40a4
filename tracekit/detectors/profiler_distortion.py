"""profiler_distortion: the profiled steps ran much slower than unprofiled ones.

The pathology, in plain words: torch.profiler is not free. With `with_stack=True` its Python
tracer records an event for every Python function call and return; a step whose CPU side is
Python-heavy (a hand-written optimizer looping over parameters, small kernels launched from
Python) can take ten times longer under it (modded-nanogpt on 2x H200: 1.3-1.5 s profiled
against 0.12-0.15 s unprofiled). The GPU kernels themselves keep their durations, but
everything that depends on when the CPU issued work does not: a collective "issued late by the
CPU", a GPU left idle between launches, a slow step blamed on a CPU op. Those findings describe
the profiler, not the program, and nothing else in a trace says so.

How it is measured: the profiled steps' median wall time against the median of ordinary
unprofiled steps, from steps.jsonl (the trainer's, or the one `profile --script` writes from
its own step timing): steps >= 2 that the profiler did not touch (not its warmup steps, not
the step after a window's trace export, not a split recording's stack window:
tracekit.link.profiler_steps) and not a shard switch (`evidence.baseline_steps`). Without
steps.jsonl, `baseline_step_ms` (`analyze --baseline-step-ms`, an unprofiled step time measured
elsewhere) is compared with the traces' median step
(tracekit.detectors.steptime). The tracer's cost is shown as Python function events per
profiled step (per rank, from the trace), beside the excess time per step.

What is reported: one finding for the run (on the lowest rank, which wrote steps.jsonl), HIGH
whenever the ratio reaches `factor`; its step is the slowest profiled step. cost_us = the excess
per step x the profiled steps. Findings whose evidence rests on CPU timing are listed in its
evidence and each is marked with `evidence.profiler_distortion` (see `note_distortion`):
comm_gap "issued late by the CPU", gpu_idle, and slow_step excesses held by CPU-side work.
Kernel durations, GPU overlap (sm_contention) and select_backward kernel costs are not listed.

Thresholds:
- factor = 1.5: the trainer's reference runs on 2x H200 took 1.00-1.12x their unprofiled steps
  with stacks and shapes on (README), and profiled CPU runs of its tiny preset stay near that
  range too (see the report measured with `profile --record`), so 1.5x is well clear of the
  profiler's ordinary cost; at 1.5x a third of every profiled step is the profiler's, the same
  order as the CPU-side gaps the listed findings report.
- min_baseline_steps = 3: a median of fewer unprofiled steps is one or two samples of a noisy
  quantity (CPU steps vary by 2x on a shared machine), too few to call the profiled steps slow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tracekit.detectors import register, register_pass
from tracekit.finding import Cause, Culprit, Finding
from tracekit.link.profiler_steps import STACK_WINDOW, profiler_touch
from tracekit.link.steptime import run_step_us
from tracekit.trace import Run

KIND = "profiler_distortion"
SUGGESTION = (
    "judge CPU-side timings on a recording without stacks: cli.py profile --record timing "
    "(or --record split: timings from a window without stacks, source lines from one with)"
)
NO_STACK_SUGGESTION = (
    "the profiler's cost per recorded op dominates steps this short: judge CPU-side timings "
    "against the unprofiled step time, or record fewer details (--no-shapes) on longer steps"
)
CPU_SIDE_SLOW_STEP = frozenset({"cpu op", "annotation", "gpu idle"})
"""slow_step categories whose excess is CPU work or GPU idle waiting for it (not kernels, data
reads, compilation or synchronisation)."""


@dataclass(frozen=True)
class Params:
    factor: float = 1.5
    min_baseline_steps: int = 3
    baseline_step_ms: float | None = None


def baseline_rows(log: pd.DataFrame, manifest: dict[str, Any] | None = None) \
        -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(profiled rows of the main window, ordinary unprofiled rows, stack-window rows)."""
    log = log[pd.to_numeric(log.get("wall_ms"), errors="coerce").notna()].copy()
    log["wall_ms"] = log["wall_ms"].astype(float)
    log["step"] = log["step"].astype(int)
    touch = profiler_touch(log, manifest)
    switch = log["shard_switch"].fillna(False).astype(bool) if "shard_switch" in log \
        else pd.Series(False, index=log.index)
    ordinary = touch.eq("") & ~switch & log["step"].ge(2)
    return log[touch.eq("active")], log[ordinary], log[touch.eq(STACK_WINDOW)]


def python_events_per_step(run: Run) -> dict[int, float]:
    """Python function events the tracer recorded per profiled step, per rank."""
    out: dict[int, float] = {}
    for trace in run.traces:
        steps = max(1, len(trace.steps))
        out[trace.rank] = round(len(trace.python) / steps, 1)
    return out


@register(KIND, Params)
def detect(run: Run, p: Params) -> list[Finding]:
    """One HIGH finding when profiled steps take `factor` x the unprofiled ones or more."""
    if not run.traces:
        return []
    log = run.steps_log
    has_log = log is not None and not log.empty and {"wall_ms", "step"} <= set(log.columns)
    if not has_log and p.baseline_step_ms is None:
        return []
    per_step_ms: dict[int, float] = {}
    stack_ms = baseline_ms = None
    baseline_from = ""
    baseline_steps: list[int] = []
    if has_log:
        main, ordinary, stacked = baseline_rows(log, run.manifest)
        per_step_ms = dict(zip(main["step"], main["wall_ms"], strict=True))
        stack_ms = float(stacked["wall_ms"].median()) if len(stacked) else None
        baseline_ms = float(ordinary["wall_ms"].median()) if len(ordinary) else None
        baseline_from = "steps.jsonl"
        baseline_steps = [int(s) for s in ordinary["step"]]
        if len(ordinary) < p.min_baseline_steps:
            baseline_ms = None
    if p.baseline_step_ms is not None:
        baseline_ms, baseline_from = float(p.baseline_step_ms), "--baseline-step-ms"
        baseline_steps = []
    if not per_step_ms:  # no log of the profiled steps: the traces' own step time
        step_us = run_step_us(run)
        if step_us is None:
            return []
        per_step_ms = {}
        profiled_ms = step_us / 1000
        profiled_from = "traces (median step)"
    else:
        profiled_ms = float(np.median(list(per_step_ms.values())))
        profiled_from = "steps.jsonl"
    if not baseline_ms or profiled_ms < p.factor * baseline_ms:
        return []
    ratio = profiled_ms / baseline_ms
    excess_us = (profiled_ms - baseline_ms) * 1000
    trace = min(run.traces, key=lambda t: t.rank)
    n_steps = len(per_step_ms) or max(1, len(trace.steps))
    events = python_events_per_step(run)
    tracer = events.get(trace.rank, 0.0)
    worst_step = max(per_step_ms, key=per_step_ms.get) if per_step_ms else \
        (int(trace.steps["step"].iloc[0]) if len(trace.steps) else None)
    steps = trace.steps.set_index("step") if len(trace.steps) else None
    start = float(steps.at[worst_step, "cpu_ts"]) \
        if steps is not None and worst_step in steps.index else 0.0
    why = (f"the Python stack tracer recorded {tracer:,.0f} function events per step"
           if tracer > 0 else "no Python tracer events: the profiler's own op and activity "
           "recording")
    title = (f"profiled steps took {ratio:.1f}x the unprofiled ones ({profiled_ms:,.1f} ms vs "
             f"{baseline_ms:,.1f} ms); {why}: CPU-side timings (late launches, GPU idle, CPU "
             "stalls) in this trace are the profiler's")
    evidence: dict[str, Any] = {
        "ratio": round(ratio, 3), "profiled_step_ms": round(profiled_ms, 3),
        "unprofiled_step_ms": round(baseline_ms, 3), "baseline_from": baseline_from,
        "baseline_steps": baseline_steps,
        "profiled_from": profiled_from,
        "per_step_ms": {str(int(k)): round(float(v), 3) for k, v in per_step_ms.items()},
        "excess_per_step_us": round(excess_us, 3),
        "python_events_per_step": {str(k): v for k, v in events.items()},
        "with_stack": bool(tracer > 0),
        "stack_window_step_ms": round(stack_ms, 3) if stack_ms else None,
        "stack_window_ratio": round(stack_ms / baseline_ms, 3) if stack_ms else None,
        "factor": p.factor, "unreliable_findings": [],
        "no_code_location": "the profiler's own cost, not a line of the program",
    }
    suggestion = SUGGESTION if tracer > 0 else NO_STACK_SUGGESTION
    return [Finding(
        kind=KIND, severity="high", rank=trace.rank, step=worst_step, start_us=start,
        dur_us=round(per_step_ms.get(worst_step, profiled_ms) * 1000, 3),
        cost_us=round(excess_us * n_steps, 3), count=n_steps, title=title, culprit=Culprit(),
        cause=Cause(op="torch.profiler", ordering=why), evidence=evidence,
        suggestion=suggestion)]


def cpu_timed(finding: Finding) -> bool:
    """True when the finding rests on when the CPU issued work (what the tracer distorts)."""
    if finding.kind == "comm_gap":
        return finding.evidence.get("classification") == "late_launch"
    if finding.kind == "gpu_idle":
        return True
    if finding.kind == "slow_step":
        return str(finding.evidence.get("category", "")) in CPU_SIDE_SLOW_STEP
    return False


@register_pass(KIND)
def note_distortion(findings: list[Finding]) -> list[Finding]:
    """Mark the findings a profiler_distortion finding makes unreliable, and list them in it
    (in place; returns the same list). Idempotent."""
    distortion = [f for f in findings if f.kind == KIND]
    if not distortion:
        return findings
    main = distortion[0]
    listed = []
    for finding in findings:
        if finding.kind != KIND and cpu_timed(finding):
            finding.evidence["profiler_distortion"] = {
                "ratio": main.evidence["ratio"],
                "note": "measured under a profiler that slowed the step "
                        f"{main.evidence['ratio']:.1f}x; CPU-side timing is unreliable"}
            listed.append({"kind": finding.kind, "rank": finding.rank, "step": finding.step,
                           "title": finding.title})
    main.evidence["unreliable_findings"] = listed
    return findings
