"""Events -> raw columns, per category: the only code that touches events one by one.

Each category's fields are read off its events (`tracekit.load.events.Event`, and the decoded
`Args` of the categories that need them) with one `attrgetter` per event, building a tuple of
its fields; columns are then read off the tuples with `itemgetter`, all at C speed. The result
(`Columns`: name -> numpy array or list) is plain data, so it can be built in a worker process
for one slice of a big trace and concatenated in the parent (see `tracekit.load.stream`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from itertools import chain, repeat
from operator import attrgetter, itemgetter
from typing import Any

import numpy as np

from tracekit.load import columns as col
from tracekit.load.events import (
    AnnotationArgs,
    ArgsT,
    Event,
    KernelArgs,
    LaunchArgs,
    MemArgs,
    OpArgs,
    Raw,
    arg_structs,
)
from tracekit.load.memory import release_freed
from tracekit.load.read import parse_json

Columns = dict[str, Any]
"""Column name -> numpy array or list, all of one length."""

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


def bucket_by_category(events: list[Event]) -> dict[Any, list[Event]]:
    """Group events by category (one pass; the events themselves are not copied)."""
    buckets: dict[Any, list[Event]] = defaultdict(list)
    try:
        for event in events:
            buckets[event.cat].append(event)
    except TypeError:  # an unhashable category (a list, an object): none tracekit reads
        buckets.clear()
        for event in events:
            cat = event.cat
            buckets[cat if cat is None or type(cat) is str else repr(cat)].append(event)
    return buckets


def take(buckets: dict[Any, list[Event]], cats: tuple[str, ...]) -> list[Event]:
    """Events of the given categories."""
    out: list[Event] = []
    for cat in cats:
        out.extend(buckets.get(cat, ()))
    return out


def well_formed(events: list[Event]) -> list[Event]:
    """Events that have a name and a numeric start: Kineto always writes both, but a
    hand-edited or cut-off trace may not, and one such event must not sink a whole column."""
    return [e for e in events
            if type(e.ts) in (int, float) and type(e.name) is str
            and type(e.dur) in (int, float)]


Rows = list[Any]
"""Items to read a field off: events, args structs, or tuples of their fields."""
Getter = Callable[[Any], Any]
"""How to read that field (an `attrgetter` or `itemgetter`, applied at C speed)."""


def _ints(rows: Rows, get: Getter | int) -> np.ndarray:
    """A field of every row as int64 (-1 where absent; see `columns.ints` for odd values);
    `get`: a getter, or the field's index in tuple rows."""
    get = itemgetter(get) if isinstance(get, int) else get
    try:
        return np.fromiter(map(get, rows), dtype=np.int64, count=len(rows))
    except (TypeError, ValueError, OverflowError):
        return col.ints(list(map(get, rows)))


def _floats(rows: Rows, get: Getter | int) -> np.ndarray:
    """A field of every row as float64 (NaN where absent or not a number)."""
    get = itemgetter(get) if isinstance(get, int) else get
    try:
        return np.fromiter(map(get, rows), dtype=np.float64, count=len(rows))
    except (TypeError, ValueError):
        return col.floats(list(map(get, rows)))


def _list(rows: Rows, get: Getter | int) -> list[Any]:
    return list(map(itemgetter(get) if isinstance(get, int) else get, rows))


def _ids(rows: Rows, get: Getter | int) -> np.ndarray:
    """pid/tid field: int64, with non-numeric ids (rare) coded negative."""
    get = itemgetter(get) if isinstance(get, int) else get
    try:
        return np.fromiter(map(get, rows), dtype=np.int64, count=len(rows))
    except (TypeError, ValueError, OverflowError):
        return col.numeric_ids(_list(rows, get))


def shared_names(rows: Rows, get: Getter | int = 0) -> list[Any]:
    """A field (a name) of every row, each distinct string kept once in memory (the same op,
    kernel and frame names repeat hundreds of thousands of times; see `columns.shared`)."""
    return col.shared(map(itemgetter(get) if isinstance(get, int) else get, rows))


_NAME, _TS, _DUR, _PID, _TID = map(attrgetter, ("name", "ts", "dur", "pid", "tid"))


def _arg_rows(events: list[Event], kind: type[ArgsT]) -> list[tuple[Any, ...]]:
    """Every field of `kind` (the category's args struct) of every event, in the struct's
    field order (decoded for these events only), one tuple per event."""
    return list(map(attrgetter(*kind.__struct_fields__), arg_structs(events, kind)))


