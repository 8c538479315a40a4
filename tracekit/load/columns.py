"""Column extraction from lists of event dicts: one list comprehension per column.

Event dicts are what orjson hands back; pulling one field out of all of them with a
comprehension and converting the list with numpy in one call is the fastest pure-Python route
(far faster than `pandas.json_normalize` or building one DataFrame from all dicts), and keeps no
per-event Python objects once the frame is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import NoneType
from typing import Any

import numpy as np
import pandas as pd

from tracekit.names import distinct_objects, object_array

try:
    import orjson

    def _dumps(value: Any) -> str:
        return orjson.dumps(value).decode()
except ImportError:  # pragma: no cover
    import json

    def _dumps(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"))

EMPTY: dict[str, Any] = {}

_SHARED: dict[str, str] = {}
"""One copy of each distinct string met while loading a trace (see `shared`)."""
SHARED_LIMIT = 1_000_000
"""Distinct strings kept before the table starts over (a trace of unique strings is rare)."""


def shared(values: Any) -> list[Any]:
    """The values with each distinct string held once in memory.

    The parser makes a new str for every occurrence, yet op, kernel and frame names, recorded
    shapes and source files repeat hundreds of thousands of times in a big trace (every step
    runs the same code): one shared str per distinct value instead of one per row is most of
    the difference between frames several times the trace's size and frames a fraction of it.
    Values must be hashable (strings, None).
    """
    if len(_SHARED) > SHARED_LIMIT:
        _SHARED.clear()
        SHAPE_TEXTS.clear()
    values = values if isinstance(values, list) else list(values)
    # Values are hashable here (str, or None for absent); map runs setdefault at C speed.
    return list(map(_SHARED.setdefault, values, values))


SHAPE_TEXTS: dict[bytes, tuple[str, ...]] = {}
"""An op's recorded shapes (raw texts joined) -> their compact texts, for the file being
loaded (`extract.keyed_json_texts`: the same few shapes recur in every slice)."""


def forget_shared() -> None:
    """Drop the table behind `shared` (after each file: the frames keep what they use)."""
    _SHARED.clear()
    SHAPE_TEXTS.clear()


def share_strings(frame: pd.DataFrame) -> pd.DataFrame:
    """Make equal strings in every object column of `frame` one object (in place; returns it).

    Columns built by pandas operations (assignments that pass through pandas' own string
    dtype, merges) hold one str per row again. The column's distinct objects are found by
    address (`tracekit.names.distinct_objects`: integers, at C speed), and only those are
    compared by value: a column that already holds one object per value (most columns, the
    loader builds them shared) is left as it is; otherwise each value's first object is put
    in every row holding that value. Missing values (None, NaN) stay what they were.
    """
    for name in frame.columns:
        column = frame[name]
        if column.dtype != object or len(column) == 0:
            continue
        values = object_array(column)
        object_codes, first = distinct_objects(values)
        held = values[first]
        # Only all-string columns: merging by value would merge 1, 1.0 and True.
        if pd.api.types.infer_dtype(held, skipna=True) != "string":
            continue
        codes, uniques = pd.factorize(held)
        value = codes >= 0
        if len(uniques) == int(value.sum()):
            continue  # one object per value already
        held[value] = np.asarray(uniques, dtype=object)[codes[value]]
        frame[name] = pd.Series(held[object_codes], index=frame.index, dtype=object)
    return frame


INT32 = np.iinfo(np.int32)


def narrow_ints(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """Store the named int64 columns as int32 (in place; returns `frame`).

    For columns whose values are small by nature (row numbers, depths, step and line numbers,
    launch geometry): half the memory, and int32 is what numpy indexes with as readily. A
    column holding a value outside int32 (a malformed trace) keeps int64 rather than wrap.
    """
    for name in columns:
        if name not in frame or frame[name].dtype != np.int64:
            continue
        values = frame[name].to_numpy()
        if len(values) and (values.min() < INT32.min or values.max() > INT32.max):
            continue
        frame[name] = values.astype(np.int32)
    return frame


def args_of(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `args` dict of every event ({} when absent)."""
    return [e.get("args") or EMPTY for e in events]


def arg_ints(args: list[dict[str, Any]], key: str, missing: int = -1) -> np.ndarray:
    """int64 column of one args key (`missing` where absent)."""
    return ints([a.get(key, missing) for a in args], missing)


def arg_floats(args: list[dict[str, Any]], key: str) -> np.ndarray:
    """float64 column of one args key (NaN where absent)."""
    return floats([a.get(key) for a in args])


def floats(values: list[Any]) -> np.ndarray:
    """float64 array; None and non-numeric strings become NaN."""
    try:
        arr = np.array(values, dtype=np.float64)
        if arr.shape == (len(values),):  # not lists of numbers, which make a 2-D array
            return arr
    except (TypeError, ValueError, OverflowError):
        pass
    return np.array([_to_float(v) for v in values], dtype=np.float64)


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return np.nan
    try:
        return float(value)
    except (ValueError, OverflowError):
        return np.nan


