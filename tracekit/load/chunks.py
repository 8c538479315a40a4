"""Parse one big trace in parallel slices of its `traceEvents` array.

Parsing JSON and walking the event dicts is single-threaded Python work proportional to the
file; on a multi-core machine, one 50 MB trace is read fastest by cutting the events array into
slices at event boundaries and letting forked processes parse and extract one slice each (the
parent takes the last slice itself). Each child sends back plain columns and exits without
freeing its dicts.

Cutting is safe without a JSON tokenizer: inside a JSON string a newline is always escaped and
a quote always follows a backslash, so the separators we cut at (`},\\n  {` as Kineto writes
events, or `},{"` / `}, {"` in compact JSON) occur only between values. A cut between nested
values inside one event is still possible in principle; it makes a slice invalid JSON, and any
failed slice sends the whole file down the ordinary serial path.
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.connection import Connection
from typing import Any

from tracekit.load import extract
from tracekit.load.extract import Columns

MIN_PARALLEL_BYTES = 16 * 2**20
"""Below this much JSON, forking costs more than it saves."""
BYTES_PER_SLICE = 6 * 2**20
MAX_SLICES = 16
SEPARATORS = (b"},\n  {", b'},{"', b'}, {"')

_RAW: bytes = b""
"""The JSON text, set before forking so children share it (copy-on-write) instead of
receiving it through a pipe."""


def slice_count(size: int, workers: int | None = None) -> int:
    """How many slices to cut a `size`-byte JSON text into (1 = do not cut)."""
    if size < MIN_PARALLEL_BYTES or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
    return max(1, min(workers, MAX_SLICES, size // BYTES_PER_SLICE))


def split_events(raw: bytes, parts: int) -> tuple[dict[str, Any], list[tuple[int, int]]] | None:
    """(top-level keys other than traceEvents, [(start, end) of each slice]) or None when the
    text cannot be cut (no traceEvents array found, no separator, odd layout)."""
    from tracekit.load.read import _parse

    key = raw.find(b'"traceEvents"')
    open_at = raw.find(b"[", key) if key >= 0 else -1
    if open_at < 0:
        return None
    probe = raw[open_at:open_at + 65536]
    separator = next((s for s in SEPARATORS if s in probe), None)
    if separator is None:
        return None
    found = _array_end(raw, open_at, separator, _parse)
    if found is None:
        return None
    close_at, meta = found
    bounds: list[tuple[int, int]] = []
    start = open_at + 1
    for i in range(1, parts):
        target = open_at + (close_at - open_at) * i // parts
        if target <= start:
            continue
        cut = raw.find(separator, target, close_at)
        if cut < 0:
            break
        bounds.append((start, cut + 1))  # up to and including the closing brace
        start = cut + 2  # after the comma
    bounds.append((start, close_at))
    return meta, bounds


def _array_end(raw: bytes, open_at: int, separator: bytes, parse: Any
               ) -> tuple[int, dict[str, Any]] | None:
    """Where the events array closes, and the document without it.

    Parse from the start of the last event: the parser stops at the array's `]` and reports
    the trailing text's position, which is exactly where the array ends.
    """
    last = raw.rfind(separator, open_at)
    if last < 0:
        return None
    tail_start = last + 2
    try:
        parse(b"[" + raw[tail_start:])
        return None  # the text after the last event should not parse as part of one array
    except ValueError as exc:
        position = getattr(exc, "pos", None)
    if not isinstance(position, int) or position < 2:
        return None
    close_at = tail_start + position - 2  # minus the "[" we added, and back to the "]"
    while close_at > tail_start and raw[close_at:close_at + 1] != b"]":
        close_at -= 1  # the reported position can be past whitespace after the "]"
    if raw[close_at:close_at + 1] != b"]":
        return None
    try:
        meta = parse(raw[:open_at] + b"[]" + raw[close_at + 1:])
    except ValueError:
        return None
    if not isinstance(meta, dict) or meta.get("traceEvents") != []:
        return None
    meta.pop("traceEvents")
    return close_at, meta


def _extract_slice(start: int, end: int) -> dict[str, Columns]:
    """Parse one slice of the events array and extract its columns."""
    from tracekit.load.read import _parse

    events = _parse(b"".join((b"[", memoryview(_RAW)[start:end], b"]")))
    if not isinstance(events, list):
        raise ValueError("slice is not an array")
    return extract.extract_all(events)


def _child(conn: Connection, start: int, end: int) -> None:
    """Forked child: send the slice's columns (or the error) and exit at once; the OS takes
    back its memory faster than freeing a million dicts one by one."""
    try:
        result: Any = _extract_slice(start, end)
    except BaseException as exc:  # reported to the parent, which falls back to serial
        result = exc
    try:
        conn.send(result)
    finally:
        os._exit(0)


def extract_parallel(raw: bytes, parts: int) -> tuple[dict[str, Any], dict[str, Columns]] | None:
    """(meta, raw columns) of the whole trace, parsed in `parts` slices; None if the text
    could not be cut or any slice failed (the caller then parses it serially)."""
    global _RAW
    split = split_events(raw, parts)
    if split is None or len(split[1]) < 2:
        return None
    meta, bounds = split
    context = multiprocessing.get_context("fork")
    _RAW = raw
    children: list[tuple[Any, Connection]] = []
    try:
        for start, end in bounds[:-1]:
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(target=_child, args=(sender, start, end), daemon=True)
            process.start()
            sender.close()
            children.append((process, receiver))
        try:
            own: Any = _extract_slice(*bounds[-1])
        except Exception as exc:  # invalid slice: fall back (after reaping the children)
            own = exc
        results = [receiver.recv() for _, receiver in children]
    except (OSError, EOFError):
        return None
    finally:
        _RAW = b""
        for process, receiver in children:
            receiver.close()
            process.join()
    results.append(own)
    if any(isinstance(r, BaseException) for r in results):
        return None
    return meta, extract.concat(results)
