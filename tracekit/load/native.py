"""JSON text of a slice of events -> the extractor's raw columns, with the native scanner.

`tracekit.load.events` decodes one Python object per event and `tracekit.load.extract`
reads each field off it: most of a cold load's CPU. The scanner (`_scan.c`, built by
`pip install -e .` where a C compiler is found) reads the same fields straight from the text
into arrays, making a Python object only per distinct string; this module tells it which
categories and fields to read and turns what it returns into exactly the columns
`extract.extract_all` gives for the same events.

The scanner reads each field in its usual form only (a name that is a string, an id that is
an integer, strict JSON, no escaped or repeated keys, ...) and gives up on a slice holding
anything else; `scan_slice` then returns None and the slice goes through the typed decoder.
So the frames never depend on which path read a slice, and where the extension is absent
(not built, another Python) or `TRACEKIT_NATIVE=0`, every slice goes the typed way.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from tracekit.load import columns as col
from tracekit.load import extract
from tracekit.load.events import AnnotationArgs, KernelArgs, LaunchArgs, MemArgs, OpArgs
from tracekit.load.extract import Columns

try:
    from tracekit.load import _scan
except ImportError:  # not built (no compiler at install, or another Python version)
    _scan = None

NATIVE_SWITCH = "TRACEKIT_NATIVE"
"""Set to 0 to load without the scanner (the typed path: the same frames)."""

# Field kinds, as _scan.c numbers them.
STR, NAME, F64_REQ, F64_DUR, F64, I64, ID, I64_OPT, TRIPLE, RAW = range(10)

BASE = (("name", NAME, None), ("ts", F64_REQ, None), ("dur", F64_DUR, None),
        ("pid", ID, None), ("tid", ID, None))
"""What `extract._base` reads of every event it keeps: a string name and a numeric start
(else the event is malformed: the typed path drops it), a numeric duration (absent: 0), and
integer pid/tid (other ids are coded by `columns.numeric_ids`, which the typed path does)."""

FLOW = (("ph", STR, None), ("id", I64, None), ("tid", ID, None), ("ts", F64, None))
"""What `extract.flows` reads of a fwdbwd event."""

ARG_KINDS: dict[type[msgspec.Struct], dict[str, tuple[int, Any]]] = {
    KernelArgs: {"device": (I64, None), "stream": (I64, None), "correlation": (I64, None),
                 "external_id": (I64, None), "grid": (TRIPLE, None), "block": (TRIPLE, None),
                 "blocks_per_sm": (F64, None), "warps_per_sm": (F64, None),
                 "registers": (I64, None), "shared_mem": (I64, None), "occupancy": (F64, None),
                 "collective": (STR, None), "in_nelems": (I64, None),
                 "out_nelems": (I64, None), "group_size": (I64, None), "dtype": (STR, None),
                 "pg_name": (STR, None)},
    MemArgs: {"device": (I64, None), "stream": (I64, None), "correlation": (I64, None),
              "external_id": (I64, None), "bytes": (I64_OPT, None), "size": (I64, None)},
    OpArgs: {"external_id": (I64, None), "seq": (I64, None), "fwd_tid": (I64, None),
             "input_dims": (RAW, None), "input_strides": (RAW, None),
             "input_types": (RAW, None), "kernel_file": (STR, ""), "kernel_name": (STR, "")},
    LaunchArgs: {"correlation": (I64, None), "external_id": (I64, None)},
    AnnotationArgs: {"external_id": (I64, None), "stream": (I64, None)},
}
"""How each args field is read: as the extractor converts it (`_ints`: I64, `_floats`: F64,
`columns.strings` with its missing value: STR, `columns.triples`: TRIPLE, shapes kept as
text: RAW, `bytes` falling back to `size`: I64_OPT). The JSON keys come from the structs."""

DEFAULT_OF_KIND = {I64: -1, F64: None, STR: None, TRIPLE: None, RAW: b"", I64_OPT: None}
"""The struct default each kind stands for (an absent key reads as this)."""


def arg_fields(kind: type[msgspec.Struct]) -> tuple[tuple[str, int, Any, bool], ...]:
    """The scanner's fields for an args struct: (JSON key, kind, missing value, True)."""
    kinds = ARG_KINDS[kind]
    return tuple((key, kinds[name][0], kinds[name][1], True) for name, key in
                 zip(kind.__struct_fields__, kind.__struct_encode_fields__, strict=True))


