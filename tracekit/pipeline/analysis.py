"""Load a run, link it, run the detectors, and report, in this process: the one call behind
`analyze --html`, `timeline` and `profile`."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tracekit.accounting.table import run_accounting
from tracekit.detectors import run_detectors
from tracekit.finding import Finding
from tracekit.link import link_trace
from tracekit.link.borrow import borrow_op_shapes, borrow_op_sources
from tracekit.load import load_plan
from tracekit.load import load_trace as load_trace_frames
from tracekit.load.frames import NO_STACKS
from tracekit.load.rundir import LoadPlan, plan_load
from tracekit.report import print_report, render_json
from tracekit.source import source_roots
from tracekit.trace import Run, Trace, check_rank

FINDINGS_FILE = "findings.json"
ACCOUNTING_FILE = "accounting.json"
TIMELINE_FILE = "timeline.html"


def linker(plan: LoadPlan) -> Callable[[Trace], Any]:
    """What links each trace of a plan, in the process that loads it (picklable): the run's
    source roots (its code snapshot first) are where the linker reads source lines."""
    return functools.partial(link_trace, source_roots=source_roots(plan.run_dir, plan.manifest))


STACK_WINDOW_DIR = "stacks"
"""A split recording's second window (with stacks), inside the run directory."""


def load(path: str | os.PathLike[str], *, link: bool = True, progress: bool = True,
         workers: int | None = None) -> Run:
    """A Run from a trace file or run directory (see `tracekit.load.load`), every trace linked
    (`tracekit.link.link_trace`) unless `link` is false.

    A split recording (`profile --record split`) is the run directory's traces, recorded
    without stacks (timings), plus `stacks/`, the same ranks recorded with stacks: linked, the
    timing traces' ops take their source lines from it (tracekit.link.borrow)."""
    plan = plan_load(path)
    run = load_plan(plan, progress=progress, workers=workers,
                    prepare=linker(plan) if link else None)
    if link and has_stack_window(Path(path)):
        borrow_stack_window(run, load(Path(path) / STACK_WINDOW_DIR, progress=progress,
                                      workers=workers))
    return run


def has_stack_window(path: Path) -> bool:
    window = path / STACK_WINDOW_DIR
    return path.is_dir() and window.is_dir() and any(window.glob("*.json*"))


def borrow_stack_window(run: Run, window: Run) -> None:
    """Each timing trace takes source lines (and recorded shapes) from the stack window's trace
    of its rank."""
    donors = {t.rank: t for t in window.traces}
    steps = sorted({int(s) for t in window.traces for s in t.steps["step"]})
    span = f"{steps[0]}-{steps[-1]}" if steps else "?"
    for trace in run.traces:
        if trace.rank in donors:
            n = borrow_op_sources(trace, donors[trace.rank])
            borrow_op_shapes(trace, donors[trace.rank])
            if n:  # the timing window's own "no Python stacks" note no longer holds
                trace.warnings[:] = [w for w in trace.warnings if not w.startswith(NO_STACKS)]
            trace.warnings.append(
                f"recorded without stacks; source lines of {n:,} ops taken from the same ops "
                f"of steps {span}, recorded with stacks (stacks/)")
        else:  # the note says why this rank's findings have no lines, not that none do
            trace.warnings[:] = [
                f"rank {trace.rank} recorded without stacks and stacks/ holds no trace of it: "
                "its findings have no source lines" if w.startswith(NO_STACKS) else w
                for w in trace.warnings]


def load_trace(path: str | os.PathLike[str], *, link: bool = True) -> Trace:
    """One trace file, linked unless `link` is false (see `tracekit.load.load_trace`)."""
    plan = plan_load(path)
    return load_trace_frames(path, prepare=linker(plan) if link else None)


def analyze_run(
    path_or_run: Path | str | Run,
    kinds: Iterable[str] | None = None,
    rank: int | None = None,
    min_cost_us: float = 0.0,
    progress: bool = True,
    params: Mapping[str, Any] | None = None,
) -> tuple[Run, list[Finding]]:
    """Findings of a run, worst first; optionally only some detectors (each with its Params
    from `params`), one rank, a cost floor.

    Detectors see every rank even when `rank` is given (some compare ranks), and the findings
    are filtered afterwards.
    """
    run = path_or_run if isinstance(path_or_run, Run) else load(path_or_run, progress=progress)
    check_rank(run, rank)
    findings = run_detectors(run, kinds=list(kinds) if kinds else None, params=params)
    return run, select_findings(findings, rank, min_cost_us)


def select_findings(findings: list[Finding], rank: int | None,
                    min_cost_us: float) -> list[Finding]:
    """Only one rank's findings (when `rank`), only those costing at least `min_cost_us`."""
    return [f for f in findings if (rank is None or f.rank == rank) and f.cost_us >= min_cost_us]


def write_accounting(run: Run, path: Path) -> Path:
    """The run's step accounting as JSON (tracekit.accounting.table.RunAccounting.to_json):
    `analyze --accounting FILE` and `profile`'s accounting.json."""
    path.write_text(json.dumps(run_accounting(run).to_json(), indent=1) + "\n")
    return path


def write_findings(findings: list[Finding], path: Path) -> Path:
    """Write the JSON contract (the list `analyze --json` prints) to `path`."""
    path.write_text(render_json(findings) + "\n")
    return path


def analyze_run_and_print(run_dir: Path) -> None:
    """What `cli.py profile` does at the end: print the report, save <run_dir>/findings.json
    and the step accounting beside it (accounting.json).

    findings.json is only written into a run directory (the trainer created it); an existing
    findings.json is replaced only when it holds a JSON list (an earlier analysis), never a file
    of another kind.
    """
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
    accounting = run_dir / ACCOUNTING_FILE
    if not accounting.exists():
        write_accounting(run, accounting)
        print(f"accounting: {accounting}")
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
    # plotly is optional and slow to import: only here, once it is known to be installed.
    from tracekit.timeline import write_timeline_html

    write_timeline_html(run, findings, out)
    print(f"timeline: {out}")


def _is_findings_file(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text()), list)
    except (OSError, ValueError):
        return False
