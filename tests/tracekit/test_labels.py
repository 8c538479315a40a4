"""A user's record_function label around a moment on a CPU thread, asked one at a time or for
many moments at once."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.detectors.labels import LabelIndex

spans = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 40), st.integers(0, 15)),
                 max_size=25)
moments = st.lists(st.tuples(st.integers(-1, 3), st.sampled_from([*range(0, 60), np.nan])),
                   max_size=40)


@settings(max_examples=300, deadline=None)
@given(spans, moments)
def test_many_moments_get_the_labels_one_asks_for_one_at_a_time(labels, asked) -> None:
    """Nested, overlapping, touching and equal spans on three threads; moments on no thread,
    before, between and after them, at their edges, and NaN."""
    index = LabelIndex(tid=np.array([t for t, _, _ in labels], dtype=np.int64),
                       ts=np.array([s for _, s, _ in labels], dtype=np.float64),
                       end=np.array([s + d for _, s, d in labels], dtype=np.float64),
                       names=np.array([f"label{i}" for i in range(len(labels))], dtype=object))
    tids = np.array([t for t, _ in asked], dtype=np.int64)
    times = np.array([m for _, m in asked], dtype=np.float64)
    one_by_one = [index.at(int(t), float(m)) for t, m in zip(tids, times, strict=True)]
    assert index.at_many(tids, times) == one_by_one
