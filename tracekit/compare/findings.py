"""Findings of two runs matched: resolved, introduced, in both (see tracekit.compare).

A finding is what it is, not where its line number happens to be: kind, culprit (normalised
kernel name) and statement. With each run's copy of the source (`source_file_reader`), the
statement is placed by a line-level diff of the two copies (`tracekit.compare.edits`): a BASE
finding on a line NEW kept matches the NEW finding on that line's new number, however far an
edit above moved it. Findings are paired by the first of these that both sides share:

1. kind, statement (diff position), culprit;
2. kind and statement (diff position), whatever the culprit (Inductor names a fused kernel
   after what it fused: the same statement's kernel is named differently when fusion changed);
3. kind, statement text, culprit (code moved as a block, which a diff shows as edited; or
   another statement of the same text);
4. kind and statement text, whatever the culprit;
5. kind, edited statement (a BASE line the change edited, and the NEW line it became:
   `tracekit.compare.edits.LineEdits.edited_counterpart`), culprit;
6. kind and edited statement, whatever the culprit;
7. without either run's code: kind, `file:line`, culprit;
8. findings without a source line: kind and culprit (or the cause op).

Each row says where its line is in both runs, and for resolved and introduced findings whether
the line itself was edited between BASE and NEW (None when the code of either run cannot be
read): a resolved finding on an edited line is most likely what the change fixed.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

from tracekit.compare.edits import FileLines, LineEdits
from tracekit.compare.schema import FindingRow, FindingsDiff
from tracekit.finding import Finding, SourceLine
from tracekit.names import normalize_kernel_name
from tracekit.source import SourceFiles
from tracekit.trace import Run

LineText = Callable[[SourceLine], str | None]


def source_file_reader(run: Run) -> FileLines:
    """The text lines of a file in the run's own copy of the code (its source snapshot or the
    roots the linker used); None when the file cannot be read."""
    files = SourceFiles(roots=list(dict.fromkeys(r for t in run.traces for r in t.source_roots)))
    return files.lines


def line_text(files: FileLines | None) -> LineText:
    """The stripped text of a source line in one run's code (None when unreadable)."""

    def text(source: SourceLine) -> str | None:
        found = files(source.file) if files else None
        if found is None or source.line is None or not 0 < source.line <= len(found):
            return None
        return found[source.line - 1].strip() or None

    return text


def source_line_reader(run: Run) -> LineText:
    """`line_text` of the run's own code."""
    return line_text(source_file_reader(run))


def culprit_of(finding: Finding) -> str | None:
    """The normalised culprit kernel; the cause op ("op NAME") for a finding with neither a
    culprit nor a source line."""
    kernel = finding.culprit.kernel if finding.culprit else None
    if kernel:
        return normalize_kernel_name(kernel)
    source = finding.cause.source if finding.cause else None
    if source is None and finding.cause and finding.cause.op:
        return f"op {finding.cause.op}"
    return None


def finding_key(finding: Finding, text: LineText | None = None
                ) -> tuple[str, str | None, str | None]:
    """(kind, cause source, normalised culprit kernel); cause op if neither. The source is
    `file: <line text>` when `text` can read it, else `file:line`."""
    source = finding.cause.source if finding.cause else None
    where = None
    if source:
        found = text(source) if text else None
        where = f"{source.file}: {found}" if found else f"{source.file}:{source.line}"
    return finding.kind, where, culprit_of(finding)


@dataclass
class _Group:
    """One run's findings of one kind, line and culprit (summed over ranks)."""

    findings: list[Finding]
    kind: str
    file: str | None
    line: int | None
    culprit: str | None
    text: str | None
    position: int | None  # the line in NEW's numbering, when the diff keeps it
    edited_as: int | None  # an edited line: the NEW line that is the same statement, changed

    def keys(self, readable: bool) -> list[Hashable | None]:
        """Keys of the matching levels (None where a level does not apply)."""
        if self.file is None:
            return [None] * (LEVELS - 1) + [(self.kind, self.culprit)]
        at = (self.kind, self.file)
        edited = self.edited_as is not None
        return [
            (*at, "at", self.position, self.culprit) if self.position is not None else None,
            (*at, "at", self.position) if self.position is not None else None,
            (*at, "text", self.text, self.culprit) if self.text else None,
            (*at, "text", self.text) if self.text else None,
            (*at, "edited", self.edited_as, self.culprit) if edited else None,
            (*at, "edited", self.edited_as) if edited else None,
            None if readable or self.text else (*at, "line", self.line, self.culprit),
            None,
        ]