def _base(events: list[Event]) -> Columns:
    """name, ts, dur, pid, tid, each read off the events in one pass (faster than building a
    tuple per event for five fields). A name that is not a string (absent, null) or a start
    that is not a number is a malformed event (ValueError, TypeError: see `_safely`)."""
    names = shared_names(events, _NAME)
    if any(type(name) is not str for name in set(names)):
        raise ValueError("an event without a name")
    ts = np.fromiter(map(_TS, events), dtype=np.float64, count=len(events))
    return {"name": names, "ts": ts, "dur": _floats(events, _DUR),
            "pid": _ids(events, _PID), "tid": _ids(events, _TID)}


def kernels(events: list[Event]) -> Columns:
    """Kernel launch geometry, occupancy and NCCL collective metadata."""
    cols = _base(events)
    args = _arg_rows(events, KernelArgs)
    cols.update({
        "device": _ints(args, 0), "stream": _ints(args, 1), "correlation": _ints(args, 2),
        "external_id": _ints(args, 3), "grid": col.triples(_list(args, 4)),
        "block": col.triples(_list(args, 5)), "blocks_per_sm": _floats(args, 6),
        "warps_per_sm": _floats(args, 7), "registers": _ints(args, 8),
        "shared_mem": _ints(args, 9), "occupancy": _floats(args, 10),
        "collective": col.strings(_list(args, 11), missing=None), "in_nelems": _ints(args, 12),
        "out_nelems": _ints(args, 13), "group_size": _ints(args, 14),
        "dtype": col.strings(_list(args, 15), missing=None),
        "pg_name": col.strings(_list(args, 16), missing=None),
    })
    return cols


def gpu_mem(memcpy: list[Event], memset: list[Event]) -> Columns:
    """Memcpy and memset activities."""
    events = memcpy + memset
    cols = _base(events)
    args = _arg_rows(events, MemArgs)
    sizes = [(size if nbytes is None else nbytes, ) for nbytes, size in
             zip(_list(args, 4), _list(args, 5), strict=True)]  # MTIA DMA: "size"
    cols.update({
        "kind": ["memcpy"] * len(memcpy) + ["memset"] * len(memset),
        "device": _ints(args, 0), "stream": _ints(args, 1), "correlation": _ints(args, 2),
        "external_id": _ints(args, 3), "bytes": _ints(sizes, 0),
    })
    return cols


def ops(events: list[Event]) -> Columns:
    """CPU ops: ids, autograd sequence numbers, recorded shapes, Inductor provenance."""
    cols = _base(events)
    args = _arg_rows(events, OpArgs)
    dims, strides, types = json_text_columns(list(map(_SHAPES, args)), 3)
    cols.update({
        "external_id": _ints(args, 0), "seq": _ints(args, 1), "fwd_tid": _ints(args, 2),
        "input_dims": dims, "input_strides": strides, "input_types": types,
        "kernel_file": col.strings(_list(args, 6)), "kernel_name": col.strings(_list(args, 7)),
    })
    return cols


_SHAPES = itemgetter(3, 4, 5)
"""An op's Input Dims, Input Strides and Input type (raw) in its `OpArgs` row."""
NUL = b"\0"
"""Never part of JSON text (a control character must be escaped inside a string)."""


def json_text_columns(rows: list[tuple[Raw, ...]], width: int) -> list[list[str]]:
    """Compact JSON text of each raw value of each row ("" where absent or null), one column
    per position, each distinct text held once. The raw texts are mostly repeats (the same
    shapes every step): a row's texts are joined into one key, and each distinct key is
    split and re-encoded compactly once (`columns.json_texts` of each value), not every row."""
    return keyed_json_texts(list(map(NUL.join, rows)), width)


def keyed_json_texts(keys: list[bytes], width: int) -> list[list[str]]:
    """`json_text_columns` of rows whose `width` raw texts are already joined with NUL."""
    if not keys:
        return [[] for _ in range(width)]
    compact = col.SHAPE_TEXTS  # kept from slice to slice of one file
    for key in set(keys).difference(compact):
        compact[key] = tuple(col.json_texts([parse_json(raw)])[0] if raw else ""
                             for raw in key.split(NUL))
    texts = list(map(compact.__getitem__, keys))
    return [list(map(itemgetter(i), texts)) for i in range(width)]


LAUNCH_CAT_ORDER = {cat: i for i, cat in enumerate(LAUNCH_CATS)}
_CAT = attrgetter("cat")


def launches(events: list[Event]) -> Columns:
    """CUDA runtime/driver and HIP API calls (`cat`: index in LAUNCH_CATS, for `concat`)."""
    cols = _base(events)
    args = _arg_rows(events, LaunchArgs)
    cols.update({"correlation": _ints(args, 0), "external_id": _ints(args, 1),
                 "cat": list(map(LAUNCH_CAT_ORDER.get, map(_CAT, events), repeat(0)))})
    return cols


