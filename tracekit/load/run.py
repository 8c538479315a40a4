"""A path -> a `Run`: one trace file, or a directory of rank files read in parallel.

Rank files are parsed in separate processes (one per file) because parsing is CPU-bound Python
and each rank is independent; only the finished frames travel back, streamed through a
temporary file (see `load_trace_spooled`).
"""

from __future__ import annotations

import gc
import os
import pickle
import re
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tracekit.errors import UserError
from tracekit.load.columns import forget_shared, share_strings
from tracekit.load.frames import (
    build_frames,
    build_trace,
    compact_trace,
    rank_info,
    trace_from_frames,
)
from tracekit.load.read import read_document
from tracekit.load.stream import NotSliceable, extract_file, worker_count
from tracekit.trace import FRAME_NAMES, Run, Trace

MANIFEST_NAME = "manifest.json"
STEPS_LOG_NAME = "steps.jsonl"
TRACE_SUFFIXES = (".json", ".json.gz")
RANK_IN_NAME = re.compile(r"rank[_\-.]?(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class TraceJob:
    """What a worker process needs to load (and link) one rank file."""

    path: Path
    link: bool
    source_roots: tuple[Path, ...]
    rank: int | None = None
    processes: int | None = 1
    """Processes that parse this file's slices: 1 = only this one (the file is one of several
    loaded in parallel already), None = one per CPU."""


def load_trace_file(job: TraceJob) -> Trace:
    """Read, build and (optionally) link one trace file. Runs in a worker process.

    The file is streamed in slices (bounded memory, parallel on big files); a file that
    cannot be sliced, including every broken one, is read whole, which also gives the
    one-line error. The built frames are cached beside the trace (tracekit.cache) before
    linking: linking reads the user's source files, which may change between analyses.
    """
    from tracekit.cache import load_cached, save_cache

    trace = load_cached(job.path)
    if trace is None or trace.linked:  # a linked cache predates this loader: rebuild
        with gc_paused():
            trace = read_trace_file(job)
        save_cache(trace)
    if job.link:
        from tracekit.link import link_trace

        link_trace(trace, source_roots=list(job.source_roots))
    return compact_trace(trace)


def read_trace_file(job: TraceJob) -> Trace:
    try:
        try:
            meta, columns = extract_file(job.path, worker_count(job.path, job.processes))
        except (NotSliceable, ValueError, OSError):
            doc = read_document(job.path)
            trace = build_trace(doc, job.path, rank=job.rank)
            del doc
            return share_trace_strings(trace)
        frames = build_frames(columns)
        del columns
        return share_trace_strings(trace_from_frames(frames, meta, job.path, job.rank))
    finally:
        forget_shared()


def share_trace_strings(trace: Trace) -> Trace:
    """One str object per distinct value in every string column of every frame (see
    `columns.share_strings`), before caching and linking; int dtypes are narrowed only after
    linking (`compact_trace`), so the linker and the cache always see the loader's int64."""
    for name in FRAME_NAMES:
        share_strings(getattr(trace, name))
    return trace


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
SOURCE_SNAPSHOT_DIR = "source"
# What the trainer and `analyze` write beside the traces of a run.
RUN_FILES = (MANIFEST_NAME, "findings.json", "diff.json")


def is_trace_name(path: Path) -> bool:
    name = path.name
    return name.endswith(TRACE_SUFFIXES) and name not in RUN_FILES


def discover(directory: Path) -> list[Path]:
    """Trace files in a run directory (not recursive), in name order."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and is_trace_name(p))
    if not files:
        raise UserError(f"{directory}: no trace files (*.json, *.json.gz) in this directory")
    return files


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The trainer's manifest.json, when present and readable (it is optional)."""
    path = directory / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        from tracekit.load.read import parse_json

        manifest = parse_json(path.read_bytes())
    except Exception:  # an unreadable manifest must not stop the analysis of the traces
        return None
    return manifest if isinstance(manifest, dict) else None


def read_steps_log(directory: Path) -> pd.DataFrame | None:
    """steps.jsonl as a frame (one row per training step), when present."""
    path = directory / STEPS_LOG_NAME
    if not path.is_file():
        return None
    from tracekit.load.read import parse_json

    rows = []
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            row = parse_json(line)
        except Exception:  # a half-written last line of an interrupted run
            continue
        if isinstance(row, dict):
            rows.append(row)
    return pd.DataFrame(rows) if rows else None


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


def show_progress(progress: bool, n_files: int) -> bool:
    return progress and (n_files > 1 or sys.stderr.isatty())


@dataclass(frozen=True)
class LoadPlan:
    """What loading a path involves, before any file is read."""

    path: Path
    run_dir: Path
    files: list[Path]
    manifest: dict[str, Any] | None
    roots: tuple[Path, ...]

    @property
    def single_file(self) -> bool:
        return not self.path.is_dir()


def plan_load(path: str | os.PathLike[str]) -> LoadPlan:
    """The trace files of a path (a file, or a run directory's rank files), its manifest and
    the source roots; a one-line error for a missing path or a directory without traces."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    run_dir = path if path.is_dir() else path.parent
    files = discover(path) if path.is_dir() else [path]
    manifest = read_manifest(run_dir)
    return LoadPlan(path, run_dir, files, manifest, source_roots(run_dir, manifest))


def load_run(path: str | os.PathLike[str], *, link: bool = True, progress: bool = True,
             workers: int | None = None) -> Run:
    """Load a trace file or a run directory (see `tracekit.load.load`)."""
    plan = plan_load(path)
    # One file: parse it in slices on all CPUs. Several: one process per file instead.
    processes = workers if len(plan.files) == 1 else 1
    jobs = [TraceJob(f, link, plan.roots, processes=processes) for f in plan.files]
    traces, skipped = _load_all(jobs, progress=show_progress(progress, len(plan.files)),
                                workers=workers, single_file=plan.single_file)
    finish_ranks(plan, traces, skipped)
    return Run(path=plan.path, traces=traces, manifest=plan.manifest,
               steps_log=read_steps_log(plan.run_dir))


def finish_ranks(plan: LoadPlan, traces: list[Trace], skipped: list[str]) -> None:
    """Ranks and world size of the loaded traces (in place, sorted by rank); the skipped files
    noted on the first; an error when nothing was a trace."""
    if not traces:
        raise UserError(f"{plan.path}: no profiler traces here ({'; '.join(skipped)})")
    assign_ranks(traces, files_in_order=plan.files, manifest=plan.manifest)
    if skipped:
        traces[0].warnings.extend(f"skipped {s}" for s in skipped)
    traces.sort(key=lambda t: t.rank)


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


def skip_or_raise(exc: UserError, path: Path, single_file: bool) -> str:
    """In a directory, a JSON file that is simply not a trace (a config, a summary) is skipped
    (the reason is returned); a broken trace file, or a file named on its own, is an error."""
    if single_file or "not a profiler trace" not in str(exc):
        raise exc
    return f"{path.name}: not a profiler trace"


def assign_ranks(traces: list[Trace], files_in_order: list[Path],
                  manifest: dict[str, Any] | None) -> None:
    """Rank from distributedInfo, else from the file name (rank3...), else file order;
    world size from distributedInfo, else the manifest, else the number of files."""
    order = {p: i for i, p in enumerate(files_in_order)}
    world_sizes: set[int] = set()
    claimed: dict[int, Path] = {}
    for trace in sorted(traces, key=lambda t: order[t.path]):
        info_rank, info_world = rank_info(trace.meta)
        name_match = RANK_IN_NAME.search(trace.path.name)
        if info_rank is not None:
            trace.rank = info_rank
        elif name_match:
            trace.rank = int(name_match.group(1))
        else:
            trace.rank = order[trace.path]
        if trace.rank in claimed:
            raise UserError(
                f"two trace files claim rank {trace.rank}: {claimed[trace.rank].name} and "
                f"{trace.path.name} (one profiling cycle per directory, please)"
            )
        claimed[trace.rank] = trace.path
        if info_world is not None:
            world_sizes.add(info_world)
    if len(world_sizes) > 1:
        raise UserError(
            f"rank files disagree on the world size ({sorted(world_sizes)}): "
            "they come from different runs"
        )
    if world_sizes:
        world = world_sizes.pop()
    elif manifest and isinstance(manifest.get("world_size"), int):
        world = int(manifest["world_size"])
    else:
        world = max(len(traces), max(t.rank for t in traces) + 1)
    for trace in traces:
        trace.world_size = world


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
