"""What the collective detectors (sm_contention, comm_gap) share: NCCL kernels and the kernels
beside them, when a collective was ready to run, the input it waited for, and how busy the
communication streams were (communication/computation overlap).

Overlap is the share of the time NCCL kernels run during which some computation kernel runs too:
the quantity HTA reports as `comp_comm_overlap_pctg`. Low overlap on a communication-bound job
means the GPU waits for the network with nothing to do; it is the headline number that comm_gap
and sm_contention findings explain. Definitions (kept close to HTA's so the two agree, see
tests/tracekit/test_hta_agreement.py):
- communication kernels: NCCL kernels (`kernels.is_nccl`);
- computation kernels: every other kernel (memcpy/memset live in `gpu_mem` and are neither);
- busy time of a set of kernels: the length of the union of their [ts, end) intervals, so two
  kernels running at once on different streams count once;
- overlap: the length of the intersection of the communication union with the computation union.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from tracekit.finding import Culprit
from tracekit.intervals import Coverage
from tracekit.trace import Run, Trace

SUSPECT_CATEGORIES = frozenset({"elementwise", "reduction", "triton", "memory", "other"})
"""Kernel categories that may be blamed for starving NCCL (GEMM/attention overlap is wanted)."""


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
    idx = kernels["launch_idx"].to_numpy(dtype=np.int64)
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
    order = np.lexsort((kernels["ts"].to_numpy(), kernels["stream"].to_numpy()))
    stream = kernels["stream"].to_numpy()[order]
    reach = pd.Series(kernels["end"].to_numpy(dtype=np.float64)[order]).groupby(
        stream, sort=False).cummax()
    prev = np.empty(len(order), dtype=np.float64)
    prev[order] = reach.groupby(stream, sort=False).shift(1).to_numpy(dtype=np.float64)
    return prev


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


def collective_name(kernels: pd.DataFrame) -> pd.Series:
    """`Collective name` where recorded, else the NCCL kernel's name."""
    coll = kernels["collective"].astype(object)
    return coll.where(coll.notna() & (coll.astype(str) != ""), kernels["name"]).astype(str)


def culprit_of(trace: Trace, row: int) -> Culprit:
    k = trace.kernels
    grid = [int(k.at[row, c]) for c in ("grid_x", "grid_y", "grid_z")] \
        if not pd.isna(k.at[row, "grid_x"]) else None
    bps = k.at[row, "blocks_per_sm"]
    return Culprit(kernel=str(k.at[row, "name"]), stream=int(k.at[row, "stream"]), grid=grid,
                   blocks_per_sm=None if pd.isna(bps) else round(float(bps), 2))


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


@dataclass
class RankOverlap:
    """One rank's communication/computation time, in microseconds of the trace clock."""

    rank: int
    comm_kernels: int
    comm_busy_us: float
    comp_busy_us: float
    overlap_us: float
    overlap_pct: float
    """overlap_us / comm_busy_us * 100 (HTA's comp_comm_overlap_pctg); NaN without NCCL."""
    exposed_comm_us: float
    """Communication time with no computation beside it: what the network costs the step."""


def kernel_overlap(kernels: pd.DataFrame, rank: int = 0) -> RankOverlap:
    """Communication/computation overlap of one rank's kernel rows (any subset of `kernels`)."""
    nccl = kernels["is_nccl"].to_numpy(dtype=bool)
    ts = kernels["ts"].to_numpy(dtype=np.float64)
    end = kernels["end"].to_numpy(dtype=np.float64)
    comm = Coverage.of(ts[nccl], end[nccl])
    comp = Coverage.of(ts[~nccl], end[~nccl])
    both = comm.intersection(comp)
    pct = 100.0 * both / comm.total if comm.total > 0 else float("nan")
    return RankOverlap(rank=rank, comm_kernels=int(nccl.sum()), comm_busy_us=comm.total,
                       comp_busy_us=comp.total, overlap_us=both, overlap_pct=pct,
                       exposed_comm_us=comm.total - both)


def trace_overlap(trace: Trace) -> RankOverlap:
    """Overlap over the whole trace of one rank."""
    return kernel_overlap(trace.kernels, trace.rank)


