"""straggler: one rank reaches a collective late and every other rank waits for it.

The pathology, in plain words: a collective completes only when every rank of its process group
has joined it. A rank that arrives late (its input pipeline was slower, it ran extra Python, its
GPU had more work, it synchronised with the host) makes every other rank's collective kernel
spin, doing nothing, until it arrives. On the waiting ranks this looks like a long collective
or "exposed communication"; its cause is on another rank.

How it is found (vectorised over every collective of every rank):
- collective instances are matched across ranks by process group, GPU step, issue order within
  them and the collective with its size (`INSTANCE_COLUMNS`; the traces seen record no
  collective sequence number, and NCCL requires every rank to issue a group's collectives in
  the same order);
- the ranks' clocks are aligned by the median difference of matched instances' end times (a
  collective ends on every rank within microseconds: the end times' spread is 0.7-7 us (MAD)
  across the reference and planted H200 runs); a rank whose spread exceeds `clock_tol_us` is
  left out;
- a rank arrives when its collective kernel starts; per instance, the last rank, its lateness
  (its arrival minus the next-to-last arrival) and every other rank's wait.

A rank that falls behind stays behind for the rest of the step's collectives (DDP's later
buckets wait for its later gradients): consecutive collectives of a group and step that one rank
reaches late form a chain, whose cause is what made it late at the first (`chain_heads`).

The time the job lost to a chain is measured on the next-to-last rank: its exposed
communication over the chain's collectives (its wait, and the transfers the wait pushed out
from under its compute; a collective spinning beside the rank's own compute costs nothing while
it computes), at most the late rank's lateness at the chain's first collective (the delay it
brought). That is the cost (`evidence.cost_by_step_us` per step). It lies on the waiting ranks'
timelines, so the finding carries no spans for the late rank's budget, where the late rank's
own idle time is other findings' to explain (gpu_idle says what its CPU did meanwhile; this
finding says who waited for it, and how long).

An instance is considered when the last rank's lateness reaches `min_late_us` (100 us: in the
reference runs without a planted straggler the median lateness is 2-3 us and the 90th
percentile 25-35 us, launch jitter), and a finding reported when its cost per step reaches
`min_step_frac` of the median step (1%: in the planted DDP control, two identical H200s with
nothing planted, one rank's backward runs 100-265 us behind the other's in some steps and
the chains cost up to 0.9% of the step; a straggler worth fixing costs more than that jitter).

What the late rank was doing instead is read from its own trace, between its previous
collective (the last point where the ranks were in step) and its arrival: when its GPU idled
for at least half the time the others waited for it, its CPU was the cause, and the finding
names what the thread that launched the work after the idle stretch overlapping the others'
wait most was doing then (the op, record_function label or Python frame covering most of it,
with the user's line:
`time.sleep` in `straggle()`, a DataLoader's `__next__`); otherwise its GPU was busy (the
kernel that ran longest while the others waited, with its op and line), or its previous
collective was still running.

Findings are merged per (late rank, what it was doing) and reported on the late rank, with how
long each other rank waited. In `tracekit.rankwise`'s per-rank mode each rank's process knows
the others from their summaries (`straggler_summary`: a row per collective and the rank's
exposed-communication intervals), so the findings are the same as in one process, from 2 to
hundreds of rank files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tracekit.accounting.sets import gpu_sets
from tracekit.detectors import register, register_summary
from tracekit.detectors.collectives import INSTANCE_COLUMNS, clock_offsets, launch_columns
from tracekit.detectors.cpu_activity import (
    CpuActivity,
    CpuSpans,
    activity_evidence,
    activity_name,
    cpu_activity,
)
from tracekit.detectors.sm_contention import Params as ContentionParams
from tracekit.detectors.sm_contention import nccl_table
from tracekit.durations import ms_or_us
from tracekit.finding import Cause, Culprit, Finding, severity_from_cost, source_key
from tracekit.intervals import Intervals, intersect_intervals, length_within, window_pairs
from tracekit.link import kernel_source
from tracekit.link.steptime import run_step_us
from tracekit.names import kernel_label
from tracekit.source import SourceFiles
from tracekit.trace import Run, Trace

SUMMARY_COLUMNS = [*INSTANCE_COLUMNS, "collective", "ts", "end"]
SUGGESTION = ("Even out the ranks' work before this collective: the late rank's cause above "
              "(input pipeline, host sync, extra Python or GPU work on that rank only) sets "
              "every rank's step time.")


@dataclass(frozen=True)
class Params:
    """Thresholds of the detector (`--param straggler.NAME=VALUE`); the module docstring says
    why each default."""

    min_late_us: float = 100.0
    """Lateness of the last rank from which a collective counts (launch jitter is 25-35 us)."""
    min_step_frac: float = 0.01
    """... and the share of the run's step time a finding must cost per step."""
    clock_tol_us: float = 50.0
    """Largest spread (MAD) of a rank's end-time differences for its clock to be trusted."""
    dominant_frac: float = 0.5
    """A CPU activity explains an idle stretch when it covers this share of it."""


