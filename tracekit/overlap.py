"""Communication busy time and communication/computation overlap, per rank, from kernel intervals.

Overlap is the share of the time NCCL kernels run during which some computation kernel runs too:
the quantity HTA reports as `comp_comm_overlap_pctg`. Low overlap on a communication-bound job
means the GPU waits for the network with nothing to do; it is the headline number that comm_gap
and sm_contention findings explain.

Definitions (kept close to HTA's so the two agree, see tests/tracekit/test_hta_agreement.py):
- communication kernels: NCCL kernels (`kernels.is_nccl`);
- computation kernels: every other kernel (memcpy/memset live in `gpu_mem` and are neither);
- busy time of a set of kernels: the length of the union of their [ts, end) intervals, so two
  kernels running at once on different streams count once;
- overlap: the length of the intersection of the communication union with the computation union.

Everything is vectorised: a union is built by one sort and a running maximum, and the coverage of
any number of query windows by a union is answered with a prefix sum and `searchsorted`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from tracekit.trace import Run, Trace


def union_intervals(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge intervals [start, end) into sorted disjoint ones (touching intervals are merged)."""
    starts = np.asarray(starts, dtype=np.float64)
    ends = np.asarray(ends, dtype=np.float64)
    keep = ends > starts
    starts, ends = starts[keep], ends[keep]
    if len(starts) == 0:
        return starts, ends
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    reach = np.maximum.accumulate(ends)
    # A new merged interval begins where a start lies beyond everything seen before it.
    new_group = np.empty(len(starts), dtype=bool)
    new_group[0] = True
    new_group[1:] = starts[1:] > reach[:-1]
    first = np.flatnonzero(new_group)
    last = np.append(first[1:] - 1, len(starts) - 1)
    return starts[first], reach[last]


@dataclass
class Coverage:
    """A union of intervals that answers "how much of [a, b) does it cover" for many windows."""

    starts: np.ndarray
    ends: np.ndarray
    _cum: np.ndarray

    @classmethod
    def of(cls, starts: np.ndarray, ends: np.ndarray) -> Coverage:
        s, e = union_intervals(starts, ends)
        cum = np.concatenate([[0.0], np.cumsum(e - s)])
        return cls(s, e, cum)

    @property
    def total(self) -> float:
        return float(self._cum[-1])

    def covered_before(self, t: np.ndarray) -> np.ndarray:
        """Covered length in (-inf, t) for each t."""
        t = np.asarray(t, dtype=np.float64)
        if len(self.starts) == 0:
            return np.zeros_like(t)
        k = np.searchsorted(self.starts, t, side="right") - 1
        kc = np.clip(k, 0, None)
        partial = np.clip(t - self.starts[kc], 0.0, self.ends[kc] - self.starts[kc])
        return np.where(k >= 0, self._cum[kc] + partial, 0.0)

    def overlap(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Covered length inside each window [a, b) (0 for empty windows)."""
        a = np.asarray(a, dtype=np.float64)
        b = np.maximum(np.asarray(b, dtype=np.float64), a)
        return self.covered_before(b) - self.covered_before(a)

    def intersection(self, other: Coverage) -> float:
        """Length of the intersection of two unions (own intervals are disjoint, so sum them)."""
        return float(other.overlap(self.starts, self.ends).sum())


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