def python(events: list[Event]) -> Columns:
    """Python frames (with_stack=True): only name and times are needed (args never decoded)."""
    return _base(events)


def annotations(cpu: list[Event], gpu: list[Event]) -> Columns:
    """record_function ranges: CPU side, then the GPU-side copies."""
    events = cpu + gpu
    cols = _base(events)
    args = _arg_rows(events, AnnotationArgs)
    cols.update({
        "external_id": _ints(args, 0), "stream": _ints(args, 1),
        "is_gpu": np.arange(len(events)) >= len(cpu),
    })
    return cols


def flows(events: list[Event]) -> Columns:
    """fwdbwd flow ends (ph s and f), to be paired by id once all chunks are in."""
    rows = [(e.ph, e.id, e.tid, e.ts) for e in events if e.ph in ("s", "f")]
    return {"ph": _list(rows, 0), "id": _ints(rows, 1), "tid": _ids(rows, 2),
            "ts": _floats(rows, 3)}


def _safely(extract: Any, *event_lists: list[Event]) -> Columns:
    """Extract; on a malformed event (no ts/name, a name that is not a string, a non-numeric
    time), drop such events and extract again. The fast path never inspects events one by
    one. Rows whose start is not a finite number (NaN, Infinity: a broken writer) are dropped
    as well."""
    try:
        cols = extract(*event_lists)
    except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
        cols = extract(*[well_formed(events) for events in event_lists])
    return finite_starts(cols)


def finite_starts(cols: Columns) -> Columns:
    """The rows of `cols` whose ts is finite (every column filtered alike). Names are
    strings already: `_base` raises on any other name, and `well_formed` drops its event."""
    ok = np.isfinite(cols["ts"])
    if ok.all():
        return cols
    keep = np.flatnonzero(ok)
    return {name: values[keep] if isinstance(values, np.ndarray)
            else [values[i] for i in keep] for name, values in cols.items()}


def mtia_split(events: list[Event]) -> tuple[list[Event], list[Event]]:
    """MTIA device events -> (kernels, DMA transfers); stream-event markers are dropped."""
    kernel_rows: list[Event] = []
    dma: list[Event] = []
    for event in events:
        if event.name == MTIA_DMA:
            dma.append(event)
        elif event.name not in MTIA_SYNC:
            kernel_rows.append(event)
    return kernel_rows, dma


def census(buckets: dict[Any, list[Event]], entries: int) -> Columns:
    """How many entries the events array had and how many objects of each category: what the
    loader says about a trace in which it finds nothing to read."""
    cats = list(buckets)
    return {"cat": ["(none)" if c is None else str(c) for c in cats],
            "count": np.array([len(buckets[c]) for c in cats], dtype=np.int64),
            "entries": np.array([entries], dtype=np.int64)}


def extract_all(events: list[Event], entries: int | None = None) -> dict[str, Columns]:
    """Raw columns of every frame from a list of events (a whole trace or one slice of it);
    `entries`: how many entries the events array had (default: len(events); more when some
    were not event objects)."""
    buckets = bucket_by_category(events)
    mtia_kernels, mtia_dma = mtia_split(take(buckets, MTIA_DEVICE_CATS))
    out = {
        "census": census(buckets, len(events) if entries is None else entries),
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
    """Join the raw columns of consecutive slices of one trace. `parts` is consumed: each
    slice's column is dropped as soon as it is joined, so the joined columns and the slices'
    are never all held at once."""
    if len(parts) == 1:
        return parts.pop()
    out: dict[str, Columns] = {}
    for frame in list(parts[0]):
        merged: Columns = {}
        for name in list(parts[0][frame]):
            pieces = [p[frame].pop(name) for p in parts]
            if isinstance(pieces[0], np.ndarray):
                merged[name] = np.concatenate(pieces)
            else:
                merged[name] = list(chain.from_iterable(pieces))
            del pieces
        release_freed()
        key = GROUPED_BY.get(frame)
        if key is not None:
            keys = np.asarray(merged[key], dtype=object).astype(str)
            if (keys[1:] < keys[:-1]).any():  # else already in order: nothing to move
                order = np.argsort(keys, kind="stable")
                merged = {name: _reorder(values, order) for name, values in merged.items()}
        out[frame] = merged
    parts.clear()
    return out


def _reorder(values: Any, order: np.ndarray) -> Any:
    if isinstance(values, np.ndarray):
        return values[order]
    return list(map(values.__getitem__, order.tolist()))
