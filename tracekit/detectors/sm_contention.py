"""sm_contention: an NCCL kernel slowed, or held back, by a non-GEMM kernel that fills every SM.

The pathology, in plain words: NCCL collectives run as ordinary CUDA kernels with a handful of
thread blocks (24 on an H200 pair for a ring all_reduce), and they move data only while those
blocks are resident. An elementwise or copy kernel launched beside them on another stream with
more blocks than the GPU has SMs (the eager `embed.copy_(lm_head.T)` of a 50304x768 fp32 tensor:
150912 blocks, 1143 per SM) occupies every SM for its whole duration. An NCCL kernel that becomes
ready while such a kernel is draining cannot get its blocks scheduled until the grid is almost
done (it "starts late"), and one already running shares SMs and memory bandwidth with it (it
"runs long"). Either way the network sits idle while the GPU does work that needed no SMs'
worth of urgency. GEMMs and attention kernels beside NCCL are the overlap everyone wants and are
not blamed; the fix for an elementwise culprit is to bound its grid (a persistent Triton kernel
on a few SMs), or to order it away from the collective.

How a victim is recognised (all per rank, vectorised over every NCCL kernel):
- slowed: its duration exceeds its own baseline, the median duration of the same collective
  (collective name, in/out element counts, dtype; when the trace records no sizes, the same
  kernel at the same place in its step's issue order, so that an 8 ms all-to-all is never
  measured against a 30 us one) on the same rank among instances with no suspect kernel beside
  them (suspect overlap < `clean_overlap_frac` of its duration); when this rank has no such
  instance, the same collective's clean instances on the other ranks; with neither, no
  slowdown is claimed. The
  excess must pass `min_slowdown` x baseline, `min_excess_us`, and `noise_mads` x the spread
  (MAD) of the clean instances: same-size NCCL kernels on an idle H200 pair vary by about 1%
  (885-892 us for a 64M-float all_reduce), so 10% is far outside noise. Cost: the excess, at most
  the time the suspect actually overlapped it.
- started late: the kernel started more than `min_late_us` after it was ready (its launch call
  had returned, the previous kernel on its stream had ended, and so had its likely input; a
  ready NCCL kernel on an idle H200 starts within 2-20 us) while suspect kernels ran for at
  least half of that wait. The likely input: a collective issued from a compute stream waits
  on an event recorded there at issue time, i.e. on the last kernel launched on that stream
  before the collective. When that kernel ended after the collective was otherwise ready, the
  wait until its end is comm_gap's "waiting on compute", not contention; only the time after it
  counts here (an SM-filling kernel launched after the collective can still hold it back).
  Cost: the delay, at most the suspect overlap.
- what the step lost (`lost_spans`): a slowed or delayed collective ends that much later, so
  its last `cost` microseconds count, and only where they ran exposed (nothing computing
  beside them): contention hidden under compute costs nothing. A finding whose exposed cost
  is under `min_cost_us` per step (20 us, the `min_excess_us` floor of a victim) is not
  reported.
- a collective that is long because a peer rank joined late is not contention: when several
  ranks are loaded, the same collective instance (process group, GPU step, issue order,
  collective and size) is matched across ranks, the ranks' clocks are aligned by the median
  difference of the instances' end times (collectives end together), and the duration used is
  measured from the last rank's start (`evidence.peer_wait_us` says how much was waiting; None,
  "unknown", when no other rank of the instance is loaded).

A suspect ("SM-filling") kernel: grid blocks >= `min_waves` x the number of SMs (CUPTI's
`blocks per SM` >= 1: at least one block on every SM), on another stream, of category
elementwise, reduction, triton, memory or other (never gemm, attention or NCCL).

Findings are merged per (rank, culprit source line, culprit kernel name) with the count, the
total cost, and the worst occurrence's place and evidence. Severity is the cost per profiled
step against the median step time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tracekit.accounting.sets import gpu_sets
from tracekit.detectors import register, register_summary
from tracekit.detectors.collectives import (
    INSTANCE_COLUMNS,
    clock_offsets,
    collective_name,
    coverage_excluding_stream,
    culprit_of,
    dependency_rows,
    instance_keys,
    launch_columns,
    num_sms_of,
    previous_end_on_stream,
    ready_after_input,
    suspect_mask,
)
from tracekit.detectors.labels import user_label
from tracekit.finding import Cause, Finding, severity_from_cost, source_key
from tracekit.intervals import Intervals, as_set, intersect_intervals, total_length, window_pairs
from tracekit.link import kernel_source
from tracekit.link.steptime import run_step_us
from tracekit.names import kernel_label
from tracekit.trace import Run, Trace

SUGGESTION = (
    "Keep the SMs free for NCCL: bound the culprit's grid (e.g. a persistent kernel on a few "
    "SMs), or issue it before the collective starts or after it ends."
)
TRAINER_SUGGESTION = (
    "Keep the SMs free for NCCL: bound the culprit's grid (e.g. a persistent Triton kernel on a "
    "few SMs, like the transpose-copy kernel), or issue it before the collective starts or after "
    "it ends."
)
"""The same advice in the trainer's words, for traces the trainer recorded."""


