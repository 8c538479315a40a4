"""gpu_idle: the GPU sits idle inside a step because the CPU did not give it work in time.

The pathology, in plain words: a training step is only as short as the GPU is busy. Whenever
the GPU runs out of queued work, the step grows by the time until the CPU launches the next
kernel. The usual reasons, each with its own fix: the input pipeline runs on the training
thread (a `num_workers=0` DataLoader, a slow collate); a host sync (`.item()`, `.cpu()`,
`nonzero`, `torch.cuda.synchronize()`) empties the GPU's queue, so everything the CPU does next
is exposed; a copy from pageable memory blocks the CPU; Python work (an optimizer written as a
loop, logging, garbage collection) runs while nothing is queued; or the kernels are so short
that the CPU cannot launch them as fast as the GPU runs them (launch-bound).

How it is found: `tracekit.accounting.causes` splits each rank's idle time inside its step
windows by what the launching threads were doing (input, gc, peer, memcpy, host_sync, launch,
python, or queued when the next work was already queued, unknown when nothing is visible).
One finding per rank, cause and explaining event/source line: its spans are those pieces of
idle time (the cost budget makes them its cost), its step and start the largest piece.
Lines of one cause too small on their own are merged into one finding for that cause.

Host syncs and blocking copies have no detector of their own: one that idles the GPU is found
here, with the idle time after it; one that does not (the CPU waits while the GPU is busy,
e.g. a cudaStreamSynchronize under a long kernel) costs the step nothing, since the GPU sets
the step's length then. What such a sync does cost, the CPU's lost head start, shows as the
idle time after it, which is attributed to it.

Thresholds, from the measured traces:
- `min_step_frac` (1%): a cause line is reported when it holds at least 1% of the rank's mean
  step. On the fixed H200 reference runs (traces/fixed-2gpu, ~27 ms steps, 11-15% idle) the
  trainer's own end-of-step cudaDeviceSynchronize and the launches of the compiled region that
  follow hold 0.1-2.7 ms per step each; what is below 1% (0.2-0.3 ms of Python between steps)
  is noise in a step that jitters by +-0.5 ms. A step that is 30% idle is thereby explained by
  findings to at least 80% unless its idle is spread over more than 20 lines of <1% each; the
  merged per-cause finding keeps even those.
- `min_queued_frac` (5%): idle time while the next work was already queued is the GPU's own
  scheduling gap between back-to-back kernels (0.28-0.38 ms per 27 ms step, 1.0-1.4%, on every
  reference run) unless a stream waits on something; reported only well above that floor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tracekit.accounting.causes import idle_split
from tracekit.accounting.events import CAUSE_LABELS, PAGEABLE_TO_DEVICE
from tracekit.accounting.sets import gpu_sets
from tracekit.detectors import register
from tracekit.durations import format_us
from tracekit.finding import Cause, Culprit, Finding, SourceLine, severity_from_cost
from tracekit.link.steptime import run_step_us
from tracekit.names import name_matches
from tracekit.trace import Run, Trace

PINNED_TO_DEVICE = re.compile(r"HtoD.*Pinned", re.IGNORECASE)


@dataclass(frozen=True)
class Params:
    """Thresholds of the detector; see the module docstring for why each default."""

    min_step_frac: float = 0.01
    min_queued_frac: float = 0.05


WHAT = {
    "input": "waiting for the input pipeline",
    "gc": "in Python's garbage collector",
    "peer": "waiting at a barrier for other ranks",
    "memcpy": "in a blocking copy",
    "host_sync": "after a host sync emptied its queue",
    "launch": "while the CPU launched kernels slower than the GPU ran them",
    "python": "while the CPU ran other work (Python, slow ops)",
    "queued": "although its next work was queued (a stream or event wait)",
    "unknown": "with nothing visible on the launching threads",
}
PINNED_BYTES_PER_US = 40e3
"""40 GB/s: a pinned 32 MiB host-to-device copy took 0.82 ms on the lent H200s (the planted
control recording, tests/data/gpu/planted_ddp/none). Used when a trace has no pinned copy of
its own to measure; on slower links (PCIe 3/4) it overstates the pinned rate, so the excess
claimed is at most the copy's time."""

