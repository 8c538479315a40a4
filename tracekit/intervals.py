"""Interval arithmetic, vectorised: nesting (depth, parent, innermost-enclosing look-ups),
unions and their coverage of query windows, interval sets (intersection, difference, length
inside windows), and window/interval overlap pairs.

CPU ops and Python frames on a thread form a forest by time (a child starts and ends inside its
parent). A per-event stack walk would be the obvious way to rebuild it; here every step is a
numpy operation over all intervals at one depth, so the Python-level loops run once per nesting
level (tens), not once per event (hundreds of thousands).

Kineto writes times rounded to the nanosecond, so a child can appear to end a hair after its
parent; `EPS_US` absorbs that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS_US = 0.002
"""Slack in microseconds when comparing an end with a start (timestamps are rounded to 1 ns)."""


def sort_order(group: np.ndarray, ts: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Row order by thread, then start, then longest first: parents come before children."""
    return group_time_order(group, ts, np.asarray(ts) - np.asarray(end))


def group_time_order(group: np.ndarray, ts: np.ndarray, then: np.ndarray) -> np.ndarray:
    """Row order by group (thread), then time, then `then` (ties in row order): what
    `np.lexsort((then, ts, group))` gives.

    Two stable sorts, by time and then by group, give that order up to the rows that share
    a group and a time; only those few are then sorted by `then`. Events come nearly in time
    order, so the stable sorts cost little, where a three-key lexsort took 45 ms on a big
    rank's 777k ops (13 ms this way)."""
    group = np.asarray(group)
    ts = np.asarray(ts)
    by_time = np.argsort(ts, kind="stable")
    order = by_time[np.argsort(group[by_time], kind="stable")]
    sorted_group, sorted_ts = group[order], ts[order]
    same_time = sorted_ts[1:] == sorted_ts[:-1]
    if sorted_ts.dtype.kind == "f":  # sorting puts NaNs last, as equals
        same_time |= np.isnan(sorted_ts[1:]) & np.isnan(sorted_ts[:-1])
    tied = (sorted_group[1:] == sorted_group[:-1]) & same_time
    if tied.any():
        in_run = np.zeros(len(order), dtype=bool)
        in_run[1:] = tied
        in_run[:-1] |= tied
        at = np.flatnonzero(in_run)
        run = np.cumsum(~np.r_[False, tied])[at]  # one id per run of equal (group, time)
        rows = order[at]
        order[at] = rows[np.lexsort((rows, np.asarray(then)[rows], run))]
    return order


