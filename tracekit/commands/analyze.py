"""`cli.py analyze`: load a run or trace file, run the detectors, print the findings."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from tracekit.commands.options import PARAM_HELP, one_blas_thread, split_kinds
from tracekit.errors import UserError
from tracekit.finding import SEVERITY_ORDER, Finding


def fails(findings: list[Finding], fail_on: str | None) -> bool:
    """True when a finding is at least as severe as `fail_on`."""
    if fail_on is None:
        return False
    if fail_on not in SEVERITY_ORDER:
        raise UserError(f"--fail-on must be one of high, medium, low (got {fail_on!r})")
    return any(SEVERITY_ORDER[f.severity] <= SEVERITY_ORDER[fail_on] for f in findings)


def check_markdown_target(path: Path) -> None:
    """Refuse to write the report over a directory or something that looks like a trace."""
    if path.is_dir():
        raise UserError(f"--markdown {path}: is a directory")
    if path.name.endswith((".json", ".json.gz", ".gz")):
        raise UserError(f"--markdown {path}: refusing to write a report over a .json/.gz file")


ENGINES = ("local", "dask")


def check_engine(engine: str, scheduler: str | None, html: Path | None) -> None:
    if engine not in ENGINES:
        raise UserError(f"--engine must be one of {', '.join(ENGINES)} (got {engine!r})")
    if scheduler is not None and engine != "dask":
        raise UserError("--scheduler goes with --engine dask")
    if html is not None and engine != "local":
        raise UserError("--html needs every rank's events in this process: use --engine local")


def write_markdown(path: Path, text: str) -> None:
    """Write the Markdown report, creating missing parent directories (as --html does); an
    unwritable target is a one-line error, not a traceback after the whole analysis."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise UserError(f"--markdown {path}: cannot write ({exc.strerror or exc})") from None


def check_json_target(path: Path, flag: str) -> None:
    """Refuse to write JSON over a directory or a trace file."""
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a directory")
    if path.name.endswith((".json.gz", ".gz")):
        raise UserError(f"{flag} {path}: refusing to write over a .gz file")


def write_accounting(run: Any, path: Path) -> None:
    """--accounting FILE: the run's step accounting as JSON; a one-line error when the file
    cannot be written."""
    from tracekit.pipeline import write_accounting as write

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(run, path)
    except OSError as exc:
        raise UserError(f"--accounting {path}: cannot write ({exc.strerror or exc})") from None


def frame_table(title: str, frame: Any, max_rows: int = 20) -> Any:
    """A rich Table of a DataFrame's first rows (numbers rounded for reading)."""
    from rich.table import Table

    from tracekit.report.text import short_kernel

    table = Table(title=title, title_justify="left", title_style="bold")
    shown = frame.head(max_rows)
    for column in shown.columns:
        table.add_column(str(column), overflow="fold")
    for row in shown.itertuples(index=False):
        table.add_row(*[f"{v:.2f}" if isinstance(v, float) else short_kernel(str(v), 60)
                        for v in row])
    if len(frame) > max_rows:
        table.caption = f"{len(frame) - max_rows} more rows"
    return table


def print_breakdown(path: Path, to_stderr: bool) -> None:
    """HTA's temporal/kernel breakdown (optional dependency, imported only when asked)."""
    try:
        from tracekit.hta import breakdown
    except ImportError as exc:
        raise UserError(f"--breakdown needs tracekit.hta and HolisticTraceAnalysis ({exc})"
                        ) from None
    from tracekit.report.terminal import report_console

    try:
        frames = breakdown(path)
    except UserError:
        raise
    except ImportError as exc:
        raise UserError(f"--breakdown needs HolisticTraceAnalysis ({exc})") from None
    except Exception as exc:  # third-party code on arbitrary traces: report, do not crash
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"--breakdown: HTA could not analyse {path} ({first})") from None
    console = report_console(stderr=to_stderr)
    for name, frame in frames.items():
        if hasattr(frame, "itertuples"):
            console.print(frame_table(f"HTA {name}", frame))


