"""Where the GPU's idle time went: what the CPU was doing while the GPU had nothing to run.

The GPU idles inside a step only when the next piece of GPU work was not queued yet, or was
queued but could not start. For every idle interval the next GPU event after it (any stream)
tells which: if its launch call had already returned when the GPU went idle, the work was
queued (a stream dependency, an event wait, or the driver's own latency: `queued`). Otherwise
the CPU was late, and the interval up to the moment the launch call returned is split by what
the launching threads were doing meanwhile, first match wins:

    input      the input pipeline: DataLoader iteration (`enumerate(DataLoader)#...__next__`),
               collate, `torch/utils/data` frames, data/prefetch labels
    gc         Python's garbage collector
    peer       a barrier: waiting for other ranks
    memcpy     a blocking copy: cudaMemcpy/hipMemcpy calls, ops copying from pageable memory
               (also the rest of an idle interval that began while the CPU was in one)
    host_sync  the CPU waited for the GPU: cuda/hip Stream/Device/Event Synchronize,
               aten::item, _local_scalar_dense, nonzero, copies to the host (.cpu(), .to("cpu"));
               also the rest of an idle interval that began while the CPU was in such a sync
               (the sync drained the queue: everything the CPU did before its next launch was
               exposed)
    launch     kernel-launch overhead: CUDA runtime calls and ops that launch GPU work, that
               return within MAX_LAUNCH_OP_US; every idle gap under LAUNCH_GAP_US closed by a
               late launch (runs of short kernels whose launches cannot keep up), named by the
               op that launched the next kernel; and the launch latency between a late launch
               call's return and its kernel's start
    python     any other CPU op, record_function range or Python frame: Python work, and ops
               and runtime calls that hold the CPU for long (cudnn autotuning in a first conv2d,
               CUDA context creation in a first cudaFree or cudaLaunchKernel);
               optimizer steps land here with their `Optimizer.step#...` label
    unknown    no event on the launching threads (e.g. a trace without Python stacks)

Each piece of idle time keeps the CPU event that explains it (the outermost event of that
cause around it: its name, thread, and the user's source line, from the linker's source
columns or the enclosing user frame).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tracekit.accounting.events import (
    CPU_CAUSES,
    DRAINING,
    IDLE_CAUSES,
    LAUNCH_GAP_US,
    NO_SOURCE,
    CpuEvents,
    cpu_events,
    describe,
    launch_gaps,
    undescribed,
)
from tracekit.accounting.sets import GpuSets, gpu_sets
from tracekit.intervals import (
    Intervals,
    intersect_intervals,
    subtract_intervals,
    union_intervals,
)
from tracekit.link.op_source import in_generated_code, user_frames
from tracekit.load.columns import strings_column
from tracekit.load.frames import already_running
from tracekit.source import SourceIndex
from tracekit.trace import Trace


@dataclass
class IdleSplit:
    """A rank's idle time split by cause: `pieces` has one row per piece of idle time:
    cause, start, end, window (its step window's index), and the explaining CPU event's
    name, tid, src_file, src_line, src_function, src_line_exact, src_path."""

    pieces: pd.DataFrame

    def per_window(self, sets: GpuSets) -> pd.DataFrame:
        """Idle microseconds per step window (rows) and cause (columns, every cause).

        Pieces may run across a window boundary (windows touch), so each cause's pieces are
        measured inside each window rather than counted where they start."""
        p = self.pieces
        out = pd.DataFrame(0.0, index=np.arange(len(sets.steps)), columns=list(IDLE_CAUSES))
        codes, causes = pd.factorize(p["cause"])
        start, end = p["start"].to_numpy(np.float64), p["end"].to_numpy(np.float64)
        for code, cause in enumerate(causes):
            mine = codes == code
            out[cause] = sets.per_window((start[mine], end[mine]))
        return out


def idle_split(trace: Trace) -> IdleSplit:
    """The rank's idle intervals split by cause (cached on the trace)."""
    cached = trace.__dict__.get("_idle_split")
    if cached is not None:
        return cached
    sets = gpu_sets(trace)
    idle_s, idle_e = sets.idle
    late_until, next_call = next_launch(trace, idle_e)
    late = ~(late_until <= idle_s)  # NaN (launch unknown) counts as late
    cpu_end = np.where(np.isnan(late_until), idle_e, np.clip(late_until, idle_s, idle_e))
    cpu_part = (idle_s[late], cpu_end[late])
    tail = (cpu_end[late], idle_e[late])
    keep = tail[1] > tail[0]
    tail = (tail[0][keep], tail[1][keep])
    queued = (idle_s[~late], idle_e[~late])

    events = cpu_events(trace)
    blocking = {cause: events.of_cause(cause) for cause in DRAINING}
    extra = drained(blocking, cpu_part)
    short = late & (idle_e - idle_s <= LAUNCH_GAP_US) & (next_call >= 0)
    extra["launch"] = [launch_gaps(trace, (idle_s[short], cpu_end[short]), next_call[short])]
    remaining = union_intervals(*cpu_part)
    parts = []
    for cause in CPU_CAUSES:  # one cause's events at a time (a big rank has millions)
        mine = blocking.pop(cause) if cause in blocking else events.of_cause(cause)
        mine = CpuEvents.concat([mine, *extra.get(cause, [])])
        if len(mine) == 0:
            continue
        covered, rep = grouped_union(mine)
        piece = intersect_intervals(remaining, covered)
        remaining = subtract_intervals(remaining, piece)
        parts.append(explained(trace, cause, piece, covered, rep, mine))
        del mine, covered, rep
    parts.append(launch_tails(trace, tail, next_call[late][keep]))
    parts.append(bare("queued", queued))
    parts.append(bare("unknown", remaining))
    del events, extra
    pieces = pieces_by_start(parts)
    del parts
    pieces["window"] = np.searchsorted(sets.windows[0], pieces["start"].to_numpy(),
                                       side="right") - 1
    pieces["running_frame"] = False
    fill_sources(trace, pieces)
    narrow_lines(trace, pieces)
    drop_compiled_def_lines(trace, pieces)
    pieces = pieces.drop(columns=["running_frame", "event_ts"])
    split = IdleSplit(pieces)
    trace.__dict__["_idle_split"] = split
    return split


def next_launch(trace: Trace, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each time t (an idle interval's end, where GPU work starts): when the launch call
    of the GPU event starting there returned (NaN when unknown), and that call's row in
    `launches` (-1 when unknown)."""
    k, m, launches = trace.kernels, trace.gpu_mem, trace.launches
    ts = np.concatenate([k["ts"].to_numpy(np.float64), m["ts"].to_numpy(np.float64)])
    launch = np.concatenate([k["launch_idx"].to_numpy(np.int64),
                             m["launch_idx"].to_numpy(np.int64)])
    if len(ts) == 0 or len(t) == 0:
        return np.full(len(t), np.nan), np.full(len(t), -1, dtype=np.int64)
    launch_end = np.full(len(ts), np.nan)
    has = launch >= 0
    launch_end[has] = launches["end"].to_numpy(np.float64)[launch[has]]
    # Of events starting at the same time, the one launched first decides.
    order = np.lexsort((launch_end, ts))
    ts, launch_end, launch = ts[order], launch_end[order], launch[order]
    pos = np.clip(np.searchsorted(ts, t - 1e-3, side="left"), 0, len(ts) - 1)
    return launch_end[pos], launch[pos]


def grouped_union(events: CpuEvents) -> tuple[Intervals, np.ndarray]:
    """Union of the events' intervals and, per group (merged interval), the position (in
    `events`) of the event that names it: its longest op or label, else its longest Python
    frame (`<module>`, `main` say little), the first such event on a tie."""
    ts, end = events.ts, events.end
    covered = union_intervals(ts, end)
    n_groups = len(covered[0])
    if n_groups == 0:
        return covered, np.zeros(0, dtype=np.int64)
    group = np.searchsorted(covered[0], ts, side="right") - 1
    dur = end - ts
    dur[~(end > ts) | (group < 0)] = -1.0
    group[group < 0] = n_groups  # in no group: counted in a bin of their own, dropped
    has_named = np.zeros(n_groups + 1, dtype=bool)
    has_named[group[~events.frame]] = True
    eligible = events.frame != has_named[group]
    longest = np.full(n_groups + 1, -np.inf)
    np.maximum.at(longest, group[eligible], dur[eligible])
    best = np.flatnonzero(eligible & (dur == longest[group]))
    del eligible, dur, longest
    rep = np.full(n_groups + 1, len(ts), dtype=np.int64)
    np.minimum.at(rep, group[best], best)
    rep = rep[:n_groups]
    rep[rep == len(ts)] = 0
    return covered, rep


def drained(blocking: dict[str, CpuEvents], cpu_part: Intervals) -> dict[str, list[CpuEvents]]:
    """Events (per cause) for idle intervals that began while the CPU was blocked in a host
    sync or a blocking copy: it drained the GPU's queue, so the whole interval is its (see
    module doc)."""
    out: dict[str, list[CpuEvents]] = {}
    for cause in DRAINING:
        events = blocking[cause]
        if len(events) == 0 or len(cpu_part[0]) == 0:
            continue
        covered, rep = grouped_union(events)
        group = np.searchsorted(covered[0], cpu_part[0], side="right") - 1
        inside = (group >= 0) & (covered[1][np.clip(group, 0, None)] >= cpu_part[0])
        out[cause] = [events.take(rep[group[inside]]).at_times(cpu_part[0][inside],
                                                               cpu_part[1][inside])]
    return out


Pieces = dict[str, np.ndarray]
"""Pieces of idle time as columns: cause, start, end, EVENT_FIELDS, event_ts."""


def explained(trace: Trace, cause: str, piece: Intervals, covered: Intervals, rep: np.ndarray,
              events: CpuEvents) -> Pieces:
    """Pieces of one cause, each with the event that names its group."""
    group = np.searchsorted(covered[0], piece[0], side="right") - 1
    pick = rep[group]
    # The event running at the piece's start names it best: the latest-starting op, label or
    # launch gap that contains it (frames are named by the user frame, below).
    named = np.flatnonzero(~events.frame)
    if named.size and len(piece[0]):
        named = named[np.argsort(events.ts[named], kind="stable")]
        at = np.searchsorted(events.ts[named], piece[0], side="right") - 1
        latest = named[np.clip(at, 0, None)]
        del named
        hit = (at >= 0) & (events.end[latest] > piece[0])
        pick = np.where(hit, latest, pick)
    chosen = events.take(pick)
    about = describe(trace, chosen)
    event_ts = np.minimum(chosen.ts, piece[0])
    # A group of back-to-back events is named by its longest one, which need not be the one
    # running at the piece (a later record_function range), and a Python frame's name says
    # little (`_run_module_as_main`): those pieces are named by the user frame around them
    # instead (fill_sources).
    inside = (chosen.ts <= piece[0]) & (chosen.end > piece[0])
    vague = ~inside | chosen.frame
    about["name"][vague] = ""
    for column in ("src_file", "src_line", "src_function", "src_line_exact"):
        about[column][vague] = NO_SOURCE[column]
    event_ts[vague] = piece[0][vague]
    return pieces_of(cause, piece, about, event_ts)


def launch_tails(trace: Trace, tail: Intervals, calls: np.ndarray) -> Pieces:
    """Launch latency: from a late launch call's return to its GPU work's start, named by
    the op that launched it."""
    about = describe(trace, launch_gaps(trace, tail, np.where(calls >= 0, calls, 0)))
    unknown = calls < 0
    for column, empty in (*NO_SOURCE.items(), ("name", ""), ("tid", -1)):
        about[column][unknown] = empty
    return pieces_of("launch", tail, about, tail[0])


def bare(cause: str, piece: Intervals) -> Pieces:
    """Pieces with no CPU event behind them."""
    return pieces_of(cause, piece, undescribed(len(piece[0])), piece[0])


def pieces_of(cause: str, piece: Intervals, about: dict[str, np.ndarray],
              event_ts: np.ndarray) -> Pieces:
    """Pieces of one cause with their events' EVENT_FIELDS (`about`)."""
    return {"cause": np.full(len(piece[0]), cause, dtype=object),
            "start": np.asarray(piece[0], dtype=np.float64),
            "end": np.asarray(piece[1], dtype=np.float64), **about,
            "event_ts": np.asarray(event_ts, dtype=np.float64)}


def pieces_by_start(parts: list[Pieces]) -> pd.DataFrame:
    """Every cause's pieces as one frame, by start (ties in the order of `parts`). Text
    columns hold objects, one per distinct value (`strings_column`): a big rank has hundreds
    of thousands of pieces, named by far fewer events."""
    starts = np.concatenate([p["start"] for p in parts])
    order = np.argsort(starts, kind="stable")
    columns: dict[str, Any] = {}
    for name in list(parts[0]):
        values = starts if name == "start" else np.concatenate([p.pop(name) for p in parts])
        values = values[order]
        columns[name] = strings_column(values) if values.dtype == object else values
    return pd.DataFrame(columns, copy=False)


def fill_sources(trace: Trace, pieces: pd.DataFrame) -> None:
    """Pieces whose event has no source line take the user frame around the event's start
    on its thread (a DataLoader's __next__ is the user's `next(loader)`, not the __getitem__
    it runs), or around the piece's start when no one event explains it (the linker's
    user-frame lookup)."""
    missing = np.flatnonzero((pieces["src_line"].to_numpy() < 0)
                             & (pieces["tid"].to_numpy() >= 0))
    if missing.size == 0 or len(trace.python) == 0:
        return
    frame = user_frames(trace, pieces["tid"].to_numpy()[missing],
                        pieces["event_ts"].to_numpy(np.float64)[missing])
    found = frame >= 0
    rows, frame = missing[found], frame[found]
    py = trace.python
    # Frames open since the profiler started name the line they were executing then.
    pieces.loc[rows, "running_frame"] = already_running(py)[frame]
    pieces.loc[rows, "src_file"] = py["file"].to_numpy(dtype=object)[frame]
    pieces.loc[rows, "src_line"] = py["line"].to_numpy(np.int64)[frame]
    pieces.loc[rows, "src_function"] = py["function"].to_numpy(dtype=object)[frame]
    unnamed = rows[pieces["name"].to_numpy(dtype=object)[rows] == ""]
    pieces.loc[unnamed, "name"] = pieces.loc[unnamed, "src_function"]


SYNC_CALL_AS_OP = "cuda::synchronize"
"""How a runtime synchronize call is matched to the user's statement (a `.synchronize(` call)."""


def narrow_lines(trace: Trace, pieces: pd.DataFrame) -> None:
    """Def lines narrowed to the statement that ran the piece's event, where the source can
    tell (the linker's SourceIndex, once per distinct frame and event name)."""
    todo = (pieces["src_line"].to_numpy() >= 0) & ~pieces["src_line_exact"].to_numpy(dtype=bool)
    if not todo.any():
        return
    columns = ["src_file", "src_line", "src_function", "name", "running_frame"]
    keys = pieces.loc[todo, columns]
    distinct = keys.drop_duplicates()
    index = SourceIndex(roots=trace.source_roots)
    answers = []
    for f, line, fn, name, running in distinct.itertuples(index=False):
        matched = SYNC_CALL_AS_OP if str(name).endswith("Synchronize") else str(name)
        answers.append(index.narrow_frame(str(f), int(line), str(fn), matched,
                                          running=bool(running)))
    distinct = distinct.assign(new_line=[a.line for a in answers],
                               new_exact=[a.exact for a in answers])
    merged = keys.merge(distinct, on=columns, how="left")
    rows = np.flatnonzero(todo)
    pieces.loc[rows, "src_line"] = merged["new_line"].to_numpy(np.int64)
    pieces.loc[rows, "src_line_exact"] = merged["new_exact"].to_numpy(dtype=bool)


def drop_compiled_def_lines(trace: Trace, pieces: pd.DataFrame) -> None:
    """Pieces whose event runs inside Inductor's generated code keep a line only when it is
    the statement: the compiled function's def line around that code is not the user's line
    (as for ops, tracekit.link.op_source)."""
    todo = np.flatnonzero((pieces["src_line"].to_numpy() >= 0)
                          & ~pieces["src_line_exact"].to_numpy(dtype=bool)
                          & (pieces["tid"].to_numpy() >= 0))
    if todo.size == 0 or len(trace.python) == 0:
        return
    inside = in_generated_code(trace, pieces["tid"].to_numpy()[todo],
                               pieces["event_ts"].to_numpy(np.float64)[todo])
    rows = todo[inside]
    columns = [c for c in ("src_file", "src_function", "src_path") if c in pieces]
    pieces.loc[rows, columns] = ""
    pieces.loc[rows, "src_line"] = -1