def nest(group: np.ndarray, ts: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depth (0 = outermost) and parent row (or -1) of every interval, nested within `group`.

    One pass per depth level: among the still-unplaced intervals of one parent (contiguous in
    start order), an interval that starts after every earlier sibling has ended is at this level;
    the others belong inside the last such interval before them, which becomes their parent.
    """
    n = len(ts)
    depth_out = np.full(n, -1, dtype=np.int64)
    parent_out = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return depth_out, parent_out
    order = sort_order(group, ts, end)
    starts = ts[order].astype(np.float64)
    ends = np.maximum(end[order].astype(np.float64), starts)
    depth = np.full(n, -1, dtype=np.int64)
    parent_pos = np.full(n, -1, dtype=np.int64)
    candidates = np.arange(n)
    segment = np.asarray(group)[order]
    level = 0
    while candidates.size:
        is_level = _starts_after_earlier_siblings(starts[candidates], ends[candidates], segment)
        placed = candidates[is_level]
        depth[placed] = level
        rest = ~is_level
        # Index of the last placed interval at or before each position (position 0 of every
        # segment is always placed, so it stays inside the same segment).
        last_placed = np.cumsum(is_level) - 1
        parent_pos[candidates[rest]] = placed[last_placed[rest]]
        candidates = candidates[rest]
        segment = parent_pos[candidates]
        level += 1
    depth_out[order] = depth
    has_parent = parent_pos >= 0
    parent_rows = np.full(n, -1, dtype=np.int64)
    parent_rows[has_parent] = order[parent_pos[has_parent]]
    parent_out[order] = parent_rows
    return depth_out, parent_out


def _starts_after_earlier_siblings(
    starts: np.ndarray, ends: np.ndarray, segment: np.ndarray
) -> np.ndarray:
    """True where an interval starts after all earlier intervals of its segment have ended.

    The running maximum of ends must restart at every segment; adding a per-segment offset
    larger than any segment's span makes one `maximum.accumulate` do that for all segments.
    """
    n = len(starts)
    new_segment = np.empty(n, dtype=bool)
    new_segment[0] = True
    np.not_equal(segment[1:], segment[:-1], out=new_segment[1:])
    segment_id = np.cumsum(new_segment) - 1
    segment_start = starts[new_segment][segment_id]
    relative_end = ends - segment_start
    span = float(relative_end.max()) + 1.0 if n else 1.0
    shifted = relative_end + segment_id * span
    running = np.maximum.accumulate(shifted)
    previous = np.empty(n, dtype=np.float64)
    previous[0] = -np.inf
    previous[1:] = running[:-1] - segment_id[1:] * span
    previous[new_segment] = -np.inf
    return (starts - segment_start) >= previous - EPS_US


def innermost_containing(
    group: np.ndarray,
    ts: np.ndarray,
    end: np.ndarray,
    parent: np.ndarray,
    query_group: np.ndarray,
    query_t: np.ndarray,
    eligible: np.ndarray | None = None,
    order: np.ndarray | None = None,
) -> np.ndarray:
    """For each query time, the innermost eligible interval of the same group containing it.

    Returns interval rows (or -1). The latest-starting interval at or before t either contains
    t, or every interval that does is one of its ancestors; so climb parents until one contains
    t (and is eligible). One vectorised step per nesting level. `order`: the intervals'
    `sort_order`, when the caller looks up the same intervals several times.
    """
    m = len(query_t)
    found = np.full(m, -1, dtype=np.int64)
    if m == 0 or len(ts) == 0:
        return found
    group = np.asarray(group)
    query_group = np.asarray(query_group)
    candidate = np.full(m, -1, dtype=np.int64)
    order = sort_order(group, ts, end) if order is None else order
    sorted_group = group[order]
    sorted_ts = ts[order]
    # One searchsorted per thread: the number of threads is small.
    bounds = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1], True])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        g = sorted_group[lo]
        queries = np.flatnonzero(query_group == g)
        if queries.size == 0:
            continue
        pos = np.searchsorted(sorted_ts[lo:hi], query_t[queries], side="right") - 1
        hit = pos >= 0
        candidate[queries[hit]] = order[lo + pos[hit]]
    pending = np.flatnonzero(candidate >= 0)
    while pending.size:
        rows = candidate[pending]
        inside = end[rows] >= query_t[pending] - EPS_US
        if eligible is not None:
            inside &= eligible[rows]
        found[pending[inside]] = rows[inside]
        pending = pending[~inside]
        candidate[pending] = parent[candidate[pending]]
        pending = pending[candidate[pending] >= 0]
    return found


def propagate_down(parent: np.ndarray, depth: np.ndarray, values: np.ndarray,
                   missing: int = -1) -> np.ndarray:
    """Fill `missing` values from the nearest ancestor that has one (one pass per depth)."""
    out = values.copy()
    if len(out) == 0:
        return out
    for level in range(1, int(depth.max()) + 1):
        rows = np.flatnonzero((depth == level) & (out == missing))
        if rows.size:
            out[rows] = out[parent[rows]]
    return out


def union_intervals(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge intervals [start, end) into sorted disjoint ones (touching intervals are merged)."""
    starts = np.asarray(starts, dtype=np.float64)
    ends = np.asarray(ends, dtype=np.float64)
    keep = ends > starts
    if not keep.all():
        starts, ends = starts[keep], ends[keep]
    del keep
    if len(starts) == 0:
        return starts, ends
    # Few arrays of the inputs' length at a time: the idle split unions millions of events.
    order = np.argsort(starts, kind="stable")
    starts = starts[order]
    reach = ends[order]
    del order
    np.maximum.accumulate(reach, out=reach)
    # A new merged interval begins where a start lies beyond everything seen before it.
    new_group = np.empty(len(starts), dtype=bool)
    new_group[0] = True
    np.greater(starts[1:], reach[:-1], out=new_group[1:])
    first = np.flatnonzero(new_group)
    last = np.append(first[1:] - 1, len(starts) - 1)
    return starts[first], reach[last]


Intervals = tuple[np.ndarray, np.ndarray]
"""An interval set: (starts, ends), float64, sorted, disjoint, each [start, end)."""

EMPTY: Intervals = (np.zeros(0), np.zeros(0))


def as_set(spans: tuple[np.ndarray, np.ndarray]) -> Intervals:
    """Any intervals (unsorted, overlapping, empty ones) as an interval set."""
    return union_intervals(spans[0], spans[1])


def total_length(a: Intervals) -> float:
    return float(np.sum(a[1] - a[0])) if len(a[0]) else 0.0


def _covered_before(a: Intervals, t: np.ndarray) -> np.ndarray:
    """Length of interval set `a` in (-inf, t) for each t."""
    starts, ends = a
    t = np.asarray(t, dtype=np.float64)
    if len(starts) == 0:
        return np.zeros_like(t)
    cum = np.concatenate([[0.0], np.cumsum(ends - starts)])
    k = np.searchsorted(starts, t, side="right") - 1
    kc = np.clip(k, 0, None)
    partial = np.clip(t - starts[kc], 0.0, ends[kc] - starts[kc])
    return np.where(k >= 0, cum[kc] + partial, 0.0)


def length_within(a: Intervals, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Covered length of interval set `a` inside each window [lo, hi) (0 for empty windows)."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.maximum(np.asarray(hi, dtype=np.float64), lo)
    return _covered_before(a, hi) - _covered_before(a, lo)


def intersect_intervals(a: Intervals, b: Intervals) -> Intervals:
    """a ∩ b of two interval sets.

    Every piece of the intersection starts at a start of one set that lies inside the other,
    and ends at the first end of either set after it; so candidates are the starts of each set
    covered by the other, and each piece ends at min(own end, the other's covering end).
    """
    pieces_s, pieces_e = [], []
    for (xs, xe), (ys, ye) in ((a, b), (b, a)):
        if len(xs) == 0 or len(ys) == 0:
            return EMPTY
        k = np.searchsorted(ys, xs, side="right") - 1
        inside = (k >= 0) & (ye[np.clip(k, 0, None)] > xs)
        kk = k[inside]
        pieces_s.append(xs[inside])
        pieces_e.append(np.minimum(xe[inside], ye[kk]))
    # A piece starting at a start of both sets appears twice: the union merges it.
    return union_intervals(np.concatenate(pieces_s), np.concatenate(pieces_e))


def subtract_intervals(a: Intervals, b: Intervals) -> Intervals:
    """a minus b of two interval sets."""
    if len(a[0]) == 0 or len(b[0]) == 0:
        return a
    return intersect_intervals(a, complement(b, float(a[0][0]), float(a[1][-1])))


def complement(a: Intervals, lo: float, hi: float) -> Intervals:
    """[lo, hi) minus interval set a."""
    a = clip_intervals(a, lo, hi)
    starts = np.concatenate([[lo], a[1]])
    ends = np.concatenate([a[0], [hi]])
    keep = ends > starts
    return starts[keep], ends[keep]


def clip_intervals(a: Intervals, lo: float, hi: float) -> Intervals:
    """The part of interval set a inside [lo, hi)."""
    s, e = np.maximum(a[0], lo), np.minimum(a[1], hi)
    keep = e > s
    return s[keep], e[keep]


def clip_to_windows(a: Intervals, windows: Intervals) -> Intervals:
    """The part of interval set a inside the interval set `windows`."""
    return intersect_intervals(a, windows)


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


PAIR_CHUNK = 1 << 22
"""Candidate pairs `window_pairs` expands at once (a few arrays of this many 8-byte values):
long windows over many short intervals make hundreds of millions of candidates, of which few
overlap, so they are expanded a run of windows at a time."""


def window_pairs(lo: np.ndarray, hi: np.ndarray, iv_start: np.ndarray, iv_end: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (window i, interval j, overlap length) with positive overlap, vectorised, ordered
    by window and then by interval start.

    Intervals sorted by start; for each window the candidates are those starting before its end
    and after (its start - the longest interval), found with searchsorted and exploded, for
    runs of windows of at most PAIR_CHUNK candidates at a time (a single window may exceed it).
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
    ends = np.cumsum(counts)
    parts = []
    start = 0
    while start < len(lo):
        before = ends[start] - counts[start]
        stop = max(start + 1, int(np.searchsorted(ends, before + PAIR_CHUNK, side="right")))
        window = np.arange(start, stop)
        n = counts[start:stop]
        wi = np.repeat(window, n)
        offsets = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        pos = np.repeat(first[start:stop], n) + offsets
        overlap = np.minimum(hi[wi], e[pos]) - np.maximum(lo[wi], s[pos])
        keep = overlap > 0
        parts.append((wi[keep], order[pos[keep]], overlap[keep]))
        start = stop
    if len(parts) == 1:
        return parts[0]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))


def busy_us(ts: np.ndarray, ends: np.ndarray, start: float, end: float) -> float:
    """Union of kernel intervals inside [start, end) (overlapping streams counted once).

    `ts`/`ends` are the kernels sorted by start, so a window needs no sort of its own.
    """
    inside = (ends > start) & (ts < end)
    if not inside.any():
        return 0.0
    starts = np.maximum(ts[inside], start)
    reach = np.maximum.accumulate(np.minimum(ends[inside], end))
    gaps = np.clip(starts[1:] - reach[:-1], 0, None)
    return float(reach[-1] - starts[0] - gaps.sum())


def window_rows(ts: np.ndarray, lo: np.ndarray, hi: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """All (window i, row j) with lo[i] <= ts[j] < hi[i]; a window's rows in frame order.

    One sort of the frame and two searchsorted per window, instead of a full-frame filter per
    step (the frame order is kept so that sums and "longest instance" ties come out as before).
    A window with a NaN bound holds nothing (a comparison with NaN is false).
    """
    order = np.argsort(ts, kind="stable")
    first = np.searchsorted(ts[order], lo, side="left")
    last = np.searchsorted(ts[order], hi, side="left")
    counts = np.where(np.isnan(lo) | np.isnan(hi), 0, np.maximum(last - first, 0))
    window = np.repeat(np.arange(len(lo)), counts)
    offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    rows = order[np.repeat(first, counts) + offsets]
    keep = np.lexsort((rows, window))
    return window[keep], rows[keep]