def run_overlap(run: Run) -> pd.DataFrame:
    """One row per rank: RankOverlap fields as columns."""
    rows = [asdict(trace_overlap(t)) for t in run.traces]
    return pd.DataFrame(rows, columns=list(RankOverlap.__dataclass_fields__))


def comm_stream_busy(trace: Trace) -> pd.DataFrame:
    """Per stream that runs NCCL kernels: NCCL kernel count, NCCL busy time, and its span.

    Columns: stream, nccl_kernels, busy_us, first_ts, last_end, idle_us (span minus busy: the
    time the comm stream had no collective running, between its first and last collective).
    """
    nccl = trace.kernels[trace.kernels["is_nccl"].astype(bool)]
    rows = []
    for stream, group in nccl.groupby("stream", sort=True):
        cov = Coverage.of(group["ts"].to_numpy(), group["end"].to_numpy())
        first, last = float(group["ts"].min()), float(group["end"].max())
        rows.append({"stream": int(stream), "nccl_kernels": len(group), "busy_us": cov.total,
                     "first_ts": first, "last_end": last, "idle_us": last - first - cov.total})
    cols = ["stream", "nccl_kernels", "busy_us", "first_ts", "last_end", "idle_us"]
    return pd.DataFrame(rows, columns=cols)


def instance_keys(table: pd.DataFrame, names: pd.Series) -> np.ndarray:
    """What a collective's baseline is taken over: the same collective with the same message
    size and dtype; when the trace does not record sizes (`In msg nelems`), the same kernel at
    the same place in its step's issue order, in steps whose whole sequence of collectives
    (of that process group) is the same: the same collective of every step and rank, so that an
    8 ms all-to-all is never measured against a 30 us one, nor against whatever happens to sit
    at its place in a step that issued different collectives."""
    if not len(table):
        return np.zeros(0, dtype=object)
    sized = (table["collective"] + "|" + table["in_nelems"].astype(str) + "|"
             + table["out_nelems"].astype(str) + "|" + table["dtype"])
    kernel = pd.Series(names.astype(str).to_numpy(), index=table.index)
    # Each step's sequence is hashed per group: the joined names of a step of thousands of
    # collectives are ~100 KB, which a per-row column would hold once per row.
    sequence = kernel.groupby([table["pg"], table["step"]]).transform(
        lambda g: _crc("/".join(g.loc[table.loc[g.index, "order"].sort_values().index])))
    placed = ("unsized|" + table["collective"] + "|" + kernel + "|" + table["pg"] + "|"
              + table["order"].astype(str) + "|" + sequence)
    return np.where(table["in_nelems"].to_numpy() >= 0, sized.to_numpy(), placed.to_numpy())


def _crc(text: str) -> str:
    return f"{zlib.crc32(text.encode()):08x}"


INSTANCE_COLUMNS = ["pg", "step", "order", "key"]
"""What identifies one collective instance on every rank: process group, GPU step, issue order
within them (NCCL requires every rank to issue a group's collectives in the same order) and the
collective with its size."""


def clock_offsets(tables: dict[int, pd.DataFrame], tol_us: float) -> dict[int, float]:
    """Per rank, its clock minus the lowest rank's, from collective instances matched on both.

    Ranks' clocks are put on the first rank's clock by the median difference of matched
    instances' end times (a collective ends on every rank within microseconds); a rank whose
    differences spread (MAD) more than `tol_us` is left out, as is one with nothing matched.
    """
    if not tables:
        return {}
    ref = tables[min(tables)][INSTANCE_COLUMNS + ["end"]]
    offsets: dict[int, float] = {}
    for rank, table in sorted(tables.items()):
        both = table[INSTANCE_COLUMNS + ["end"]].merge(ref, on=INSTANCE_COLUMNS,
                                                        suffixes=("", "_ref"))
        if both.empty:
            continue
        diff = both["end"] - both["end_ref"]
        offset = float(diff.median())
        if float((diff - offset).abs().median()) <= tol_us:
            offsets[rank] = offset
    return offsets