def ints(values: list[Any], missing: int = -1) -> np.ndarray:
    """int64 array; None, floats with NaN and non-numeric strings become `missing`.

    Hex strings ("0x0", as AMD traces write streams) are read as hex.
    """
    try:
        arr = np.array(values, dtype=np.int64)
        if arr.shape == (len(values),):  # not lists of numbers, which make a 2-D array
            return arr
    except (TypeError, ValueError, OverflowError):
        pass
    out = np.full(len(values), missing, dtype=np.int64)
    for i, value in enumerate(values):  # slow path, only for the odd malformed column
        out[i] = _to_int(value, missing)
    return out


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _to_int(value: Any, missing: int) -> int:
    """One value as an int64; `missing` for what is not a number or does not fit."""
    if value is None or isinstance(value, bool):
        return missing if value is None else int(value)
    number: int
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return missing
        number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = int(text, 16) if text.lower().startswith("0x") else int(float(text))
        except (ValueError, OverflowError):
            return missing
    else:
        return missing
    return number if INT64_MIN <= number <= INT64_MAX else missing


def triples(values: list[Any]) -> np.ndarray:
    """(n, 3) int64 array from [x, y, z] lists (grid, block); -1 where absent or malformed."""
    n = len(values)
    if n == 0:
        return np.full((0, 3), -1, dtype=np.int64)
    try:
        arr = np.array(values, dtype=np.int64)
        if arr.shape == (n, 3):
            return arr
    except (TypeError, ValueError):
        pass
    out = np.full((n, 3), -1, dtype=np.int64)
    for i, value in enumerate(values):
        if isinstance(value, list | tuple):
            for j, part in enumerate(value[:3]):
                out[i, j] = _to_int(part, -1)
    return out


def strings(values: list[Any], missing: str | None = "") -> list[Any]:
    """Strings as they are (each distinct one held once, see `shared`); None (absent) becomes
    `missing`; other types are stringified."""
    kinds = set(map(type, values))
    if kinds <= TEXT_OR_NONE:  # the usual case, read at C speed
        if NoneType in kinds and missing is not None:
            values = list(map({None: missing}.get, values, values))
        return shared(values)
    return shared(
        v if isinstance(v, str) else (missing if v is None else str(v)) for v in values
    )


TEXT_OR_NONE = frozenset({str, NoneType})


def json_texts(values: list[Any]) -> list[str]:
    """Compact JSON text of each value ("" where absent), e.g. for Input Dims; each distinct
    text held once (the same shapes recur every step)."""
    return shared("" if v is None else _dumps(v) for v in values)


def numeric_ids(values: list[Any]) -> np.ndarray:
    """Thread/process ids as int64; non-numeric ids (rare, e.g. "Spans") get negative codes."""
    try:
        arr = np.array(values, dtype=np.int64)
        if arr.shape == (len(values),):
            return arr
    except (TypeError, ValueError, OverflowError):
        pass
    codes, _ = pd.factorize(pd.Series(values, dtype=object).astype(str))
    out = np.array([_to_int(v, -1) if not isinstance(v, str) else -1 for v in values],
                   dtype=np.int64)
    non_numeric = out < 0
    out[non_numeric] = -2 - codes[non_numeric]
    return out


def as_column(values: Any) -> Any:
    """Numeric arrays as they are; strings (lists, object arrays, pandas string Series) as
    object-dtype Series, so string columns have one dtype whichever pandas version infers
    what from a list. A pandas string Series (pyarrow-backed in pandas 3) is turned into
    objects once per distinct value (`object_strings`), not once per row."""
    if isinstance(values, np.ndarray) and values.dtype != object:
        return values
    if isinstance(values, pd.Series):
        if values.dtype == object:
            return values
        if pd.api.types.is_string_dtype(values.dtype):
            return pd.Series(object_strings(values), index=values.index, dtype=object)
        return values.to_numpy()
    return pd.Series(values, dtype=object)


def object_strings(values: pd.Series) -> np.ndarray:
    """A string Series as an object array holding one str per distinct value (missing values
    as `to_numpy` gives them). Reading a pyarrow-backed column with `to_numpy` makes a new
    str for every row: on a linked 690 MB rank, ~230 MB of repeated source paths and function
    names that the process kept (freed small objects stay with Python's allocator)."""
    codes, uniques = pd.factorize(values)
    if len(uniques) == len(values):
        return values.to_numpy(dtype=object)
    distinct = np.asarray(uniques, dtype=object)
    missing = codes < 0
    out = distinct.take(np.maximum(codes, 0)) if len(distinct) else \
        np.empty(len(values), dtype=object)
    if missing.any():
        out[missing] = values.to_numpy(dtype=object)[missing]
    return out


def strings_column(values: Any) -> pd.Series:
    """Strings (an object array, a list, or a Series of object or string dtype) as an
    object-dtype Series by position (a fresh RangeIndex), one str per distinct value.

    pandas 3 stores a string column built from objects in an arrow array, which holds every
    row's characters again: a frame of a rank's CPU events (names and source paths of 1.9M
    rows, from a 690 MB trace) took ~270 MB that way against ~15 MB of shared objects."""
    if isinstance(values, pd.Series):
        values = values.to_numpy(dtype=object) if values.dtype == object \
            else object_strings(values)
    return pd.Series(values, dtype=object)


def frame(columns: dict[str, Any], order: list[str]) -> pd.DataFrame:
    """DataFrame with exactly `order` columns (extra keys after them), RangeIndex."""
    names = order + [c for c in columns if c not in order]
    return pd.DataFrame({name: as_column(columns[name]) for name in names})
