"""Where a run's source files are: its own snapshot of the code that ran, then the directories
the profiled program ran from.

A snapshot is a directory (`<run>/source/`, as the trainer writes it) or one archive of the
same tree (`traces/source-8063985.zip`: the committed reference runs share one per commit, so
that the copies of old code are data, not code that linters and readers take for the project's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tracekit.source.files import ARCHIVE_SUFFIX, SourcePath, open_root

SOURCE_SNAPSHOT_DIR = "source"


def snapshot_location(run_dir: Path, manifest: dict[str, Any] | None) -> Path | None:
    """Where the run's copy of the code that ran is: the manifest's `source_dir` (relative to
    the run, so runs of one commit can share one copy; a directory or a .zip archive), else
    `<run>/source/`; None when absent."""
    named = (manifest or {}).get("source_dir")
    candidate = run_dir / (named if isinstance(named, str) else SOURCE_SNAPSHOT_DIR)
    if candidate.is_dir() or (candidate.suffix == ARCHIVE_SUFFIX and candidate.is_file()):
        return candidate.resolve()
    return None


def source_snapshot(run_dir: Path, manifest: dict[str, Any] | None) -> SourcePath | None:
    """The run's copy of the code that ran, to read files from (`snapshot / "trainer/x.py"`),
    whether a directory or an archive; None when absent."""
    location = snapshot_location(run_dir, manifest)
    return open_root(location) if location is not None else None


def source_roots(run_dir: Path, manifest: dict[str, Any] | None) -> tuple[Path, ...]:
    """Directories against which relative source paths in frames are resolved.

    The profiler strips the sys.path entry from a frame's file, so the file is usually relative
    to the program's working directory: the manifest's cwd when recorded, the run directory's
    parents (traces/<run>/ usually sits in the project), and the current directory. First of
    all comes the run's own copy of the code that ran (`snapshot_location`), so line numbers
    stay right after the code changes.
    """
    roots: list[Path] = []
    snapshot = snapshot_location(run_dir, manifest)
    if snapshot is not None:
        roots.append(snapshot)
    if manifest:
        for key in ("cwd", "workdir", "project_root"):
            value = manifest.get(key)
            if isinstance(value, str):
                roots.append(Path(value))
        sys_path = manifest.get("sys_path")
        if isinstance(sys_path, list):
            roots.extend(Path(p) for p in sys_path if isinstance(p, str) and p)
    resolved = run_dir.resolve()
    roots.extend([resolved, *list(resolved.parents)[:4]])
    roots.append(Path.cwd())
    unique: list[Path] = []
    for root in roots:
        if root not in unique:
            unique.append(root)
    return tuple(unique)
