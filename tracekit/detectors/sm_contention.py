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
  (collective name, in/out element counts, dtype) on the same rank among instances with no
  suspect kernel beside them (suspect overlap < `clean_overlap_frac` of its duration); when this
  rank has no such instance, the same collective's clean instances on the other ranks. The
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
- a collective that is long because a peer rank joined late is not contention: when several
  ranks are loaded, the same collective instance (process group, GPU step, issue order,
  collective and size) is matched across ranks, the ranks' clocks are aligned by the median
  difference of the instances' end times (collectives end together), and the duration used is
  measured from the last rank's start (`evidence.peer_wait_us` says how much was waiting).

A suspect ("SM-filling") kernel: grid blocks >= `min_waves` x the number of SMs (CUPTI's
`blocks per SM` >= 1: at least one block on every SM), on another stream, of category
elementwise, reduction, triton, memory or other (never gemm, attention or NCCL).

Findings are merged per (rank, culprit source line, culprit kernel name) with the count, the
total cost, and the worst occurrence's place and evidence. Severity is the cost per profiled
step against the median step time.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tracekit.detectors import register, register_summary
from tracekit.detectors.steptime import run_step_us
from tracekit.finding import Cause, Culprit, Finding, SourceLine, severity_from_cost
from tracekit.link import op_stack
from tracekit.names import kernel_label
from tracekit.overlap import Coverage
from tracekit.trace import Run, Trace

SUSPECT_CATEGORIES = frozenset({"elementwise", "reduction", "triton", "memory", "other"})
"""Kernel categories that may be blamed for starving NCCL (GEMM/attention overlap is wanted)."""
INTERNAL_LABEL = re.compile(
    r"^(ProfilerStep#|nccl:|##|Torch-Compiled|record_param_comms|c10d::|CompiledFunction)")
"""record_function names torch itself writes; user labels are everything else."""
SUGGESTION = (
    "Keep the SMs free for NCCL: bound the culprit's grid (e.g. a persistent Triton kernel on a "
    "few SMs, like the transpose-copy kernel), or issue it before the collective starts or after "
    "it ends."
)


@dataclass
class ContentionParams:
    """Thresholds of the detector; see the module docstring for why each default."""

    min_waves: float = 1.0
    min_slowdown: float = 0.10
    min_excess_us: float = 20.0
    noise_mads: float = 4.0
    min_late_us: float = 30.0
    clean_overlap_frac: float = 0.10
    clock_tol_us: float = 50.0
    """Largest spread (MAD) of cross-rank end differences for the ranks' clocks to be trusted."""


# ---- shared helpers (comm_gap uses them too) ------------------------------------------------

def num_sms_of(trace: Trace) -> int | None:
    """Number of SMs of the trace's GPU (deviceProperties), when the trace says."""
    return int(trace.num_sms) if trace.num_sms else None


def sm_filling(kernels: pd.DataFrame, num_sms: int | None, min_waves: float = 1.0) -> np.ndarray:
    """True for kernels with at least `min_waves` blocks per SM (every SM gets a block).

    CUPTI's `blocks per SM` is grid blocks / numSms; where it is missing, grid / num_sms.
    """
    bps = kernels["blocks_per_sm"].to_numpy(dtype=np.float64, na_value=np.nan)
    if num_sms:
        blocks = (kernels["grid_x"].to_numpy(dtype=np.float64, na_value=np.nan)
                  * kernels["grid_y"].to_numpy(dtype=np.float64, na_value=np.nan)
                  * kernels["grid_z"].to_numpy(dtype=np.float64, na_value=np.nan))
        bps = np.where(np.isfinite(bps), bps, blocks / num_sms)
    return np.nan_to_num(bps, nan=0.0) >= min_waves


def suspect_mask(kernels: pd.DataFrame, num_sms: int | None, min_waves: float = 1.0
                 ) -> np.ndarray:
    """SM-filling kernels that are not GEMM, attention or NCCL: the ones that starve NCCL."""
    category = kernels["category"].astype(str).to_numpy()
    return (sm_filling(kernels, num_sms, min_waves)
            & np.isin(category, list(SUSPECT_CATEGORIES))
            & ~kernels["is_nccl"].to_numpy(dtype=bool))


