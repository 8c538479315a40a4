"""exposed_comm: communication that runs with no computation beside it.

The pathology, in plain words: a collective costs the step nothing while the GPU computes
beside it; it costs its whole length when nothing does. Data-parallel training hides its
all-reduces under the backward pass, except what is left when the backward ends (the last
buckets), what waits for a slower rank, and collectives issued where there is no compute to
overlap (an all-to-all between two dependent layers, a gradient reduction after the backward).
That exposed time is in the step accounting (`tracekit.accounting`: comm minus compute); this
detector says which collectives it belongs to, so the step's exposed communication is
explained by findings, not only by a number.

How it is found: per rank, every communication kernel's time outside all computation
(`gpu_sets(trace).exposed_comm`, the union over comm streams, so two streams count once),
grouped by collective and the user's record_function label at its issue, less the time the
rank's collectives waited for a later rank (what the straggler finding explains, measured the
same way: `tracekit.detectors.straggler.late_arrivals`). The spans are those exposed
intervals; `tracekit.accounting.budget` leaves to comm_gap, sm_contention and any worse
finding the parts of them they explain (a delayed collective's exposed tail), so this finding
keeps what nothing more specific explains.

A group is reported when its exposed time reaches `min_step_frac` of the run's step per step
(2%: in the planted DDP control, two H200s whose bucketed all-reduces overlap the backward as
designed, the last bucket runs exposed 0.05-0.20 ms of a 14.9 ms step, up to 1.3%: the tail
of an overlap that works).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tracekit.accounting.sets import gpu_sets
from tracekit.detectors import register, register_summary, straggler
from tracekit.detectors.collectives import INSTANCE_COLUMNS, collective_name, launch_columns
from tracekit.detectors.labels import user_labels
from tracekit.durations import ms_or_us
from tracekit.finding import Cause, Culprit, Finding, severity_from_cost
from tracekit.intervals import (
    EMPTY,
    Intervals,
    as_set,
    intersect_intervals,
    length_within,
    subtract_intervals,
    total_length,
)
from tracekit.link import kernel_source
from tracekit.link.steptime import run_step_us
from tracekit.names import kernel_label
from tracekit.trace import Run, Trace

SUGGESTION = ("Overlap this communication with computation (issue it earlier, e.g. bucketed "
              "gradient reduction during the backward or prefetched gathers), or make it "
              "smaller (lower precision, fewer or larger messages); if it waits for another "
              "rank, see the straggler finding.")


@dataclass(frozen=True)
class Params:
    """Thresholds of the detector (`--param exposed_comm.NAME=VALUE`); the module docstring
    says why the default."""

    min_step_frac: float = 0.02
    """Exposed time per step, as a share of the run's step time, from which a group counts."""


def exposed_kernels(trace: Trace) -> pd.DataFrame:
    """Communication kernels with exposed time: row, step, collective, label, exposed_us."""
    k = trace.kernels
    rows = np.flatnonzero(k["is_nccl"].to_numpy(dtype=bool))
    cols = ["row", "step", "collective", "label", "ts", "end", "exposed_us"]
    if not len(rows):
        return pd.DataFrame(columns=cols)
    ts = k["ts"].to_numpy(dtype=np.float64)[rows]
    end = k["end"].to_numpy(dtype=np.float64)[rows]
    exposed = length_within(gpu_sets(trace).exposed_comm, ts, end)
    keep = exposed > 0
    rows, ts, end, exposed = rows[keep], ts[keep], end[keep], exposed[keep]
    launch = launch_columns(trace)
    tid = launch["launch_tid"].to_numpy()[rows]
    at = launch["launch_ts"].to_numpy(dtype=np.float64)[rows]
    labels = [label or "" for label in user_labels(trace, tid, at)]
    names = collective_name(k.iloc[rows]).to_numpy()
    return pd.DataFrame({"row": rows, "step": k["step"].to_numpy()[rows],
                         "collective": [n if not n.startswith(("nccl", "void")) else
                                        kernel_label(n) for n in names],
                         "label": labels, "ts": ts, "end": end, "exposed_us": exposed},
                        columns=cols)