@dataclass
class RankCollectives:
    """What other ranks need of one rank: its collectives and its exposed communication."""

    table: pd.DataFrame
    """SUMMARY_COLUMNS, one row per collective kernel (own clock)."""
    exposed: Intervals
    """The rank's communication with no computation beside it (own clock)."""


@register_summary("straggler")
def straggler_summary(trace: Trace, params: Params) -> RankCollectives | None:
    """This rank's collectives and exposed communication, for the other ranks' processes."""
    if not len(trace.kernels) or not trace.kernels["is_nccl"].any():
        return None
    table = nccl_table(trace, ContentionParams()).nccl
    return RankCollectives(table=table[SUMMARY_COLUMNS].reset_index(drop=True),
                           exposed=gpu_sets(trace).exposed_comm)


def rank_collectives(run: Run, params: Params, kind: str = "straggler"
                     ) -> dict[int, RankCollectives]:
    """Every rank's summary: the held traces' own, the others' from Run.context (registered
    by detector `kind`: exposed_comm asks for the same)."""
    ranks = {t.rank: straggler_summary(t, params) for t in run.traces}
    if run.context is not None:
        for rank, summary in run.context.summaries.get(kind, {}).items():
            ranks.setdefault(rank, summary)
    return {r: s for r, s in ranks.items() if s is not None and len(s.table)}


def late_arrivals(ranks: dict[int, RankCollectives], params: Params) -> pd.DataFrame:
    """One row per collective instance joined by 2+ aligned ranks whose last rank is late:
    INSTANCE_COLUMNS, collective, late_rank, arrival_ref (its arrival, the first rank's
    clock), second_ref and second_rank (the next-to-last arrival), lateness, skew (last -
    first), ranks, waits (dict rank -> wait us, the other ranks), offset (the late rank's
    clock minus the first rank's) and lost_us (the next-to-last rank's exposed wait)."""
    tables = {r: s.table for r, s in ranks.items()}
    offsets = clock_offsets(tables, params.clock_tol_us)
    if len(offsets) < 2:
        return pd.DataFrame()
    aligned = pd.concat([tables[r][[*INSTANCE_COLUMNS, "collective"]].assign(
        rank=r, arrival_ref=tables[r]["ts"].to_numpy() - offsets[r],
        end_ref=tables[r]["end"].to_numpy() - offsets[r]) for r in offsets],
        ignore_index=True).sort_values([*INSTANCE_COLUMNS, "arrival_ref"], kind="stable")
    aligned["ranks"] = aligned.groupby(INSTANCE_COLUMNS, sort=False)["rank"].transform("size")
    aligned = aligned[aligned["ranks"] >= 2]
    grouped = aligned.groupby(INSTANCE_COLUMNS, sort=False)
    last = grouped.tail(1).set_index(INSTANCE_COLUMNS)
    second = grouped.nth(-2).set_index(INSTANCE_COLUMNS)[["arrival_ref", "end_ref", "rank"]]
    out = last.rename(columns={"rank": "late_rank"}).assign(
        second_ref=second["arrival_ref"], second_end_ref=second["end_ref"],
        second_rank=second["rank"],
        lateness=last["arrival_ref"] - second["arrival_ref"],
        skew=last["arrival_ref"] - grouped["arrival_ref"].min())
    out = out[out["lateness"] >= params.min_late_us]
    if out.empty:
        return pd.DataFrame()
    others = aligned.join(out[["arrival_ref", "late_rank"]].rename(
        columns={"arrival_ref": "latest_ref"}), on=INSTANCE_COLUMNS, how="inner")
    others = others[others["rank"] != others["late_rank"]]
    waits = (others.assign(wait=others["latest_ref"] - others["arrival_ref"])
             .groupby(INSTANCE_COLUMNS, sort=False)[["rank", "wait"]]
             .apply(lambda g: dict(zip(g["rank"].astype(int), g["wait"].round(3),
                                       strict=True))))
    out = out.assign(waits=waits.reindex(out.index),
                     offset=out["late_rank"].map(offsets)).reset_index()
    out["exposed_us"] = next_to_last_exposed(out, ranks, offsets)
    return out


