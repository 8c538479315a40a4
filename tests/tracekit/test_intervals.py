"""Interval-set arithmetic (tracekit.overlap) agrees with counting time on a fine grid."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.intervals import (
    as_set,
    clip_intervals,
    group_time_order,
    intersect_intervals,
    length_within,
    sort_order,
    subtract_intervals,
    total_length,
)

GRID = np.arange(0.0, 120.0, 0.5) + 0.25
"""Midpoints of half-microsecond cells: the integer intervals below cover whole cells."""

spans = st.lists(st.tuples(st.integers(0, 100), st.integers(0, 20)), max_size=8).map(
    lambda pairs: (np.array([float(s) for s, _ in pairs]),
                   np.array([float(s + d) for s, d in pairs])))


def cells(a: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Which grid cells the intervals cover."""
    inside = (GRID[:, None] >= a[0][None, :]) & (GRID[:, None] < a[1][None, :])
    return inside.any(axis=1)


def grid_length(mask: np.ndarray) -> float:
    return float(mask.sum()) * 0.5


def is_set(a: tuple[np.ndarray, np.ndarray]) -> bool:
    """Sorted, disjoint, non-touching, no empty interval."""
    return bool(np.all(a[1] > a[0]) and np.all(a[0][1:] > a[1][:-1]))


@settings(max_examples=300, deadline=None)
@given(spans, spans)
def test_intersection_and_difference_measure_what_a_grid_counts(a_raw, b_raw) -> None:
    a, b = as_set(a_raw), as_set(b_raw)
    both, only_a = intersect_intervals(a, b), subtract_intervals(a, b)
    assert is_set(both) and is_set(only_a)
    assert total_length(both) == grid_length(cells(a) & cells(b))
    assert total_length(only_a) == grid_length(cells(a) & ~cells(b))
    assert total_length(a) == grid_length(cells(a_raw))


@settings(max_examples=200, deadline=None)
@given(spans, st.integers(0, 60), st.integers(60, 120))
def test_length_within_a_window_is_the_length_of_the_clipped_set(a_raw, lo, hi) -> None:
    a = as_set(a_raw)
    assert length_within(a, np.array([lo]), np.array([hi]))[0] == total_length(
        clip_intervals(a, lo, hi))


def test_overlapping_claims_on_two_streams_count_once() -> None:
    stream_a = (np.array([0.0, 10.0]), np.array([5.0, 20.0]))
    stream_b = (np.array([3.0]), np.array([12.0]))
    union = as_set((np.concatenate([stream_a[0], stream_b[0]]),
                    np.concatenate([stream_a[1], stream_b[1]])))
    assert total_length(union) == 20.0


times = st.one_of(st.integers(0, 5).map(float), st.just(float("nan")))
rows = st.lists(st.tuples(st.integers(0, 2), times, st.integers(-3, 3)), max_size=30)


@settings(max_examples=400, deadline=None)
@given(rows)
def test_rows_ordered_by_group_then_time_then_a_tiebreak_come_out_as_a_lexsort(given) -> None:
    """Ties in group and time (NaN times among them) are broken by the third key, then by row."""
    group = np.array([g for g, _, _ in given], dtype=np.int64)
    ts = np.array([t for _, t, _ in given], dtype=np.float64)
    then = np.array([k for _, _, k in given], dtype=np.int64)
    assert list(group_time_order(group, ts, then)) == list(np.lexsort((then, ts, group)))
    end = ts + np.abs(then)
    assert list(sort_order(group, ts, end)) == list(np.lexsort((ts - end, ts, group)))
