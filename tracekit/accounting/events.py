"""The CPU events that can hold the GPU back, each with its idle cause (see causes.py).

Only the threads that launch GPU work are read: their ops, CUDA/HIP runtime calls,
record_function ranges and Python frames, classified by name (INPUT_NAME, SYNC_OP, ...), by the
copies an op launched (to the host: a sync; from pageable memory: a blocking copy) and by
whether an op launched GPU work and returned quickly (launch overhead).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from tracekit.intervals import Intervals
from tracekit.link.ancestry import ancestor_levels
from tracekit.load.columns import strings_column
from tracekit.load.steps import STEP_NAME
from tracekit.names import name_matches
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

EVENT_COLUMNS = ["cause", "tid", "ts", "end", "name", "src_file", "src_line", "src_function",
                 "src_line_exact", "src_path"]


def cpu_events(trace: Trace) -> pd.DataFrame:
    """CPU events of the threads that launch GPU work, each with its cause."""
    tids = launching_threads(trace)
    parts = [_op_events(trace, tids), _launch_events(trace, tids),
             _annotation_events(trace, tids), _python_events(trace, tids)]
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame({c: [] for c in EVENT_COLUMNS})
    return pd.concat(parts, ignore_index=True)


def launching_threads(trace: Trace) -> np.ndarray:
    """Threads that launched the trace's GPU work (kernels, memcpy, memset): the ones whose
    delay idles the GPU. Other threads calling the runtime (a DataLoader's pin-memory thread
    allocating pinned buffers) run beside them and hold nothing back."""
    rows = np.concatenate([trace.kernels["launch_idx"].to_numpy(np.int64),
                           trace.gpu_mem["launch_idx"].to_numpy(np.int64)])
    rows = np.unique(rows[rows >= 0])
    return np.unique(trace.launches["tid"].to_numpy()[rows]) if rows.size else np.zeros(0)


def _frame(cause: np.ndarray, rows: pd.DataFrame, src: pd.DataFrame | None) -> pd.DataFrame:
    """The events frame of `rows` (by position). Names and source columns hold objects, one
    per distinct value (`strings_column`: events of every launching thread are many rows);
    `cause` (a few short values, compared often) is left to pandas' own string type."""
    n = len(rows)
    out = pd.DataFrame({"cause": cause, "tid": rows["tid"].to_numpy(),
                        "ts": rows["ts"].to_numpy(np.float64),
                        "end": rows["end"].to_numpy(np.float64),
                        "name": strings_column(rows["name"])})
    if src is None:
        out["src_file"] = strings_column(np.full(n, "", dtype=object))
        out["src_line"] = np.full(n, -1, dtype=np.int64)
        out["src_function"] = strings_column(np.full(n, "", dtype=object))
        out["src_line_exact"] = np.zeros(n, dtype=bool)
        out["src_path"] = strings_column(np.full(n, "", dtype=object))
    else:
        for column in EVENT_COLUMNS[5:]:
            values = src[column]
            out[column] = strings_column(values) if _is_text(values) else values.to_numpy()
    return out


def _is_text(values: pd.Series) -> bool:
    return values.dtype == object or pd.api.types.is_string_dtype(values.dtype)


def _op_events(trace: Trace, tids: np.ndarray) -> pd.DataFrame:
    ops = trace.ops
    if len(ops) == 0:
        return pd.DataFrame()
    names = ops["name"]
    cause = np.full(len(ops), "python", dtype=object)
    launching = np.zeros(len(ops), dtype=bool)
    launch_op = trace.launches["op_idx"].to_numpy()
    launching[launch_op[launch_op >= 0]] = True
    launching = _with_ancestors(ops, launching)
    cause[launching & (ops["dur"].to_numpy(np.float64) <= MAX_LAUNCH_OP_US)] = "launch"
    copies = trace.gpu_mem
    mem_op = copies["op_idx"].to_numpy()
    to_host = name_matches(copies["name"], TO_HOST) & (mem_op >= 0)
    pageable = name_matches(copies["name"], PAGEABLE_TO_DEVICE) & (mem_op >= 0)
    cause[mem_op[pageable]] = "memcpy"
    cause[mem_op[to_host]] = "host_sync"
    cause[name_matches(names, SYNC_OP)] = "host_sync"
    cause[name_matches(names, PEER_NAME)] = "peer"
    cause[name_matches(names, GC_NAME)] = "gc"
    cause[name_matches(names, INPUT_NAME)] = "input"
    on_thread = np.isin(ops["tid"].to_numpy(), tids)
    rows = ops[on_thread]
    return _frame(cause[on_thread], rows, rows)


