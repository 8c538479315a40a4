"""The terminal report (rich): findings grouped by kind, worst first, one line each."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tracekit.finding import Finding
from tracekit.report.text import format_us, grouped, short_kernel, source_text
from tracekit.trace import Run

SEVERITY_STYLE = {"high": "bold red", "medium": "yellow", "low": "dim"}


def run_header(run: Run) -> Text:
    """One line saying what was analysed: path, ranks, steps, devices."""
    steps = sorted({int(s) for t in run.traces for s in t.steps["step"]})
    step_text = f"steps {steps[0]}-{steps[-1]}" if steps else "no ProfilerStep spans"
    gpu = "GPU" if any(t.has_gpu for t in run.traces) else "CPU only"
    return Text(f"{run.path}: {len(run.traces)} rank(s), {step_text}, {gpu}", style="bold")


def kind_table(kind: str, findings: list[Finding]) -> Table:
    total = sum(f.cost_us for f in findings)
    table = Table(title=f"{kind} ({len(findings)}, {format_us(total)} total)",
                  title_justify="left", title_style="bold", expand=False, show_lines=False)
    for column, justify in (("sev", "left"), ("rank", "right"), ("step", "right"),
                            ("cost", "right"), ("count", "right"), ("title", "left"),
                            ("culprit kernel", "left"), ("source", "left")):
        table.add_column(column, justify=justify, overflow="fold")
    for f in findings:
        table.add_row(
            Text(f.severity, style=SEVERITY_STYLE[f.severity]), str(f.rank),
            "-" if f.step is None else str(f.step), format_us(f.cost_us), str(f.count),
            f.title, short_kernel(f.culprit.kernel, 48), source_text(f))
    return table


def print_report(run: Run | None, findings: list[Finding],
                 console: Console | None = None) -> None:
    """Print the report: header, the trace warnings, then one table per kind."""
    console = console or Console()
    if run is not None:
        console.print(run_header(run))
        warnings = sorted({w for t in run.traces for w in t.warnings})
        for warning in warnings:
            console.print(Text(f"note: {warning}", style="dim"))
    if not findings:
        console.print("No findings: nothing slow enough to report.")
        return
    for kind, items in grouped(findings):
        console.print(kind_table(kind, items))
        for f in items[:1]:
            if f.suggestion:
                console.print(Text(f"  fix: {f.suggestion}", style="green"))
    console.print(Text("~ after a line number: the function's def line (statement unknown)",
                       style="dim"))
