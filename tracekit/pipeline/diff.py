"""Compare two runs: analyse each (one process per rank, `tracekit.pipeline.rankwise`), then hand
the findings and per-rank totals to `tracekit.compare`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tracekit.compare import RunDiff, diff_runs, diff_totals
from tracekit.finding import Finding
from tracekit.pipeline.analysis import analyze_run
from tracekit.pipeline.rankwise import analyze_rankwise_totals
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


def diff_loaded(base: Path | str, new: Path | str, rank: int | None = None,
                progress: bool = True, params: Mapping[str, Any] | None = None
                ) -> tuple[RunDiff, Run, Run]:
    """`diff_paths` with both runs loaded whole in this process (what a side-by-side timeline
    needs: every rank's events); the same RunDiff."""
    base_run, base_findings = analyze_run(base, progress=progress, params=params)
    new_run, new_findings = analyze_run(new, progress=progress, params=params)
    return diff_runs(base_run, base_findings, new_run, new_findings, rank=rank), base_run, new_run
