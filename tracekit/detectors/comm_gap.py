"""comm_gap: the communication stream sits idle between two collectives of one step.

The pathology, in plain words: a communication-bound step is only as fast as its comm stream is
busy. When the next collective does not follow the previous one immediately, the network idles
and the step's critical path grows by that gap. Three causes account for nearly every gap, and
each needs a different fix, so every gap is classified:

- late launch: the CPU issued the next collective only after the previous one had finished (its
  launch call, cuLaunchKernelEx/cudaLaunchKernel, returned after the previous collective ended).
  The GPU had nothing queued; the thread was busy with something else (optimizer math, a
  `.item()`, Python overhead, a sleep). The finding names what that thread did during the gap:
  the most specific CPU op, record_function label or Python frame covering at least half of it,
  with its user source line. Fix: issue communication earlier / move the CPU work.
- waiting on compute: the collective was launched in time but started only when a kernel on
  another stream, launched before it, ended (the NCCL stream waits on an event recorded after
  that kernel: the collective's input was produced by it). The finding names the longest
  kernel on that stream during the wait (what the GPU did instead) and the kernel that ended
  right before the collective started. Fix: produce the communicated tensors first, launch the
  unrelated compute after the collective is issued.
- SM starvation: launched in time, no dependency, but an SM-filling non-GEMM kernel on another
  stream ran during the wait (see sm_contention: NCCL's blocks could not be scheduled).
- compute saturation: the same, but the kernel holding every SM was a GEMM or attention kernel
  (overlap one usually wants, so sm_contention does not blame it; the gap is still real: a
  persistent cuBLAS kernel with one block per SM keeps NCCL's blocks off the GPU).
- unexplained: none of the above is visible in the trace (a peer rank's delay surfaces as a long
  collective, not as a gap; a gap with no cause is still reported, with what is known).

A gap is the time between the end of one NCCL kernel and the start of the next on the same
stream, within one GPU-side step, minus any other work that ran on that stream meanwhile. It is
considered when it reaches `min_gap_us` (50 us: a collective issued back to back starts 2-20 us
after its predecessor on an H200, so 50 us is unmistakably idle) and `min_gap_step_frac` of the
rank's median step (0.5%: below that a gap cannot matter to the step time; above it a few of
them already show up as low-severity findings).

A comm stream sitting idle costs the step nothing by itself: while compute runs, the GPU is
busy, and a collective that could not start yet may still finish hidden under later compute
(DDP overlapping its all_reduces with backward is exactly that). So a gap's cost is the step
time it actually lost (`lost_spans`), counted once where gaps on two comm streams overlap:
- the GPU idle inside it (nothing ran on any stream);
- the exposed tail of the collective that followed it, at most as long as the compute the gap
  overlapped (had the collective run during the gap, under that compute, it would have ended
  that much earlier); not for unexplained gaps, which show no reason it could not have.
A gap is reported when that cost reaches `min_cost_us` (20 us: GPU idle and exposure below
the 2-20 us a ready collective takes to start are launch latency, not loss). Gaps before
collectives issued by a gradient hook inside the autograd engine (DDP's and FSDP's reducers)
are never findings: those collectives wait for the gradients backward produces, by design.
The costs are then trimmed against other findings by `tracekit.accounting.budget`.

Findings are merged per (rank, classification, cause line or name) with the count and total
cost; start/dur/step point at the worst gap; `cause.ordering` says what came before the next
collective, e.g. "all_reduce(bucket1) issued 2.37 ms after all_reduce(bucket0) finished; CPU in
cpu:busy (scripts/train.py:167)".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tracekit.accounting.sets import gpu_sets
from tracekit.detectors import register
from tracekit.detectors.collectives import (
    culprit_of,
    dependency_rows,
    launch_columns,
    num_sms_of,
    ready_after_input,
    sm_filling,
    suspect_mask,
)
from tracekit.detectors.cpu_activity import (
    CpuActivity,
    CpuSpans,
    activity_evidence,
    activity_name,
    cpu_activity,
)
from tracekit.detectors.labels import user_label
from tracekit.durations import ms_or_us
from tracekit.finding import Cause, Culprit, Finding, severity_from_cost, source_key
from tracekit.intervals import (
    Coverage,
    Intervals,
    as_set,
    intersect_intervals,
    length_within,
    total_length,
    union_intervals,
    window_pairs,
)
from tracekit.link import kernel_source, source_of_op
from tracekit.link.ancestry import ancestor_matching
from tracekit.link.steptime import run_step_us
from tracekit.load.frames import name_matches
from tracekit.names import kernel_label
from tracekit.source import SourceFiles
from tracekit.trace import Run, Trace

LATE_LAUNCH = "late_launch"
WAITING_ON_COMPUTE = "waiting_on_compute"
SM_STARVATION = "sm_starvation"
COMPUTE_SATURATION = "compute_saturation"
UNEXPLAINED = "unexplained"

SUGGESTIONS = {
    LATE_LAUNCH: "Issue the collective before the CPU work that delays it (or move that work "
                 "off the launching thread), so the comm stream always has the next collective "
                 "queued.",
    WAITING_ON_COMPUTE: "Produce the tensors this collective sends first, and launch unrelated "
                        "compute after the collective is issued, so communication overlaps it.",
    SM_STARVATION: "Bound the grid of the SM-filling kernel (a persistent kernel on a few SMs) "
                   "or move it away from the collective; see the sm_contention finding.",
    COMPUTE_SATURATION: "A GEMM/attention kernel held every SM while the collective waited; "
                        "if communication is on the critical path, leave SMs to NCCL (an SM "
                        "carve-out for the GEMM) or issue the collective before that kernel.",
    UNEXPLAINED: "Inspect the gap on the timeline; the trace shows no CPU delay, dependency or "
                 "SM-filling kernel behind it.",
}


@dataclass(frozen=True)
class Params:
    """Thresholds of the detector (`--param comm_gap.NAME=VALUE`); the module docstring says
    why each default."""

    min_gap_us: float = 50.0
    """Idle time from which a gap is reported (back-to-back collectives start 2-20 us apart)."""
    min_gap_step_frac: float = 0.005
    """... and the share of the run's step time it must reach."""
    min_cost_us: float = 20.0
    """Step time a gap must cost (GPU idle, exposed communication) to be reported."""
    min_waves: float = 1.0
    dominant_frac: float = 0.5
    """A CPU activity explains a late launch when it covers this share of the gap."""


