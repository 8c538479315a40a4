"""The CPU events that can hold the GPU back, each with its idle cause (see causes.py).

Only the threads that launch GPU work are read: their ops, CUDA/HIP runtime calls,
record_function ranges and Python frames, classified by name (INPUT_NAME, SYNC_OP, ...), by the
copies an op launched (to the host: a sync; from pageable memory: a blocking copy) and by
whether an op launched GPU work and returned quickly (launch overhead).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

import numpy as np
import pandas as pd

from tracekit.intervals import Intervals
from tracekit.link.ancestry import ancestor_levels
from tracekit.load.steps import STEP_NAME
from tracekit.names import names_matching
from tracekit.trace import Trace

CPU_CAUSES = ("input", "gc", "peer", "memcpy", "host_sync", "launch", "python")
"""CPU activities in the order they claim idle time."""
IDLE_CAUSES = (*CPU_CAUSES, "queued", "unknown")
CAUSE_LABELS = {
    "input": "input pipeline",
    "gc": "garbage collection",
    "peer": "waiting for peers",
    "memcpy": "blocking memcpy",
    "host_sync": "host sync",
    "launch": "kernel launch",
    "python": "Python/CPU work",
    "queued": "queued work waiting",
    "unknown": "unknown",
}

INPUT_NAME = re.compile(r"DataLoader|dataloader|data_loader|_next_data|collate|^data[:/._ -]"
                        r"|next_batch|input_pipeline|prefetch", re.IGNORECASE)
INPUT_FILE = re.compile(r"torch/utils/data/")
GC_NAME = re.compile(r"^Python GC|\bgc\.collect|<built-in method collect\b|^gc[: ]")
PEER_NAME = re.compile(r"barrier", re.IGNORECASE)
SYNC_FRAME = re.compile(r"synchronize>|\): synchronize$|method '?(item|tolist)'? of")
"""Python frames of calls that wait for the GPU (torch.cuda.synchronize's builtin, .item())."""
SYNC_OP = re.compile(r"^aten::(item|_local_scalar_dense|nonzero|is_nonzero|equal)$")
SYNC_CALL = re.compile(r"^(cuda|hip)(Stream|Device|Event)Synchronize$")
BLOCKING_MEMCPY_CALL = re.compile(r"^(cuda|hip)Memcpy(?!.*Async)|^(cuda|hip)MemcpyWithStream")
TO_HOST = re.compile(r"DtoH|Device -> Pageable|Device -> Pinned", re.IGNORECASE)
PAGEABLE_TO_DEVICE = re.compile(r"HtoD.*Pageable", re.IGNORECASE)

MAX_LAUNCH_OP_US = 1000.0
"""An op that launches GPU work is launch overhead when it returns within 1 ms: dispatching an
op and launching its kernels takes 5-50 us (the eager ops of traces-external/a100_nccl), while
ops that hold the CPU for longer do work of their own (AlexNet's first conv2d: 0.8 s of cudnn
autotuning)."""

LAUNCH_GAP_US = 200.0
"""A CPU-late idle gap this short, closed by a launch, is launch overhead: dispatching an op and
launching its kernel takes 5-50 us, so the CPU was issuing work as fast as it could (the
a100_nccl and resnet50 traces' eager gaps between kernels are 10-100 us); longer gaps are
split by what the CPU did meanwhile."""
DRAINING = ("memcpy", "host_sync")
"""Blocking causes: the CPU waits for the GPU to finish everything queued before it."""

FRAME_NAME = re.compile(r"\(\d+\): |^<built-in |^<frozen |^<method ")
"""Python frame names ("file(N): function", builtins) as opposed to ops and labels."""

CAUSE_CODES = {cause: np.int8(code) for code, cause in enumerate(CPU_CAUSES)}
"""Each CPU cause's code in `CpuEvents.cause`."""

OP, LAUNCH, ANNOTATION, PYTHON, GAP = (np.int8(i) for i in range(5))
"""Where an event comes from (`CpuEvents.origin`): its row in the trace's ops, launches,
annotations or python frames, or (GAP) a short idle gap closed by the launch call in that row
of launches."""

EVENT_FIELDS = ("name", "tid", "src_file", "src_line", "src_function", "src_line_exact",
                "src_path")
"""What `describe` tells of an event: its name, thread and the user's source line."""
NO_SOURCE = {"src_file": "", "src_line": -1, "src_function": "", "src_line_exact": False,
             "src_path": ""}


@dataclass(frozen=True)
class CpuEvents:
    """CPU events of one cause as arrays, one entry per event: start, end, whether it is named
    like a Python frame (FRAME_NAME), and where it comes from (`origin`, `row`). Names and
    source lines stay in the trace's frames, read by `describe` only for the events that
    explain idle time: a 690 MB rank's launching threads hold 1.9 M events, whose names and
    paths as a frame's per-row strings took hundreds of MB."""

    ts: np.ndarray
    end: np.ndarray
    frame: np.ndarray
    origin: np.ndarray
    row: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, rows: np.ndarray) -> CpuEvents:
        """The events at positions `rows`, in that order."""
        return CpuEvents(*(getattr(self, f.name)[rows] for f in fields(self)))

    def at_times(self, ts: np.ndarray, end: np.ndarray) -> CpuEvents:
        """The same events over other intervals."""
        return replace(self, ts=np.asarray(ts, dtype=np.float64),
                       end=np.asarray(end, dtype=np.float64))

    @staticmethod
    def concat(parts: list[CpuEvents]) -> CpuEvents:
        if len(parts) == 1:
            return parts[0]
        return CpuEvents(*(np.concatenate([getattr(p, f.name) for p in parts])
                           for f in fields(CpuEvents)))

    @staticmethod
    def empty() -> CpuEvents:
        return CpuEvents(np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool),
                         np.zeros(0, dtype=np.int8), np.zeros(0, dtype=np.int32))


