"""Which lines of a source file changed between BASE and NEW: a line-level diff of the two runs'
own copies of the file (their source snapshots, or the roots the linker used).

A line that the diff keeps (the same text, in the same order among the kept lines) is
"unchanged" and has a number in each run (an edit above it moves it); every other line was
edited: changed, added (NEW) or removed (BASE). Trailing whitespace is ignored. The diff is
difflib's longest matching blocks, so a block of code moved elsewhere in the file counts as
edited at both places.

An edited line can still be the same statement, changed: `w = self.bank[i]` that became
`w = bank[i]`. Within one block the diff replaced, a BASE line's counterpart is the NEW line
most like it, when at least CLOSE_ENOUGH alike (difflib's ratio, the cutoff difflib's own
`get_close_matches` uses); a line rewritten beyond that has none.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

CLOSE_ENOUGH = 0.6
"""Least difflib ratio for an edited line to be the same statement changed."""

FileLines = Callable[[str], list[str] | None]
"""A run's code: the text lines of a file named as the profiler names it (None: unreadable)."""


def kept_lines(base: list[str], new: list[str]) -> dict[int, int]:
    """BASE line number -> NEW line number (1-based) of every line the diff keeps."""
    a = [t.rstrip() for t in base]
    b = [t.rstrip() for t in new]
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    out: dict[int, int] = {}
    for i, j, size in matcher.get_matching_blocks():
        out.update({i + k + 1: j + k + 1 for k in range(size)})
    return out


def replaced_blocks(base: list[str], new: list[str]) -> list[tuple[int, int, int, int]]:
    """(BASE first, BASE end, NEW first, NEW end), 1-based and end-exclusive, of each block of
    lines the diff replaced by other lines."""
    a = [t.rstrip() for t in base]
    b = [t.rstrip() for t in new]
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return [(i1 + 1, i2 + 1, j1 + 1, j2 + 1)
            for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag == "replace"]


def closest_line(text: str, candidates: dict[int, str], near: float) -> int | None:
    """The candidate line most like `text` (at least CLOSE_ENOUGH alike), the one nearest
    `near` among equals; None when none is."""
    want = text.strip()
    best: tuple[float, float, int] | None = None
    for number, other in candidates.items():
        matcher = difflib.SequenceMatcher(None, want, other.strip(), autojunk=False)
        if matcher.real_quick_ratio() < CLOSE_ENOUGH or matcher.quick_ratio() < CLOSE_ENOUGH:
            continue
        ratio = matcher.ratio()
        if ratio >= CLOSE_ENOUGH and (best is None or (ratio, -abs(number - near)) > best[:2]):
            best = (ratio, -abs(number - near), number)
    return best[2] if best else None


@dataclass
class LineEdits:
    """The line-level diff of each file, computed once per file name."""

    base_files: FileLines | None
    new_files: FileLines | None
    _kept: dict[str, dict[int, int] | None] = field(default_factory=dict)
    _kept_back: dict[str, dict[int, int]] = field(default_factory=dict)
    _replaced: dict[str, list[tuple[int, int, int, int]]] = field(default_factory=dict)

    def kept(self, file: str) -> dict[int, int] | None:
        """BASE -> NEW line numbers of the file's unchanged lines; None when either run's copy
        cannot be read."""
        if file not in self._kept:
            base = self.base_files(file) if self.base_files else None
            new = self.new_files(file) if self.new_files else None
            kept = kept_lines(base, new) if base is not None and new is not None else None
            self._kept[file] = kept
            self._kept_back[file] = {n: b for b, n in (kept or {}).items()}
            self._replaced[file] = replaced_blocks(base, new) if kept is not None else []
        return self._kept[file]

    def edited_counterpart(self, file: str, base_line: int) -> int | None:
        """The NEW line that an edited BASE line became (the same statement, changed): the
        most alike line of the block that replaced it; None when it has none, or is not an
        edited line."""
        if self.kept(file) is None or self.new_line_of(file, base_line) is not None:
            return None
        base = self.base_files(file) if self.base_files else None
        new = self.new_files(file) if self.new_files else None
        for b1, b2, n1, n2 in self._replaced[file]:
            if b1 <= base_line < b2 and base is not None and new is not None:
                near = n1 + (base_line - b1) * (n2 - n1) / (b2 - b1)
                return closest_line(base[base_line - 1],
                                    {n: new[n - 1] for n in range(n1, n2)}, near)
        return None

    def new_line_of(self, file: str, base_line: int) -> int | None:
        """Where an unchanged BASE line is in NEW (None: edited, or the file is unreadable)."""
        kept = self.kept(file)
        return kept.get(base_line) if kept is not None else None

    def base_line_of(self, file: str, new_line: int) -> int | None:
        """Where an unchanged NEW line was in BASE (None: edited, or unreadable)."""
        return self._kept_back[file].get(new_line) if self.kept(file) is not None else None

    def base_edited(self, file: str, base_line: int) -> bool | None:
        """Whether NEW changed or removed this BASE line (None: cannot tell)."""
        if self.kept(file) is None:
            return None
        return self.new_line_of(file, base_line) is None

    def new_edited(self, file: str, new_line: int) -> bool | None:
        """Whether this NEW line was changed or added since BASE (None: cannot tell)."""
        if self.kept(file) is None:
            return None
        return self.base_line_of(file, new_line) is None
