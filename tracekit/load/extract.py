"""Event dicts -> raw columns, per category: the only code that touches events one by one.

Each category's fields are pulled in one comprehension over the events, building a tuple per
event (its own fields and its `args` fields); columns are then read off the tuples with
`itemgetter`. Visiting every (cache-cold) dict once is markedly faster than one pass per
field. The result (`Columns`: name -> numpy array or list) is plain data, so it can be built
in a worker process for one slice of a big trace and concatenated in the parent (see
`tracekit.load.chunks`).
"""

from __future__ import annotations

from collections import defaultdict
from operator import itemgetter
from typing import Any

import numpy as np

from tracekit.load import columns as col

Columns = dict[str, Any]
"""Column name -> numpy array or list, all of one length."""

EMPTY: dict[str, Any] = col.EMPTY

KERNEL_CATS = ("kernel", "Kernel")
MTIA_DEVICE_CATS = ("mtia_ccp_events",)
"""MTIA device activity: kernels, and DMA transfers (`dma_request`) that are its memcpys."""
MTIA_DMA = "dma_request"
MTIA_SYNC = ("event_record", "event_wait")
"""MTIA stream-event markers (like CUDA's cudaEventRecord/StreamWaitEvent): not kernels."""
MEMCPY_CATS = ("gpu_memcpy", "Memcpy")
MEMSET_CATS = ("gpu_memset", "Memset")
OP_CATS = ("cpu_op", "Operator")
LAUNCH_CATS = ("cuda_runtime", "cuda_driver", "Runtime", "Driver", "xpu_runtime", "mtia_runtime")
"""Host-side runtime calls (CUDA and HIP share cuda_runtime/cuda_driver; Intel XPU and MTIA
have their own)."""
PYTHON_CATS = ("python_function",)
CPU_ANNOTATION_CATS = ("user_annotation",)
GPU_ANNOTATION_CATS = ("gpu_user_annotation",)
FLOW_CATS = ("fwdbwd",)


def bucket_by_category(events: list[Any]) -> dict[Any, list[dict[str, Any]]]:
    """Group events by category (one pass; the event dicts themselves are not copied)."""
    buckets: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    try:
        for event in events:
            if type(event) is dict:
                buckets[event.get("cat")].append(event)
    except TypeError:  # an unhashable category (a list, an object): none tracekit reads
        buckets.clear()
        for event in events:
            if type(event) is dict:
                cat = event.get("cat")
                buckets[cat if cat is None or type(cat) is str else repr(cat)].append(event)
    return buckets


def take(buckets: dict[Any, list[dict[str, Any]]], cats: tuple[str, ...]
         ) -> list[dict[str, Any]]:
    """Events of the given categories."""
    out: list[dict[str, Any]] = []
    for cat in cats:
        out.extend(buckets.get(cat, ()))
    return out