@dataclass(frozen=True)
class Classified:
    """Events of one frame (`origin`) on the launching threads: their rows there, each one's
    cause (a CAUSE_CODES value) and whether it is named like a Python frame."""

    origin: np.int8
    table: pd.DataFrame
    rows: np.ndarray
    cause: np.ndarray
    frame: np.ndarray


@dataclass(frozen=True)
class ThreadEvents:
    """The launching threads' CPU events, classified but not gathered (`of_cause` gathers one
    cause's, in the order ops, runtime calls, record_function ranges, Python frames), so that
    the idle split holds one cause's arrays at a time."""

    parts: tuple[Classified, ...]

    def of_cause(self, cause: str) -> CpuEvents:
        code = CAUSE_CODES[cause]
        picked = []
        for part in self.parts:
            at = np.flatnonzero(part.cause == code)
            rows = part.rows[at]
            picked.append(CpuEvents(ts=part.table["ts"].to_numpy(np.float64)[rows],
                                    end=part.table["end"].to_numpy(np.float64)[rows],
                                    frame=part.frame[at],
                                    origin=np.full(len(at), part.origin, dtype=np.int8),
                                    row=rows))
        return CpuEvents.concat(picked) if picked else CpuEvents.empty()


def _classified(cause: np.ndarray, table: pd.DataFrame, rows: np.ndarray, frame: np.ndarray,
                origin: np.int8) -> tuple[Classified, ...]:
    """The events of `table` at `rows` (cause and frame per row of `table`)."""
    return (Classified(origin, table, rows.astype(np.int32), cause[rows], frame[rows]),)


def cpu_events(trace: Trace) -> ThreadEvents:
    """CPU events of the threads that launch GPU work, each with its cause: ops, runtime
    calls, record_function ranges, Python frames (in that order)."""
    tids = launching_threads(trace)
    return ThreadEvents(_op_events(trace, tids) + _launch_events(trace, tids)
                        + _annotation_events(trace, tids) + _python_events(trace, tids))


def launching_threads(trace: Trace) -> np.ndarray:
    """Threads that launched the trace's GPU work (kernels, memcpy, memset): the ones whose
    delay idles the GPU. Other threads calling the runtime (a DataLoader's pin-memory thread
    allocating pinned buffers) run beside them and hold nothing back."""
    rows = np.concatenate([trace.kernels["launch_idx"].to_numpy(np.int64),
                           trace.gpu_mem["launch_idx"].to_numpy(np.int64)])
    rows = rows[rows >= 0]
    if rows.size == 0:
        return np.zeros(0)
    launched = np.zeros(len(trace.launches), dtype=bool)
    launched[rows] = True
    return np.sort(pd.unique(trace.launches["tid"].to_numpy()[launched]))


