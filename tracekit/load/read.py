"""Bytes on disk -> the parsed trace document (a dict with a `traceEvents` list).

Every way a file can fail to be a trace ends here as a one-line `UserError`, so nothing further
down has to guard against half-read input. Both Chrome trace forms are accepted: the object form
(`{"traceEvents": [...], ...metadata}`, what Kineto writes) and the array form (a bare list of
events, which chrome://tracing and Perfetto read), including an array whose closing `]` is
missing, which the Chrome format allows so that a writer can stream events.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

from tracekit.errors import UserError

try:  # orjson is several times faster than json on multi-megabyte traces
    import orjson

    def parse_json(raw: bytes) -> Any:
        return orjson.loads(raw)

    _DECODE_ERRORS: tuple[type[Exception], ...] = (orjson.JSONDecodeError, ValueError)
except ImportError:  # pragma: no cover - exercised only where orjson is missing

    def parse_json(raw: bytes) -> Any:
        return json.loads(raw)

    _DECODE_ERRORS = (json.JSONDecodeError, ValueError, UnicodeDecodeError)

try:  # ISA-L's gunzip: 15-20% faster than zlib's on traces (README, Performance)
    from isal import igzip as _gzip
    from isal.isal_zlib import error as _isal_error
except ImportError:  # pragma: no cover - exercised only where python-isal is missing
    import gzip as _gzip  # type: ignore[no-redef]

    _isal_error = zlib.error

GZIP_ERRORS = (EOFError, OSError, ValueError, zlib.error, _isal_error)
"""What gunzipping a truncated or corrupt file raises (zlib's or ISA-L's)."""

GZIP_MAGIC = b"\x1f\x8b"
GUNZIP_PIECE = 1 << 16
"""Compressed bytes fed to zlib at a time; a corrupt piece is re-fed byte by byte to name the
exact offset where the data goes wrong."""
WHITESPACE = b" \t\r\n"
UTF8_BOM = b"\xef\xbb\xbf"


def inflate(raw: bytes, path: Path) -> bytes:
    """The gunzipped text: ISA-L at full speed, and where that fails `gunzip`, which names
    the byte where the file stops making sense (or reads what ISA-L would not)."""
    try:
        return _gzip.decompress(raw)
    except GZIP_ERRORS:
        return gunzip(raw, path)


def gzip_open(path: Path) -> Any:
    """A binary reader of the gunzipped text of `path`."""
    return _gzip.open(path, "rb")


def read_bytes(path: Path) -> bytes:
    """The file's JSON text, gunzipped when it is gzip (by its magic bytes, not its name)."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    raw = path.read_bytes()
    if not raw:
        raise UserError(f"{path}: empty file")
    if raw[:2] == GZIP_MAGIC:
        raw = inflate(raw, path)
        if not raw.strip(WHITESPACE):
            raise UserError(f"{path}: empty file (after gunzip)")
    elif path.name.endswith(".gz") and raw.lstrip(WHITESPACE)[:1] not in (b"{", b"["):
        raise UserError(f"{path}: not gzip (no gzip header: the file starts with "
                        f"{raw[:4].hex(' ')}) and not JSON text either")
    return raw


def gunzip(raw: bytes, path: Path) -> bytes:
    """Decompress every gzip member of `raw`; a one-line error naming the byte where a cut or
    corrupt file stops making sense."""
    out: list[bytes] = []
    pos = 0
    while pos < len(raw):
        if raw[pos:pos + 2] != GZIP_MAGIC:
            if not raw[pos:].strip(b"\0"):  # zero padding after the last member
                break
            raise UserError(f"{path}: corrupt gzip: unexpected bytes after the compressed data "
                            f"at byte {pos:,}")
        pos = _gunzip_member(raw, pos, out, path)
    return b"".join(out)


