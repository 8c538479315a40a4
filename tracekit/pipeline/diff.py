"""Compare two runs: analyse each (one process per rank, `tracekit.pipeline.rankwise`), then hand
the findings and per-rank totals to `tracekit.compare`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tracekit.compare import RunDiff, diff_totals
from tracekit.finding import Finding
from tracekit.pipeline.analysis import analyze_run
from tracekit.pipeline.rankwise import analyze_rankwise_totals, thinned
from tracekit.timeline.lanes import Timeline, build_timeline
from tracekit.trace import Run


def diff_paths(base: Path | str, new: Path | str, rank: int | None = None,
               progress: bool = True, params: Mapping[str, Any] | None = None
               ) -> tuple[RunDiff, Run, Run, list[Finding], list[Finding]]:
    """Analyse both runs (files or run directories), each one process per rank
    (tracekit.pipeline.rankwise: no process holds a rank's frames besides its own), then diff
    them. The Runs returned hold thin traces; `diff_runs` on loaded Runs gives the same
    RunDiff."""
    base_run, base_findings, base_totals = analyze_rankwise_totals(base, progress=progress,
                                                                   params=params)
    new_run, new_findings, new_totals = analyze_rankwise_totals(new, progress=progress,
                                                                params=params)
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