def peer_waits(run: Run, trace: Trace) -> Intervals:
    """Where this rank's collectives waited for a rank that arrived later (own clock)."""
    settings = straggler.Params()
    ranks = straggler.rank_collectives(run, settings, kind="exposed_comm")
    if trace.rank not in ranks or len(ranks) < 2:
        return EMPTY
    late = straggler.late_arrivals(ranks, settings)
    if late.empty:
        return EMPTY
    wait = late["waits"].map(lambda waits: waits.get(trace.rank, np.nan))
    mine = late.assign(wait=wait).dropna(subset=["wait"])
    own = ranks[trace.rank].table[[*INSTANCE_COLUMNS, "ts"]]
    joined = mine[[*INSTANCE_COLUMNS, "wait"]].merge(own, on=INSTANCE_COLUMNS)
    start = joined["ts"].to_numpy(dtype=np.float64)
    return as_set((start, start + joined["wait"].to_numpy(dtype=np.float64)))


@register_summary("exposed_comm")
def exposed_summary(trace: Trace, params: Params) -> straggler.RankCollectives | None:
    """What other ranks need of this one to tell peer waits apart: the straggler summary."""
    return straggler.straggler_summary(trace, straggler.Params())


def findings_for_rank(run: Run, trace: Trace, params: Params, step_us: float | None
                      ) -> list[Finding]:
    exposed = exposed_kernels(trace)
    if exposed.empty:
        return []
    sets = gpu_sets(trace)
    own = subtract_intervals(sets.exposed_comm, peer_waits(run, trace))
    findings = []
    for (collective, label), group in exposed.groupby(["collective", "label"], sort=False):
        spans: Intervals = intersect_intervals(own, as_set(
            (group["ts"].to_numpy(dtype=np.float64), group["end"].to_numpy(dtype=np.float64))))
        total = total_length(spans)
        steps = sorted({int(s) for s in group["step"] if s >= 0})
        per_step = total / max(1, len(steps))
        if total <= 0 or (step_us and per_step < params.min_step_frac * step_us):
            continue
        worst = group.sort_values("exposed_us").iloc[-1]
        row = int(worst["row"])
        op, stack, source = kernel_source(trace, row)
        what = f"{collective}({label})" if label else collective
        k = trace.kernels
        # Kernels outside every profiled step have no step to be "per".
        amount = f"{ms_or_us(per_step)} per step" if steps else \
            f"{ms_or_us(total)} outside the profiled steps"
        title = (f"{what} runs exposed, nothing computing beside it: {amount}"
                 f"{f' x{len(group)}' if len(group) > 1 else ''}")
        ordering = (f"{what} ran {ms_or_us(float(worst['end'] - worst['ts']))}, "
                    f"{ms_or_us(float(worst['exposed_us']))} of it with no kernel, memcpy or "
                    f"memset of computation on any stream")
        findings.append(Finding(
            kind="exposed_comm", severity=severity_from_cost(per_step, step_us),
            rank=trace.rank, step=int(worst["step"]) if worst["step"] >= 0 else None,
            start_us=float(worst["ts"]), dur_us=float(worst["end"] - worst["ts"]),
            cost_us=round(total, 3), count=len(group), title=title,
            culprit=Culprit(kernel=str(k.at[row, "name"]), stream=int(k.at[row, "stream"])),
            cause=Cause(op=op, op_stack=stack, source=source, ordering=ordering),
            evidence={"collective": collective, "label": label or None,
                      "exposed_us": round(total, 3), "steps": steps,
                      "cost_per_step_us": round(per_step, 3),
                      "worst_kernel_exposed_us": round(float(worst["exposed_us"]), 3)},
            suggestion=SUGGESTION, spans=spans))
    return findings


@register("exposed_comm", Params)
def detect(run: Run, params: Params) -> list[Finding]:
    """Communication with no computation beside it, per rank, collective and issuing label."""
    step_us = run_step_us(run)
    findings: list[Finding] = []
    for trace in run.traces:
        if len(trace.kernels):
            findings.extend(findings_for_rank(run, trace, params, step_us))
    return findings