# ---- gaps ------------------------------------------------------------------------------------

def comm_gaps(trace: Trace, params: Params) -> pd.DataFrame:
    """Idle gaps between consecutive NCCL kernels of one step on each comm stream."""
    k = trace.kernels
    cols = ["prev_row", "row", "stream", "step", "prev_end", "ts", "gap", "idle"]
    nccl_rows = np.flatnonzero(k["is_nccl"].to_numpy(dtype=bool))
    if len(nccl_rows) < 2:
        return pd.DataFrame(columns=cols)
    steps = k["step"].to_numpy(dtype=np.int64)
    n = pd.DataFrame({"row": nccl_rows, "stream": k["stream"].to_numpy()[nccl_rows],
                      "ts": k["ts"].to_numpy(dtype=np.float64)[nccl_rows],
                      "end": k["end"].to_numpy(dtype=np.float64)[nccl_rows],
                      "step": steps[nccl_rows]}).sort_values(["stream", "ts"], kind="stable")
    by_stream = n.groupby("stream", sort=False)
    n["prev_row"] = by_stream["row"].shift(1)
    n["prev_end"] = by_stream["end"].cummax().groupby(n["stream"], sort=False).shift(1)
    n["prev_step"] = by_stream["step"].shift(1)
    gaps = n[n["prev_row"].notna() & (n["prev_step"] == n["step"])].copy()
    gaps["prev_row"] = gaps["prev_row"].astype(np.int64)
    gaps["gap"] = gaps["ts"] - gaps["prev_end"]
    gaps = gaps[gaps["gap"] > 0]
    # Other work on the same stream inside the gap (a stream shared with compute) is not idle.
    gaps["idle"] = gaps["gap"] - other_work_on_stream(trace, gaps)
    return gaps[cols].reset_index(drop=True)