def _top(fields: tuple[tuple[str, int, Any], ...]) -> tuple[tuple[str, int, Any, bool], ...]:
    return tuple((key, kind, missing, False) for key, kind, missing in fields)


GROUPS: dict[str, tuple[tuple[tuple[str, ...], ...], type[msgspec.Struct] | None]] = {
    "kernels": ((extract.KERNEL_CATS,), KernelArgs),
    "gpu_mem": ((extract.MEMCPY_CATS, extract.MEMSET_CATS), MemArgs),
    "ops": ((extract.OP_CATS,), OpArgs),
    "launches": ((extract.LAUNCH_CATS,), LaunchArgs),
    "python": ((extract.PYTHON_CATS,), None),
    "annotations": ((extract.CPU_ANNOTATION_CATS, extract.GPU_ANNOTATION_CATS),
                    AnnotationArgs),
    "flows": ((extract.FLOW_CATS,), None),
}
"""Per frame, its categories (in parts, as `extract.extract_all` takes them) and args."""

GIVE_UP = -2
LEFT_TO_DECODER = extract.MTIA_DEVICE_CATS
"""Categories the scanner does not read (MTIA events are split by name): a slice holding
one goes through the typed decoder."""


def _specs() -> tuple[dict[str, int], list[tuple[tuple[str, int, Any, bool], ...]],
                      list[str]]:
    cats: dict[str, int] = {cat: GIVE_UP for cat in LEFT_TO_DECODER}
    specs: list[tuple[tuple[str, int, Any, bool], ...]] = []
    order: list[str] = []
    for frame, (parts, args) in GROUPS.items():
        fields = _top(FLOW) if frame == "flows" else \
            _top(BASE) + (arg_fields(args) if args is not None else ())
        for part in parts:
            for cat in part:
                cats[cat] = len(specs)
                specs.append(fields)
                order.append(cat)
    return cats, specs, order


CATS, SPECS, SPEC_CATS = _specs()


def enabled() -> bool:
    """Whether slices are read by the native scanner (built, and not `TRACEKIT_NATIVE=0`)."""
    return _scan is not None and os.environ.get(NATIVE_SWITCH, "1") != "0"


def scan_slice(text: bytes | bytearray) -> dict[str, Columns] | None:
    """`extract.extract_all(decode_events(text))` read by the scanner, or None where it gives
    up on the text (or is not available): the caller then decodes it the typed way."""
    if not enabled():
        return None
    result = scan_raw(text)
    if isinstance(result, str):
        return None
    return columns_of(result)


class FileScanner:
    """The slices of one file read into one set of columns, as `extract.concat` of each
    slice's `scan_slice` would give them (the loader's one-process path: no columns per
    slice to join). `feed` says whether the scanner took a slice (if not, nothing of it is
    kept: decode it the typed way, after `take`-ing what came before)."""

    def __init__(self) -> None:
        if _scan is None:
            raise RuntimeError("the native scanner is not built")
        self._scanner = _scan.Scanner(CATS, SPECS, col._SHARED)
        self._rows: list[tuple[int, ...]] = []
        """Rows read per category of each slice taken since the last `take`."""

    def feed(self, text: bytes | bytearray | memoryview, bare: bool = False) -> bool:
        """Read a slice: a JSON array of events, or (bare) the events without its brackets."""
        rows = self._scanner.feed(text, bare)
        if isinstance(rows, str):
            return False
        self._rows.append(rows)
        return True

    def take(self) -> dict[str, Columns] | None:
        """The columns of the slices fed since the last take (None if none)."""
        if not self._rows:
            return None
        rows, self._rows = np.array(self._rows, dtype=np.int64), []
        return columns_of(self._scanner.take(), rows)


