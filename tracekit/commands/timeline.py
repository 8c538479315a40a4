"""`cli.py timeline`: an interactive, offline HTML timeline of a run with its findings.

plotly is imported only when the command runs, so `cli.py` still starts on machines without it.
"""

from __future__ import annotations

from pathlib import Path

import typer

from tracekit.commands.options import PARAM_HELP, one_blas_thread, split_kinds
from tracekit.errors import UserError


def register(app: typer.Typer) -> None:
    @app.command("timeline")
    def timeline(
        path: Path = typer.Argument(..., help="A run directory or one .json/.json.gz trace."),
        out: Path = typer.Option(..., "-o", "--out", help="The .html file to write."),
        rank: str = typer.Option("all", "--rank", help="A rank number, or 'all' (stacked)."),
        step: int = typer.Option(None, "--step", help="Only this ProfilerStep number."),
        window: str = typer.Option(None, "--window",
                                   help="START:END in ms on the timeline's axis (x = 0 is the "
                                        "first ProfilerStep start); either side may be empty."),
        align: str = typer.Option("clock", "--align",
                                  help="clock: ranks on their shared clock (shows waiting on "
                                       "peers); step: each rank's first step at 0."),
        kinds: list[str] = typer.Option(None, "--kinds",
                                        help="Detectors whose findings to overlay (comma list "
                                             "or repeated; default all)."),
        no_findings: bool = typer.Option(False, "--no-findings",
                                         help="Draw the trace only (skip the detectors)."),
        param: list[str] = typer.Option(None, "--param", help=PARAM_HELP),
    ) -> None:
        """Write an interactive Plotly timeline (plotly.js embedded: opens offline)."""
        one_blas_thread()
        try:
            import plotly  # noqa: F401
        except ImportError:
            raise UserError("timeline needs plotly (pip install plotly)") from None
        from rich.console import Console

        from tracekit.detectors import parse_params
        from tracekit.pipeline import analyze_run, load
        from tracekit.timeline import check_output_path, write_timeline_html
        from tracekit.timeline.lanes import parse_rank, parse_window

        wanted = parse_rank(rank)
        params = parse_params(param)
        parse_window(window)  # bad input fails before the (long) load
        check_output_path(out)
        if align not in ("clock", "step"):
            raise UserError(f"--align must be 'clock' or 'step', not {align!r}")
        if no_findings:
            run, findings = load(path, progress=True), []
        else:
            run, findings = analyze_run(path, kinds=split_kinds(kinds), progress=True,
                                        params=params)
        console = Console(stderr=True)
        with console.status("building the timeline"):
            written = write_timeline_html(run, findings, out, rank=wanted, step=step,
                                          window=window, align=align)
        size_mb = written.stat().st_size / 1e6
        console.print(f"wrote {written} ({size_mb:.1f} MB, {len(findings)} finding(s) "
                      f"on the run); open it in a browser")