def register(app: typer.Typer) -> None:
    @app.command("analyze")
    def analyze(
        path: Path = typer.Argument(..., help="A run directory or one .json/.json.gz trace."),
        json_out: bool = typer.Option(False, "--json",
                                      help="Print only the findings as a JSON list."),
        kinds: list[str] = typer.Option(None, "--kinds",
                                        help="Detectors to run (comma list or repeated)."),
        rank: int = typer.Option(None, "--rank", help="Only findings of this rank."),
        min_cost_us: float = typer.Option(0.0, "--min-cost-us",
                                          help="Drop findings costing less than this."),
        fail_on: str = typer.Option(None, "--fail-on",
                                    help="Exit 1 if a finding is this severe or worse "
                                         "(high|medium|low)."),
        breakdown: bool = typer.Option(False, "--breakdown",
                                       help="Also print HTA's time breakdown."),
        markdown: Path = typer.Option(None, "--markdown",
                                      help="Also write the report as Markdown to this file."),
        html: Path = typer.Option(None, "--html",
                                  help="Also write the interactive timeline with the findings "
                                       "(.html)."),
        param: list[str] = typer.Option(None, "--param", help=PARAM_HELP),
        accounting: Path = typer.Option(None, "--accounting",
                                        help="Also write the step accounting (per rank and "
                                             "step: compute, exposed comm, idle by cause) as "
                                             "JSON to this file."),
        engine: str = typer.Option("local", "--engine",
                                   help="Where the per-rank work runs: local (processes on "
                                        "this machine) or dask (a dask.distributed cluster)."),
        scheduler: str = typer.Option(None, "--scheduler",
                                      help="With --engine dask: the scheduler's address "
                                           "(tcp://host:8786); without it, a local cluster."),
        baseline_step_ms: float = typer.Option(
            None, "--baseline-step-ms",
            help="An unprofiled step time (ms) measured elsewhere: profiled steps much slower "
                 "than it give a profiler_distortion finding (the same as --param "
                 "profiler_distortion.baseline_step_ms=MS)."),
    ) -> None:
        """Find why steps are slow: step accounting, then select_backward, sm_contention,
        comm_gap, slow_step, gpu_idle, straggler, exposed_comm, profiler_distortion,
        strided_elementwise."""
        one_blas_thread()
        # Imported when the command runs: `cli.py --help` stays fast (pandas, numpy).
        from tracekit.detectors import parse_params
        from tracekit.pipeline import analyze_rankwise, analyze_run
        from tracekit.pipeline.analysis import has_stack_window
        from tracekit.report import print_report, render_json, render_markdown

        if baseline_step_ms is not None:
            if not baseline_step_ms > 0:
                raise UserError(f"--baseline-step-ms must be a positive time, not "
                                f"{baseline_step_ms}")
            param = [*(param or []), f"profiler_distortion.baseline_step_ms={baseline_step_ms}"]
        params = parse_params(param)
        if fail_on is not None:
            fails([], fail_on)  # validate before the (long) load
        if markdown is not None:
            check_markdown_target(markdown)
        if accounting is not None:
            check_json_target(accounting, "--accounting")
        if html is not None:
            from tracekit.timeline import check_output_path

            check_output_path(html)
        one_process = html is not None or has_stack_window(Path(path))
        check_engine(engine, scheduler, html)
        if engine == "dask":
            if one_process:  # a split recording: the stack window is borrowed in one process
                raise UserError("a split recording (stacks/) is analysed in one process: use "
                                "--engine local")
            from tracekit.pipeline.dask_engine import analyze_on_dask

            run, findings, _ = analyze_on_dask(path, scheduler, kinds=split_kinds(kinds),
                                               rank=rank, min_cost_us=min_cost_us,
                                               params=params)
        else:
            # A timeline needs every rank's events in this process; findings alone do not.
            # A split recording's stack window is borrowed from in one process too.
            analyze = analyze_run if one_process else analyze_rankwise
            run, findings = analyze(path, kinds=split_kinds(kinds), rank=rank,
                                    min_cost_us=min_cost_us, progress=True, params=params)
        if json_out:
            sys.stdout.write(render_json(findings) + "\n")
            from tracekit.load.runstate import stop_text

            stopped = stop_text(run.manifest)
            if stopped is not None:  # the findings list has no room for it: say it on stderr
                print(f"note: {stopped}: the traces are whole, but the run is not",
                      file=sys.stderr)
        else:
            print_report(run, findings)
        if breakdown:
            print_breakdown(path, to_stderr=json_out)
        if markdown is not None:
            write_markdown(markdown, render_markdown(run, findings))
        if accounting is not None:
            write_accounting(run, accounting)
        if html is not None:
            from tracekit.timeline import write_timeline_html

            write_timeline_html(run, findings, html, rank=rank)
        if fails(findings, fail_on):
            raise typer.Exit(code=1)
