"""slow_step: a training step much longer than the typical one, and what held the extra time.

The pathology, in plain words: most steps of a training loop do the same work and take the same
time, so a step that takes far longer than the median spent its extra time on something the
others did not: waiting for data (modded-nanogpt's step-6 stall while the first full shard
loads), recompiling, a host synchronisation (a peer rank that is late makes every collective
wait), or a GPU left idle because the CPU launched late. The detector measures each step, flags
the outliers, and compares the slow step with the median step label by label to name what holds
the excess: a record_function annotation ("data:" ones are data waits), an op's self time, a
CUDA runtime call (cudaDeviceSynchronize...), a kernel, or GPU idle time.

How a step is measured (per rank, on the profiled ProfilerStep spans):
- CPU: the ProfilerStep#N span (the CPU spans are back to back, so this is the loop's wall time);
- GPU: from the end of the previous step's GPU span to the end of this one, so idle time before
  the step's first kernel counts (a data stall shows there: the GPU span itself stays short).
A step is slow when either measure exceeds `factor` x that measure's median AND the excess is at
least `min_excess_us`; cost = step time - median on the measure with the larger excess.
The trainer's steps.jsonl (`run.steps_log`), when present, adds every step of the run, profiled
or not: unprofiled slow steps are reported with what is known (their wall time), so one knows
which steps to profile next. The steps whose time is the profiler's (the step after a
window's trace export, a split recording's stack window: tracekit.link.profiler_steps) stay out
of the median, and when slow are reported as the profiler's, LOW, never as the program's; so
is a slow warmup step of the profiler.

Thresholds:
- factor = 2.0: on the planted two-rank H200 traces (tests/data/gpu), ordinary profiled steps
  vary up to 1.51x the median (the first active step pays the profiler's start-up), while the
  planted 150 ms data wait makes a 2 ms step 72-75x longer. 2x clears the jitter with margin.
- min_excess_us = 1000: an absolute floor, so microsecond-scale toy steps (CPU tests, tiny
  models) do not report scheduler noise as slow steps; 1 ms is below any stall worth fixing.
- min_steps = 3: a median of fewer than 3 steps does not say what "typical" is (with 2 steps
  either could be the odd one), so nothing is said.
- skip_first_logged = 2: the first steps of steps.jsonl include compilation and allocator
  warm-up by design, so they are left out of the median and of the slow-step analysis (profiled
  steps are normally chosen after warm-up and are all used). A slow one among them is still
  reported, as a warm-up finding of LOW severity whatever its size: it is paid once per process,
  not per step, and the trainer never profiles step 0, so nothing in it can be attributed
  beyond what the run's manifest says (torch.compile on: "compilation"; else "warm-up").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tracekit.accounting.sets import exposed_spans
from tracekit.detectors import register
from tracekit.detectors.step_profile import (
    Candidate,
    choose,
    excess_candidates,
    op_self_time,
    step_profiles,
)
from tracekit.durations import format_us
from tracekit.finding import Cause, Culprit, Finding, SourceLine, severity_from_cost
from tracekit.link import op_stack, source_of_op
from tracekit.link.profiler_steps import NOT_THE_PROGRAM, STACK_WINDOW, profiler_touch
from tracekit.link.steptime import SLOW_STEP_WARMUP_ROWS, run_step_us, step_table
from tracekit.source import SourceFiles, call_in_with, call_name
from tracekit.trace import Run, Trace

SUGGESTIONS = {
    "data wait": "prefetch the next shard/batch in a background thread (pinned memory, "
                 "non_blocking copies) so no step waits on data",
    "compilation": "avoid recompiles in the loop (stable shapes and guards, mark dynamic "
                   "dims); warm compilation up before the timed steps",
    "synchronisation": "remove host syncs (.item(), .cpu(), torch.cuda.synchronize) from the "
                       "step; if it waits in a collective, check the other ranks: a late peer "
                       "makes every rank wait",
    "gpu idle": "the GPU sat idle: look at what the CPU did before this step's first kernel",
}
DEFAULT_SUGGESTION = "compare this step with a median one on the timeline: the named work grew"


def annotation_source(trace: Trace, row: int) -> SourceLine | None:
    """Innermost user frame around an annotation, narrowed to the call holding its time."""
    ann = trace.annotations.loc[row]
    py = trace.python
    on_thread = py[(py["tid"] == ann["tid"]) & (py["ts"] <= ann["ts"]) & (py["end"] >= ann["end"])]
    user = on_thread[on_thread["is_user"]]
    if user.empty:
        return None
    frame = user.sort_values("depth").iloc[-1]
    inside = py[(py["tid"] == ann["tid"]) & (py["ts"] >= ann["ts"]) & (py["end"] <= ann["end"])]
    inside = inside[inside["parent"] == frame.name] if "parent" in inside else inside
    longest = inside.sort_values("dur").iloc[-1]["name"] if len(inside) else ""
    files = SourceFiles(roots=trace.source_roots or (Path.cwd(),))
    line = call_in_with(files, str(frame["file"]), int(frame["line"]), str(frame["function"]),
                        call_name(str(longest)), str(ann["name"]))
    return SourceLine(file=str(frame["file"]), line=line or int(frame["line"]),
                      function=str(frame["function"]), line_exact=line is not None)


def enclosing_stack(trace: Trace, tid: Any, ts: float, end: float, name: str) -> list[str]:
    """Annotations and ops on the thread that enclose [ts, end], outermost first."""
    rows = [frame[(frame["tid"] == tid) & (frame["ts"] <= ts) & (frame["end"] >= end)]
            [["name", "ts", "dur"]] for frame in (trace.annotations, trace.ops)]
    stack = pd.concat(rows).sort_values(["ts", "dur"], ascending=[True, False])
    names = [n for n in stack["name"].tolist()]
    return names if names and names[-1] == name else names + [name]


def cause_of(trace: Trace, chosen: Candidate) -> tuple[Cause, Culprit]:
    """Op stack, source line and (for kernels) culprit of the chosen candidate."""
    if chosen.frame == "kernels":
        k = trace.kernels.loc[chosen.row]
        culprit = Culprit(kernel=str(k["name"]), stream=int(k["stream"]),
                          grid=[int(k["grid_x"]), int(k["grid_y"]), int(k["grid_z"])],
                          blocks_per_sm=float(k["blocks_per_sm"]))
        op_row = int(k["op_idx"]) if k["op_idx"] >= 0 else -1
        return Cause(op=str(trace.ops.at[op_row, "name"]) if op_row >= 0 else None,
                     op_stack=op_stack(trace, op_row) if op_row >= 0 else [],
                     source=source_of_op(trace.ops, op_row)), culprit
    if chosen.frame in ("ops", "launches", "annotations"):
        frame = getattr(trace, chosen.frame)
        event = frame.loc[chosen.row]
        stack = enclosing_stack(trace, event["tid"], event["ts"], event["end"], chosen.label)
        if chosen.frame == "ops":
            source = source_of_op(trace.ops, chosen.row)
        elif chosen.frame == "annotations":
            source = annotation_source(trace, chosen.row)
        else:
            owner = (trace.ops.index[trace.ops["external_id"] == event["external_id"]]
                     if event["external_id"] >= 0 else [])
            source = source_of_op(trace.ops, int(owner[0])) if len(owner) else None
        return Cause(op=chosen.label, op_stack=stack, source=source), Culprit()
    return Cause(op=None, ordering="no kernel ran on this rank's GPU"), Culprit()


@dataclass
class SlowStep:
    step: int
    measure: str
    time_us: float
    median_us: float
    reference_step: int
    start_us: float


def slow_steps(table: pd.DataFrame, factor: float, min_excess_us: float) -> list[SlowStep]:
    """Outlier steps on either measure; the measure with the larger excess is kept."""
    found: dict[int, SlowStep] = {}
    for measure, start_col in (("cpu", "cpu_ts"), ("gpu", "gpu_from")):
        times = table[f"{measure}_us"]
        if times.notna().sum() < 3:
            continue
        median = float(times.median())
        if not median > 0:  # steps of no measurable length (broken times): no outliers
            continue
        slow = table[(times > factor * median) & (times - median >= min_excess_us)]
        normal = table[~table.index.isin(slow.index) & times.notna()]
        if slow.empty or normal.empty:
            continue
        reference = int(normal.loc[(normal[f"{measure}_us"] - median).abs().idxmin(), "step"])
        for _, row in slow.iterrows():
            candidate = SlowStep(int(row["step"]), measure, float(row[f"{measure}_us"]),
                                 median, reference, float(row[start_col]))
            held = found.get(candidate.step)
            if held is None or (candidate.time_us - candidate.median_us
                                > held.time_us - held.median_us):
                found[candidate.step] = candidate
    return sorted(found.values(), key=lambda s: s.step)


def trace_findings(trace: Trace, factor: float, min_excess_us: float, min_steps: int,
                   run_step: float | None = None) -> list[Finding]:
    """Slow profiled steps of one rank, each attributed against the reference step; severity
    against `run_step` (the run's step time, see steptime), else this rank's median."""
    if len(trace.steps) < min_steps:
        return []
    table = step_table(trace)
    by_step = table.set_index("step")
    findings = []
    slow_list = slow_steps(table, factor, min_excess_us)
    if not slow_list:
        return []
    self_time = op_self_time(trace)
    # Every slow step and its reference (often one step for all) profiled in one pass.
    needed = list(dict.fromkeys(s for slow in slow_list for s in (slow.step,
                                                                   slow.reference_step)))
    profiles = dict(zip(needed, step_profiles(trace, by_step.loc[needed], self_time),
                        strict=True))
    for slow in slow_list:
        candidates = excess_candidates(profiles[slow.step], profiles[slow.reference_step])
        chosen = choose(candidates)
        excess = slow.time_us - slow.median_us
        spans = None
        if chosen is None:
            cause, culprit = Cause(), Culprit()
            what, category = "no single label holds the excess", "unknown"
        else:
            spans = claimed_spans(trace, chosen)
            cause, culprit = cause_of(trace, chosen)
            category = chosen.category
            where = f" at {cause.source.file}:{cause.source.line}" if cause.source else ""
            what = f"{chosen.label}{where} ({category}) holds {chosen.excess_us / 1000:.1f} ms"
        title = (f"step {slow.step} took {slow.time_us / 1000:.1f} ms, "
                 f"{slow.time_us / slow.median_us:.1f}x the median "
                 f"{slow.median_us / 1000:.1f} ms: {what}")
        findings.append(Finding(
            kind="slow_step", severity=severity_from_cost(excess, run_step or slow.median_us),
            rank=trace.rank, step=slow.step, start_us=slow.start_us, dur_us=slow.time_us,
            cost_us=round(excess, 3), count=1, title=title, culprit=culprit, cause=cause,
            evidence={
                "measure": slow.measure, "step_us": round(slow.time_us, 3),
                "median_step_us": round(slow.median_us, 3),
                "ratio": round(slow.time_us / slow.median_us, 2),
                "reference_step": slow.reference_step, "category": category,
                "excess_by": [{"label": c.label, "category": c.category,
                               "excess_us": round(c.excess_us, 3)} for c in candidates[:5]],
            },
            suggestion=SUGGESTIONS.get(category, DEFAULT_SUGGESTION), spans=spans))
    return findings


def claimed_spans(trace: Trace, chosen: Candidate) -> tuple[np.ndarray, np.ndarray] | None:
    """The step time a CPU-side culprit (op, label, runtime call) holds: the part of its span
    in which the GPU was idle or only communicating (what gpu_idle would also claim; the cost
    budget gives it to one of them)."""
    if chosen.frame not in ("ops", "launches", "annotations") or chosen.row < 0:
        return None
    event = getattr(trace, chosen.frame).loc[chosen.row]
    return exposed_spans(trace, (np.array([float(event["ts"])]),
                                 np.array([float(event["end"])])))


def steps_log_findings(run: Run, profiled: set[int], factor: float, min_excess_us: float,
                       min_steps: int, skip_first_logged: int) -> list[Finding]:
    """Slow steps of steps.jsonl that no trace covers (not profiled): wall time only. The
    median leaves out the steps whose time is the profiler's; a slow step the profiler touched
    is said to be the profiler's (see the module docstring)."""
    log = run.steps_log
    if log is None or log.empty or "wall_ms" not in log:
        return []
    log = log.sort_values("step")
    touch = profiler_touch(log, run.manifest)
    first, log, touch = log.iloc[:skip_first_logged], log.iloc[skip_first_logged:], \
        touch.iloc[skip_first_logged:]
    wall = log["wall_ms"].astype(float) * 1000.0
    own = wall[~touch.isin(NOT_THE_PROGRAM)]
    if own.notna().sum() < min_steps:
        return []
    median = float(own.median())
    slow = log[(wall > factor * median) & (wall - median >= min_excess_us)]
    rank = run.traces[0].rank if run.traces else 0
    first = first[~first["step"].isin(list(profiled))]  # the traces say more about those
    findings = warmup_findings(run, first, median, rank, factor, min_excess_us)
    for index, row in slow.iterrows():
        step = int(row["step"])
        if step in profiled or touch.loc[index] == "active":
            continue
        time_us = float(wall.loc[index])
        if touch.loc[index]:
            findings.append(profiler_step_finding(step, str(touch.loc[index]), time_us, median,
                                                  rank))
            continue
        # The trainer marks steps where the data loader moved to a new shard (a known stall).
        flag = row["shard_switch"] if "shard_switch" in log else False
        shard_switch = bool(flag) if pd.notna(flag) else False
        why = "the data loader switched shards here: data wait likely" if shard_switch \
            else "not profiled: no attribution"
        findings.append(Finding(
            kind="slow_step", severity=severity_from_cost(time_us - median, median), rank=rank,
            step=step, start_us=0.0, dur_us=time_us, cost_us=round(time_us - median, 3),
            count=1,
            title=(f"step {step} took {time_us / 1000:.1f} ms, {time_us / median:.1f}x the "
                   f"median {median / 1000:.1f} ms ({why})"),
            culprit=Culprit(), cause=Cause(),
            evidence={"source": "steps.jsonl", "step_us": round(time_us, 3),
                      "median_step_us": round(median, 3), "ratio": round(time_us / median, 2),
                      "profiled": False, "shard_switch": shard_switch,
                      "category": "data wait" if shard_switch else "unknown"},
            suggestion=f"profile steps around {step} (cli.py profile --steps "
                       f"{max(step - 1, 0)}-{step + 1}) to see what holds the time"))
    return findings


PROFILER_STEP_WHY = {
    "export": "the first step after the profiler exported its trace: its time includes the "
              "profiler's teardown and waiting for ranks still exporting",
    STACK_WINDOW: "a step of the split recording's stack window: the Python stack tracer "
                  "slowed it",
    "warmup": "the profiler's warmup step: its activity collection was already on",
}


def profiler_step_finding(step: int, touch: str, time_us: float, median: float,
                          rank: int) -> Finding:
    """A slow step whose time the profiler took (LOW: the program did not lose it)."""
    why = PROFILER_STEP_WHY[touch]
    return Finding(
        kind="slow_step", severity="low", rank=rank, step=step, start_us=0.0, dur_us=time_us,
        cost_us=round(time_us - median, 3), count=1,
        title=(f"step {step} took {time_us / 1000:.1f} ms, {time_us / median:.1f}x the median "
               f"{median / 1000:.1f} ms: {why}, not the program's"),
        culprit=Culprit(), cause=Cause(op="torch.profiler", ordering=why),
        evidence={"source": "steps.jsonl", "step_us": round(time_us, 3),
                  "median_step_us": round(median, 3), "ratio": round(time_us / median, 2),
                  "profiled": False, "profiler": touch, "category": "profiler",
                  "no_code_location": "the profiler's own time"},
        suggestion=PROFILER_STEP_SUGGESTION)


PROFILER_STEP_SUGGESTION = ("nothing to fix in the program: judge step times on steps the "
                            "profiler did not touch")


def warmup_findings(run: Run, first: pd.DataFrame, median: float, rank: int, factor: float,
                    min_excess_us: float) -> list[Finding]:
    """The run's first logged steps when slow: one-time warm-up, compilation when the manifest
    says torch.compile was on (LOW: paid once per process; see the module docstring)."""
    wall = first["wall_ms"].astype(float) * 1000.0
    slow = first[(wall > factor * median) & (wall - median >= min_excess_us)]
    config = (run.manifest or {}).get("config") or {}
    compiled = bool(config.get("compile"))
    category = "compilation" if compiled else "warm-up"
    why = ("torch.compile compiles the model in the first step" if compiled
           else "first-step allocation, autotuning and lazy initialisation")
    findings = []
    for index, row in slow.iterrows():
        step, time_us = int(row["step"]), float(wall.loc[index])
        findings.append(Finding(
            kind="slow_step", severity="low", rank=rank, step=step, start_us=0.0,
            dur_us=time_us, cost_us=round(time_us - median, 3), count=1,
            title=(f"step {step} took {format_us(time_us)}, {time_us / median:.0f}x the median "
                   f"{median / 1000:.1f} ms: {category}, once per run ({why})"),
            culprit=Culprit(), cause=Cause(),
            evidence={"source": "steps.jsonl", "step_us": round(time_us, 3),
                      "median_step_us": round(median, 3), "ratio": round(time_us / median, 2),
                      "profiled": False, "warmup": True, "category": category,
                      "no_code_location": f"{category}, paid once per process"},
            suggestion=WARMUP_SUGGESTION[category]))
    return findings


WARMUP_SUGGESTION = {
    "compilation": "expected once per process: keep it out of timed steps; Inductor's on-disk "
                   "caches (FX graph, autotuning) shorten it when the same machine runs again",
    "warm-up": "expected once per process: keep it out of timed steps (warm up first)",
}


@dataclass(frozen=True)
class Params:
    """Thresholds of the detector; see the module docstring for why each default."""

    factor: float = 2.0
    min_excess_us: float = 1000.0
    min_steps: int = 3
    skip_first_logged: int = SLOW_STEP_WARMUP_ROWS


@register("slow_step", Params)
def detect(run: Run, params: Params) -> list[Finding]:
    """Slow profiled steps per rank, plus unprofiled slow steps from steps.jsonl."""
    findings: list[Finding] = []
    profiled: set[int] = set()
    run_step = run_step_us(run)
    if run.context is not None:
        profiled.update(run.context.profiled_steps)
    for trace in run.traces:
        profiled.update(int(s) for s in trace.steps["step"])
        findings.extend(trace_findings(trace, params.factor, params.min_excess_us,
                                       params.min_steps, run_step))
    findings.extend(steps_log_findings(run, profiled, params.factor, params.min_excess_us,
                                       params.min_steps, params.skip_first_logged))
    return findings