def next_to_last_exposed(late: pd.DataFrame, ranks: dict[int, RankCollectives],
                         offsets: dict[int, float]) -> np.ndarray:
    """Per instance, the next-to-last rank's exposed communication in its collective, from its
    arrival to its end (on its clock): its wait, and the transfer the wait pushed out from
    under its compute."""
    exposed = np.zeros(len(late))
    for rank, rows in late.groupby("second_rank").indices.items():
        shift = offsets[int(rank)]
        lo = late["second_ref"].to_numpy(dtype=np.float64)[rows] + shift
        hi = late["second_end_ref"].to_numpy(dtype=np.float64)[rows] + shift
        exposed[rows] = length_within(ranks[int(rank)].exposed, lo, hi)
    return exposed


@dataclass
class Activity:
    """What the late rank was doing while the others waited."""

    kind: str
    """cpu | gpu | comm | unknown"""
    text: str
    key: str
    culprit: Culprit
    op: str | None
    stack: list[str]
    source: Any
    extra: dict[str, Any]


def describe_lateness(trace: Trace, own: pd.DataFrame, late: pd.Series, spans: CpuSpans,
                      files: SourceFiles, params: Params) -> Activity:
    """What `trace`'s rank did before arriving late at instance `late` (see module doc)."""
    arrival = float(late["arrival_ref"] + late["offset"])
    lo = float(late["second_ref"] + late["offset"])
    lateness = arrival - lo
    ends = own["end"].to_numpy(dtype=np.float64)
    before = ends[ends < arrival - 1e-3]
    synced = float(before.max()) if len(before) else lo
    idle = intersect_intervals(gpu_sets(trace).idle, (np.array([min(synced, lo)]),
                                                      np.array([arrival])))
    inside = np.maximum(np.minimum(idle[1], arrival) - np.maximum(idle[0], lo), 0.0)
    if len(idle[0]) and float(inside.sum()) >= 0.5 * lateness:
        # The idle stretch that overlaps the others' wait the most (whole, for what the CPU
        # did over it); its length breaks ties.
        pick = int(np.lexsort((idle[1] - idle[0], inside))[-1])
        a, b = float(idle[0][pick]), float(idle[1][pick])
        tid = launching_thread(trace, b)
        activity = cpu_activity(trace, spans, tid, a, b, b, params.dominant_frac, files)
        return cpu_described(activity, float(inside.sum()))
    k = trace.kernels
    comm = k["is_nccl"].to_numpy(dtype=bool)
    ts, end = k["ts"].to_numpy(dtype=np.float64), k["end"].to_numpy(dtype=np.float64)
    _, kj, ov = window_pairs(np.array([lo]), np.array([arrival]), ts, end)
    if len(kj):
        best = int(kj[np.argmax(np.where(comm[kj], -1.0, ov))])
        if not comm[best]:
            op, stack, source = kernel_source(trace, best)
            name = str(k.at[best, "name"])
            where = f" ({source.file}:{source.line})" if source else ""
            return Activity(
                kind="gpu", text=f"its GPU running {kernel_label(name)}{where}",
                key=source_key(source) or name, op=op, stack=stack, source=source,
                culprit=Culprit(kernel=name, stream=int(k.at[best, "stream"])),
                extra={"gpu_kernel": name,
                       "gpu_kernel_overlap_us": round(float(ov[kj == best].max()), 3)})
        name = str(k.at[best, "collective"] or kernel_label(k.at[best, "name"]))
        return Activity(kind="comm", text=f"its previous collective {name} still running",
                        key=f"comm:{name}", op=None, stack=[], source=None, culprit=Culprit(),
                        extra={})
    return Activity(kind="unknown", text="nothing recorded on its GPU or CPU", key="unknown",
                    op=None, stack=[], source=None, culprit=Culprit(), extra={})


