"""`cli.py diff BASE NEW`: what changed between two runs (or two trace files).

The command only; its report is `tracekit.commands.diff_report`, imported when the command
runs, like everything that needs pandas, so `cli.py --help` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tracekit.commands.options import PARAM_HELP, one_blas_thread
from tracekit.errors import UserError


def diff_command(
    base: Path = typer.Argument(..., help="BASE run directory or trace file"),
    new: Path = typer.Argument(..., help="NEW run directory or trace file"),
    as_json: bool = typer.Option(False, "--json", help="print the comparison as JSON"),
    html_out: Path | None = typer.Option(None, "--html", help="write a side-by-side timeline"),
    rank: int | None = typer.Option(None, "--rank", help="compare only this rank"),
    top: int = typer.Option(15, "--top", min=1, help="rows per table in the terminal report"),
    param: list[str] = typer.Option(None, "--param", help=PARAM_HELP),
) -> None:
    """Compare two runs: step times, kernels, ops, findings and exposed communication."""
    one_blas_thread()
    from rich.console import Console

    from tracekit.commands.diff_report import print_diff, write_diff_html
    from tracekit.detectors import parse_params
    from tracekit.pipeline import diff_paths, diff_timelines

    params = parse_params(param)
    for path in (base, new):
        if not path.exists():
            raise UserError(f"{path}: no such file or directory")
    if html_out is not None:
        from tracekit.timeline import check_output_path

        check_output_path(html_out)
    progress = not as_json
    if html_out is None:  # findings and per-name totals only: one process per rank
        result, *_ = diff_paths(base, new, rank=rank, progress=progress, params=params)
    else:  # the side-by-side timeline: each run's events in this process, one at a time
        result, timelines = diff_timelines(base, new, rank=rank, progress=progress,
                                           params=params)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=1))
    else:
        print_diff(result, top=top)
    if html_out is not None:
        written = write_diff_html(result, timelines, [f"BASE {base}", f"NEW {new}"], html_out,
                                  top=top)
        if not as_json:
            Console().print(f"wrote {written}")


def register(app: typer.Typer) -> None:
    app.command("diff")(diff_command)