SPEC_INDEX = {cat: i for i, cat in enumerate(SPEC_CATS)}


def columns_of(result: tuple[Any, int, list[Any]],
               slice_rows: np.ndarray | None = None) -> dict[str, Columns]:
    """`extract.extract_all`'s columns from the scanner's answer; `slice_rows`: rows per
    category of each slice it read (from a FileScanner), to lay the rows out as joining
    each slice's columns does."""
    census, entries, per_spec = result
    per_cat = dict(zip(SPEC_CATS, per_spec, strict=True))
    empty: dict[str, Columns] | None = None
    out: dict[str, Columns] = {
        "census": {"cat": ["(none)" if c is None else str(c) for c, _ in census],
                   "count": np.array([n for _, n in census], dtype=np.int64),
                   "entries": np.array([entries], dtype=np.int64)},
    }
    for frame, (parts, _) in GROUPS.items():
        names = COLUMN_NAMES[frame]
        # Per part (e.g. memcpy, then memset), its categories' columns in the part's order.
        pieces = [[(cat, _columns(names, per_cat[cat])) for cat in part
                   if per_cat[cat] is not None] for part in parts]
        if not any(pieces):
            if empty is None:
                empty = extract.extract_all([])
            out[frame] = empty[frame]
            continue
        cols = _joined(pieces)
        if slice_rows is not None:
            cols = _slice_order(frame, cols, pieces, slice_rows)
        out[frame] = FINISH[frame](cols, pieces)
    return out


def _slice_order(frame: str, cols: Columns, pieces: list[list[tuple[str, Columns]]],
                 slice_rows: np.ndarray) -> Columns:
    """Rows of several slices read at once come category by category (all "kernel" rows,
    then all "Kernel" rows). Joining per-slice columns gives, within each part of a frame
    (e.g. memcpy, then memset), slice by slice, each slice's categories in turn; launches are
    regrouped by category either way (`extract.GROUPED_BY`). Only a part holding two
    categories needs moving."""
    if frame == "launches" or len(slice_rows) < 2 or all(len(part) < 2 for part in pieces):
        return cols
    slices = np.arange(len(slice_rows))
    keys = np.concatenate([np.repeat(slices + p * len(slices), slice_rows[:, SPEC_INDEX[cat]])
                           for p, part in enumerate(pieces) for cat, _ in part])
    order = np.argsort(keys, kind="stable")
    return {name: (tuple(v[order] for v in values) if isinstance(values, tuple)
                   else extract._reorder(values, order)) for name, values in cols.items()}


def scan_raw(text: bytes | bytearray) -> Any:
    """The scanner's own answer for a slice: (census, entries, per category) or why it gave
    up (a str). The loader's table of shared strings gets every distinct string it meets."""
    if _scan is None:
        raise RuntimeError("the native scanner is not built")
    if len(col._SHARED) > col.SHARED_LIMIT:
        col._SHARED.clear()
        col.SHAPE_TEXTS.clear()
    return _scan.scan(text, CATS, SPECS, col._SHARED)


def _names_of(frame: str) -> tuple[tuple[str, int], ...]:
    """(column name, kind) of each field the scanner returns for a frame's categories."""
    if frame == "flows":
        return tuple((key, kind) for key, kind, _ in FLOW)
    args = GROUPS[frame][1]
    kinds = ARG_KINDS[args] if args is not None else {}
    return tuple((key, kind) for key, kind, _ in BASE) + \
        tuple((name, kinds[name][0]) for name in (args.__struct_fields__ if args else ()))


COLUMN_NAMES = {frame: _names_of(frame) for frame in GROUPS}
RAW_KEYS = "raw keys"