@dataclass(frozen=True)
class Params:
    """Thresholds of the detector; see the module docstring for why each default."""

    min_waves: float = 1.0
    """Blocks per SM from which a kernel fills every SM (a suspect, when not GEMM/attention)."""
    min_slowdown: float = 0.10
    min_excess_us: float = 20.0
    min_cost_us: float = 20.0
    """Exposed step time per step a finding must cost (its victims' tails outside compute)."""
    noise_mads: float = 4.0
    min_late_us: float = 30.0
    clean_overlap_frac: float = 0.10
    clock_tol_us: float = 50.0
    """Largest spread (MAD) of cross-rank end differences for the ranks' clocks to be trusted."""




# ---- victims ---------------------------------------------------------------------------------

@dataclass
class RankTables:
    """One rank's NCCL kernels with everything the detector computes about them."""

    trace: Trace | None
    """None for a rank known only by its summary (another process's rank: Run.context)."""
    nccl: pd.DataFrame
    suspects: np.ndarray
    """Mask over trace.kernels."""
    rank: int
    extra: dict[str, Any] = field(default_factory=dict)


def nccl_table(trace: Trace, params: Params) -> RankTables:
    """NCCL kernels of a rank with launch, readiness, suspect overlap and instance keys,
    worked out once per trace and Params (the summaries and three detectors ask for it, 70 ms
    each on a 690 MB rank); each caller gets its own shallow copy to add columns to."""
    cached = trace.__dict__.setdefault("_nccl_tables", {})
    key = (trace.rank, params)
    if key not in cached:
        cached[key] = _nccl_table(trace, params)
    table = cached[key]
    return RankTables(trace=trace, nccl=table.nccl.copy(deep=False), suspects=table.suspects,
                      rank=table.rank)