def launching_thread(trace: Trace, t: float) -> int:
    """The CPU thread that launched the first GPU kernel starting at or after `t` (-1)."""
    k = trace.kernels
    after = np.flatnonzero(k["ts"].to_numpy(dtype=np.float64) >= t - 1e-3)
    if not len(after):
        return -1
    first = after[np.argmin(k["ts"].to_numpy(dtype=np.float64)[after])]
    return int(launch_columns(trace)["launch_tid"].to_numpy()[first])


def cpu_described(activity: CpuActivity | None, idle_us: float) -> Activity:
    extra: dict[str, Any] = {"gpu_idle_us": round(idle_us, 3)}
    if activity is None:
        return Activity(kind="cpu", text="its GPU idle with no CPU activity recorded",
                        key="cpu", op=None, stack=[], source=None, culprit=Culprit(),
                        extra=extra)
    where = f" ({activity.source.file}:{activity.source.line})" if activity.source else ""
    extra["cpu_activity"] = activity_evidence(activity)
    return Activity(
        kind="cpu", text=f"its GPU idle while its CPU was in {activity_name(activity)}"
        f"{where}", key=source_key(activity.source) or activity.name, op=activity.name,
        stack=[], source=activity.source, culprit=Culprit(), extra=extra)


def findings_for_rank(trace: Trace, run: Run, late: pd.DataFrame, params: Params,
                      step_us: float | None) -> list[Finding]:
    mine = late[late["late_rank"] == trace.rank]
    if mine.empty:
        return []
    own = nccl_table(trace, ContentionParams()).nccl
    spans = CpuSpans.of(trace)
    files = SourceFiles(roots=trace.source_roots)
    mine = mine.sort_values(["pg", "step", "order"], kind="stable").reset_index(drop=True)
    head = chain_heads(mine)
    described = {int(i): describe_lateness(trace, own, mine.iloc[int(i)], spans, files, params)
                 for i in np.unique(head)}
    mine = mine.assign(key=[f"{described[h].kind}|{described[h].key}" for h in head], at=head,
                       lost_us=chain_costs(mine, head))
    findings = []
    for _, group in mine.groupby("key", sort=False):
        by_step = group.groupby("step")["lost_us"].sum()
        steps = sorted(int(s) for s in by_step.index if s >= 0)
        total = float(by_step.sum())
        per_step = total / max(1, len(steps))
        if total <= 0 or (step_us and per_step < params.min_step_frac * step_us):
            continue
        worst = group.sort_values("lateness").iloc[-1]
        findings.append(finding_of(trace, group, worst, described[int(worst["at"])], by_step,
                                   step_us))
    return findings


def chain_heads(mine: pd.DataFrame) -> np.ndarray:
    """Per late instance (sorted by process group, step, order), the row of the first instance
    of its chain: consecutive collectives of one group and step that this rank reached late.

    A rank that falls behind stays behind for the rest of the step's collectives (DDP's later
    buckets wait for its later gradients), so the cause is what made it late at the first."""
    pg, step = mine["pg"].to_numpy(), mine["step"].to_numpy()
    order = mine["order"].to_numpy(dtype=np.float64)
    starts = np.ones(len(mine), dtype=bool)
    starts[1:] = (pg[1:] != pg[:-1]) | (step[1:] != step[:-1]) | (order[1:] != order[:-1] + 1)
    return np.maximum.accumulate(np.where(starts, np.arange(len(mine)), 0))


