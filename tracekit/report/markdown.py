"""The Markdown renderer: a heading per kind and a table of its findings, worst first."""

from __future__ import annotations

from tracekit.accounting.table import run_accounting
from tracekit.durations import format_us
from tracekit.finding import Finding
from tracekit.report.accounting import summary_lines
from tracekit.report.text import grouped, short_kernel, source_text
from tracekit.trace import Run


def cell(text: str) -> str:
    """Escape what would break a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(run: Run | None, findings: list[Finding]) -> str:
    lines = ["# tracekit findings", ""]
    if run is not None:
        lines += [f"Run: `{run.path}`, ranks {', '.join(map(str, run.ranks)) or '-'}", ""]
        summary = summary_lines(run_accounting(run))
        if summary:
            lines += [f"## {summary[0]}", "", "```", *summary[1:], "```", ""]
    if not findings:
        return "\n".join(lines + ["No findings.", ""])
    for kind, items in grouped(findings):
        total = sum(f.cost_us for f in items)
        lines += [f"## {kind} ({len(items)}, {format_us(total)} total)", "",
                  "| severity | rank | step | cost | count | title | culprit kernel | source |",
                  "| --- | ---: | ---: | ---: | ---: | --- | --- | --- |"]
        for f in items:
            step = "-" if f.step is None else str(f.step)
            lines.append(
                f"| {f.severity} | {f.rank} | {step} | {format_us(f.cost_us)} | {f.count} | "
                f"{cell(f.title)} | `{cell(short_kernel(f.culprit.kernel))}` | "
                f"`{cell(source_text(f))}` |")
        suggestions = dict.fromkeys(f.suggestion for f in items if f.suggestion)
        lines += [""] + [f"Fix: {s}" for s in suggestions] + [""]
    return "\n".join(lines)