def _nccl_table(trace: Trace, params: Params) -> RankTables:
    k = trace.kernels
    suspects = suspect_mask(k, num_sms_of(trace), params.min_waves)
    is_nccl = k["is_nccl"].to_numpy(dtype=bool)
    launch = launch_columns(trace)
    prev_end = previous_end_on_stream(k)
    steps = k["step"].to_numpy(dtype=np.int64)
    rows = np.flatnonzero(is_nccl)
    n = k.iloc[rows]
    table = pd.DataFrame({
        "row": rows, "rank": trace.rank, "stream": n["stream"].to_numpy(),
        "ts": n["ts"].to_numpy(dtype=np.float64), "end": n["end"].to_numpy(dtype=np.float64),
        "dur": n["dur"].to_numpy(dtype=np.float64),
        "collective": collective_name(n).to_numpy(),
        "in_nelems": n["in_nelems"].fillna(-1).to_numpy(dtype=np.float64),
        "out_nelems": n["out_nelems"].fillna(-1).to_numpy(dtype=np.float64),
        "dtype": n["dtype"].fillna("").astype(str).to_numpy(),
        "pg": n["pg_name"].fillna("").astype(str).to_numpy(),
        "step": steps[rows],
        "launch_ts": launch["launch_ts"].to_numpy()[rows],
        "launch_end": launch["launch_end"].to_numpy()[rows],
        "launch_tid": launch["launch_tid"].to_numpy()[rows],
        "prev_end": prev_end[rows],
    })
    table["suspect_overlap"] = coverage_excluding_stream(
        k, suspects, table["stream"].to_numpy(), table["ts"].to_numpy(), table["end"].to_numpy())
    # Issue order of collectives within (process group, step): the same on every rank.
    issue_time = table["launch_ts"].fillna(table["ts"])
    table["order"] = issue_time.groupby([table["pg"], table["step"]]).rank(method="first")
    table["key"] = instance_keys(table, n["name"])
    return RankTables(trace=trace, nccl=table, suspects=suspects, rank=trace.rank)


def add_peer_wait(tables: list[RankTables], params: Params) -> None:
    """eff_start: the latest start of the same collective instance over ranks (own clock)."""
    for t in tables:
        t.nccl["eff_start"] = t.nccl["ts"]
        t.nccl["peer_known"] = False
    if len(tables) < 2:
        return
    match_cols = INSTANCE_COLUMNS
    offsets = clock_offsets({t.rank: t.nccl for t in tables}, params.clock_tol_us)
    if len(offsets) < 2:
        return
    starts = pd.concat([t.nccl[match_cols].assign(start_ref=t.nccl["ts"] - offsets[t.rank])
                        for t in tables if t.rank in offsets], ignore_index=True)
    grouped = starts.groupby(match_cols, sort=False)["start_ref"]
    latest = pd.DataFrame({"latest_ref": grouped.max(), "ranks": grouped.size()})
    for t in tables:
        if t.rank not in offsets:
            continue
        joined = t.nccl[match_cols].merge(latest.reset_index(), on=match_cols, how="left")
        latest_own = joined["latest_ref"].to_numpy() + offsets[t.rank]
        t.nccl["eff_start"] = np.fmax(t.nccl["ts"].to_numpy(),
                                      np.nan_to_num(latest_own, nan=-np.inf))
        t.nccl["peer_known"] = (joined["ranks"].fillna(0) >= 2).to_numpy()


