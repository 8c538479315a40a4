"""Load torch.profiler (Kineto) traces into pandas frames: `load(path) -> Run`.

    from tracekit.load import load
    run = load("traces/my_run")            # a directory of rank files, or one trace file
    trace = run.traces[0]
    trace.kernels, trace.ops, trace.launches, trace.python, trace.steps, ...

The frames and their columns are documented in `tracekit.trace`.
"""

from __future__ import annotations

import os
from pathlib import Path

from tracekit.errors import UserError
from tracekit.load.run import load_run
from tracekit.trace import Run, Trace

__all__ = ["load", "load_trace"]


def load(path: str | os.PathLike[str], *, link: bool = True, progress: bool = True,
         workers: int | None = None) -> Run:
    """Load a trace file (.json, .json.gz, .pt.trace.json[.gz]) or a run directory of rank files.

    Rank files are parsed in parallel, one process per file (`workers` caps the processes); a
    single big file is parsed in slices, on several processes when the machine has 3+ CPUs
    (`workers` caps those too; 1 = this process only). With `link` (the default) every trace
    is also passed through `tracekit.link.link_trace`. A progress bar is shown on stderr when
    `progress` is set and stderr is a terminal or there are several files. Bad input raises
    `UserError` with a one-line message.
    """
    return load_run(path, link=link, progress=progress, workers=workers)


def load_trace(path: str | os.PathLike[str], *, link: bool = True) -> Trace:
    """Load one trace file (no run directory handling beyond its manifest) and return it."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise UserError(f"{file}: is a directory; use tracekit.load.load for a run directory")
    run = load_run(file, link=link, progress=False)
    return run.traces[0]

