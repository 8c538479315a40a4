"""Small formatting helpers shared by the terminal and Markdown renderers."""

from __future__ import annotations

from collections import defaultdict

from tracekit.finding import SEVERITY_ORDER, Finding
from tracekit.names import cut_to, kernel_label


def short_kernel(name: str | None, width: int = 60) -> str:
    """A kernel's label (tracekit.names), cut to `width`."""
    return cut_to(kernel_label(name), width)


def source_text(finding: Finding) -> str:
    """`file:line` of the cause, with a ~ when the line is the function's def line only."""
    src = finding.cause.source
    if src is None:
        return "-"
    return f"{src.file}:{src.line}" + ("" if src.line_exact else "~")


def grouped(findings: list[Finding]) -> list[tuple[str, list[Finding]]]:
    """Findings by kind; kinds ordered by their worst finding, findings worst first."""
    by_kind: dict[str, list[Finding]] = defaultdict(list)
    for f in findings:
        by_kind[f.kind].append(f)

    def worst(f: Finding) -> tuple[int, float]:
        return SEVERITY_ORDER[f.severity], -f.cost_us

    groups = [(kind, sorted(items, key=worst)) for kind, items in by_kind.items()]
    return sorted(groups, key=lambda g: (worst(g[1][0]), -sum(f.cost_us for f in g[1])))
