"""tracekit's communication busy time and comm/compute overlap agree with HTA's on real traces.

HTA keeps only kernels launched before the last ProfilerStep begins (it drops the last step as
possibly incomplete), so tracekit is given the same kernels. HTA then rounds every timestamp and
duration down to whole microseconds ("Rounding down ns resolution events"); tracekit keeps the
nanoseconds. Each rounded interval can move its start by < 1 us and its end by < 2 us, so a
union (busy time) can differ by < 2 us per interval in it, and an intersection (overlap) by
< 2 us per interval taking part in it. That bound, computed per trace, is the tolerance: it is
tight enough to catch any real disagreement in definitions (a missed kernel costs its whole
duration, tens to thousands of us), and it is a bound rather than a fudge factor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tracekit.detectors.collectives import kernel_overlap, launch_columns
from tracekit.intervals import Coverage, union_intervals, window_pairs
from tracekit.pipeline import load

pytest.importorskip("hta")

from tracekit.hta import breakdown

ROOT = Path(__file__).resolve().parents[2]
from tests.planted import EXTERNAL  # noqa: E402

TRACES = [
    EXTERNAL / "a100_nccl_2ranks_rank0.json.gz",
    EXTERNAL / "sampled_128ranks_rank0.json.gz",
    ROOT / "tests/data/gpu/sm_contention_eager/rank0.pt.trace.json.gz",
    ROOT / "tests/data/gpu/comm_gap_late/rank1.pt.trace.json.gz",
]


@pytest.mark.parametrize("path", TRACES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_comm_busy_and_overlap_agree_with_hta(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} not present")
    hta = breakdown(path)
    trace = load(path, progress=False).traces[0]
    launch_ts = launch_columns(trace)["launch_ts"].to_numpy()
    if len(trace.steps) > 1:  # HTA's include_last_profiler_step=False selection
        kept = launch_ts < trace.steps["cpu_ts"].max()
    else:
        kept = np.isfinite(launch_ts)
    kernels = trace.kernels[kept]
    ours = kernel_overlap(kernels, trace.rank)

    comm, comp = kernels[kernels["is_nccl"]], kernels[~kernels["is_nccl"]]
    _, touching = window_pairs(comm["ts"].to_numpy(), comm["end"].to_numpy(),
                               comp["ts"].to_numpy(), comp["end"].to_numpy())[:2]
    busy_tol = 2.0 * len(comm)
    overlap_tol = 2.0 * (len(comm) + len(np.unique(touching)))

    hta_busy = float(hta["comm_busy"].set_index("rank").loc[trace.rank, "comm_busy_us"])
    hta_pct = float(hta["comm_comp_overlap"].set_index("rank")
                    .loc[trace.rank, "comp_comm_overlap_pctg"])
    assert ours.comm_kernels > 0
    assert abs(ours.comm_busy_us - hta_busy) <= busy_tol
    hta_overlap_us = hta_pct / 100.0 * hta_busy
    # HTA rounds the percentage to 2 decimals: allow that too.
    assert abs(ours.overlap_us - hta_overlap_us) <= overlap_tol + 0.005 / 100 * hta_busy


def test_union_and_coverage_match_brute_force() -> None:
    rng = np.random.default_rng(7)
    starts = rng.uniform(0, 1000, 300)
    ends = starts + rng.exponential(20, 300)
    grid = np.arange(0.0, 1200.0, 0.25)
    covered = ((grid[:, None] >= starts) & (grid[:, None] < ends)).any(axis=1)
    s, e = union_intervals(starts, ends)
    assert np.all(s[1:] > e[:-1])  # disjoint and sorted
    cov = Coverage.of(starts, ends)
    assert cov.total == pytest.approx(covered.sum() * 0.25, abs=0.25 * 2 * len(s))
    lo, hi = np.array([0.0, 100.0, 500.0]), np.array([1200.0, 150.0, 500.0])
    inside = [covered[(grid >= a) & (grid < b)].sum() * 0.25 for a, b in zip(lo, hi, strict=True)]
    assert np.allclose(cov.overlap(lo, hi), inside, atol=0.25 * 2 * len(s))
