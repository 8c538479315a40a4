"""Load torch.profiler (Kineto) traces into pandas frames: `load(path) -> Run`.

    from tracekit.load import load
    run = load("traces/my_run")            # a directory of rank files, or one trace file
    trace = run.traces[0]
    trace.kernels, trace.ops, trace.launches, trace.python, trace.steps, ...

The frames and their columns are documented in `tracekit.trace`. Loading gives frames only;
`tracekit.pipeline.load` also links them (`tracekit.link`), which is what analyses need.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tracekit.errors import UserError
from tracekit.load.run import load_files
from tracekit.load.rundir import LoadPlan, plan_load, read_steps_log
from tracekit.trace import Run, Trace

__all__ = ["load", "load_plan", "load_trace"]


def load(path: str | os.PathLike[str], *, progress: bool = True, workers: int | None = None,
         prepare: Callable[[Trace], Any] | None = None) -> Run:
    """Load a trace file (.json, .json.gz, .pt.trace.json[.gz]) or a run directory of rank files.

    Rank files are parsed in parallel, one process per file (`workers` caps the processes); a
    single big file is parsed in slices, on several processes when the machine has 3+ CPUs
    (`workers` caps those too; 1 = this process only). `prepare` runs on each trace in the
    process that loaded it. A progress bar is shown on stderr when `progress` is set and stderr
    is a terminal or there are several files. Bad input raises `UserError` with a one-line
    message.
    """
    return load_plan(plan_load(path), progress=progress, workers=workers, prepare=prepare)


def load_plan(plan: LoadPlan, *, progress: bool = True, workers: int | None = None,
              prepare: Callable[[Trace], Any] | None = None) -> Run:
    """`load` of a path already planned (`tracekit.load.rundir.plan_load`)."""
    traces = load_files(plan, prepare=prepare, progress=progress, workers=workers)
    return Run(path=plan.path, traces=traces, manifest=plan.manifest,
               steps_log=read_steps_log(plan.run_dir))


def load_trace(path: str | os.PathLike[str], *,
               prepare: Callable[[Trace], Any] | None = None) -> Trace:
    """Load one trace file (no run directory handling beyond its manifest) and return it."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise UserError(f"{file}: is a directory; use tracekit.load.load for a run directory")
    return load(file, progress=False, prepare=prepare).traces[0]