SUGGESTIONS = {
    "input": "Load batches in DataLoader worker processes (num_workers > 0, pin_memory=True, "
             "prefetch) so the training thread never waits for data.",
    "gc": "Collect garbage outside the step (gc.freeze() after setup, gc.collect() at chosen "
          "points) or reduce Python object churn in the loop.",
    "peer": "Another rank arrives late at this barrier: balance the work, or drop barriers "
            "that are not needed.",
    "memcpy": "Copy from pinned memory with non_blocking=True (DataLoader pin_memory=True, or "
              "tensor.pin_memory()), so the copy neither blocks the CPU nor idles the GPU.",
    "host_sync": "Avoid reading GPU values on the CPU inside the step (.item(), .cpu(), "
                 "printing, nonzero, synchronize): keep them on the GPU, read them every N "
                 "steps, or after the step's work is queued.",
    "launch": "Fewer, larger kernels: torch.compile (or CUDA graphs) to fuse the short "
              "kernels, foreach/fused optimizers, larger batches.",
    "python": "Move the CPU work out of the step or after the step's GPU work is queued, or "
              "make it cheaper (vectorise, compile).",
    "queued": "Look at what the waiting stream depends on (cudaStreamWaitEvent, another "
              "stream's kernel) on the timeline.",
    "unknown": "Record with with_stack=True to see what the CPU was doing.",
}


def pieces_with_keys(trace: Trace) -> pd.DataFrame:
    """The rank's idle pieces with a grouping key (an integer, in order of first appearance):
    cause + source line, or cause alone."""
    p = idle_split(trace).pieces
    p = p[p["window"].to_numpy() >= 0]
    p = p.assign(us=p["end"] - p["start"])
    files, names = pd.factorize(p["src_file"])
    named = np.array([str(f) != "" for f in names] + [False], dtype=bool)  # code -1: none
    has_line = (p["src_line"].to_numpy() >= 0) & named[files]
    # Without a source line, one group per cause (op names alone would split one cause,
    # e.g. launch overhead, into a finding per op).
    where = (np.where(has_line, files, -1), np.where(has_line, p["src_line"].to_numpy(), -1))
    return p.assign(key=p.groupby([pd.factorize(p["cause"])[0], *where], sort=False).ngroup()
                    .to_numpy())


@register("gpu_idle", Params)
def detect(run: Run, params: Params) -> list[Finding]:
    step_us = run_step_us(run)
    findings: list[Finding] = []
    for trace in run.traces:
        if trace.has_gpu:
            findings.extend(rank_findings(trace, params, step_us))
    return findings


def rank_findings(trace: Trace, params: Params, step_us: float | None) -> list[Finding]:
    sets = gpu_sets(trace)
    n_windows = len(sets.steps)
    if n_windows == 0:
        return []
    pieces = pieces_with_keys(trace)
    if pieces.empty:
        return []
    mean_wall = float(np.mean(sets.windows[1] - sets.windows[0]))
    floor = params.min_step_frac * mean_wall * n_windows
    queued_floor = params.min_queued_frac * mean_wall * n_windows
    totals = pieces.groupby("key", sort=False)["us"].sum()
    cause_of_key = pieces.groupby("key", sort=False)["cause"].first()
    findings: list[Finding] = []
    for cause, keys in cause_of_key.groupby(cause_of_key, sort=False):
        cause_floor = queued_floor if cause == "queued" else floor
        own = [k for k in keys.index if totals[k] >= cause_floor]
        rest = [k for k in keys.index if totals[k] < cause_floor]
        for key in own:
            findings.append(finding_for(trace, pieces[pieces["key"] == key], str(cause),
                                        n_windows, step_us, merged=0))
        if rest and sum(totals[k] for k in rest) >= cause_floor:
            group = pieces[pieces["key"].isin(rest)]
            findings.append(finding_for(trace, group, str(cause), n_windows, step_us,
                                        merged=len(rest)))
    return with_slow_copies(trace, findings, floor, n_windows, step_us)