def launch_columns(trace: Trace) -> pd.DataFrame:
    """Per kernel row: launch_ts, launch_end, launch_tid of its launch call (NaN/-1 if unknown)."""
    kernels, launches = trace.kernels, trace.launches
    if "launch_idx" in kernels:
        idx = kernels["launch_idx"].fillna(-1).to_numpy(dtype=np.int64)
    else:  # not linked: join on the correlation id
        calls = launches[launches["is_kernel_launch"].astype(bool)]
        by_corr = pd.Series(calls.index.to_numpy(), index=calls["correlation"].to_numpy())
        by_corr = by_corr[~by_corr.index.duplicated(keep="last")]
        idx = kernels["correlation"].map(by_corr).fillna(-1).to_numpy(dtype=np.int64)
    ok = (idx >= 0) & (idx < len(launches))
    safe = np.where(ok, idx, 0)

    def take(col: str, missing: float) -> np.ndarray:
        if not len(launches):
            return np.full(len(kernels), missing)
        return np.where(ok, launches[col].to_numpy(dtype=np.float64)[safe], missing)

    return pd.DataFrame({"launch_ts": take("ts", np.nan), "launch_end": take("end", np.nan),
                         "launch_tid": take("tid", -1).astype(np.int64),
                         "launch_row": np.where(ok, idx, -1)}, index=kernels.index)


def previous_end_on_stream(kernels: pd.DataFrame) -> np.ndarray:
    """For each kernel, when everything before it on its stream had ended (NaN for the first)."""
    order = kernels.sort_values(["stream", "ts"], kind="stable")
    reach = order.groupby("stream", sort=False)["end"].cummax()
    prev = reach.groupby(order["stream"], sort=False).shift(1)
    return prev.reindex(kernels.index).to_numpy(dtype=np.float64)


