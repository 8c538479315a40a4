"""Holistic Trace Analysis (HTA) side by side with tracekit: HTA's own breakdowns of a run.

HTA (facebookresearch/HolisticTraceAnalysis) is an optional dependency: it is not installed on
the GPU machines, so it is imported only inside `breakdown`, and a missing HTA is a one-line
UserError. HTA reads a directory of rank traces and parses every *.json / *.gz file in it; a run
directory may also hold manifest.json or other files, so the trace files are staged into a
temporary directory through symlinks (the user's files are never copied, moved or changed).

HTA prints progress and warnings from the parsing processes; those are silenced at the file
descriptor level so that `breakdown` returns frames and prints nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from tracekit.errors import UserError

TRACE_SUFFIXES = (".json", ".json.gz")
NOT_TRACES = {"manifest.json"}


def trace_files(path: Path) -> list[Path]:
    """The Kineto trace files named by `path` (one file, or the trace files of a directory)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and p.name.endswith(TRACE_SUFFIXES) and p.name not in NOT_TRACES)
    if not files:
        raise UserError(f"{path} holds no trace files (*.json or *.json.gz)")
    return files


@contextlib.contextmanager
def staged(path: Path) -> Iterator[Path]:
    """A temporary directory holding symlinks to the trace files of `path`, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="tracekit-hta-") as tmp:
        for i, src in enumerate(trace_files(path)):
            suffix = ".json.gz" if src.name.endswith(".gz") else ".json"
            os.symlink(src.resolve(), Path(tmp) / f"trace{i}{suffix}")
        yield Path(tmp)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence HTA: its loggers, and anything written to fd 1/2 (including by child processes)."""
    hta_logger = logging.getLogger("hta")
    old_level = hta_logger.level
    hta_logger.setLevel(logging.CRITICAL)
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        with contextlib.redirect_stdout(open(os.devnull, "w")) as out, \
                contextlib.redirect_stderr(out):
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
        hta_logger.setLevel(old_level)


def _import_trace_analysis() -> type:
    try:
        with quiet():
            from hta.trace_analysis import TraceAnalysis
    except ImportError as err:
        raise UserError("HTA is not installed (pip install HolisticTraceAnalysis); "
                        f"it is needed only for the HTA comparison ({err})") from err
    return TraceAnalysis


def load_trace_analysis(path: Path, include_last_profiler_step: bool = False) -> object:
    """HTA's TraceAnalysis of a trace file or run directory (HTA defaults otherwise)."""
    trace_analysis = _import_trace_analysis()
    with staged(Path(path)) as tmp, quiet():
        return trace_analysis(trace_dir=str(tmp),
                              include_last_profiler_step=include_last_profiler_step)


def comm_busy_by_rank(analysis: object) -> pd.DataFrame:
    """Per rank, HTA's communication busy time: its kernel-type breakdown of that rank alone.

    HTA's kernel-type table sums over ranks, so it is asked once per rank; the communication
    time is the sum of every row that involves COMMUNICATION ("COMMUNICATION", "COMPUTATION
    overlapping COMMUNICATION", ...), i.e. the union of NCCL kernel intervals.
    """
    from hta.analyzers.breakdown_analysis import BreakdownAnalysis

    t = analysis.t  # type: ignore[attr-defined]
    rows = []
    all_traces = dict(t.traces)
    try:
        for rank, frame in all_traces.items():
            t.traces = {rank: frame}
            with quiet():
                kinds, _ = BreakdownAnalysis.get_gpu_kernel_breakdown(
                    t, visualize=False, include_memory_kernels=True)
            comm = kinds[kinds["kernel_type"].str.contains("COMMUNICATION")]["sum"].sum()
            rows.append({"rank": int(rank), "comm_busy_us": float(comm)})
    finally:
        t.traces = all_traces
    return pd.DataFrame(rows, columns=["rank", "comm_busy_us"])


def breakdown(path: str | Path, include_last_profiler_step: bool = False
              ) -> dict[str, pd.DataFrame]:
    """HTA's view of a run (a trace file or a directory of rank traces).

    Returns frames keyed by:
      temporal        get_temporal_breakdown: idle / compute / non-compute time per rank
      kernel_type     get_gpu_kernel_breakdown, first table: time by kernel type (all ranks)
      kernels         get_gpu_kernel_breakdown, second table: top kernels per type and rank
      comm_comp_overlap  get_comm_comp_overlap: rank, comp_comm_overlap_pctg
      comm_busy       per rank, communication busy time (see comm_busy_by_rank)
    `include_last_profiler_step` is HTA's option: by default HTA drops kernels launched in the
    last ProfilerStep (and after it), as an incomplete iteration.
    """
    analysis = load_trace_analysis(Path(path), include_last_profiler_step)
    with quiet():
        temporal = analysis.get_temporal_breakdown(visualize=False)  # type: ignore[attr-defined]
        kinds, kernels = analysis.get_gpu_kernel_breakdown(  # type: ignore[attr-defined]
            visualize=False, include_memory_kernels=True)
        overlap = analysis.get_comm_comp_overlap(visualize=False)  # type: ignore[attr-defined]
    return {"temporal": temporal, "kernel_type": kinds, "kernels": kernels,
            "comm_comp_overlap": overlap, "comm_busy": comm_busy_by_rank(analysis)}