def slow_copies(trace: Trace) -> pd.DataFrame:
    """Host-to-device copies from pageable memory, each with the part of its GPU time beyond
    what its bytes take at the pinned rate (`excess_us`, at its end)."""
    m = trace.gpu_mem
    pageable = name_matches(m["name"], PAGEABLE_TO_DEVICE) & (m["bytes"].to_numpy() > 0)
    copies = m[pageable]
    if copies.empty:
        return copies.assign(excess_us=[])
    rate = pinned_rate(trace)
    excess = np.clip(copies["dur"].to_numpy(np.float64)
                     - copies["bytes"].to_numpy(np.float64) / rate, 0.0, None)
    return copies.assign(excess_us=excess)


def pinned_rate(trace: Trace) -> float:
    """Bytes per microsecond of a pinned host-to-device copy: the trace's fastest pinned copy
    of at least 1 MiB, else PINNED_BYTES_PER_US."""
    m = trace.gpu_mem
    pinned = m[name_matches(m["name"], PINNED_TO_DEVICE) & (m["bytes"].to_numpy() >= 1 << 20)
               & (m["dur"].to_numpy() > 0)]
    if pinned.empty:
        return PINNED_BYTES_PER_US
    return float((pinned["bytes"] / pinned["dur"]).max())


def with_slow_copies(trace: Trace, findings: list[Finding], floor: float, n_windows: int,
                     step_us: float | None) -> list[Finding]:
    """The blocking-copy finding also claims the GPU time its pageable copies take beyond a
    pinned copy of the same bytes (one concept, one finding: the copy idles the GPU while the
    CPU stages it, and runs at a fraction of the pinned rate)."""
    copies = slow_copies(trace)
    copies = copies[copies["excess_us"] > 0]
    total = float(copies["excess_us"].sum()) if len(copies) else 0.0
    if total <= 0:
        return findings
    ends = copies["end"].to_numpy(np.float64)
    spans = (ends - copies["excess_us"].to_numpy(np.float64), ends)
    memcpy = [f for f in findings if f.evidence.get("idle_cause") == "memcpy"]
    evidence = {"pageable_copies": len(copies),
                "pageable_excess_us_per_step": round(total / n_windows, 3),
                "pinned_rate_gb_s": round(pinned_rate(trace) / 1e3, 1)}
    if memcpy:
        f = max(memcpy, key=lambda f: f.cost_us)
        f.spans = (np.concatenate([f.spans[0], spans[0]]), np.concatenate([f.spans[1], spans[1]]))
        f.cost_us = round(f.cost_us + total, 3)
        f.evidence.update(evidence)
        f.title += f", and its pageable copies run {format_us(total / n_windows)} per step " \
                   "longer than pinned ones"
        return findings
    if total < floor:
        return findings
    worst = copies.loc[copies["excess_us"].idxmax()]
    line = int(worst["src_line"])
    source = SourceLine(file=str(worst["src_file"]), line=line,
                        function=str(worst["src_function"]),
                        line_exact=bool(worst["src_line_exact"])) if line >= 0 else None
    step = int(worst["step"])
    findings.append(Finding(
        kind="gpu_idle", severity=severity_from_cost(total / n_windows, step_us),
        rank=trace.rank, step=step if step >= 0 else None, start_us=float(worst["ts"]),
        dur_us=float(worst["dur"]), cost_us=round(total, 3), count=len(copies),
        title=f"Copies from pageable memory run {format_us(total / n_windows)} per step longer "
              "than pinned ones", culprit=Culprit(kernel=str(worst["name"]),
                                                  stream=int(worst["stream"])),
        cause=Cause(op=str(worst["name"]), source=source),
        evidence={"idle_cause": "memcpy", "idle_cause_label": CAUSE_LABELS["memcpy"],
                  **evidence},
        suggestion=SUGGESTIONS["memcpy"], spans=spans))
    return findings


