"""Where a profiler frame's source file is: resolved against the run's source roots (its code
snapshot first), then read and parsed once. The one resolver behind the linker, the detectors
and the comparison.

A root is a directory or a code snapshot archive (`.zip`, see `tracekit.source.roots`); a file
found in an archive is a `zipfile.Path`, read like a file on disk (`SourcePath`)."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tracekit.source.parse import ParsedFile, parse_source

MAX_SEARCH_DEPTH = 4
MAX_SEARCH_FILES = 20000
SKIP_DIRS = frozenset({"__pycache__", "node_modules", "site-packages", "venv", "build", "dist"})
ARCHIVE_SUFFIX = ".zip"

SourcePath = Path | zipfile.Path
"""A readable source file: on disk, or a member of a snapshot archive."""


def open_root(root: Path) -> SourcePath:
    """A root to look files up in: the directory itself, or the inside of a snapshot archive."""
    if root.suffix == ARCHIVE_SUFFIX and root.is_file():
        return zipfile.Path(root)
    return root


def on_disk(path: SourcePath) -> Path:
    """Where a source file is, as an absolute path; for an archive member,
    `<archive>/<member>` (the archive's path with the member's inside it)."""
    if isinstance(path, zipfile.Path):
        return Path(str(path.root.filename)).resolve() / path.at
    return path.resolve()


@dataclass
class SourceFiles:
    """Resolves a profiler frame's file against candidate roots, and reads and parses it; each
    file is looked up, read and parsed once per instance (not across instances: files may
    change between analyses in one process)."""

    roots: Sequence[Path] = ()
    search_roots: Sequence[Path] | None = None
    """Project directories searched (shallowly) for a frame file not found under `roots`:
    a script run as `python scripts/x.py` is named "x.py" in frames. Default: those of `roots`
    that look like a project (have .git, pyproject.toml or setup.py)."""
    _paths: dict[str, SourcePath | None] = field(default_factory=dict)
    _opened: dict[Path, SourcePath] = field(default_factory=dict)
    _listing: dict[Path, list[Path]] = field(default_factory=dict)
    _parsed: dict[str, ParsedFile | None] = field(default_factory=dict)
    _lines: dict[str, list[str] | None] = field(default_factory=dict)

    def resolve(self, file: str) -> SourcePath | None:
        """The readable file a frame's (usually sys.path-relative) file name refers to."""
        if file in self._paths:
            return self._paths[file]
        found: SourcePath | None = None
        if file and not file.startswith("<"):
            candidate = Path(file)
            options = [candidate] if candidate.is_absolute() else \
                [self._open(r) / file for r in self.roots]
            for option in options:
                try:
                    if option.is_file():
                        found = option
                        break
                except OSError:
                    continue
            if found is None and not candidate.is_absolute():
                found = self._search(file)
        self._paths[file] = found
        return found

    def _open(self, root: Path) -> SourcePath:
        if root not in self._opened:
            self._opened[root] = open_root(root)
        return self._opened[root]

    def _search(self, file: str) -> Path | None:
        """The shortest path under a project root that ends with `file`, if any."""
        suffix = "/" + file.lstrip("./")
        matches: list[Path] = []
        for root in self._project_roots():
            matches.extend(p for p in self._list(root) if str(p).endswith(suffix))
        return min(matches, key=lambda p: (len(p.parts), str(p))) if matches else None

    def _project_roots(self) -> list[Path]:
        if self.search_roots is not None:
            return list(self.search_roots)
        markers = (".git", "pyproject.toml", "setup.py")
        out: list[Path] = []
        for root in self.roots:
            try:
                if any((root / m).exists() for m in markers) and root not in out:
                    out.append(root)
            except OSError:
                continue
        return out

    def _list(self, root: Path) -> list[Path]:
        """Python files under root, at most MAX_SEARCH_DEPTH deep and MAX_SEARCH_FILES many,
        skipping hidden directories, virtualenvs and caches (cached per root)."""
        if root in self._listing:
            return self._listing[root]
        found: list[Path] = []
        frontier = [(root, 0)]
        while frontier and len(found) < MAX_SEARCH_FILES:
            directory, depth = frontier.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                name = entry.name
                if entry.is_dir(follow_symlinks=False):
                    if depth < MAX_SEARCH_DEPTH and not name.startswith(".") \
                            and name not in SKIP_DIRS:
                        frontier.append((Path(entry.path), depth + 1))
                elif name.endswith(".py"):
                    found.append(Path(entry.path))
        self._listing[root] = found
        return found

    def parsed(self, path: SourcePath) -> ParsedFile | None:
        """The parsed file (None when unreadable or not Python)."""
        key = str(path)
        if key not in self._parsed:
            try:
                self._parsed[key] = parse_source(path.read_bytes(), key)
            except OSError:
                self._parsed[key] = None
        return self._parsed[key]

    def parsed_at(self, file: str, line: int) -> ParsedFile | None:
        """The parsed source of a frame's file, None when it cannot be read or the frame has
        no line (-1)."""
        path = self.resolve(file) if line >= 0 else None
        return self.parsed(path) if path is not None else None

    def lines(self, file: str) -> list[str] | None:
        """The text lines of a frame's file (None when it cannot be read)."""
        if file not in self._lines:
            path = self.resolve(file)
            try:
                self._lines[file] = path.read_text().splitlines() if path else None
            except (OSError, UnicodeDecodeError):
                self._lines[file] = None
        return self._lines[file]