def _columns(names: tuple[tuple[str, int], ...], item: tuple[int, list[Any], Any]) -> Columns:
    """One category's columns from the scanner's buffers (numbers viewed, not copied)."""
    _, values, keys = item
    out: Columns = {}
    for (name, kind), value in zip(names, values, strict=True):
        if kind in (STR, NAME):
            out[name] = value
        elif kind in (F64_REQ, F64_DUR, F64):
            out[name] = np.frombuffer(value, dtype=np.float64)
        elif kind in (I64, ID):
            out[name] = np.frombuffer(value, dtype=np.int64)
        elif kind == I64_OPT:
            out[name] = (np.frombuffer(value[0], dtype=np.int64),
                         np.frombuffer(value[1], dtype=np.bool_))
        elif kind == TRIPLE:
            out[name] = np.frombuffer(value, dtype=np.int64).reshape(-1, 3)
    if keys is not None:
        out[RAW_KEYS] = keys
    return out


def _joined(pieces: Pieces) -> Columns:
    """The columns of every category of every part, one after the other."""
    flat = [cols for part in pieces for _, cols in part]
    if len(flat) == 1:
        return flat[0]
    out: Columns = {}
    for name, first in flat[0].items():
        values = [cols[name] for cols in flat]
        if isinstance(first, np.ndarray):
            out[name] = np.concatenate(values)
        elif isinstance(first, tuple):
            out[name] = tuple(np.concatenate(v) for v in zip(*values, strict=True))
        else:
            out[name] = [v for part in values for v in part]
    return out


def _rows(part: list[tuple[str, Columns]]) -> int:
    """Rows of one part of a frame."""
    return sum(len(cols["ts"]) for _, cols in part)


Pieces = list[list[tuple[str, Columns]]]
"""Per part of a frame, (category, its columns) of each category present."""


def _kernels(cols: Columns, pieces: Pieces) -> Columns:
    return extract.finite_starts(cols)


def _gpu_mem(cols: Columns, pieces: Pieces) -> Columns:
    nbytes, present = cols.pop("bytes")
    size = cols.pop("size")
    out = {name: cols[name] for name in ("name", "ts", "dur", "pid", "tid")}
    out.update({
        "kind": ["memcpy"] * _rows(pieces[0]) + ["memset"] * _rows(pieces[1]),
        "device": cols["device"], "stream": cols["stream"], "correlation": cols["correlation"],
        "external_id": cols["external_id"], "bytes": np.where(present, nbytes, size),
    })
    return extract.finite_starts(out)


def _ops(cols: Columns, pieces: Pieces) -> Columns:
    dims, strides, types = extract.keyed_json_texts(cols.pop(RAW_KEYS), 3)
    cols.update({"input_dims": dims, "input_strides": strides, "input_types": types})
    order = ("name", "ts", "dur", "pid", "tid", "external_id", "seq", "fwd_tid", "input_dims",
             "input_strides", "input_types", "kernel_file", "kernel_name")
    return extract.finite_starts({name: cols[name] for name in order})


def _launches(cols: Columns, pieces: Pieces) -> Columns:
    codes: list[int] = []
    for cat, part in pieces[0]:
        codes += [extract.LAUNCH_CAT_ORDER[cat]] * len(part["ts"])
    cols["cat"] = codes
    return extract.finite_starts(cols)


def _python(cols: Columns, pieces: Pieces) -> Columns:
    return extract.finite_starts(cols)


def _annotations(cols: Columns, pieces: Pieces) -> Columns:
    cols["is_gpu"] = np.arange(len(cols["ts"])) >= _rows(pieces[0])
    return extract.finite_starts(cols)


FLOW_PHASES = ("s", "f")


def _flows(cols: Columns, pieces: Pieces) -> Columns:
    """The fwdbwd events that start or finish a flow (as `extract.flows` keeps them)."""
    keep = np.flatnonzero(pd.Series(cols["ph"], dtype=object).isin(FLOW_PHASES).to_numpy())
    return {"ph": np.asarray(cols["ph"], dtype=object)[keep].tolist(), "id": cols["id"][keep],
            "tid": cols["tid"][keep], "ts": cols["ts"][keep]}


FINISH = {"kernels": _kernels, "gpu_mem": _gpu_mem, "ops": _ops, "launches": _launches,
          "python": _python, "annotations": _annotations, "flows": _flows}
