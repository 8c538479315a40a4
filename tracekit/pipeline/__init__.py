"""Load a run, run the detectors, and report: the one call behind `analyze` and `profile`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path

from tracekit.errors import UserError
from tracekit.finding import Finding
from tracekit.trace import Run

FINDINGS_FILE = "findings.json"
TIMELINE_FILE = "timeline.html"


def load_run(path: Path | str, progress: bool = True) -> Run:
    """A linked Run from a trace file or run directory (import here: load pulls in pandas)."""
    from tracekit.load import load

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    return load(path, link=True, progress=progress)


def analyze_run(
    path_or_run: Path | str | Run,
    kinds: Iterable[str] | None = None,
    rank: int | None = None,
    min_cost_us: float = 0.0,
    progress: bool = True,
) -> tuple[Run, list[Finding]]:
    """Findings of a run, worst first; optionally only some detectors, one rank, a cost floor.

    Detectors see every rank even when `rank` is given (some compare ranks), and the findings
    are filtered afterwards.
    """
    from tracekit.detectors import run_detectors

    run = path_or_run if isinstance(path_or_run, Run) else load_run(path_or_run, progress)
    check_rank(run, rank)
    findings = run_detectors(run, kinds=list(kinds) if kinds else None)
    return run, select_findings(findings, rank, min_cost_us)


def check_rank(run: Run, rank: int | None) -> None:
    """A one-line error when `rank` is given and the run has no such rank."""
    if rank is not None and rank not in run.ranks:
        known = ", ".join(str(r) for r in run.ranks) or "none"
        raise UserError(f"rank {rank} is not in {run.path} (ranks: {known})")


def select_findings(findings: list[Finding], rank: int | None,
                    min_cost_us: float) -> list[Finding]:
    """Only one rank's findings (when `rank`), only those costing at least `min_cost_us`."""
    return [f for f in findings if (rank is None or f.rank == rank) and f.cost_us >= min_cost_us]


def write_findings(findings: list[Finding], path: Path) -> Path:
    """Write the JSON contract (the list `analyze --json` prints) to `path`."""
    from tracekit.report.json_report import render_json

    path.write_text(render_json(findings) + "\n")
    return path


def analyze_run_and_print(run_dir: Path) -> None:
    """What `cli.py profile` does at the end: print the report, save <run_dir>/findings.json.

    findings.json is only written into a run directory (the trainer created it); an existing
    findings.json is replaced only when it holds a JSON list (an earlier analysis), never a file
    of another kind.
    """
    from tracekit.report import print_report

    run, findings = analyze_run(run_dir)
    print_report(run, findings)
    if not run_dir.is_dir():
        return
    target = run_dir / FINDINGS_FILE
    if target.exists() and not _is_findings_file(target):
        print(f"warning: {target} exists and is not a findings list; not overwritten",
              file=sys.stderr)
        return
    write_findings(findings, target)
    print(f"findings: {target}")
    write_run_timeline(run, findings, run_dir / TIMELINE_FILE)


def write_run_timeline(run: Run, findings: list[Finding], out: Path) -> None:
    """The interactive timeline beside the findings, when plotly is installed (it is not on
    every GPU machine); an existing file is left alone."""
    try:
        import plotly  # noqa: F401
    except ImportError:
        print("timeline: skipped (plotly is not installed)", file=sys.stderr)
        return
    if out.exists():
        print(f"timeline: {out} exists; not overwritten", file=sys.stderr)
        return
    from tracekit.timeline import write_timeline_html

    write_timeline_html(run, findings, out)
    print(f"timeline: {out}")


def _is_findings_file(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text()), list)
    except (OSError, ValueError):
        return False
