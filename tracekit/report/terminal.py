"""The terminal report (rich): findings grouped by kind, worst first, one entry each.

Each finding is a headline (severity, rank, step, cost, count, title) and a dim second line
(culprit kernel, source line): plain lines wrap at word boundaries in narrow terminals, where
an eight-column table would chop names apart.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.text import Text

from tracekit.accounting.table import run_accounting
from tracekit.durations import format_us
from tracekit.finding import Finding
from tracekit.load.device import describe_traces
from tracekit.report.accounting import summary_lines
from tracekit.report.text import grouped, short_kernel, source_text
from tracekit.trace import Run

SEVERITY_STYLE = {"high": "bold red", "medium": "yellow", "low": "dim"}
PIPED_WIDTH = 160
"""Console width when output goes to a file or pipe (rich would use 80 and fold kernel names
into narrow table columns); $COLUMNS wins when set."""


def report_console(stderr: bool = False) -> Console:
    """A console for reports: the terminal's width, or a wide one when redirected."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else PIPED_WIDTH
    return Console(stderr=stderr, width=width)


def run_header(run: Run) -> Text:
    """One line saying what was analysed: path, ranks, steps, GPU or not."""
    steps = sorted({int(s) for t in run.traces for s in t.steps["step"]})
    step_text = f"steps {steps[0]}-{steps[-1]}" if steps else "no ProfilerStep spans"
    device = describe_traces(run.traces)
    return Text(f"{run.path}: {len(run.traces)} rank(s), {step_text}, {device}", style="bold")


def per_step(f: Finding) -> str:
    """" (1.2 ms/step, 4.5% of step)" for findings the cost budget measured, else ""."""
    us, pct = f.evidence.get("cost_per_step_us"), f.evidence.get("cost_pct_of_step")
    if us is None:
        return ""
    share = f", {pct:.1f}% of step" if pct is not None else ""
    return f" ({format_us(us)}/step{share})"


def finding_lines(f: Finding) -> Text:
    step = "-" if f.step is None else str(f.step)
    text = Text("  ")
    text.append(f"{f.severity.upper():<6}", style=SEVERITY_STYLE[f.severity])
    text.append(f" rank {f.rank} step {step}  cost {format_us(f.cost_us)}{per_step(f)}"
                f"  x{f.count}  ", style="bold")
    text.append(f.title)
    detail = detail_text(f)
    if detail:
        text.append(f"\n         {detail}", style="dim")
    return text


def detail_text(f: Finding) -> str:
    """`kernel K  at file:line`, each part only when the finding has it ("" for neither); a
    finding whose nature has no line says so."""
    parts = []
    if f.culprit.kernel:
        parts.append(f"kernel {short_kernel(f.culprit.kernel, 70)}")
    if f.cause.source is not None:
        parts.append(f"at {source_text(f)}")
    elif f.evidence.get("no_code_location"):
        parts.append(f"no code location: {f.evidence['no_code_location']}")
    return "  ".join(parts)


def print_report(run: Run | None, findings: list[Finding],
                 console: Console | None = None) -> None:
    """Print the report: header, the traces' warnings, then each kind's findings."""
    console = console or report_console()
    if run is not None:
        console.print(run_header(run))
        for warning in sorted({w for t in run.traces for w in t.warnings}):
            console.print(Text(f"note: {warning}", style="dim"))
        summary = summary_lines(run_accounting(run))
        if summary:
            console.print(Text(summary[0], style="bold"))
            for line in summary[1:]:
                console.print(Text(line), soft_wrap=True)
            console.print()
    if not findings:
        console.print("No findings: nothing slow enough to report.")
        return
    for kind, items in grouped(findings):
        total = sum(f.cost_us for f in items)
        console.print(Text(f"\n{kind}: {len(items)} finding(s), {format_us(total)} total",
                           style="bold underline"))
        for f in items:
            console.print(finding_lines(f))
        suggestions = dict.fromkeys(f.suggestion for f in items if f.suggestion)
        for suggestion in suggestions:
            console.print(Text(f"  fix: {suggestion}", style="green"))
    if any(f.cause.source and not f.cause.source.line_exact for f in findings):
        console.print(Text("\n~ after a line number: the function's def line (the statement "
                           "could not be found)", style="dim"))