def chain_costs(mine: pd.DataFrame, head: np.ndarray) -> np.ndarray:
    """The time the job lost per chain, put on its first instance: the next-to-last rank's
    exposed communication over the chain, at most the late rank's lateness at its first
    collective (the delay it brought; later collectives of the chain only pass it on)."""
    exposed = mine.groupby(head)["exposed_us"].sum()
    first = mine["lateness"].to_numpy(dtype=np.float64)[exposed.index.to_numpy()]
    lost = np.zeros(len(mine))
    lost[exposed.index.to_numpy()] = np.minimum(exposed.to_numpy(), first)
    return lost


def finding_of(trace: Trace, group: pd.DataFrame, worst: pd.Series, activity: Activity,
               by_step: pd.Series, step_us: float | None) -> Finding:
    waits: dict[int, float] = {}
    for instance in group["waits"]:
        for rank, wait in instance.items():
            waits[rank] = waits.get(rank, 0.0) + float(wait)
    top = dict(sorted(waits.items(), key=lambda kv: -kv[1])[:8])
    collectives = list(dict.fromkeys(str(c) for c in group["collective"]))
    colls = ", ".join(collectives[:3]) + (f" and {len(collectives) - 3} more"
                                           if len(collectives) > 3 else "")
    count = len(group)
    who = "the other rank waits" if len(waits) == 1 else f"{len(waits)} other ranks wait"
    longest_wait = max(max(i.values()) for i in group["waits"])
    total = float(by_step.sum())
    steps = sorted(int(s) for s in by_step.index if s >= 0)
    per_step = total / max(1, len(steps))
    title = (f"rank {trace.rank} arrives last at {colls}{f' x{count}' if count > 1 else ''}: "
             f"{who} up to {ms_or_us(longest_wait)}; meanwhile {activity.text}")
    offset = float(worst["offset"])
    evidence = {
        "late_rank": trace.rank, "lateness_us": round(float(worst["lateness"]), 3),
        "skew_us": round(float(worst["skew"]), 3),
        "ranks_in_collective": int(worst["ranks"]), "ranks_waiting": len(waits),
        "mean_wait_us": round(float(np.mean([w for i in group["waits"] for w in i.values()])),
                              3),
        "waited_us_by_rank": {int(r): round(w, 3) for r, w in top.items()},
        "next_to_last_rank": int(worst["second_rank"]),
        "collectives": collectives, "cause_kind": activity.kind,
        "clock_offset_us": round(offset, 3), "steps": steps,
        "cost_per_step_us": round(per_step, 3),
        "cost_by_step_us": {int(s): round(float(v), 3) for s, v in by_step.items() if s >= 0},
        "cost_pct_of_step": round(100.0 * per_step / step_us, 2) if step_us else None,
        **activity.extra,
    }
    ordering = (f"{worst['collective']} (step {int(worst['step'])}, #{int(worst['order'])} of "
                f"its process group) started on rank {trace.rank} "
                f"{ms_or_us(float(worst['lateness']))} after the next-to-last rank "
                f"(rank {int(worst['second_rank'])}) and {ms_or_us(float(worst['skew']))} "
                f"after the first; meanwhile {activity.text}")
    return Finding(
        kind="straggler", severity=severity_from_cost(per_step, step_us), rank=trace.rank,
        step=int(worst["step"]) if worst["step"] >= 0 else None,
        start_us=float(worst["second_ref"] + offset),
        dur_us=float(worst["lateness"]), cost_us=round(total, 3), count=count, title=title,
        culprit=activity.culprit,
        cause=Cause(op=activity.op, op_stack=activity.stack, source=activity.source,
                    ordering=ordering),
        evidence=evidence, suggestion=SUGGESTION)


@register("straggler", Params)
def detect(run: Run, params: Params) -> list[Finding]:
    """Collectives that one rank reaches late while the others wait, merged per late rank and
    what it was doing."""
    p = params
    late = late_arrivals(rank_collectives(run, p), p)
    if late.empty:
        return []
    step_us = run_step_us(run)
    findings: list[Finding] = []
    for trace in run.traces:
        findings.extend(findings_for_rank(trace, run, late, p, step_us))
    return findings
