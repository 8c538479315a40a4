"""The report of `cli.py diff`: terminal tables and the side-by-side HTML page.

Rendering only; the comparison itself is `tracekit.compare` (data, JSON schema in
`tracekit.compare.schema`), run by `tracekit.pipeline.diff`.
"""

from __future__ import annotations

import html
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tracekit.compare import CommRow, FindingRow, Row, RunDiff, StepComparison
from tracekit.durations import signed_us as _us
from tracekit.errors import UserError
from tracekit.names import cut_to, kernel_label
from tracekit.report.terminal import report_console
from tracekit.timeline.lanes import Timeline

NAME_WIDTH = 70
STATUS_STYLE = {"appeared": "bold red", "disappeared": "bold green", "both": ""}


def _delta(value: float | None) -> Text:
    if value is None:
        return Text("-")
    text = ("+" if value > 0 else "") + _us(value)
    return Text(text, style="red" if value > 0 else "green" if value < 0 else "")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}%"


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def steps_table(steps: StepComparison) -> Table:
    table = Table(title=f"Step time ({steps.source or 'unavailable'})", title_justify="left",
                  title_style="bold")
    for col in ("run", "n", "mean", "median", "std", "min", "p90", "max"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for label, dist in (("BASE", steps.base), ("NEW", steps.new)):
        if dist is None:
            table.add_row(label, "0", *["-"] * 6)
            continue
        table.add_row(label, str(dist.n), *(f"{v:.2f} ms" for v in (
            dist.mean_ms, dist.median_ms, dist.std_ms, dist.min_ms, dist.p90_ms, dist.max_ms)))
    if steps.delta_mean_ms is not None:
        table.caption = (
            f"NEW - BASE: mean {steps.delta_mean_ms:+.2f} ms ({_pct(steps.pct_change_mean)}), "
            f"median {steps.delta_median_ms:+.2f} ms; Welch t p={_p(steps.welch_p)}, "
            f"Mann-Whitney p={_p(steps.mannwhitney_p)}. {steps.note.strip()}")
    else:
        table.caption = steps.note.strip()
    table.caption_justify = "left"
    return table


def rows_table(title: str, rows: list[Row], top: int, what: str = "time/step",
               kernels: bool = False) -> Table:
    """Top movers by |delta|, with counts; appeared/disappeared names coloured. Kernel names
    are shown as labels (tracekit.names); the JSON keeps the normalised names."""
    table = Table(title=f"{title} (top {min(top, len(rows))} of {len(rows)} by |change|)",
                  title_justify="left", title_style="bold")
    table.add_column("name", overflow="fold", max_width=NAME_WIDTH)
    for col in ("count B", "count N", f"BASE {what}", f"NEW {what}", "change", "%"):
        table.add_column(col, justify="right")
    for row in rows[:top]:
        name = kernel_label(row.name) if kernels else row.name
        table.add_row(Text(cut_to(name, NAME_WIDTH), style=STATUS_STYLE.get(row.status, "")),
                      str(row.base_count), str(row.new_count), _us(row.base_us), _us(row.new_us),
                      _delta(row.delta_us), _pct(row.pct_change))
    return table


def finding_lines(row: FindingRow) -> str:
    """Where a finding's statement is in BASE and in NEW, and whether the change edited it:
    "train.py:12 -> 14" (moved by an edit above it), "train.py:30 -> - (edited)" (changed or
    removed in NEW), "train.py:- -> 40 (edited)" (changed or added in NEW)."""
    if row.file is None:
        return "-"
    if row.base_line is None and row.new_line is None:
        return row.source or row.file
    base = str(row.base_line) if row.base_line is not None else "-"
    new = str(row.new_line) if row.new_line is not None else "-"
    where = f"{row.file}:{base}" if base == new else f"{row.file}:{base} -> {new}"
    edited = {True: " (edited)", False: "", None: ""}[row.line_edited]
    return where + edited


def findings_table(title: str, rows: list[FindingRow], top: int) -> Table:
    table = Table(title=f"{title} ({len(rows)})", title_justify="left", title_style="bold")
    for col in ("kind", "line BASE -> NEW", "culprit", "ranks", "BASE cost", "NEW cost",
                "change", "title"):
        table.add_column(col, overflow="fold",
                         justify="right" if "cost" in col or col == "change" else "left")
    for row in rows[:top]:
        table.add_row(row.kind, finding_lines(row), cut_to(kernel_label(row.culprit), 40),
                      ",".join(map(str, row.ranks)), _us(row.base_cost_us), _us(row.new_cost_us),
                      _delta(row.delta_cost_us), cut_to(row.title, 60))
    return table


def comm_table(rows: list[CommRow]) -> Table:
    table = Table(title="Communication per step (exposed = NCCL time with no compute kernel "
                  "beside it)", title_justify="left", title_style="bold")
    for col in ("rank", "BASE NCCL", "NEW NCCL", "BASE exposed", "NEW exposed", "change"):
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(str(row.rank), _us(row.base_nccl_us), _us(row.new_nccl_us),
                      _us(row.base_exposed_us), _us(row.new_exposed_us),
                      _delta(row.delta_exposed_us))
    return table


def print_diff(result: RunDiff, top: int = 15, console: Console | None = None) -> None:
    """The rich terminal report."""
    console = console or report_console()
    for label, info in (("BASE", result.base), ("NEW", result.new)):
        console.print(Text(f"{label}: {info.path}  ranks {info.ranks}, "
                           f"{info.profiled_steps} profiled step spans, {info.findings} "
                           "findings", style="bold"))
    for difference in result.context.get("differences", []):
        console.print(Text(f"{difference}", style="bold yellow"))
    if result.rank is not None:
        console.print(f"(rank {result.rank} only)")
    console.print("Times are per profiled step and rank; counts are totals.", style="dim")
    console.print(steps_table(result.steps))
    console.print(rows_table("GPU time per kernel category", result.kernel_categories, top))
    console.print(rows_table("GPU time per kernel (normalised name)", result.kernels, top,
                             kernels=True))
    if result.kernels_appeared or result.kernels_disappeared:
        for label, names, style in (("appeared", result.kernels_appeared, "red"),
                                    ("disappeared", result.kernels_disappeared, "green")):
            if names:
                console.print(Text(f"Kernels {label} ({len(names)}): ", style=f"bold {style}")
                              + Text("; ".join(cut_to(kernel_label(n), 60) for n in names[:top])))
    if result.kernels_by_launching_op:
        console.print(rows_table("GPU time of kernels launched under each CPU op",
                                 result.kernels_by_launching_op, top))
    console.print(rows_table("CPU time per op (inclusive)", result.cpu_ops, top))
    if result.cpu_labels or result.gpu_labels:
        console.print(rows_table("record_function labels, CPU", result.cpu_labels, top))
        console.print(rows_table("record_function labels, GPU", result.gpu_labels, top))
    f = result.findings
    for title, rows in (("Findings resolved (BASE only)", f.resolved),
                        ("Findings introduced (NEW only)", f.introduced),
                        ("Findings in both", f.common)):
        if rows:
            console.print(findings_table(title, rows, top))
    edited = [(label, sum(r.line_edited is True for r in rows), len(rows))
              for label, rows in (("resolved", f.resolved), ("introduced", f.introduced),
                                  ("in both", f.common)) if rows]
    if any(r.line_edited is not None for r in f.resolved + f.introduced + f.common):
        console.print("(edited): the finding's line changed between BASE and NEW (a line-level "
                      "diff of each run's copy of the file): "
                      + ", ".join(f"{n} of {total} {label}" for label, n, total in edited))
    if not (f.resolved or f.introduced or f.common):
        console.print("No findings in either run.", style="bold")
    if result.comm:
        console.print(comm_table(result.comm))
    for note in result.notes:
        console.print(f"note: {note}", style="yellow")


# ---- HTML: both timelines on one scale --------------------------------------------------------


def _rows_html(title: str, rows: list[Row], top: int, kernels: bool = False) -> str:
    body = "".join(
        f"<tr class='{r.status}'><td><code title='{html.escape(r.name, quote=True)}'>"
        f"{html.escape(cut_to(kernel_label(r.name) if kernels else r.name, 110))}</code></td>"
        f"<td>{r.base_count}</td><td>{r.new_count}</td><td>{_us(r.base_us)}</td>"
        f"<td>{_us(r.new_us)}</td><td>{('+' if r.delta_us > 0 else '') + _us(r.delta_us)}</td>"
        "</tr>" for r in rows[:top])
    return (f"<h3>{html.escape(title)}</h3><table><tr><th>name</th><th>count BASE</th>"
            "<th>count NEW</th><th>BASE/step</th><th>NEW/step</th><th>change</th></tr>"
            f"{body}</table>")


def write_diff_html(result: RunDiff, timelines: list[Timeline], titles: list[str], out: Path,
                    top: int = 15) -> Path:
    """One offline page: the timelines (BASE above NEW, `tracekit.pipeline.diff_timelines`)
    on a shared time axis, then the top movers."""
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise UserError("--html needs plotly (pip install plotly)") from None
    from tracekit.timeline import check_output_path
    from tracekit.timeline.bars import HoverTable
    from tracekit.timeline.figure import side_by_side
    from tracekit.timeline.page import TIP_STYLE, plot_parts

    out = check_output_path(Path(out))
    hover = HoverTable()
    fig = side_by_side(timelines, titles, hover)
    fig.update_xaxes(title={"text": "ms since each rank's first ProfilerStep"}, row=2, col=1,
                     ticksuffix=" ms")
    # The legend below the time axis (above the plot it covers the first row's title).
    fig.update_layout(legend={"orientation": "h", "yref": "container", "yanchor": "bottom",
                              "y": 0.005, "x": 0.0, "font": {"size": 11}},
                      margin={"b": 120},
                      title={"text": "tracekit diff: BASE vs NEW (same time scale)"})
    plot, scripts = plot_parts(fig, hover)
    steps = result.steps
    summary = (f"<p>Step time ({html.escape(str(steps.source))}): BASE "
               f"{steps.base.mean_ms:.2f} ms (n={steps.base.n}), NEW {steps.new.mean_ms:.2f} ms "
               f"(n={steps.new.n}), change {_pct(steps.pct_change_mean)}, Welch p="
               f"{_p(steps.welch_p)}, Mann-Whitney p={_p(steps.mannwhitney_p)}</p>"
               if steps.base and steps.new else "<p>No step times.</p>")
    tables = "".join((
        _rows_html("GPU time per kernel category", result.kernel_categories, top),
        _rows_html("Kernels (top movers)", result.kernels, top, kernels=True),
        _rows_html("Kernels by launching CPU op", result.kernels_by_launching_op, top),
    ))
    findings = "".join(
        f"<li><b>{label}</b>: {html.escape(r.kind)} at {html.escape(finding_lines(r))} "
        f"({html.escape(r.title)}), cost {_us(r.base_cost_us)} -> {_us(r.new_cost_us)}</li>"
        for label, rows in (("resolved", result.findings.resolved),
                            ("introduced", result.findings.introduced),
                            ("in both", result.findings.common)) for r in rows)
    style = ("body{font-family:sans-serif;margin:16px} table{border-collapse:collapse;"
             "font-size:12px} td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}"
             " td:first-child{text-align:left} tr.appeared{color:#b30000}"
             " tr.disappeared{color:#1a7f37}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>tracekit diff</title>"
        f"<style>{style}{TIP_STYLE}</style></head><body>{plot}<h2>Summary</h2>{summary}"
        f"<h3>Findings</h3><ul>{findings or '<li>none in either run</li>'}</ul>{tables}"
        f"{scripts}</body></html>\n", encoding="utf-8")
    return out