def robust_stats(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Median (baseline) and median absolute deviation (mad) of eff_dur per group."""
    med = frame.groupby(keys)["eff_dur"].transform("median")
    grouped = frame.assign(dev=(frame["eff_dur"] - med).abs()).groupby(keys)
    return pd.DataFrame({"baseline": grouped["eff_dur"].median(), "mad": grouped["dev"].median()})


def add_baselines(tables: list[RankTables], params: Params) -> None:
    """Per-collective baseline (median) and noise (scaled MAD) from clean instances."""
    for t in tables:
        t.nccl["eff_dur"] = (t.nccl["end"] - t.nccl["eff_start"]).clip(lower=0.0)
        t.nccl["clean"] = t.nccl["suspect_overlap"] < params.clean_overlap_frac * t.nccl["dur"]
    everyone = pd.concat([t.nccl[["rank", "key", "eff_dur", "clean"]] for t in tables],
                         ignore_index=True)
    clean = everyone[everyone["clean"]]

    per_rank = robust_stats(clean, ["rank", "key"])
    overall = robust_stats(clean, ["key"])
    for t in tables:
        own = t.nccl[["rank", "key"]].merge(per_rank.reset_index(), on=["rank", "key"],
                                            how="left")
        other = t.nccl[["key"]].merge(overall.reset_index(), on="key", how="left")
        t.nccl["baseline"] = own["baseline"].fillna(other["baseline"]).to_numpy()
        t.nccl["baseline_mad"] = own["mad"].fillna(other["mad"]).fillna(0.0).to_numpy()


def add_late_start(t: RankTables, params: Params) -> None:
    """The input each collective waited for (dependency_row), when it was then ready to run
    (ready), its delay (start - ready) and the suspect overlap of that delay."""
    nccl, k = t.nccl, t.trace.kernels
    ts = nccl["ts"].to_numpy(dtype=np.float64)
    issued = np.fmax(nccl["launch_end"].to_numpy(), nccl["prev_end"].to_numpy())
    issued = np.minimum(np.where(np.isfinite(issued), issued, ts), ts)
    nccl["dependency_row"] = dependency_rows(t.trace, nccl.assign(ready=issued))
    ready = ready_after_input(k, nccl["dependency_row"].to_numpy(), issued, ts)
    nccl["ready"] = ready
    nccl["delay"] = ts - ready
    nccl["wait_suspect_overlap"] = coverage_excluding_stream(
        k, t.suspects, nccl["stream"].to_numpy(), ready, ts)


def classify_victims(t: RankTables, params: Params) -> pd.DataFrame:
    """Victims (slowed and/or late) with cost and their top culprit kernel row."""
    n = t.nccl
    excess = n["eff_dur"] - n["baseline"]
    threshold = np.maximum.reduce([
        np.full(len(n), params.min_excess_us), params.min_slowdown * n["baseline"].to_numpy(),
        params.noise_mads * 1.4826 * n["baseline_mad"].to_numpy()])
    slowed = n["baseline"].notna() & (excess >= threshold) & ~n["clean"]
    slow_cost = np.where(slowed, np.minimum(excess, n["suspect_overlap"]), 0.0)
    late = ((n["delay"] >= params.min_late_us)
            & (n["wait_suspect_overlap"] >= 0.5 * n["delay"]))
    late_cost = np.where(late, np.minimum(n["delay"], n["wait_suspect_overlap"]), 0.0)
    out = n.assign(excess=excess, slowed=slowed, late=late, slow_cost=slow_cost,
                   late_cost=late_cost, cost=slow_cost + late_cost)
    out = out[out["cost"] >= params.min_excess_us].copy()
    if out.empty:
        return out.assign(culprit_row=pd.Series(dtype=np.int64),
                          culprit_overlap=pd.Series(dtype=float))
    # The culprit: the suspect kernel overlapping the victim's wait and run the most.
    k = t.trace.kernels
    lo = np.where(out["late"], out["ready"], out["ts"]).astype(np.float64)
    hi = out["end"].to_numpy(dtype=np.float64)
    rows = np.flatnonzero(t.suspects)
    wi, sj, ov = window_pairs(lo, hi, k["ts"].to_numpy(dtype=np.float64)[rows],
                              k["end"].to_numpy(dtype=np.float64)[rows])
    same_stream = k["stream"].to_numpy()[rows[sj]] == out["stream"].to_numpy()[wi]
    pairs = pd.DataFrame({"w": wi, "row": rows[sj], "ov": ov})[~same_stream]
    best = pairs.sort_values("ov").groupby("w").last()
    culprit = np.full(len(out), -1, dtype=np.int64)
    culprit_ov = np.zeros(len(out))
    culprit[best.index.to_numpy()] = best["row"].to_numpy()
    culprit_ov[best.index.to_numpy()] = best["ov"].to_numpy()
    n_culprits = pairs.groupby("w").size()
    counts = np.zeros(len(out), dtype=np.int64)
    counts[n_culprits.index.to_numpy()] = n_culprits.to_numpy()
    out = out.assign(culprit_row=culprit, culprit_overlap=culprit_ov, culprit_kernels=counts)
    return out[out["culprit_row"] >= 0]


# ---- findings --------------------------------------------------------------------------------

def victim_label(trace: Trace, victim: pd.Series) -> str:
    """`all_reduce(comm:all_reduce:first)`: the collective and the user's label at its issue."""
    coll = str(victim["collective"])
    coll = coll if not coll.startswith("nccl") else kernel_label(coll)
    label = user_label(trace, int(victim["launch_tid"]), float(victim["launch_ts"]))
    return f"{coll}({label})" if label else coll


def finding_for_group(trace: Trace, group: pd.DataFrame, step_us: float | None,
                      suggestion: str = SUGGESTION) -> Finding:
    """One finding from the victims sharing a culprit line and kernel on one rank."""
    worst = group.sort_values("cost").iloc[-1]
    lost = lost_spans(trace, group)
    crow = int(worst["culprit_row"])
    culprit = culprit_of(trace, crow)
    op, stack, source = kernel_source(trace, crow)
    launch = launch_columns(trace).loc[trace.kernels.index[crow]]
    culprit_label = user_label(trace, int(launch["launch_tid"]), float(launch["launch_ts"]))
    victim = victim_label(trace, worst)
    total = total_length(lost)
    steps = sorted({int(s) for s in group["step"] if s >= 0})
    per_step_cost = total / max(1, len(steps))
    num_sms = num_sms_of(trace)
    issued = "before" if worst["launch_ts"] <= launch["launch_ts"] else "after"
    what = culprit_label or op or kernel_label(culprit.kernel or "")
    sms = f"all {num_sms} SMs" if num_sms else "every SM"
    grid_blocks = int(np.prod(culprit.grid)) if culprit.grid else None
    fills = (f"{grid_blocks} blocks, {culprit.blocks_per_sm:g} per SM, fill {sms}"
             if grid_blocks and culprit.blocks_per_sm is not None else f"fills {sms}")
    how = []
    slowed = group[group["slowed"]]
    if len(slowed):
        worst_factor = float((slowed["eff_dur"] / slowed["baseline"]).max())
        how.append(f"slowed up to {worst_factor:.2f}x")
    late = group[group["late"]]
    if len(late):
        how.append(f"started up to {float(late['delay'].max()):.0f} us late")
    victims = list(dict.fromkeys(victim_label(trace, v) for _, v in group.iterrows()))
    victims_text = ", ".join(victims[:3]) + (f" and {len(victims) - 3} more"
                                              if len(victims) > 3 else "")
    ordering = (f"{victim} issued {issued} {what} "
                f"({kernel_label(culprit.kernel or '')}); its {fills} while NCCL runs")
    evidence: dict[str, Any] = {
        "nccl_kernel": str(trace.kernels.at[int(worst["row"]), "name"]),
        "nccl_dur_us": round(float(worst["dur"]), 3),
        "nccl_effective_dur_us": round(float(worst["eff_dur"]), 3),
        "nccl_baseline_us": None if pd.isna(worst["baseline"]) else
        round(float(worst["baseline"]), 3),
        "slowdown": None if pd.isna(worst["baseline"]) or worst["baseline"] <= 0 else
        round(float(worst["eff_dur"] / worst["baseline"]), 3),
        "max_slowdown": round(worst_factor, 3) if len(slowed) else None,
        "max_late_start_us": round(float(late["delay"].max()), 3) if len(late) else 0.0,
        "overlap_us": round(float(worst["suspect_overlap"]), 3),
        "late_start_us": round(float(worst["delay"]), 3) if worst["late"] else 0.0,
        # Unknown unless the same collective instance was matched on another rank.
        "peer_wait_us": round(float(worst["eff_start"] - worst["ts"]), 3)
        if worst["peer_known"] else None,
        "victim_cost_us": round(float(worst["cost"]), 3),
        "slowed_count": int(group["slowed"].sum()),
        "late_start_count": int(group["late"].sum()),
        "culprit_kernels_beside": int(worst["culprit_kernels"]),
        "culprit_label": culprit_label,
        "warps_per_sm": _round_or_none(trace.kernels.at[crow, "warps_per_sm"]),
        "occupancy_pct": _round_or_none(trace.kernels.at[crow, "occupancy"]),
        "num_sms": num_sms,
        "steps": steps,
        "cost_per_step_us": round(per_step_cost, 3),
    }
    title = (f"NCCL {victims_text} {' and '.join(how)} by SM-filling "
             f"{kernel_label(culprit.kernel or '')}"
             f"{f' ({culprit_label})' if culprit_label else ''}"
             f"{f' x{len(group)}' if len(group) > 1 else ''}")
    start = float(min(worst["ready"], worst["ts"]) if worst["late"] else worst["ts"])
    return Finding(
        kind="sm_contention", severity=severity_from_cost(per_step_cost, step_us),
        rank=trace.rank, step=int(worst["step"]) if worst["step"] >= 0 else None,
        start_us=start, dur_us=float(worst["end"]) - start, cost_us=round(total, 3),
        count=len(group), title=title, culprit=culprit,
        cause=Cause(op=op, op_stack=stack, source=source, ordering=ordering),
        evidence=evidence, suggestion=suggestion, spans=lost)


def lost_spans(trace: Trace, victims: pd.DataFrame) -> Intervals:
    """The step time the victims lost: each one's delay or excess is where it ends later than
    it would have, the last `cost` of its run, and counts only where that tail is exposed (no
    computation beside it: a slowed collective hidden under compute costs the step nothing)."""
    end = victims["end"].to_numpy(dtype=np.float64)
    tails = as_set((end - victims["cost"].to_numpy(dtype=np.float64), end))
    return intersect_intervals(gpu_sets(trace).exposed_comm, tails)


def _round_or_none(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else round(float(value), 3)


def contention_victims(run: Run, params: Params) -> dict[int, pd.DataFrame]:
    """Per rank, the NCCL kernels hurt by SM-filling kernels (one row each, with culprit_row)."""
    tables = [nccl_table(t, params) for t in run.traces if len(t.kernels)]
    tables = sorted([t for t in tables + peer_tables(run) if len(t.nccl)], key=lambda t: t.rank)
    if not any(t.trace is not None for t in tables):
        return {}
    add_peer_wait(tables, params)
    add_baselines(tables, params)
    out = {}
    for t in tables:
        if t.trace is None:
            continue
        add_late_start(t, params)
        out[t.rank] = classify_victims(t, params)
    return out


@register_summary("sm_contention")
def nccl_summary(trace: Trace, params: Params) -> pd.DataFrame | None:
    """What other ranks need of this one: its NCCL table (instances, durations, cleanliness),
    with the thresholds the detector runs with."""
    return nccl_table(trace, params).nccl if len(trace.kernels) else None


def peer_tables(run: Run) -> list[RankTables]:
    """NCCL tables of the run's ranks that this Run does not hold (from Run.context)."""
    if run.context is None:
        return []
    held = set(run.ranks)
    return [RankTables(trace=None, nccl=table.copy(), suspects=np.zeros(0, dtype=bool),
                       rank=rank)
            for rank, table in run.context.summaries.get("sm_contention", {}).items()
            if rank not in held and table is not None]


@register("sm_contention", Params)
def detect(run: Run, params: Params) -> list[Finding]:
    """NCCL kernels slowed or delayed by SM-filling non-GEMM kernels, merged per culprit line."""
    victims = contention_victims(run, params)
    findings: list[Finding] = []
    run_step = run_step_us(run)
    for trace in run.traces:
        v = victims.get(trace.rank)
        if v is None or v.empty:
            continue
        keys = []
        for crow in v["culprit_row"]:
            _, _, source = kernel_source(trace, int(crow))
            keys.append(source_key(source) + "|" + str(trace.kernels.at[int(crow), "name"]))
        for _, group in v.assign(merge_key=keys).groupby("merge_key", sort=False):
            finding = finding_for_group(
                trace, group, run_step, TRAINER_SUGGESTION if run.from_trainer else SUGGESTION)
            # Victims whose delay ran hidden under compute cost the step nothing.
            if finding.evidence["cost_per_step_us"] >= params.min_cost_us:
                findings.append(finding)
    return findings
