"""Findings of two runs matched: resolved, introduced, in both (see tracekit.compare)."""

from __future__ import annotations

from collections.abc import Callable

from tracekit.compare.schema import FindingRow, FindingsDiff
from tracekit.finding import Finding, SourceLine, source_key
from tracekit.names import normalize_kernel_name
from tracekit.source import SourceFiles
from tracekit.trace import Run

LineText = Callable[[SourceLine], str | None]


def source_line_reader(run: Run) -> LineText:
    """The stripped text of a finding's source line in the run's own copy of the code (its
    source snapshot or the roots the linker used); None when the file cannot be read."""
    files = SourceFiles(roots=list(dict.fromkeys(r for t in run.traces for r in t.source_roots)))

    def text(source: SourceLine) -> str | None:
        found = files.lines(source.file)
        if found is None or source.line is None or not 0 < source.line <= len(found):
            return None
        return found[source.line - 1].strip() or None

    return text


def finding_key(finding: Finding, line_text: LineText | None = None
                ) -> tuple[str, str | None, str | None]:
    """(kind, cause source, normalised culprit kernel); cause op if neither. The source is
    `file: <line text>` when `line_text` can read it, else `file:line`."""
    source = finding.cause.source if finding.cause else None
    where = None
    if source:
        text = line_text(source) if line_text else None
        where = f"{source.file}: {text}" if text else f"{source.file}:{source.line}"
    kernel = finding.culprit.kernel if finding.culprit else None
    culprit = normalize_kernel_name(kernel) if kernel else None
    if where is None and culprit is None and finding.cause and finding.cause.op:
        culprit = f"op {finding.cause.op}"
    return finding.kind, where, culprit


def cause_key(finding: Finding) -> str:
    """`file:line` of a finding's cause ("" when it has none)."""
    return source_key(finding.cause.source if finding.cause else None)


def _group_findings(findings: list[Finding], line_text: LineText | None
                    ) -> dict[tuple[str, str | None, str | None], list[Finding]]:
    groups: dict[tuple[str, str | None, str | None], list[Finding]] = {}
    for finding in findings:
        groups.setdefault(finding_key(finding, line_text), []).append(finding)
    return groups


def compare_findings(base: list[Finding], new: list[Finding],
                     base_text: LineText | None = None,
                     new_text: LineText | None = None) -> FindingsDiff:
    """Findings resolved (BASE only), introduced (NEW only), and in both with the cost change.

    `base_text`/`new_text` read source lines in each run's code (`source_line_reader`), so a
    finding whose line moved between the runs still matches itself.
    """
    base_groups, new_groups = _group_findings(base, base_text), _group_findings(new, new_text)
    out = FindingsDiff()
    for key in list(base_groups) + [k for k in new_groups if k not in base_groups]:
        b, n = base_groups.get(key, []), new_groups.get(key, [])
        first = (b or n)[0]
        b_cost = float(sum(f.cost_us for f in b))
        n_cost = float(sum(f.cost_us for f in n))
        sources = list(dict.fromkeys(x for x in map(cause_key, b[:1] + n[:1]) if x))
        row = FindingRow(kind=key[0], source=" -> ".join(sources) or None, culprit=key[2],
                         title=first.title,
                         ranks=sorted({f.rank for f in b + n}),
                         base_count=sum(f.count for f in b), new_count=sum(f.count for f in n),
                         base_cost_us=b_cost, new_cost_us=n_cost, delta_cost_us=n_cost - b_cost)
        (out.common if b and n else out.resolved if b else out.introduced).append(row)
    for rows in (out.resolved, out.introduced, out.common):
        rows.sort(key=lambda r: -max(r.base_cost_us, r.new_cost_us, abs(r.delta_cost_us)))
    return out
