"""Vectorised nesting of time intervals on one thread: depth, parent, and innermost-enclosing
look-ups.

CPU ops and Python frames on a thread form a forest by time (a child starts and ends inside its
parent). A per-event stack walk would be the obvious way to rebuild it; here every step is a
numpy operation over all intervals at one depth, so the Python-level loops run once per nesting
level (tens), not once per event (hundreds of thousands).

Kineto writes times rounded to the nanosecond, so a child can appear to end a hair after its
parent; `EPS_US` absorbs that.
"""

from __future__ import annotations

import numpy as np

EPS_US = 0.002
"""Slack in microseconds when comparing an end with a start (timestamps are rounded to 1 ns)."""


def sort_order(group: np.ndarray, ts: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Row order by thread, then start, then longest first: parents come before children."""
    return np.lexsort((ts - end, ts, group))


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
) -> np.ndarray:
    """For each query time, the innermost eligible interval of the same group containing it.

    Returns interval rows (or -1). The latest-starting interval at or before t either contains
    t, or every interval that does is one of its ancestors; so climb parents until one contains
    t (and is eligible). One vectorised step per nesting level.
    """
    m = len(query_t)
    found = np.full(m, -1, dtype=np.int64)
    if m == 0 or len(ts) == 0:
        return found
    group = np.asarray(group)
    query_group = np.asarray(query_group)
    candidate = np.full(m, -1, dtype=np.int64)
    order = sort_order(group, ts, end)
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