def finding_for(trace: Trace, group: pd.DataFrame, cause: str, n_windows: int,
                step_us: float | None, merged: int) -> Finding:
    """One finding for a group of idle pieces of one cause."""
    sets = gpu_sets(trace)
    total = float(group["us"].sum())
    per_step = total / n_windows
    by_name = group.groupby("name", sort=False)["us"].sum().sort_values(ascending=False)
    name = str(by_name.index[0]) if len(by_name) else ""
    worst = group.loc[group["us"].idxmax()]
    step = int(sets.steps[int(worst["window"])])
    source = None if merged else source_line(worst)
    what = WHAT[cause]
    label = f" ({name})" if name and not merged else ""
    where = f" at {merged} lines" if merged else ""
    title = f"GPU idle {format_us(per_step)} per step {what}{label}{where}"
    per_window = sets.per_window((group["start"].to_numpy(), group["end"].to_numpy()))
    evidence: dict[str, Any] = {
        "idle_cause": cause, "idle_cause_label": CAUSE_LABELS[cause],
        "idle_pieces": len(group), "idle_us_per_step": round(per_step, 3),
        "idle_us_by_step": {int(s): round(float(v), 3)
                            for s, v in zip(sets.steps, per_window, strict=True) if v > 0},
    }
    if merged:
        evidence["lines"] = merged
        evidence["idle_us"] = round(total, 3)
        evidence["line_costs"] = line_costs(group)
        evidence["top_events"] = {str(k): round(float(v), 3) for k, v in by_name.head(5).items()}
    if cause == "launch":
        evidence.update(launch_evidence(trace, n_windows))
    return Finding(
        kind="gpu_idle", severity=severity_from_cost(per_step, step_us), rank=trace.rank,
        step=step if step >= 0 else None, start_us=float(worst["start"]),
        dur_us=float(worst["us"]), cost_us=round(total, 3), count=len(group), title=title,
        culprit=Culprit(),
        cause=Cause(op=name or None, source=source,
                    ordering=f"GPU idle {what}; {len(group)} idle interval(s) over "
                             f"{len(evidence['idle_us_by_step'])} step(s)"),
        evidence=evidence, suggestion=SUGGESTIONS[cause],
        spans=(group["start"].to_numpy(np.float64), group["end"].to_numpy(np.float64)))


def line_costs(group: pd.DataFrame) -> list[dict[str, Any]]:
    """Each user line of a merged group with its idle time, largest first: the lines a finding
    "at N lines" stands for, each checkable on its own (`exact`: the statement, not a def line).
    Pieces without a line are left out (the finding's cost minus these is theirs)."""
    lined = group[group["src_line"].to_numpy() >= 0]
    if lined.empty:
        return []
    per_line = (lined.groupby(["src_file", "src_line"], sort=False, observed=True)
                .agg(us=("us", "sum"), exact=("src_line_exact", "all"))
                .sort_values("us", ascending=False))
    return [{"file": str(file), "line": int(line), "exact": bool(row.exact),
             "us": round(float(row.us), 3)}
            for (file, line), row in zip(per_line.index, per_line.itertuples(), strict=True)]


def source_line(piece: pd.Series) -> SourceLine | None:
    """The piece's user line (narrowed to the statement by the accounting where it can be)."""
    file, line = str(piece["src_file"]), int(piece["src_line"])
    if not file or line < 0:
        return None
    return SourceLine(file=file, line=line, function=str(piece["src_function"]),
                      line_exact=bool(piece["src_line_exact"]))


def launch_evidence(trace: Trace, n_windows: int) -> dict[str, Any]:
    """How short the kernels are and how many a step launches."""
    k = trace.kernels
    inside = k["step"].to_numpy() >= 0 if "step" in k else np.ones(len(k), dtype=bool)
    dur = k["dur"].to_numpy(np.float64)[inside]
    if len(dur) == 0:
        return {}
    return {"kernels_per_step": round(len(dur) / n_windows, 1),
            "median_kernel_us": round(float(np.median(dur)), 3)}