def well_formed(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events that have a name and a numeric start (and `args`, if any, an object): Kineto
    always writes them so, but a hand-edited or cut-off trace may not, and one such event must
    not sink a whole column. An event whose args are not an object keeps its other fields."""
    return [e if type(e.get("args", EMPTY)) is dict else {**e, "args": EMPTY} for e in events
            if type(e.get("ts")) in (int, float) and type(e.get("name")) is str
            and type(e.get("dur", 0.0)) in (int, float)]


def _ints(rows: list[tuple[Any, ...]], i: int) -> np.ndarray:
    """Field i of every row as int64 (-1 where absent; see `columns.ints` for odd values)."""
    try:
        return np.fromiter(map(itemgetter(i), rows), dtype=np.int64, count=len(rows))
    except (TypeError, ValueError, OverflowError):
        return col.ints(list(map(itemgetter(i), rows)))


def _floats(rows: list[tuple[Any, ...]], i: int) -> np.ndarray:
    """Field i of every row as float64 (NaN where absent or not a number)."""
    try:
        return np.fromiter(map(itemgetter(i), rows), dtype=np.float64, count=len(rows))
    except (TypeError, ValueError):
        return col.floats(list(map(itemgetter(i), rows)))


def _list(rows: list[tuple[Any, ...]], i: int) -> list[Any]:
    return list(map(itemgetter(i), rows))


def _ids(rows: list[tuple[Any, ...]], i: int) -> np.ndarray:
    """pid/tid field: int64, with non-numeric ids (rare) coded negative."""
    try:
        return np.fromiter(map(itemgetter(i), rows), dtype=np.int64, count=len(rows))
    except (TypeError, ValueError, OverflowError):
        return col.numeric_ids(_list(rows, i))


def shared_names(rows: list[tuple[Any, ...]], i: int = 0) -> list[Any]:
    """Field i (a name) of every row, each distinct string kept once in memory (the same op,
    kernel and frame names repeat hundreds of thousands of times; see `columns.shared`)."""
    return col.shared(map(itemgetter(i), rows))


def _base(rows: list[tuple[Any, ...]]) -> Columns:
    """name, ts, dur, pid, tid: the first five fields of every category's rows."""
    return {"name": shared_names(rows), "ts": _floats(rows, 1), "dur": _floats(rows, 2),
            "pid": _ids(rows, 3), "tid": _ids(rows, 4)}


def kernels(events: list[dict[str, Any]]) -> Columns:
    """Kernel launch geometry, occupancy and NCCL collective metadata."""
    rows = [(e["name"], e["ts"], e.get("dur", 0.0), e.get("pid"), e.get("tid"),
             a.get("device", -1), a.get("stream", -1), a.get("correlation", -1),
             a.get("External id", -1), a.get("grid"), a.get("block"), a.get("blocks per SM"),
             a.get("warps per SM"), a.get("registers per thread", -1),
             a.get("shared memory", -1), a.get("est. achieved occupancy %"),
             a.get("Collective name"), a.get("In msg nelems", -1), a.get("Out msg nelems", -1),
             a.get("Group size", -1), a.get("dtype"), a.get("Process Group Name"))
            for e in events for a in (e.get("args") or EMPTY,)]
    cols = _base(rows)
    cols.update({
        "device": _ints(rows, 5), "stream": _ints(rows, 6), "correlation": _ints(rows, 7),
        "external_id": _ints(rows, 8), "grid": col.triples(_list(rows, 9)),
        "block": col.triples(_list(rows, 10)), "blocks_per_sm": _floats(rows, 11),
        "warps_per_sm": _floats(rows, 12), "registers": _ints(rows, 13),
        "shared_mem": _ints(rows, 14), "occupancy": _floats(rows, 15),
        "collective": col.strings(_list(rows, 16), missing=None), "in_nelems": _ints(rows, 17),
        "out_nelems": _ints(rows, 18), "group_size": _ints(rows, 19),
        "dtype": col.strings(_list(rows, 20), missing=None),
        "pg_name": col.strings(_list(rows, 21), missing=None),
    })
    return cols


def gpu_mem(memcpy: list[dict[str, Any]], memset: list[dict[str, Any]]) -> Columns:
    """Memcpy and memset activities."""
    rows = [(e["name"], e["ts"], e.get("dur", 0.0), e.get("pid"), e.get("tid"),
             a.get("device", -1), a.get("stream", -1), a.get("correlation", -1),
             a.get("External id", -1), a.get("bytes", a.get("size", -1)))
            for e in memcpy + memset for a in (e.get("args") or EMPTY,)]
    cols = _base(rows)
    cols.update({
        "kind": ["memcpy"] * len(memcpy) + ["memset"] * len(memset),
        "device": _ints(rows, 5), "stream": _ints(rows, 6), "correlation": _ints(rows, 7),
        "external_id": _ints(rows, 8), "bytes": _ints(rows, 9),
    })
    return cols


def ops(events: list[dict[str, Any]]) -> Columns:
    """CPU ops: ids, autograd sequence numbers, recorded shapes, Inductor provenance."""
    rows = [(e["name"], e["ts"], e.get("dur", 0.0), e.get("pid"), e.get("tid"),
             a.get("External id", -1), a.get("Sequence number", -1), a.get("Fwd thread id", -1),
             a.get("Input Dims"), a.get("Input Strides"), a.get("Input type"),
             a.get("kernel_file"), a.get("kernel_name"))
            for e in events for a in (e.get("args") or EMPTY,)]
    cols = _base(rows)
    cols.update({
        "external_id": _ints(rows, 5), "seq": _ints(rows, 6), "fwd_tid": _ints(rows, 7),
        "input_dims": col.json_texts(_list(rows, 8)),
        "input_strides": col.json_texts(_list(rows, 9)),
        "input_types": col.json_texts(_list(rows, 10)),
        "kernel_file": col.strings(_list(rows, 11)), "kernel_name": col.strings(_list(rows, 12)),
    })
    return cols


LAUNCH_CAT_ORDER = {cat: i for i, cat in enumerate(LAUNCH_CATS)}


def launches(events: list[dict[str, Any]]) -> Columns:
    """CUDA runtime/driver and HIP API calls (`cat`: index in LAUNCH_CATS, for `concat`)."""
    rows = [(e["name"], e["ts"], e.get("dur", 0.0), e.get("pid"), e.get("tid"),
             a.get("correlation", -1), a.get("External id", -1), e.get("cat"))
            for e in events for a in (e.get("args") or EMPTY,)]
    cols = _base(rows)
    cols.update({"correlation": _ints(rows, 5), "external_id": _ints(rows, 6),
                 "cat": [LAUNCH_CAT_ORDER.get(c, 0) for c in _list(rows, 7)]})
    return cols


def python(events: list[dict[str, Any]]) -> Columns:
    """Python frames (with_stack=True): only name and times are needed."""
    rows = [(e["name"], e["ts"], e.get("dur", 0.0), e.get("pid"), e.get("tid")) for e in events]
    return _base(rows)


def annotations(cpu: list[dict[str, Any]], gpu: list[dict[str, Any]]) -> Columns:
    """record_function ranges: CPU side, then the GPU-side copies."""
    rows = [(e["name"], e["ts"], e.get("dur", 0.0), e.get("pid"), e.get("tid"),
             a.get("External id", -1), a.get("stream", -1))
            for e in cpu + gpu for a in (e.get("args") or EMPTY,)]
    cols = _base(rows)
    cols.update({
        "external_id": _ints(rows, 5), "stream": _ints(rows, 6),
        "is_gpu": np.arange(len(cpu) + len(gpu)) >= len(cpu),
    })
    return cols


def flows(events: list[dict[str, Any]]) -> Columns:
    """fwdbwd flow ends (ph s and f), to be paired by id once all chunks are in."""
    rows = [(e.get("ph"), e.get("id"), e.get("tid"), e.get("ts")) for e in events
            if e.get("ph") in ("s", "f")]
    return {"ph": _list(rows, 0), "id": _ints(rows, 1), "tid": _ids(rows, 2),
            "ts": _floats(rows, 3)}


def _safely(extract: Any, *event_lists: list[dict[str, Any]]) -> Columns:
    """Extract; on a malformed event (no ts/name, a non-numeric time), drop such events and
    extract again. The fast path never inspects events one by one. Rows whose start is not a
    finite number (NaN, Infinity: a broken writer) or whose name is not a string are dropped as
    well."""
    try:
        cols = extract(*event_lists)
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
        cols = extract(*[well_formed(events) for events in event_lists])
    return finite_starts(cols)


def finite_starts(cols: Columns) -> Columns:
    """The rows of `cols` whose ts is finite and whose name is a string (every column
    filtered alike)."""
    ok = np.isfinite(cols["ts"])
    names = cols.get("name")
    if names is not None and set(map(type, names)) - {str}:
        ok &= np.fromiter((type(n) is str for n in names), dtype=bool, count=len(names))
    if ok.all():
        return cols
    keep = np.flatnonzero(ok)
    return {name: values[keep] if isinstance(values, np.ndarray)
            else [values[i] for i in keep] for name, values in cols.items()}


def mtia_split(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                      list[dict[str, Any]]]:
    """MTIA device events -> (kernels, DMA transfers); stream-event markers are dropped."""
    kernel_rows: list[dict[str, Any]] = []
    dma: list[dict[str, Any]] = []
    for event in events:
        name = event.get("name")
        if name == MTIA_DMA:
            dma.append(event)
        elif name not in MTIA_SYNC:
            kernel_rows.append(event)
    return kernel_rows, dma


def census(buckets: dict[Any, list[dict[str, Any]]], entries: int) -> Columns:
    """How many entries the events array had and how many objects of each category: what the
    loader says about a trace in which it finds nothing to read."""
    cats = list(buckets)
    return {"cat": ["(none)" if c is None else str(c) for c in cats],
            "count": np.array([len(buckets[c]) for c in cats], dtype=np.int64),
            "entries": np.array([entries], dtype=np.int64)}


def extract_all(events: list[Any]) -> dict[str, Columns]:
    """Raw columns of every frame from a list of events (a whole trace or one slice of it)."""
    buckets = bucket_by_category(events)
    mtia_kernels, mtia_dma = mtia_split(take(buckets, MTIA_DEVICE_CATS))
    out = {
        "census": census(buckets, len(events)),
        "kernels": _safely(kernels, take(buckets, KERNEL_CATS) + mtia_kernels),
        "gpu_mem": _safely(gpu_mem, take(buckets, MEMCPY_CATS) + mtia_dma,
                           take(buckets, MEMSET_CATS)),
        "ops": _safely(ops, take(buckets, OP_CATS)),
        "launches": _safely(launches, take(buckets, LAUNCH_CATS)),
        "python": _safely(python, take(buckets, PYTHON_CATS)),
        "annotations": _safely(annotations, take(buckets, CPU_ANNOTATION_CATS),
                               take(buckets, GPU_ANNOTATION_CATS)),
        "flows": flows(take(buckets, FLOW_CATS)),
    }
    buckets.clear()
    return out


GROUPED_BY = {"gpu_mem": "kind", "annotations": "is_gpu", "launches": "cat"}
"""Frames that hold several categories one after the other (memcpy then memset; CPU then GPU
annotations; runtime then driver calls): after joining slices, rows are regrouped so the order
is the same as from one pass over the whole file, whatever the slice size."""


def concat(parts: list[dict[str, Columns]]) -> dict[str, Columns]:
    """Join the raw columns of consecutive slices of one trace."""
    if len(parts) == 1:
        return parts[0]
    out: dict[str, Columns] = {}
    for frame in parts[0]:
        merged: Columns = {}
        for name, first in parts[0][frame].items():
            pieces = [p[frame][name] for p in parts]
            if isinstance(first, np.ndarray):
                merged[name] = np.concatenate(pieces)
            else:
                merged[name] = [v for piece in pieces for v in piece]
        key = GROUPED_BY.get(frame)
        if key is not None:
            order = np.argsort(np.asarray(merged[key], dtype=object).astype(str),
                               kind="stable")
            merged = {name: _reorder(values, order) for name, values in merged.items()}
        out[frame] = merged
    return out


def _reorder(values: Any, order: np.ndarray) -> Any:
    if isinstance(values, np.ndarray):
        return values[order]
    return [values[i] for i in order]
