"""Bytes on disk -> the parsed trace document (a dict with a `traceEvents` list).

Every way a file can fail to be a trace ends here as a one-line `UserError`, so nothing further
down has to guard against half-read input.
"""

from __future__ import annotations

import gzip
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

GZIP_MAGIC = b"\x1f\x8b"


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
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise UserError(f"{path}: truncated or corrupt gzip ({exc})") from None
        if not raw or raw.isspace():
            raise UserError(f"{path}: empty file (after gunzip)")
    return raw


def parse_document(raw: bytes, path: Path) -> dict[str, Any]:
    """Parse JSON text into a trace document, checking it has a `traceEvents` list."""
    try:
        doc = parse_json(raw)
    except _DECODE_ERRORS as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: invalid JSON ({message})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("traceEvents"), list):
        raise UserError(f"{path}: not a profiler trace (no traceEvents list)")
    return doc


def read_document(path: Path) -> dict[str, Any]:
    """Read and parse one trace file (.json or .json.gz)."""
    raw = read_bytes(path)
    doc = parse_document(raw, path)
    del raw
    return doc