def _gunzip_member(raw: bytes, start: int, out: list[bytes], path: Path) -> int:
    """Decompress the gzip member starting at `start` into `out`; returns where it ends."""
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    for at in range(start, len(raw), GUNZIP_PIECE):
        piece = raw[at:at + GUNZIP_PIECE]
        before = inflate.copy()
        try:
            out.append(inflate.decompress(piece))
        except zlib.error as exc:
            bad = at + _first_bad_byte(before, piece)
            raise UserError(f"{path}: corrupt gzip at byte {bad:,} of {len(raw):,} ({exc})"
                            ) from None
        if inflate.eof:
            return len(raw) - len(inflate.unused_data)
    text = sum(len(p) for p in out)
    raise UserError(f"{path}: truncated gzip: the file ends at byte {len(raw):,} before the "
                    f"end of the compressed data ({text:,} bytes of text recovered; the file "
                    "was cut short, e.g. copied or written while still being saved)")


def _first_bad_byte(inflate: Any, piece: bytes) -> int:
    """Offset in `piece` of the byte at which zlib rejects it (fed one byte at a time)."""
    for i in range(len(piece)):
        try:
            inflate.decompress(piece[i:i + 1])
        except zlib.error:
            return i
    return len(piece)


def _kind_of(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def is_event_array(value: Any) -> bool:
    """A JSON array in Chrome's array form: events are objects, and some carry `ph`."""
    return isinstance(value, list) and any(isinstance(e, dict) and "ph" in e
                                           for e in value[:1000])


def parse_document(raw: bytes, path: Path) -> dict[str, Any]:
    """Parse JSON text into a trace document, checking it has a `traceEvents` list; a bare
    array of events becomes `{"traceEvents": events}`."""
    if raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM):]
    try:
        doc = parse_json(raw)
    except _DECODE_ERRORS as exc:
        doc = _lenient_parse(raw)
        if doc is None:
            raise UserError(_json_error(raw, exc, path)) from None
    if isinstance(doc, list):  # whether its entries are events is checked once they are read
        return {"traceEvents": doc}
    if not isinstance(doc, dict):
        raise UserError(f"{path}: not a profiler trace (the JSON text is {_kind_of(doc)}, not "
                        "an object with a traceEvents list)")
    events = doc.get("traceEvents")
    if not isinstance(events, list):
        what = "no traceEvents key" if "traceEvents" not in doc \
            else f"traceEvents is {_kind_of(events)}, not a list"
        raise UserError(f"{path}: not a profiler trace (a JSON object with {what})")
    return doc


def _lenient_parse(raw: bytes) -> Any:
    """What strict JSON parsing rejects but trace writers produce: Python's json module writes
    NaN and Infinity for non-finite floats, and Chrome's array form may omit the closing `]`
    (leaving a trailing comma). None when the text is still not readable."""
    if b"NaN" in raw or b"Infinity" in raw:
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            pass
    text = raw.strip(WHITESPACE)
    if not text.startswith(b"[") or text.endswith(b"]"):
        return None
    try:
        events = parse_json(text.rstrip(WHITESPACE + b",") + b"]")
    except _DECODE_ERRORS:
        return None
    return events if is_event_array(events) else None


def _json_error(raw: bytes, exc: Exception, path: Path) -> str:
    """The one line for text that is not JSON: cut short, binary, or invalid at a byte."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if raw.lstrip(WHITESPACE)[:1] not in (b"{", b"["):
        return f"{path}: not JSON text (starts with {raw[:4].hex(' ')}; {message})"
    position = getattr(exc, "pos", None)
    end = len(raw.rstrip(WHITESPACE))
    if isinstance(position, int) and position >= end:
        return (f"{path}: truncated JSON: the text ends at byte {end:,} before the document is "
                "complete (the file was cut short)")
    where = f" at byte {position:,}" if isinstance(position, int) else ""
    return f"{path}: invalid JSON{where} ({message})"


def read_document(path: Path) -> dict[str, Any]:
    """Read and parse one trace file (.json or .json.gz)."""
    raw = read_bytes(path)
    doc = parse_document(raw, path)
    del raw
    return doc
