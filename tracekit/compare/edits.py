"""Which lines of a source file changed between BASE and NEW: a line-level diff of the two runs'
own copies of the file (their source snapshots, or the roots the linker used).

A line that the diff keeps (the same text, in the same order among the kept lines) is
"unchanged" and has a number in each run (an edit above it moves it); every other line was
edited: changed, added (NEW) or removed (BASE). Trailing whitespace is ignored. The diff is
difflib's longest matching blocks, so a block of code moved elsewhere in the file counts as
edited at both places.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

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


@dataclass
class LineEdits:
    """The line-level diff of each file, computed once per file name."""

    base_files: FileLines | None
    new_files: FileLines | None
    _kept: dict[str, dict[int, int] | None] = field(default_factory=dict)
    _kept_back: dict[str, dict[int, int]] = field(default_factory=dict)

    def kept(self, file: str) -> dict[int, int] | None:
        """BASE -> NEW line numbers of the file's unchanged lines; None when either run's copy
        cannot be read."""
        if file not in self._kept:
            base = self.base_files(file) if self.base_files else None
            new = self.new_files(file) if self.new_files else None
            kept = kept_lines(base, new) if base is not None and new is not None else None
            self._kept[file] = kept
            self._kept_back[file] = {n: b for b, n in (kept or {}).items()}
        return self._kept[file]

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
