"""A progress bar over the rank files being loaded (stderr)."""

from __future__ import annotations

import sys
from typing import Any


def show_progress(progress: bool, n_files: int) -> bool:
    return progress and (n_files > 1 or sys.stderr.isatty())


class LoadProgress:
    """A rich progress bar over rank files on stderr (a no-op when disabled)."""

    def __init__(self, enabled: bool, names: list[str]) -> None:
        self.enabled = enabled
        self.total = len(names)
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> LoadProgress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("loading traces"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.description}"), TimeElapsedColumn(),
                console=Console(stderr=True), transient=True,
                # No refresh thread: rank files may be parsed by forked processes, and
                # forking while another thread holds a lock is how children deadlock.
                auto_refresh=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task("", total=self.total)
            self._progress.refresh()
        return self

    def done(self, name: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, description=name, refresh=True)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
