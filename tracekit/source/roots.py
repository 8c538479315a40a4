"""Where a run's source files are: its own snapshot of the code that ran, then the directories
the profiled program ran from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SOURCE_SNAPSHOT_DIR = "source"


def source_snapshot(run_dir: Path, manifest: dict[str, Any] | None) -> Path | None:
    """The run's copy of the code that ran: the manifest's `source_dir` (relative to the run,
    so runs of one commit can share one copy), else `<run>/source/`; None when absent."""
    named = (manifest or {}).get("source_dir")
    candidate = run_dir / (named if isinstance(named, str) else SOURCE_SNAPSHOT_DIR)
    return candidate.resolve() if candidate.is_dir() else None


def source_roots(run_dir: Path, manifest: dict[str, Any] | None) -> tuple[Path, ...]:
    """Directories against which relative source paths in frames are resolved.

    The profiler strips the sys.path entry from a frame's file, so the file is usually relative
    to the program's working directory: the manifest's cwd when recorded, the run directory's
    parents (traces/<run>/ usually sits in the project), and the current directory. First of
    all comes the run's own copy of the code that ran (`<run>/source/`, written by the trainer),
    so line numbers stay right after the code changes.
    """
    roots: list[Path] = []
    snapshot = source_snapshot(run_dir, manifest)
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
