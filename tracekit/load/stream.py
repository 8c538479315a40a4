"""Read a trace in slices of its `traceEvents` array, so memory stays bounded and big files
can be parsed on several cores.

Parsing a whole 500 MB trace with one `json.loads` holds every event as a Python dict at once
(several times the file's size). Instead the (gunzipped) text is streamed, cut into slices of
about `SLICE_BYTES` at event boundaries, and each slice is parsed and reduced to plain columns
before the next one is read: peak memory is one slice's dicts plus the columns. On a
multi-core machine the slices of one file are parsed by a pool of forked processes.

Cutting is safe without a JSON tokenizer: inside a JSON string a newline is always escaped and
a quote always follows a backslash, so the separators we cut at (`},\\n  {` as Kineto writes
events, or `},{"` / `}, {"` in compact JSON) occur only between values. A cut between nested
values inside one event is possible in principle; it makes a slice invalid JSON, and then the
whole file is read again by the ordinary path (`NotSliceable`), which also produces the
one-line errors for broken files.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tracekit.load import extract, native
from tracekit.load.events import NotTyped, decode_events
from tracekit.load.extract import Columns
from tracekit.load.read import GZIP_ERRORS, GZIP_MAGIC, gzip_open, parse_json

SLICE_BYTES = 4 * 2**20
"""A slice's parsed event dicts take several times its text: 4 MB slices keep that transient
near 100 MB per process, as fast as 16 MB ones (measured on a 100 MB trace: peak 209 vs 359 MB
RSS, the same 1.6 s)."""
MIN_SLICE_BYTES = 2 * 2**20
READ_BYTES = 4 * 2**20
HEADER_LIMIT = 64 * 2**20
"""traceEvents must start within this much text (Kineto puts only metadata before it)."""
PARALLEL_MIN_BYTES = 24 * 2**20
"""Files with less JSON than this are parsed in one process (forking costs more)."""
NATIVE_PARALLEL_MIN_BYTES = 256 * 2**20
"""The same where the native scanner reads the slices: each slice's columns then cost more to
send back and join than to scan. On a 16-CPU host (nvidia-h200, `cli.py analyze`, cache off),
a pool did not shorten the 54 MB trace's analysis (1.95-2.50 s wall, 2.4-3.0 CPU s, against
1.64-2.23 s and as many CPU s in one process), and cut 2 x 690 MB rank files' by a quarter
(8.2-9.4 s against 10.7-12.2) for 30% more CPU (25-27 against 18-22 s). Set between the two
sizes measured."""
MAX_WORKERS = 15
MIN_CPUS_FOR_POOL = 3
SEPARATORS = (b"},\n  {", b'},{"', b'}, {"')
EVENTS_KEY = re.compile(rb'(?<!\\)"traceEvents"\s*:\s*\[')
LEADING_SPACE = re.compile(rb"[ \t\r\n\xef\xbb\xbf]*")
"""Whitespace (and a UTF-8 byte-order mark) before the document: skipped without a copy."""
BARE_HEADER = b'{"traceEvents":['
"""What a bare event array (Chrome's array form) is read as: the object form's start."""


class NotSliceable(Exception):
    """The text cannot be read in slices (unusual layout, broken file): read it whole."""


def text_chunks(path: Path) -> Iterator[bytes]:
    """The file's JSON text in pieces, gunzipped on the fly when it is gzip."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    try:
        if magic == GZIP_MAGIC:
            with gzip_open(path) as gz:
                while chunk := gz.read(READ_BYTES):
                    yield chunk
        else:
            with open(path, "rb") as fh:
                while chunk := fh.read(READ_BYTES):
                    yield chunk
    except GZIP_ERRORS as exc:
        raise NotSliceable(str(exc)) from None


class EventSlices:
    """Iterate over JSON array texts, each holding a run of consecutive events; after the
    iteration, `meta` holds the document's other top-level keys."""

    def __init__(self, path: Path, slice_bytes: int = SLICE_BYTES, views: bool = False) -> None:
        self.path = path
        self.slice_bytes = slice_bytes
        self.views = views
        """Yield each slice's events without the array's brackets, as a view of the read
        buffer (not a copy), valid until the next slice is asked for: for a consumer that is
        done with a slice by then (`extract_here`)."""
        self.meta: dict[str, Any] | None = None
        self.text_bytes = 0
        self.bare = False

    def __iter__(self) -> Iterator[bytes | memoryview]:
        chunks = text_chunks(self.path)
        buf = bytearray()
        header = self._read_header(chunks, buf)
        separator: bytes | None = None
        for chunk in chunks:
            buf += chunk
            self.text_bytes += len(chunk)
            if separator is None:
                separator = _separator(buf)
            if separator is not None and len(buf) >= self.slice_bytes:
                cut = buf.rfind(separator)
                if cut > 0:
                    yield from self._slice(buf, cut + 1)
                    del buf[:cut + 2]
        yield from self._finish(header, buf, separator)

    def _read_header(self, chunks: Iterator[bytes], buf: bytearray) -> bytes:
        """Text up to and including the events array's `[` (moved out of `buf`). A bare array
        of events (Chrome's array form) gets the header of the object form, and `bare` is
        set so that `_finish` closes that object."""
        for chunk in chunks:
            buf += chunk
            self.text_bytes += len(chunk)
            first = LEADING_SPACE.match(buf).end()
            start = buf[first:first + 1]
            if start == b"[":
                del buf[:buf.index(b"[") + 1]
                self.bare = True
                return BARE_HEADER
            if start and start != b"{":
                break
            match = EVENTS_KEY.search(buf)
            if match:
                header = bytes(buf[:match.end()])
                del buf[:match.end()]
                return header
            if len(buf) > HEADER_LIMIT:
                break
        raise NotSliceable("no traceEvents array near the start")

    def _finish(self, header: bytes, buf: bytearray, separator: bytes | None
                ) -> Iterator[bytearray]:
        """The last events, and the document's remaining keys.

        Parsing from the start of the last event, the parser stops at the array's `]` and
        reports where the trailing text starts: exactly the end of the array.
        """
        if separator is None:  # the whole text came in one piece
            separator = _separator(buf, strict=False)
        last = buf.rfind(separator) if separator else -1
        tail_from = last + 2 if last >= 0 else 0
        try:
            parse_json(b"[" + bytes(buf[tail_from:]))
            raise NotSliceable("nothing after the events array")
        except ValueError as exc:
            position = getattr(exc, "pos", None)
        if not isinstance(position, int) or position < 2:
            raise NotSliceable("cannot find the end of the events array")
        close = tail_from + position - 2
        while close > tail_from and buf[close:close + 1] != b"]":
            close -= 1  # the reported position may lie past whitespace after the "]"
        if buf[close:close + 1] != b"]":
            raise NotSliceable("cannot find the end of the events array")
        if buf[:close].strip():
            yield from self._slice(buf, close)
        trailer = bytes(buf[close + 1:])
        if self.bare:
            if trailer.strip():
                raise NotSliceable("text after the events array")
            trailer = b"}"
        try:
            meta = parse_json(header + b"]" + trailer)
        except ValueError:
            raise NotSliceable("the text around the events array is not valid JSON") from None
        if not isinstance(meta, dict) or meta.get("traceEvents") != []:
            raise NotSliceable("unexpected document layout")
        meta.pop("traceEvents")
        self.meta = meta

    def _slice(self, buf: bytearray, end: int) -> Iterator[bytes | memoryview]:
        """The events of buf[:end]: a copy as a JSON array, or (views) a view released when
        the next slice is asked for."""
        if not self.views:
            yield _array_text(buf, end)
            return
        with memoryview(buf) as whole, whole[:end] as events:
            yield events


def _array_text(buf: bytearray, end: int) -> bytes:
    """`[` + buf[:end] + `]`, copied once."""
    with memoryview(buf) as view, view[:end] as part:  # released before buf is resized
        return _bracketed(part)


def _separator(buf: bytearray, strict: bool = True) -> bytes | None:
    """The event separator this text uses (None if not seen yet). Strict: past 64 KB of
    events without one, the text cannot be sliced."""
    probe = bytes(buf[:65536])
    for separator in SEPARATORS:
        if separator in probe:
            return separator
    if strict and len(buf) > 65536:
        raise NotSliceable("no event separator found")
    return None


def extract_slice(text: bytes | bytearray) -> dict[str, Columns]:
    """Columns of one slice (a JSON array of events). Runs in the loader or a pool worker:
    read by the native scanner where it is built and takes the slice, else decoded into
    typed events first (`tracekit.load.native`: the same columns either way)."""
    with _gc_off():
        columns = native.scan_slice(text)
        return columns if columns is not None else typed_slice(text)


@contextmanager
def _gc_off() -> Iterator[None]:
    """No cyclic collection while events are parsed (see tracekit.load.run.gc_paused)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _bracketed(events: bytearray | memoryview) -> bytes:
    """The events as a JSON array text (a copy)."""
    return b"".join((b"[", events, b"]"))


def typed_slice(text: bytes | bytearray) -> dict[str, Columns]:
    """Columns of one slice decoded into typed events first."""
    try:
        events = decode_events(text)
    except NotTyped as exc:
        raise NotSliceable(str(exc)) from None
    del text
    return extract.extract_all(events)


def extract_here(slices: Iterator[bytearray | memoryview],
                 bare: bool = False) -> list[dict[str, Columns]]:
    """Columns of every slice, parsed in this process: read by one native scanner for the
    whole file where it is built (no columns per slice to join), a slice it does not take
    decoded the typed way in its place (`tracekit.load.native`). bare: the slices hold the
    events without the array's brackets (`EventSlices.views`)."""
    if not native.enabled():
        return [extract_slice(_bracketed(text) if bare else text) for text in slices]
    scanner = native.FileScanner()
    parts: list[dict[str, Columns]] = []
    with _gc_off():
        for text in slices:
            if scanner.feed(text, bare):
                continue
            taken = scanner.take()
            if taken is not None:
                parts.append(taken)
            parts.append(typed_slice(_bracketed(text) if bare else text))
    taken = scanner.take()
    if taken is not None:
        parts.append(taken)
    return parts


def worker_count(path: Path, processes: int | None) -> int:
    """Extra processes to parse one file with, besides this one: none for small files,
    without fork, or when `processes` <= 1; else `processes` - 1 (default: one per CPU)."""
    if (processes is not None and processes <= 1) \
            or "fork" not in multiprocessing.get_all_start_methods():
        return 0
    if text_size(path) < (NATIVE_PARALLEL_MIN_BYTES if native.enabled() else PARALLEL_MIN_BYTES):
        return 0
    if processes is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
        # This process also gunzips, slices and assembles, and the forked one costs CPU of
        # its own: on two CPUs one helper process saved 10% of the wall time of loading a
        # 46 MB trace (0.37 against 0.41 s) for 25% more CPU (0.51 against 0.41 s).
        processes = cpus if cpus >= MIN_CPUS_FOR_POOL else 1
    return max(0, min(processes - 1, MAX_WORKERS))


def text_size(path: Path) -> int:
    """The JSON text's size: the file's, or for gzip the size its trailer records (exact below
    4 GiB for one gzip member; never taken as less than the compressed size)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if fh.read(2) != GZIP_MAGIC or size < 18:
            return size
        fh.seek(-4, os.SEEK_END)
        recorded = int.from_bytes(fh.read(4), "little")
    return max(recorded, size)


def extract_file(path: Path, workers: int = 0) -> tuple[dict[str, Any], dict[str, Columns]]:
    """(top-level keys other than traceEvents, raw columns of all events) of one file, with
    `workers` extra processes.

    Raises NotSliceable (or ValueError from a slice that is not valid JSON) when the file must
    be read whole instead.
    """
    slice_bytes = SLICE_BYTES
    if workers > 0:
        # About four slices per process, so the processes finish at about the same time.
        guess = text_size(path)
        slice_bytes = int(min(SLICE_BYTES, max(MIN_SLICE_BYTES, guess // (4 * (workers + 1)))))
    if workers <= 0:
        slices = EventSlices(path, slice_bytes, views=True)
        parts = extract_here(iter(slices), bare=True)
    else:
        slices = EventSlices(path, slice_bytes)
        parts = _extract_in_pool(slices, workers)
    if slices.meta is None:
        raise NotSliceable("incomplete document")
    if not parts:
        parts = [extract.extract_all([])]
    return slices.meta, extract.concat(parts)


def _extract_in_pool(slices: EventSlices, workers: int) -> list[dict[str, Columns]]:
    """Slices parsed by `workers` forked processes plus this one, which takes every
    (workers+1)-th slice between reading the others. At most two slices per worker wait in
    the queue, so this process never holds much more text than that."""
    context = multiprocessing.get_context("fork")
    parts: list[Future[dict[str, Columns]] | dict[str, Columns]] = []
    in_flight: deque[Future[dict[str, Columns]]] = deque()
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for i, text in enumerate(slices):
            if i % (workers + 1) == workers:
                parts.append(extract_slice(text))
            else:
                future = pool.submit(extract_slice, text)
                parts.append(future)
                in_flight.append(future)
            del text
            while len(in_flight) > 2 * workers:
                in_flight.popleft().result()
        return [p.result() if isinstance(p, Future) else p for p in parts]


def header_meta(path: Path) -> dict[str, Any]:
    """The top-level keys written before the events array (Kineto puts distributedInfo and
    deviceProperties there), read from the file's first bytes only; {} when there are none or
    the start of the file is not the object form. Cheap: lets a run directory's rank files be
    checked against each other before any of them is parsed."""
    slices = EventSlices(path)
    chunks = text_chunks(path)
    try:
        header = slices._read_header(chunks, bytearray())
    except (NotSliceable, OSError):
        return {}
    finally:
        chunks.close()
    if slices.bare:
        return {}
    try:
        meta = parse_json(header + b"]}")
    except ValueError:
        return {}
    if not isinstance(meta, dict):
        return {}
    meta.pop("traceEvents", None)
    return meta