def _op_events(trace: Trace, tids: np.ndarray) -> tuple[Classified, ...]:
    ops = trace.ops
    if len(ops) == 0:
        return ()
    sync, peer, gc, data, frame = names_matching(
        ops["name"], (SYNC_OP, PEER_NAME, GC_NAME, INPUT_NAME, FRAME_NAME))
    cause = np.full(len(ops), CAUSE_CODES["python"], dtype=np.int8)
    launching = np.zeros(len(ops), dtype=bool)
    launch_op = trace.launches["op_idx"].to_numpy()
    launching[launch_op[launch_op >= 0]] = True
    launching = _with_ancestors(ops, launching)
    cause[launching & (ops["dur"].to_numpy(np.float64) <= MAX_LAUNCH_OP_US)] = \
        CAUSE_CODES["launch"]
    copies = trace.gpu_mem
    mem_op = copies["op_idx"].to_numpy()
    to_host, pageable = names_matching(copies["name"], (TO_HOST, PAGEABLE_TO_DEVICE))
    cause[mem_op[pageable & (mem_op >= 0)]] = CAUSE_CODES["memcpy"]
    cause[mem_op[to_host & (mem_op >= 0)]] = CAUSE_CODES["host_sync"]
    cause[sync] = CAUSE_CODES["host_sync"]
    cause[peer] = CAUSE_CODES["peer"]
    cause[gc] = CAUSE_CODES["gc"]
    cause[data] = CAUSE_CODES["input"]
    rows = np.flatnonzero(np.isin(ops["tid"].to_numpy(), tids))
    return _classified(cause, ops, rows, frame, OP)


def _with_ancestors(ops: pd.DataFrame, marked: np.ndarray) -> np.ndarray:
    """`marked` spread to every ancestor of a marked op (one vectorised step per level)."""
    out = marked.copy()
    parent = ops["parent"].to_numpy(np.int64)
    for _, current in ancestor_levels(parent, np.flatnonzero(marked)):
        out[current] = True
    return out


def _launch_events(trace: Trace, tids: np.ndarray) -> tuple[Classified, ...]:
    launches = trace.launches
    if len(launches) == 0:
        return ()
    blocking, sync, frame = names_matching(launches["name"],
                                           (BLOCKING_MEMCPY_CALL, SYNC_CALL, FRAME_NAME))
    cause = np.full(len(launches), CAUSE_CODES["launch"], dtype=np.int8)
    cause[launches["dur"].to_numpy(np.float64) > MAX_LAUNCH_OP_US] = CAUSE_CODES["python"]
    cause[blocking] = CAUSE_CODES["memcpy"]
    cause[sync] = CAUSE_CODES["host_sync"]
    rows = np.flatnonzero(np.isin(launches["tid"].to_numpy(), tids))
    return _classified(cause, launches, rows, frame, LAUNCH)


def _annotation_events(trace: Trace, tids: np.ndarray) -> tuple[Classified, ...]:
    ann = trace.annotations
    if len(ann) == 0:
        return ()
    step, peer, gc, data, frame = names_matching(
        ann["name"], (STEP_NAME, PEER_NAME, GC_NAME, INPUT_NAME, FRAME_NAME))
    rows = np.flatnonzero((ann["side"] == "cpu").to_numpy() & np.isin(ann["tid"].to_numpy(), tids)
                          & ~step)
    cause = np.full(len(ann), CAUSE_CODES["python"], dtype=np.int8)
    cause[peer] = CAUSE_CODES["peer"]
    cause[gc] = CAUSE_CODES["gc"]
    cause[data] = CAUSE_CODES["input"]
    return _classified(cause, ann, rows, frame, ANNOTATION)