LEVELS = 8


def _groups(findings: list[Finding], text: LineText, position: Callable[[str, int], int | None],
            edited_as: Callable[[str, int], int | None]) -> list[_Group]:
    out: dict[tuple[object, ...], _Group] = {}
    for finding in findings:
        source = finding.cause.source if finding.cause else None
        file = source.file if source else None
        line = source.line if source else None
        culprit = culprit_of(finding)
        group = out.get((finding.kind, file, line, culprit))
        if group is None:
            group = out[(finding.kind, file, line, culprit)] = _Group(
                [], finding.kind, file, line, culprit, text(source) if source else None,
                position(file, line) if file is not None and line is not None else None,
                edited_as(file, line) if file is not None and line is not None else None)
        group.findings.append(finding)
    return list(out.values())


def _row(base: list[_Group], new: list[_Group], edits: LineEdits) -> FindingRow:
    b = [f for g in base for f in g.findings]
    n = [f for g in new for f in g.findings]
    first = (base or new)[0]
    b_cost = float(sum(f.cost_us for f in b))
    n_cost = float(sum(f.cost_us for f in n))
    base_line = base[0].line if base else None
    new_line = new[0].line if new else None
    edited = None
    if first.file is not None:
        if base_line is not None:
            edited = edits.base_edited(first.file, base_line)
            new_line = new_line if new else edits.new_line_of(first.file, base_line)
        elif new_line is not None:
            edited = edits.new_edited(first.file, new_line)
            base_line = edits.base_line_of(first.file, new_line)
    sources = list(dict.fromkeys(f"{g.file}:{g.line}" for g in base[:1] + new[:1] if g.file))
    return FindingRow(kind=first.kind, source=" -> ".join(sources) or None,
                      culprit=first.culprit, title=(b or n)[0].title,
                      ranks=sorted({f.rank for f in b + n}),
                      base_count=sum(f.count for f in b), new_count=sum(f.count for f in n),
                      base_cost_us=b_cost, new_cost_us=n_cost, delta_cost_us=n_cost - b_cost,
                      file=first.file, base_line=base_line, new_line=new_line,
                      line_edited=edited)


def compare_findings(base: list[Finding], new: list[Finding],
                     base_files: FileLines | None = None,
                     new_files: FileLines | None = None) -> FindingsDiff:
    """Findings resolved (BASE only), introduced (NEW only), and in both with the cost change.

    `base_files`/`new_files` read each run's copy of a source file (`source_file_reader`):
    without them findings match by `file:line`.
    """
    edits = LineEdits(base_files, new_files)

    def base_position(file: str, line: int) -> int | None:
        return edits.new_line_of(file, line)

    def new_position(file: str, line: int) -> int | None:
        return line if edits.kept(file) is not None else None

    def new_edited_as(file: str, line: int) -> int | None:
        return line if edits.new_edited(file, line) else None

    b_groups = _groups(base, line_text(base_files), base_position, edits.edited_counterpart)
    n_groups = _groups(new, line_text(new_files), new_position, new_edited_as)
    readable = {g.file: edits.kept(g.file) is not None for g in b_groups + n_groups if g.file}
    matched_b: set[int] = set()
    matched_n: set[int] = set()
    out = FindingsDiff()
    for level in range(LEVELS):
        by_key: dict[Hashable, tuple[list[int], list[int]]] = {}
        for side, groups, taken in ((0, b_groups, matched_b), (1, n_groups, matched_n)):
            for i, group in enumerate(groups):
                key = group.keys(readable.get(group.file, False))[level]
                if i not in taken and key is not None:
                    by_key.setdefault(key, ([], []))[side].append(i)
        for b_rows, n_rows in by_key.values():
            if b_rows and n_rows:
                matched_b.update(b_rows)
                matched_n.update(n_rows)
                out.common.append(_row([b_groups[i] for i in b_rows],
                                       [n_groups[i] for i in n_rows], edits))
    out.resolved = [_row([g], [], edits) for i, g in enumerate(b_groups) if i not in matched_b]
    out.introduced = [_row([], [g], edits) for i, g in enumerate(n_groups)
                      if i not in matched_n]
    for rows in (out.resolved, out.introduced, out.common):
        rows.sort(key=lambda r: -max(r.base_cost_us, r.new_cost_us, abs(r.delta_cost_us)))
    return out