def other_work_on_stream(trace: Trace, gaps: pd.DataFrame) -> np.ndarray:
    """Time covered by non-NCCL kernels and memcpy/memset on the gap's own stream."""
    out = np.zeros(len(gaps))
    k, mem = trace.kernels, trace.gpu_mem
    k_stream, m_stream = k["stream"].to_numpy(), mem["stream"].to_numpy()
    other = ~k["is_nccl"].to_numpy(dtype=bool)
    for stream in gaps["stream"].unique():
        rows = (gaps["stream"] == stream).to_numpy()
        kk = np.flatnonzero((k_stream == stream) & other)
        mm = np.flatnonzero(m_stream == stream)
        cov = Coverage.of(
            np.concatenate([k["ts"].to_numpy(float)[kk], mem["ts"].to_numpy(float)[mm]]),
            np.concatenate([k["end"].to_numpy(float)[kk], mem["end"].to_numpy(float)[mm]]))
        out[rows] = cov.overlap(gaps["prev_end"].to_numpy()[rows], gaps["ts"].to_numpy()[rows])
    return out


def classify_gaps(trace: Trace, gaps: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Add launch times, classification and culprit kernel rows (vectorised over gaps)."""
    k = trace.kernels
    launch = launch_columns(trace)
    rows = gaps["row"].to_numpy()
    g = gaps.assign(launch_ts=launch["launch_ts"].to_numpy()[rows],
                    launch_end=launch["launch_end"].to_numpy()[rows],
                    launch_tid=launch["launch_tid"].to_numpy()[rows])
    launched_after = np.clip(g["launch_end"] - g["prev_end"], 0.0, g["gap"]).fillna(0.0)
    g["late_part"] = launched_after
    is_late = (g["late_part"] >= g["gap"] - g["late_part"]) & g["launch_ts"].notna()
    g["ready"] = np.fmax(g["prev_end"].to_numpy(), g["launch_end"].to_numpy())
    g["ready"] = np.minimum(g["ready"].fillna(g["prev_end"]), g["ts"])
    g["dependency_row"] = dependency_rows(trace, g)
    # The wait splits in two: for the input (until the dependency kernel ended), then for SMs.
    g["input_ready"] = ready_after_input(k, g["dependency_row"].to_numpy(),
                                         g["ready"].to_numpy(dtype=np.float64),
                                         g["ts"].to_numpy(dtype=np.float64))
    input_wait = (g["input_ready"] - g["ready"]).to_numpy()
    after_input = (g["ts"] - g["input_ready"]).to_numpy()
    # The longest overlap with the input wait by a kernel on the dependency's stream (what the
    # GPU did instead), and with the rest by an SM-filling non-GEMM kernel on another stream.
    g["compute_row"], _ = top_overlap(trace, g, lambda s: k["stream"].to_numpy() == s,
                                      g["dependency_row"].to_numpy(), "ready", "input_ready")
    suspects = suspect_mask(k, num_sms_of(trace), params.min_waves)
    fillers = sm_filling(k, num_sms_of(trace), params.min_waves) & ~k["is_nccl"].to_numpy(bool)
    g["suspect_row"], suspect_ov = top_overlap(
        trace, g, lambda s: suspects & (k["stream"].to_numpy() != s), None, "input_ready", "ts")
    g["filler_row"], filler_ov = top_overlap(
        trace, g, lambda s: fillers & (k["stream"].to_numpy() != s), None, "input_ready", "ts")
    # A kernel explains a delayed start only if it ran through most of the wait.
    starved = (g["suspect_row"] >= 0) & (suspect_ov >= params.dominant_frac * after_input)
    saturated = (g["filler_row"] >= 0) & (filler_ov >= params.dominant_frac * after_input)
    has_input = g["dependency_row"].to_numpy() >= 0
    kind = np.select(
        [is_late, has_input & (input_wait >= after_input), starved, saturated, has_input],
        [LATE_LAUNCH, WAITING_ON_COMPUTE, SM_STARVATION, COMPUTE_SATURATION, WAITING_ON_COMPUTE],
        UNEXPLAINED)
    return g.assign(kind=kind, input_wait=input_wait, after_input=after_input,
                    starved_by_row=np.where(starved, g["suspect_row"], -1))


def top_overlap(trace: Trace, g: pd.DataFrame, mask_for_stream: Any,
                dependency: np.ndarray | None, lo_col: str, hi_col: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per gap, the kernel overlapping [g[lo_col], g[hi_col]) the most (row, overlap), among a
    mask chosen per stream.

    With `dependency`, the mask is built from the dependency kernel's stream (and gaps without a
    dependency get -1); otherwise from the gap's own comm stream.
    """
    k = trace.kernels
    out = np.full(len(g), -1, dtype=np.int64)
    out_ov = np.zeros(len(g))
    streams = (k["stream"].to_numpy()[np.clip(dependency, 0, None)] if dependency is not None
               else g["stream"].to_numpy())
    valid = dependency >= 0 if dependency is not None else np.ones(len(g), dtype=bool)
    ts, end = k["ts"].to_numpy(dtype=np.float64), k["end"].to_numpy(dtype=np.float64)
    for stream in np.unique(streams[valid]):
        sel = np.flatnonzero(valid & (streams == stream))
        rows = np.flatnonzero(mask_for_stream(stream))
        lo, hi = g[lo_col].to_numpy()[sel], g[hi_col].to_numpy()[sel]
        wi, kj, ov = window_pairs(lo, hi, ts[rows], end[rows])
        if not len(wi):
            continue
        best = pd.DataFrame({"w": wi, "row": rows[kj], "ov": ov}).sort_values("ov")
        best = best.groupby("w").last()
        out[sel[best.index.to_numpy()]] = best["row"].to_numpy()
        out_ov[sel[best.index.to_numpy()]] = best["ov"].to_numpy()
    return out, out_ov


# ---- findings --------------------------------------------------------------------------------

def collective_label(trace: Trace, row: int, launch: pd.DataFrame) -> str:
    """`allreduce(comm:all_reduce:bucket1)`: collective name and the user's label at issue."""
    k = trace.kernels
    coll = k.at[row, "collective"]
    coll = str(coll) if isinstance(coll, str) and coll else kernel_label(k.at[row, "name"])
    label = user_label(trace, int(launch.at[row, "launch_tid"]),
                       float(launch.at[row, "launch_ts"]))
    return f"{coll}({label})" if label else coll


def late_activity(trace: Trace, gap: pd.Series, spans: CpuSpans | None, params: Params,
                  files: SourceFiles) -> CpuActivity | None:
    """What the launching thread did between the previous collective's end and the launch
    (late launches only; None otherwise)."""
    if gap["kind"] != LATE_LAUNCH or spans is None:
        return None
    return cpu_activity(trace, spans, int(gap["launch_tid"]), float(gap["prev_end"]),
                        float(gap["launch_ts"]), float(gap["launch_ts"]), params.dominant_frac,
                        files)


def culprit_row(gap: pd.Series) -> int:
    """The kernel row a non-late gap is blamed on (-1 when none)."""
    return int({WAITING_ON_COMPUTE: gap["compute_row"], SM_STARVATION: gap["suspect_row"],
                COMPUTE_SATURATION: gap["filler_row"]}.get(gap["kind"], -1))


def gap_key(trace: Trace, gap: pd.Series, spans: CpuSpans | None,
            activity: CpuActivity | None, launch: pd.DataFrame | None = None) -> str:
    """What gaps are merged by: the source line (or name) of the CPU work, or the culprit
    kernel's record_function label, else its source line, else its name.

    The same key as `describe_gap` gives, without building the wording, op stacks and labels
    that only the reported (worst) gap of each group needs.
    """
    if gap["kind"] == LATE_LAUNCH and spans is not None:
        source = activity.source if activity else None
        return (source_key(source) or (activity.name if activity else "")) + \
            ("|issuing" if activity and activity.issuing else "")
    row = culprit_row(gap)
    if row < 0:
        return ""
    k = trace.kernels
    if launch is not None:
        # The step's phase (optim:normuon:attn) is what recurs each step; the longest kernel
        # in it (one of polar express's matmuls) may come from a different line each time.
        label = user_label(trace, int(launch.at[row, "launch_tid"]),
                           float(launch.at[row, "launch_ts"]))
        if label:
            return "label:" + label
    op_row = int(k.at[row, "op_idx"])
    # kernel_source's source line: the linker's line of the kernel's op (or an ancestor's).
    source = source_of_op(trace.ops, op_row, or_ancestor=True) \
        if 0 <= op_row < len(trace.ops) else None
    return source_key(source) or str(k.at[row, "name"])


def describe_gap(trace: Trace, gap: pd.Series, launch: pd.DataFrame, spans: CpuSpans | None,
                 activity: CpuActivity | None) -> dict[str, Any]:
    """Culprit, cause and wording for one gap (called only for the worst gap of each group;
    `gap_key` is what groups them)."""
    k = trace.kernels
    nxt = collective_label(trace, int(gap["row"]), launch)
    prev = collective_label(trace, int(gap["prev_row"]), launch)
    kind = gap["kind"]
    culprit, op, stack, source, what = Culprit(), None, [], None, ""
    extra: dict[str, Any] = {}
    if kind == LATE_LAUNCH and spans is not None:
        after = float(gap["launch_ts"]) - float(gap["prev_end"])
        if activity:
            where = f" ({activity.source.file}:{activity.source.line})" if activity.source else ""
            name = activity_name(activity)
            what = (f"CPU still issuing it, in {name} for {ms_or_us(activity.end - activity.ts)}"
                    f"{where}" if activity.issuing else f"CPU in {name}{where}")
            op, source = activity.name, activity.source
            extra["cpu_activity"] = activity_evidence(activity) | {
                "issuing_the_collective": activity.issuing}
        else:
            what = "no CPU activity recorded on the launching thread"
        ordering = f"{nxt} issued {ms_or_us(after)} after {prev} finished; {what}"
    else:
        row = culprit_row(gap)
        if row >= 0:
            culprit = culprit_of(trace, row)
            op, stack, source = kernel_source(trace, row)
            label = user_label(trace, int(launch.at[row, "launch_tid"]),
                               float(launch.at[row, "launch_ts"]))
            what = kernel_label(k.at[row, "name"]) + (f" ({label})" if label else "")
            extra["culprit_label"] = label
        dep = int(gap["dependency_row"])
        if dep >= 0:
            extra["waited_for_kernel"] = str(k.at[dep, "name"])
        if kind == WAITING_ON_COMPUTE:
            ordering = (f"{nxt} was ready but waited {ms_or_us(float(gap['input_wait']))} for the "
                        f"compute stream (stream {int(k.at[dep, 'stream'])}: {what}, then "
                        f"{kernel_label(k.at[dep, 'name'])})"
                        f"{starved_after(trace, gap, launch)} after {prev} finished")
        elif kind in (SM_STARVATION, COMPUTE_SATURATION):
            input_part = (f"waited {ms_or_us(float(gap['input_wait']))} for its input "
                          f"({kernel_label(k.at[dep, 'name'])}), then " if dep >= 0 else
                          "was ready but ")
            ordering = (f"{nxt} {input_part}started {ms_or_us(float(gap['after_input']))} late "
                        f"while {what} held every SM, after {prev} finished")
        else:
            ordering = f"{nxt} started {ms_or_us(float(gap['gap']))} after {prev} finished"
    return {"culprit": culprit, "cause": Cause(op=op, op_stack=stack, source=source,
                                               ordering=ordering),
            "next": nxt, "prev": prev, "what": what, "extra": extra}


def starved_after(trace: Trace, gap: pd.Series, launch: pd.DataFrame) -> str:
    """", then 186 us more while elementwise_kernel (tie:...) held every SM" when an SM-filling
    kernel held the collective back after its input was ready; "" otherwise."""
    row = int(gap["starved_by_row"])
    if row < 0:
        return ""
    label = user_label(trace, int(launch.at[row, "launch_tid"]),
                       float(launch.at[row, "launch_ts"]))
    name = kernel_label(trace.kernels.at[row, "name"]) + (f" ({label})" if label else "")
    return f", then {ms_or_us(float(gap['after_input']))} more while {name} held every SM,"


TITLES = {
    LATE_LAUNCH: "issued late by the CPU",
    WAITING_ON_COMPUTE: "waiting on compute",
    SM_STARVATION: "starved of SMs",
    COMPUTE_SATURATION: "behind a GEMM holding every SM",
    UNEXPLAINED: "unexplained",
}


def findings_for_rank(trace: Trace, params: Params, step_us: float | None) -> list[Finding]:
    gaps = comm_gaps(trace, params)
    threshold = max(params.min_gap_us, params.min_gap_step_frac * (step_us or 0.0))
    gaps = gaps[(gaps["idle"] >= threshold) & ~issued_by_gradient_hook(trace, gaps)]
    gaps = add_costs(trace, gaps.reset_index(drop=True))
    gaps = gaps[gaps["cost_bound"] >= params.min_cost_us]
    if gaps.empty:
        return []
    gaps = charge_tails(trace, classify_gaps(trace, gaps.reset_index(drop=True), params))
    gaps["cost"] = gaps["gpu_idle_us"] + gaps["exposing_us"]
    gaps = gaps[gaps["cost"] >= params.min_cost_us].reset_index(drop=True)
    if gaps.empty:
        return []
    launch = launch_columns(trace)
    files = SourceFiles(roots=trace.source_roots)
    spans = CpuSpans.of(trace) if (gaps["kind"] == LATE_LAUNCH).any() else None
    rows = [gap for _, gap in gaps.iterrows()]
    activities = [late_activity(trace, gap, spans, params, files) for gap in rows]
    gaps = gaps.assign(key=[gap_key(trace, gap, spans, activity, launch)
                            for gap, activity in zip(rows, activities, strict=True)],
                       described=range(len(rows)))
    findings = []
    for (kind, _), group in gaps.groupby(["kind", "key"], sort=False):
        worst = group.sort_values("cost").iloc[-1]
        at = int(worst["described"])
        d = describe_gap(trace, rows[at], launch, spans, activities[at])
        lost = lost_spans(trace, group)
        total = total_length(lost)
        steps = sorted({int(s) for s in group["step"] if s >= 0})
        per_step = total / max(1, len(steps))
        what = f": {d['what']}" if d["what"] else ""
        title = (f"comm gap {TITLES[kind]} before {d['next']}{what}"
                 f"{f' x{len(group)}' if len(group) > 1 else ''}")
        evidence = {"classification": kind, "gap_us": round(float(worst["gap"]), 3),
                    "idle_us": round(float(worst["idle"]), 3),
                    "gpu_idle_us": round(float(worst["gpu_idle_us"]), 3),
                    "exposed_comm_after_us": round(float(worst["exposing_us"]), 3),
                    "launch_after_prev_end_us": None if pd.isna(worst["launch_ts"]) else
                    round(float(worst["launch_ts"] - worst["prev_end"]), 3),
                    "wait_after_ready_us": round(float(worst["ts"] - worst["ready"]), 3),
                    "input_wait_us": round(float(worst["input_wait"]), 3),
                    "wait_after_input_us": round(float(worst["after_input"]), 3),
                    "threshold_us": round(threshold, 3), "steps": steps,
                    "cost_per_step_us": round(per_step, 3),
                    "previous_collective": d["prev"], "next_collective": d["next"],
                    "comm_stream": int(worst["stream"]), **d["extra"]}
        findings.append(Finding(
            kind="comm_gap", severity=severity_from_cost(per_step, step_us), rank=trace.rank,
            step=int(worst["step"]) if worst["step"] >= 0 else None,
            start_us=float(worst["prev_end"]), dur_us=float(worst["gap"]),
            cost_us=round(total, 3), count=len(group), title=title, culprit=d["culprit"],
            cause=d["cause"], evidence=evidence, suggestion=SUGGESTIONS[kind], spans=lost))
    return findings


GRADIENT_HOOK = re.compile(r"^autograd::engine::evaluate_function")
"""The autograd engine running a backward node, and the gradient hooks it calls (DDP's and
FSDP's reducers issue their collectives from there)."""


def issued_by_gradient_hook(trace: Trace, gaps: pd.DataFrame) -> np.ndarray:
    """Per gap: the next collective was issued inside the autograd engine (a gradient hook).

    Such a collective reduces a bucket of gradients the backward pass has just produced: it
    cannot start before them, and the comm stream's idle time before it is the backward pass
    computing them, which is overlap working (DDP's design), not a communication problem.
    Whatever the GPU lost meanwhile is the CPU's or the compute's (gpu_idle's causes).
    """
    if gaps.empty:
        return np.zeros(0, dtype=bool)
    launch_row = launch_columns(trace)["launch_row"].to_numpy()[gaps["row"].to_numpy(np.int64)]
    op = np.full(len(gaps), -1, dtype=np.int64)
    has = launch_row >= 0
    op[has] = trace.launches["op_idx"].to_numpy(dtype=np.int64)[launch_row[has]]
    if not len(trace.ops):
        return np.zeros(len(gaps), dtype=bool)
    # Climbing from the gaps' ops only, naming the ops met (not each of a rank's ops).
    names = trace.ops["name"].to_numpy()
    hook = ancestor_matching(trace.ops, lambda met: name_matches(names[met], GRADIENT_HOOK), op)
    return hook >= 0


def add_costs(trace: Trace, gaps: pd.DataFrame) -> pd.DataFrame:
    """What each gap can honestly cost the step (see `lost_spans`), before classification:
    gpu_idle_us (nothing ran on the GPU during the gap), exposing_us (the next collective's
    exposed tail, at most the compute the gap overlapped) and their sum, cost_bound."""
    sets = gpu_sets(trace)
    k = trace.kernels
    lo, hi = gaps["prev_end"].to_numpy(dtype=np.float64), gaps["ts"].to_numpy(dtype=np.float64)
    rows = gaps["row"].to_numpy(dtype=np.int64)
    nxt_end = k["end"].to_numpy(dtype=np.float64)[rows]
    nxt_dur = nxt_end - hi
    movable = np.minimum(length_within(sets.compute, lo, hi), nxt_dur)
    gpu_idle = length_within(sets.idle, lo, hi)
    exposing = length_within(sets.exposed_comm, nxt_end - movable, nxt_end)
    return gaps.assign(gpu_idle_us=gpu_idle, exposing_us=exposing, movable_us=movable,
                       next_end=nxt_end, cost_bound=gpu_idle + exposing)


def charge_tails(trace: Trace, gaps: pd.DataFrame) -> pd.DataFrame:
    """Once gaps are classified, which part of the next collective's exposed tail each may
    claim (tail_lo..tail_hi; exposing_us its exposed length):

    - unexplained: none (nothing shows the collective could have run earlier);
    - starved of SMs by a non-GEMM kernel: none; that delay is sm_contention's finding;
    - waiting on compute, then starved: only the compute it overlapped while waiting for its
      input, and before the tail that the starvation delay (sm_contention's) claims;
    - otherwise: the tail, at most as long as the compute the gap overlapped.
    """
    sets = gpu_sets(trace)
    kind = gaps["kind"].to_numpy()
    lo = gaps["prev_end"].to_numpy(dtype=np.float64)
    input_ready = gaps["input_ready"].to_numpy(dtype=np.float64)
    starved = (kind == SM_STARVATION) | (gaps["starved_by_row"].to_numpy() >= 0)
    starve = np.where(starved, gaps["after_input"].to_numpy(dtype=np.float64), 0.0)
    hi = np.where(starved, input_ready, gaps["ts"].to_numpy(dtype=np.float64))
    nxt_end = gaps["next_end"].to_numpy(dtype=np.float64)
    nxt_dur = nxt_end - gaps["ts"].to_numpy(dtype=np.float64)
    movable = np.minimum(length_within(sets.compute, lo, np.maximum(hi, lo)), nxt_dur)
    movable[(kind == UNEXPLAINED) | (kind == SM_STARVATION)] = 0.0
    tail_hi = nxt_end - np.minimum(starve, nxt_dur)
    tail_lo = np.maximum(tail_hi - movable, nxt_end - nxt_dur)
    return gaps.assign(tail_lo=tail_lo, tail_hi=tail_hi,
                       exposing_us=length_within(sets.exposed_comm, tail_lo, tail_hi))


def lost_spans(trace: Trace, gaps: pd.DataFrame) -> Intervals:
    """The step time a group of gaps lost, as intervals of the rank's clock (counted once
    where gaps on two comm streams overlap):

    - GPU idle inside the gaps: nothing ran anywhere while the comm stream waited;
    - the exposed tail of the collective after each gap, at most as long as the compute the
      gap overlapped: had the collective run during the gap, under that compute, it would
      have ended that much earlier (which part of the tail: `charge_tails`).
    Communication hidden under compute, and compute itself, are never claimed."""
    sets = gpu_sets(trace)
    idle = intersect_intervals(sets.idle, as_set((gaps["prev_end"].to_numpy(dtype=np.float64),
                                                  gaps["ts"].to_numpy(dtype=np.float64))))
    charged = gaps[gaps["exposing_us"] > 0]
    tails = intersect_intervals(sets.exposed_comm, as_set(
        (charged["tail_lo"].to_numpy(dtype=np.float64),
         charged["tail_hi"].to_numpy(dtype=np.float64))))
    return union_intervals(np.concatenate([idle[0], tails[0]]),
                           np.concatenate([idle[1], tails[1]]))


@register("comm_gap", Params)
def detect(run: Run, params: Params) -> list[Finding]:
    """Idle gaps on comm streams between collectives of one step, classified by cause."""
    findings: list[Finding] = []
    step_us = run_step_us(run)
    for trace in run.traces:
        if len(trace.kernels):
            findings.extend(findings_for_rank(trace, params, step_us))
    return findings
