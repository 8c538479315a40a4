"""Compare two runs: analyse each (one process per rank, `tracekit.pipeline.rankwise`), then hand
the findings and per-rank totals to `tracekit.compare`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tracekit.compare import RankTotals, RunDiff, diff_totals
from tracekit.finding import Finding
from tracekit.pipeline.analysis import analyze_run, has_stack_window
from tracekit.pipeline.rankwise import analyze_rankwise_totals, thinned
from tracekit.timeline.lanes import Timeline, build_timeline
from tracekit.trace import Run


def diff_paths(base: Path | str, new: Path | str, rank: int | None = None,
               progress: bool = True, params: Mapping[str, Any] | None = None
               ) -> tuple[RunDiff, Run, Run, list[Finding], list[Finding]]:
    """Analyse both runs (files or run directories), each one process per rank
    (tracekit.pipeline.rankwise: no process holds a rank's frames besides its own; a split
    recording in one process, to borrow its stack window's lines), then diff them. The Runs
    returned hold thin traces; `diff_runs` on loaded Runs gives the same RunDiff."""
    base_run, base_findings, base_totals = _analyzed(base, progress, params)
    new_run, new_findings, new_totals = _analyzed(new, progress, params)
    result = diff_totals(base_run, base_totals, base_findings, new_run, new_totals,
                         new_findings, rank=rank)
    return result, base_run, new_run, base_findings, new_findings


def diff_timelines(base: Path | str, new: Path | str, rank: int | None = None,
                   progress: bool = True, params: Mapping[str, Any] | None = None
                   ) -> tuple[RunDiff, list[Timeline]]:
    """`diff_paths`' RunDiff, plus each run's timeline for a side-by-side page (align="step":
    x = 0 is each rank's first ProfilerStep, so the runs line up). One run at a time is
    analysed whole in this process, drawn, and thinned before the next: the peak holds one
    run's events, not both (nor every rank's at once, as rank processes would)."""
    analysed, timelines = [], []
    for path in (base, new):
        full, found = analyze_run(path, progress=progress, params=params)
        timelines.append(build_timeline(full, rank=rank, align="step"))
        thin, totals = thinned(full)
        del full
        analysed.append((thin, totals, found))
    result = diff_totals(*analysed[0], *analysed[1], rank=rank)
    return result, timelines


def _analyzed(path: Path | str, progress: bool, params: Mapping[str, Any] | None
              ) -> tuple[Run, list[Finding], list[RankTotals]]:
    """One run's findings and per-rank totals: one process per rank, except for a split
    recording, whose ranks borrow their source lines from its stack window in one process (as
    `analyze` does), thinned after."""
    if has_stack_window(Path(path)):
        full, findings = analyze_run(path, progress=progress, params=params)
        thin, totals = thinned(full)
        return thin, findings, totals
    return analyze_rankwise_totals(path, progress=progress, params=params)
