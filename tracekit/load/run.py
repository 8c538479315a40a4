"""Trace files -> Traces: one file parsed in slices, or rank files read in parallel.

Rank files are parsed in separate processes (one per file) because parsing is CPU-bound Python
and each rank is independent; only the finished frames travel back, streamed through a
temporary file (see `load_trace_spooled`).
"""

from __future__ import annotations

import gc
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracekit.errors import UserError
from tracekit.load.cache import load_cached, save_cache
from tracekit.load.columns import forget_shared, share_strings
from tracekit.load.events import NotTyped, decode_document
from tracekit.load.frames import (
    build_frames,
    build_trace,
    compact_trace,
    trace_from_events,
    trace_from_frames,
)
from tracekit.load.memory import arrow_on_malloc
from tracekit.load.progress import LoadProgress, show_progress
from tracekit.load.read import read_bytes, read_document
from tracekit.load.rundir import LoadPlan, finish_ranks, skip_or_raise
from tracekit.load.stream import NotSliceable, extract_file, worker_count
from tracekit.trace import FRAME_NAMES, Trace


@dataclass(frozen=True)
class TraceJob:
    """What a worker process needs to load one rank file."""

    path: Path
    prepare: Callable[[Trace], Any] | None = None
    """Run on the loaded trace in the process that loaded it, before it travels back (the
    pipeline links it there: linking reads the user's source files, in parallel per rank)."""
    rank: int | None = None
    processes: int | None = 1
    """Processes that parse this file's slices: 1 = only this one (the file is one of several
    loaded in parallel already), None = one per CPU."""


def load_trace_file(job: TraceJob) -> Trace:
    """Read and build one trace file, then `job.prepare` it. Runs in a worker process.

    The file is streamed in slices (bounded memory, parallel on big files); a file that
    cannot be sliced, including every broken one, is read whole, which also gives the
    one-line error. The built frames are cached beside the trace (tracekit.load.cache) before
    `prepare`: linking reads the user's source files, which may change between analyses.
    """
    arrow_on_malloc()
    trace = load_cached(job.path)
    if trace is None or trace.linked:  # a linked cache predates this loader: rebuild
        with gc_paused():
            trace = read_trace_file(job)
        save_cache(trace)
    if job.prepare is not None:
        job.prepare(trace)
    return compact_trace(trace)


def read_trace_file(job: TraceJob) -> Trace:
    """The frames of one file. Their strings are shared as the loader builds them (one str
    per distinct value); slices parsed in other processes come back with their own copies,
    which are shared again here, before linking."""
    workers = worker_count(job.path, job.processes)
    try:
        try:
            meta, columns = extract_file(job.path, workers)
        except (NotSliceable, ValueError, OSError):
            return read_whole(job)
        frames = build_frames(columns)
        census = columns.pop("census")
        del columns
        trace = trace_from_frames(frames, meta, job.path, job.rank, census=census)
        if workers:
            for name in FRAME_NAMES:
                share_strings(getattr(trace, name))
        return trace
    finally:
        forget_shared()


def read_whole(job: TraceJob) -> Trace:
    """A trace read as one document: typed decode, else the generic parser (which also words
    the error for a file that is no trace)."""
    try:
        meta, events = decode_document(read_bytes(job.path))
    except (NotTyped, UserError):
        doc = read_document(job.path)
        return build_trace(doc, job.path, rank=job.rank)
    return trace_from_events(events, meta, job.path, job.rank)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while millions of event dicts are alive.

    Parsing allocates one dict per event; every few hundred allocations the collector would
    walk all of them again, which costs more than the parse itself on big traces. The event
    dicts hold no reference cycles, so reference counting frees them without the collector.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# The copy of the program's source that the trainer keeps in a run directory.
# What the trainer and `analyze` write beside the traces of a run.


def load_files(plan: LoadPlan, *, prepare: Callable[[Trace], Any] | None = None,
               progress: bool = True, workers: int | None = None) -> list[Trace]:
    """The traces of a load plan, ranks assigned, in rank order (see `tracekit.load.load`)."""
    # One file: parse it in slices on all CPUs. Several: one process per file instead.
    processes = workers if len(plan.files) == 1 else 1
    jobs = [TraceJob(f, prepare, processes=processes) for f in plan.files]
    traces, skipped = _load_all(jobs, progress=show_progress(progress, len(plan.files)),
                                workers=workers, single_file=plan.single_file)
    finish_ranks(plan, traces, skipped)
    return traces


def _load_all(jobs: list[TraceJob], *, progress: bool, workers: int | None,
              single_file: bool) -> tuple[list[Trace], list[str]]:
    """Load every job; non-trace JSON files in a directory are skipped and reported."""
    traces: list[Trace] = []
    skipped: list[str] = []
    with LoadProgress(progress, [j.path.name for j in jobs]) as bar:
        if len(jobs) == 1 or workers == 1:
            for job in jobs:
                _collect(lambda job=job: load_trace_file(job), job, traces, skipped,
                         single_file)
                bar.done(job.path.name)
            return traces, skipped
        max_workers = min(len(jobs), workers or os.cpu_count() or 1)
        with _spool_dir() as spool, ProcessPoolExecutor(max_workers=max_workers) as pool:
            futures = {pool.submit(load_trace_spooled, job, spool, i): job
                       for i, job in enumerate(jobs)}
            for future in as_completed(futures):
                job = futures[future]
                _collect(lambda future=future: unspool(future.result()), job, traces, skipped,
                         single_file)
                bar.done(job.path.name)
    return traces, skipped


@contextmanager
def _spool_dir() -> Iterator[Path | None]:
    """A private temporary directory for the workers' results (None if none can be made)."""
    try:
        directory = tempfile.TemporaryDirectory(prefix="tracekit-load-")
    except OSError:
        yield None
        return
    with directory as name:
        yield Path(name)


def load_trace_spooled(job: TraceJob, spool: Path | None, index: int) -> Trace | Path:
    """`load_trace_file` in a worker process, its Trace pickled into a file in `spool`.

    A result returned from a worker travels as ONE pickled message: the whole rank, about as
    big as its frames, exists as bytes in the worker and again in the parent, each time next
    to the frames themselves. Pickle streams to and from a file in small frames instead, so
    neither process ever holds a second copy (the parent, which gathers every rank, gains the
    most). Where the file cannot be written (disk full), the Trace is returned directly.
    """
    trace = load_trace_file(job)
    if spool is None:
        return trace
    target = spool / f"{index}.trace.pickle"
    try:
        with open(target, "wb") as fh:
            pickle.dump(trace, fh, protocol=pickle.HIGHEST_PROTOCOL)
    except OSError:
        target.unlink(missing_ok=True)
        return trace
    return target


def unspool(result: Trace | Path) -> Trace:
    """The Trace that `load_trace_spooled` produced (read back and its file removed)."""
    if isinstance(result, Trace):
        return result
    try:
        with open(result, "rb") as fh:
            return pickle.load(fh)
    finally:
        result.unlink(missing_ok=True)


def _collect(get: Any, job: TraceJob, traces: list[Trace], skipped: list[str],
             single_file: bool) -> None:
    try:
        traces.append(get())
    except UserError as exc:
        skipped.append(skip_or_raise(exc, job.path, single_file))