def _python_events(trace: Trace, tids: np.ndarray) -> tuple[Classified, ...]:
    py = trace.python
    if len(py) == 0:
        return ()
    rows = np.flatnonzero(np.isin(py["tid"].to_numpy(), tids))
    sync, gc, frame = names_matching(py["name"], (SYNC_FRAME, GC_NAME, FRAME_NAME))
    (data,) = names_matching(py["file"], (INPUT_FILE,))
    cause = np.full(len(py), CAUSE_CODES["python"], dtype=np.int8)
    cause[sync] = CAUSE_CODES["host_sync"]
    cause[gc] = CAUSE_CODES["gc"]
    cause[data] = CAUSE_CODES["input"]
    return _classified(cause, py, rows, frame, PYTHON)


def launch_gaps(trace: Trace, gaps: Intervals, calls: np.ndarray) -> CpuEvents:
    """Launch events for short idle gaps closed by a late launch: the GPU ran each kernel
    faster than the CPU could issue the next, so the gap belongs to the op that launched the
    next one (its name and line, `describe`), whatever Python ran in between."""
    n = len(calls)
    if n == 0:
        return CpuEvents.empty()
    launches, ops = trace.launches, trace.ops
    op = launches["op_idx"].to_numpy()[calls]
    has = op >= 0
    names = _strings(launches["name"], calls)
    names[has] = _strings(ops["name"], op[has])
    (frame,) = names_matching(names, (FRAME_NAME,))
    return CpuEvents(ts=np.asarray(gaps[0], dtype=np.float64),
                     end=np.asarray(gaps[1], dtype=np.float64), frame=frame,
                     origin=np.full(n, GAP, dtype=np.int8), row=calls.astype(np.int32))


def describe(trace: Trace, events: CpuEvents) -> dict[str, np.ndarray]:
    """Each event's EVENT_FIELDS, read from the frame it comes from: an op's own source
    columns; a runtime call's (and a launch gap's) from the op that made it, a gap named by
    that op when there is one; a Python frame's file, line and function when it is the user's
    code; nothing for a record_function range."""
    out = undescribed(len(events))
    ops, launches = trace.ops, trace.launches
    tables = {OP: ops, LAUNCH: launches, ANNOTATION: trace.annotations, PYTHON: trace.python,
              GAP: launches}
    for origin, table in tables.items():
        at = np.flatnonzero(events.origin == origin)
        if at.size == 0:
            continue
        rows = events.row[at]
        out["name"][at] = _strings(table["name"], rows)
        out["tid"][at] = table["tid"].to_numpy()[rows]
        if origin == OP:
            _source_of_ops(out, at, ops, rows)
        elif origin in (LAUNCH, GAP):
            op = launches["op_idx"].to_numpy()[rows]
            has = op >= 0
            _source_of_ops(out, at[has], ops, op[has])
            if origin == GAP:
                out["name"][at[has]] = _strings(ops["name"], op[has])
        elif origin == PYTHON:
            user = table["is_user"].to_numpy(dtype=bool)[rows]
            mine, frames = at[user], rows[user]
            out["src_file"][mine] = _strings(table["file"], frames)
            out["src_line"][mine] = table["line"].to_numpy(np.int64)[frames]
            out["src_function"][mine] = _strings(table["function"], frames)
    return out


def undescribed(n: int) -> dict[str, np.ndarray]:
    """EVENT_FIELDS of `n` pieces of time that no event explains: empty names, no line."""
    return {"name": np.full(n, "", dtype=object), "tid": np.full(n, -1, dtype=np.int64),
            "src_file": np.full(n, "", dtype=object), "src_line": np.full(n, -1, dtype=np.int64),
            "src_function": np.full(n, "", dtype=object),
            "src_line_exact": np.zeros(n, dtype=bool), "src_path": np.full(n, "", dtype=object)}


def _source_of_ops(out: dict[str, np.ndarray], at: np.ndarray, ops: pd.DataFrame,
                   rows: np.ndarray) -> None:
    for column in EVENT_FIELDS[2:]:
        values = ops[column]
        out[column][at] = (_strings(values, rows) if out[column].dtype == object
                           else values.to_numpy()[rows])


def _strings(values: pd.Series, rows: np.ndarray) -> np.ndarray:
    """The column's values at `rows` as Python objects (only those rows converted)."""
    if values.dtype == object:
        return values.to_numpy()[rows]
    return values.take(rows).to_numpy(dtype=object)