def _with_ancestors(ops: pd.DataFrame, marked: np.ndarray) -> np.ndarray:
    """`marked` spread to every ancestor of a marked op (one vectorised step per level)."""
    out = marked.copy()
    parent = ops["parent"].to_numpy(np.int64)
    for _, current in ancestor_levels(parent, np.flatnonzero(marked)):
        out[current] = True
    return out


def _launch_events(trace: Trace, tids: np.ndarray) -> pd.DataFrame:
    launches = trace.launches
    if len(launches) == 0:
        return pd.DataFrame()
    names = launches["name"]
    cause = np.full(len(launches), "launch", dtype=object)
    cause[launches["dur"].to_numpy(np.float64) > MAX_LAUNCH_OP_US] = "python"
    cause[name_matches(names, BLOCKING_MEMCPY_CALL)] = "memcpy"
    cause[name_matches(names, SYNC_CALL)] = "host_sync"
    op = launches["op_idx"].to_numpy()
    src = pd.DataFrame({c: np.full(len(launches), e, dtype=object if isinstance(e, str) else
                                   type(e)) for c, e in
                        zip(EVENT_COLUMNS[5:], ("", -1, "", False, ""), strict=True)})
    has = op >= 0
    if has.any():
        for column in EVENT_COLUMNS[5:]:
            values = src[column].to_numpy().copy()
            values[has] = trace.ops[column].to_numpy()[op[has]]
            src[column] = values
    keep = np.isin(launches["tid"].to_numpy(), tids)
    return _frame(cause[keep], launches[keep], src[keep])


def _annotation_events(trace: Trace, tids: np.ndarray) -> pd.DataFrame:
    ann = trace.annotations
    if len(ann) == 0:
        return pd.DataFrame()
    names = ann["name"]
    keep = ((ann["side"] == "cpu").to_numpy() & np.isin(ann["tid"].to_numpy(), tids)
            & ~name_matches(names, STEP_NAME))
    names = names[keep]
    cause = np.full(int(keep.sum()), "python", dtype=object)
    cause[name_matches(names, PEER_NAME)] = "peer"
    cause[name_matches(names, GC_NAME)] = "gc"
    cause[name_matches(names, INPUT_NAME)] = "input"
    return _frame(cause, ann[keep], None)


def _python_events(trace: Trace, tids: np.ndarray) -> pd.DataFrame:
    py = trace.python
    if len(py) == 0:
        return pd.DataFrame()
    keep = np.isin(py["tid"].to_numpy(), tids)
    py = py[keep]
    cause = np.full(len(py), "python", dtype=object)
    cause[name_matches(py["name"], SYNC_FRAME)] = "host_sync"
    cause[name_matches(py["name"], GC_NAME)] = "gc"
    cause[name_matches(py["file"], INPUT_FILE)] = "input"
    user = py["is_user"].to_numpy(dtype=bool)
    src = pd.DataFrame({
        "src_file": np.where(user, py["file"].to_numpy(dtype=object), ""),
        "src_line": np.where(user, py["line"].to_numpy(np.int64), -1),
        "src_function": np.where(user, py["function"].to_numpy(dtype=object), ""),
        "src_line_exact": np.zeros(len(py), dtype=bool),
        "src_path": np.full(len(py), "", dtype=object)})
    return _frame(cause, py, src)


def launch_gaps(trace: Trace, gaps: Intervals, calls: np.ndarray) -> pd.DataFrame:
    """Launch events for short idle gaps closed by a late launch: the GPU ran each kernel
    faster than the CPU could issue the next, so the gap belongs to the op that launched the
    next one (its name and line), whatever Python ran in between."""
    launches, ops = trace.launches, trace.ops
    n = len(calls)
    if n == 0:
        return pd.DataFrame({c: [] for c in EVENT_COLUMNS})
    op = launches["op_idx"].to_numpy()[calls]
    has = op >= 0
    out = pd.DataFrame({"cause": np.full(n, "launch", dtype=object),
                        "tid": launches["tid"].to_numpy()[calls],
                        "ts": gaps[0], "end": gaps[1],
                        "name": launches["name"].to_numpy(dtype=object)[calls]})
    out.loc[has, "name"] = ops["name"].to_numpy(dtype=object)[op[has]]
    for column, empty in zip(EVENT_COLUMNS[5:], ("", -1, "", False, ""), strict=True):
        values = np.full(n, empty, dtype=object)
        if has.any():
            values[has] = ops[column].to_numpy(dtype=object)[op[has]]
        out[column] = values
    out["src_line"] = out["src_line"].astype(np.int64)
    out["src_line_exact"] = out["src_line_exact"].astype(bool)
    return out