def window_pairs(lo: np.ndarray, hi: np.ndarray, iv_start: np.ndarray, iv_end: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (window i, interval j, overlap length) with positive overlap, vectorised.

    Intervals sorted by start; for each window the candidates are those starting before its end
    and after (its start - the longest interval), found with searchsorted and exploded.
    """
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    if len(lo) == 0 or len(iv_start) == 0:
        return empty
    order = np.argsort(iv_start, kind="stable")
    s, e = iv_start[order], iv_end[order]
    longest = float(np.max(e - s))
    first = np.searchsorted(s, lo - longest, side="left")
    last = np.searchsorted(s, hi, side="left")
    counts = np.maximum(last - first, 0)
    if counts.sum() == 0:
        return empty
    wi = np.repeat(np.arange(len(lo)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    pos = np.repeat(first, counts) + offsets
    overlap = np.minimum(hi[wi], e[pos]) - np.maximum(lo[wi], s[pos])
    keep = overlap > 0
    return wi[keep], order[pos[keep]], overlap[keep]


def coverage_excluding_stream(kernels: pd.DataFrame, mask: np.ndarray, streams: np.ndarray,
                              lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Length of [lo, hi) covered by `mask` kernels on streams other than each window's stream.

    One union per distinct window stream (a handful of comm streams), each queried vectorised.
    """
    out = np.zeros(len(lo))
    k_stream = kernels["stream"].to_numpy()
    ts, end = kernels["ts"].to_numpy(dtype=np.float64), kernels["end"].to_numpy(dtype=np.float64)
    for stream in np.unique(streams):
        pick = mask & (k_stream != stream)
        cov = Coverage.of(ts[pick], end[pick])
        rows = streams == stream
        out[rows] = cov.overlap(lo[rows], hi[rows])
    return out


@dataclass
class LabelIndex:
    """User record_function spans on CPU threads as arrays, for many "label at (tid, t)" asks."""

    tid: np.ndarray
    ts: np.ndarray
    end: np.ndarray
    names: np.ndarray

    @classmethod
    def of(cls, trace: Trace) -> LabelIndex:
        cached = _LABEL_INDEX.get(id(trace))
        if cached is not None and cached[0]() is trace:
            return cached[1]
        ann = trace.annotations
        if len(ann):
            ann = ann[(ann["side"] == "cpu")
                      & ~ann["name"].astype(str).str.match(INTERNAL_LABEL).to_numpy(bool)]
        index = cls(tid=ann["tid"].to_numpy(dtype=np.int64) if len(ann) else np.zeros(0, int),
                    ts=ann["ts"].to_numpy(dtype=np.float64) if len(ann) else np.zeros(0),
                    end=ann["end"].to_numpy(dtype=np.float64) if len(ann) else np.zeros(0),
                    names=ann["name"].astype(str).to_numpy() if len(ann) else np.zeros(0, str))
        _LABEL_INDEX[id(trace)] = (weakref.ref(trace), index)
        return index

    def at(self, tid: int, t: float) -> str | None:
        """The innermost (latest-starting) label open on thread `tid` at time `t`."""
        if not len(self.ts) or tid < 0 or not np.isfinite(t):
            return None
        hit = np.flatnonzero((self.tid == tid) & (self.ts <= t) & (self.end >= t))
        if not len(hit):
            return None
        return str(self.names[hit[np.argmax(self.ts[hit])]])


_LABEL_INDEX: dict[int, tuple[weakref.ref, LabelIndex]] = {}


def user_label(trace: Trace, tid: int, ts: float) -> str | None:
    """The innermost user record_function label open on CPU thread `tid` at time `ts`."""
    return LabelIndex.of(trace).at(tid, ts)


def source_of_op(ops: pd.DataFrame, row: int) -> SourceLine | None:
    """The linker's user source line of op `row`, or of its nearest ancestor that has one."""
    if "src_file" not in ops:
        return None
    parents = ops["parent"].to_numpy()
    hops = 0
    while 0 <= row < len(ops) and hops < 64:
        file, line = ops.at[row, "src_file"], ops.at[row, "src_line"]
        if isinstance(file, str) and file and not pd.isna(line) and int(line) >= 0:
            function = ops.at[row, "src_function"] if "src_function" in ops else ""
            exact = bool(ops.at[row, "src_line_exact"]) if "src_line_exact" in ops else False
            return SourceLine(file=file, line=int(line), function=str(function or ""),
                              line_exact=exact)
        row, hops = int(parents[row]), hops + 1
    return None


def kernel_source(trace: Trace, row: int) -> tuple[str | None, list[str], SourceLine | None]:
    """(op name, op stack, user source line) behind kernel row `row`."""
    kernels = trace.kernels
    op_row = int(kernels.at[row, "op_idx"]) if "op_idx" in kernels else -1
    if op_row < 0 or op_row >= len(trace.ops):
        return None, [], None
    # The link's op_stack, not a walk up `parent`: that interleaves the record_function
    # labels (ProfilerStep#N, optimizer.step, tie:...) that say where in the step it ran.
    return (str(trace.ops.at[op_row, "name"]), op_stack(trace, op_row),
            source_of_op(trace.ops, op_row))


def collective_name(kernels: pd.DataFrame) -> pd.Series:
    """`Collective name` where recorded, else the NCCL kernel's name."""
    coll = kernels["collective"].astype(object)
    return coll.where(coll.notna() & (coll.astype(str) != ""), kernels["name"]).astype(str)


def kernel_steps(trace: Trace) -> np.ndarray:
    """GPU-side step of each kernel (the linker's column, else by the GPU step spans)."""
    kernels = trace.kernels
    if "step" in kernels:
        return kernels["step"].fillna(-1).to_numpy(dtype=np.int64)
    steps = trace.steps.dropna(subset=["gpu_ts"]).sort_values("gpu_ts")
    ts = kernels["ts"].to_numpy(dtype=np.float64)
    if steps.empty:
        return np.full(len(ts), -1, dtype=np.int64)
    pos = np.searchsorted(steps["gpu_ts"].to_numpy(), ts, side="right") - 1
    safe = np.clip(pos, 0, None)
    inside = (pos >= 0) & (ts <= steps["gpu_end"].to_numpy()[safe])
    return np.where(inside, steps["step"].to_numpy()[safe], -1).astype(np.int64)


def culprit_of(trace: Trace, row: int) -> Culprit:
    k = trace.kernels
    grid = [int(k.at[row, c]) for c in ("grid_x", "grid_y", "grid_z")] \
        if not pd.isna(k.at[row, "grid_x"]) else None
    bps = k.at[row, "blocks_per_sm"]
    return Culprit(kernel=str(k.at[row, "name"]), stream=int(k.at[row, "stream"]), grid=grid,
                   blocks_per_sm=None if pd.isna(bps) else round(float(bps), 2))


def source_key(source: SourceLine | None) -> str:
    return f"{source.file}:{source.line}" if source else ""


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


def nccl_table(trace: Trace, params: ContentionParams) -> RankTables:
    """NCCL kernels of a rank with launch, readiness, suspect overlap and instance keys."""
    k = trace.kernels
    suspects = suspect_mask(k, num_sms_of(trace), params.min_waves)
    is_nccl = k["is_nccl"].to_numpy(dtype=bool)
    launch = launch_columns(trace)
    prev_end = previous_end_on_stream(k)
    steps = kernel_steps(trace)
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
    table["key"] = (table["collective"] + "|" + table["in_nelems"].astype(str) + "|"
                    + table["out_nelems"].astype(str) + "|" + table["dtype"])
    table["suspect_overlap"] = coverage_excluding_stream(
        k, suspects, table["stream"].to_numpy(), table["ts"].to_numpy(), table["end"].to_numpy())
    # Issue order of collectives within (process group, step): the same on every rank.
    issue_time = table["launch_ts"].fillna(table["ts"])
    table["order"] = issue_time.groupby([table["pg"], table["step"]]).rank(method="first")
    return RankTables(trace=trace, nccl=table, suspects=suspects, rank=trace.rank)


def add_peer_wait(tables: list[RankTables], params: ContentionParams) -> None:
    """eff_start: the latest start of the same collective instance over ranks (own clock).

    Ranks' clocks are put on the first rank's clock by the median difference of matched
    instances' end times; a rank whose differences spread more than `clock_tol_us` is left out.
    """
    for t in tables:
        t.nccl["eff_start"] = t.nccl["ts"]
    if len(tables) < 2:
        return
    match_cols = ["pg", "step", "order", "key"]
    ref = tables[0].nccl[match_cols + ["end"]]
    offsets: dict[int, float] = {}
    for t in tables:
        both = t.nccl[match_cols + ["end"]].merge(ref, on=match_cols, suffixes=("", "_ref"))
        if both.empty:
            continue
        diff = both["end"] - both["end_ref"]
        offset = float(diff.median())
        if float((diff - offset).abs().median()) <= params.clock_tol_us:
            offsets[t.rank] = offset
    if len(offsets) < 2:
        return
    starts = pd.concat([t.nccl[match_cols].assign(start_ref=t.nccl["ts"] - offsets[t.rank])
                        for t in tables if t.rank in offsets], ignore_index=True)
    latest = starts.groupby(match_cols, sort=False)["start_ref"].max().rename("latest_ref")
    for t in tables:
        if t.rank not in offsets:
            continue
        joined = t.nccl[match_cols].merge(latest.reset_index(), on=match_cols, how="left")
        latest_own = joined["latest_ref"].to_numpy() + offsets[t.rank]
        t.nccl["eff_start"] = np.fmax(t.nccl["ts"].to_numpy(),
                                      np.nan_to_num(latest_own, nan=-np.inf))


def robust_stats(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Median (baseline) and median absolute deviation (mad) of eff_dur per group."""
    med = frame.groupby(keys)["eff_dur"].transform("median")
    grouped = frame.assign(dev=(frame["eff_dur"] - med).abs()).groupby(keys)
    return pd.DataFrame({"baseline": grouped["eff_dur"].median(), "mad": grouped["dev"].median()})


def add_baselines(tables: list[RankTables], params: ContentionParams) -> None:
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


def add_late_start(t: RankTables, params: ContentionParams) -> None:
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


def ready_after_input(kernels: pd.DataFrame, dependency: np.ndarray, ready: np.ndarray,
                      start: np.ndarray) -> np.ndarray:
    """`ready` moved to the end of the dependency kernel (when there is one), at most `start`."""
    dep_end = np.where(dependency >= 0,
                       kernels["end"].to_numpy(dtype=np.float64)[np.clip(dependency, 0, None)],
                       -np.inf)
    return np.minimum(np.maximum(ready, dep_end), start)


def dependency_rows(trace: Trace, victims: pd.DataFrame, slack_us: float = 0.5) -> np.ndarray:
    """Per victim, the kernel whose output it waited for (else -1).

    Traces do not record which event a collective's stream waited on, but the event is recorded
    on the issuing (compute) stream at issue time, so it fires when the last kernel launched on
    that stream before the collective's launch ends. Per other stream, that kernel is a
    dependency when it ended while the victim was otherwise ready (after victims["ready"]: its
    launch had returned and its stream was free) and by its start (+ `slack_us` of clock
    rounding). Among streams, the one ending last.
    """
    k = trace.kernels
    out = np.full(len(victims), -1, dtype=np.int64)
    if not len(victims) or not len(k):
        return out
    launch_ts = launch_columns(trace)["launch_ts"].to_numpy(dtype=np.float64)
    v_launch = victims["launch_ts"].to_numpy(dtype=np.float64)
    v_stream = victims["stream"].to_numpy()
    ready = victims["ready"].to_numpy(dtype=np.float64)
    start = victims["ts"].to_numpy(dtype=np.float64)
    ends = k["end"].to_numpy(dtype=np.float64)
    best_end = np.full(len(victims), -np.inf)
    candidates = ~k["is_nccl"].to_numpy(dtype=bool) & np.isfinite(launch_ts)
    streams = k["stream"].to_numpy()
    for stream in np.unique(streams[candidates]):
        rows = np.flatnonzero(candidates & (streams == stream))
        rows = rows[np.argsort(launch_ts[rows], kind="stable")]
        before = np.searchsorted(launch_ts[rows], v_launch, side="left") - 1
        has = (before >= 0) & np.isfinite(v_launch) & (v_stream != stream)
        row = rows[np.clip(before, 0, None)]
        end = ends[row]
        hit = has & (end > ready) & (end <= start + slack_us) & (end > best_end)
        out[hit], best_end[hit] = row[hit], end[hit]
    return out


def classify_victims(t: RankTables, params: ContentionParams) -> pd.DataFrame:
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


def finding_for_group(trace: Trace, group: pd.DataFrame, step_us: float | None) -> Finding:
    """One finding from the victims sharing a culprit line and kernel on one rank."""
    worst = group.sort_values("cost").iloc[-1]
    crow = int(worst["culprit_row"])
    culprit = culprit_of(trace, crow)
    op, stack, source = kernel_source(trace, crow)
    launch = launch_columns(trace).loc[trace.kernels.index[crow]]
    culprit_label = user_label(trace, int(launch["launch_tid"]), float(launch["launch_ts"]))
    victim = victim_label(trace, worst)
    total = float(group["cost"].sum())
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
        "peer_wait_us": round(float(worst["eff_start"] - worst["ts"]), 3),
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
        evidence=evidence, suggestion=SUGGESTION)


def _round_or_none(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else round(float(value), 3)


def contention_victims(run: Run, params: ContentionParams | None = None
                       ) -> dict[int, pd.DataFrame]:
    """Per rank, the NCCL kernels hurt by SM-filling kernels (one row each, with culprit_row)."""
    params = params or ContentionParams()
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
def nccl_summary(trace: Trace) -> pd.DataFrame | None:
    """What other ranks need of this one: its NCCL table (instances, durations, cleanliness),
    with the default thresholds (the ones `analyze` runs with)."""
    return nccl_table(trace, ContentionParams()).nccl if len(trace.kernels) else None


def peer_tables(run: Run) -> list[RankTables]:
    """NCCL tables of the run's ranks that this Run does not hold (from Run.context)."""
    if run.context is None:
        return []
    held = set(run.ranks)
    return [RankTables(trace=None, nccl=table.copy(), suspects=np.zeros(0, dtype=bool),
                       rank=rank)
            for rank, table in run.context.summaries.get("sm_contention", {}).items()
            if rank not in held and table is not None]


@register("sm_contention")
def detect(run: Run, **params: Any) -> list[Finding]:
    """NCCL kernels slowed or delayed by SM-filling non-GEMM kernels, merged per culprit line."""
    p = ContentionParams(**params)
    victims = contention_victims(run, p)
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
            findings.append(finding_for_group(trace, group, run_step))
    return findings
