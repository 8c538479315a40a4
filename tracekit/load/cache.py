"""Parsed-frame cache: a second load of the same trace reads Parquet instead of JSON.

Parsing a multi-hundred-megabyte Kineto trace is the slow part of every analysis, and people
re-run `analyze`/`diff`/`timeline` on the same run many times while they tune detector options.
So the frames of each parsed trace are saved next to it:

    <run dir>/.tkcache/<trace file name>/
        key.json            what the cache was built from (see below) + Trace scalars
        kernels.parquet     one Parquet file per frame of `tracekit.trace.Trace`
        ...

The hidden `.tkcache` directory keeps the run directory's listing (and any `rank*.json*` glob)
unchanged; the trace file itself is never modified or deleted.

Invalidation: the cache is used only when its key equals the trace file's current key:
file size, `st_mtime_ns`, a BLAKE2 hash of the first and last MiB of the file, and
`CACHE_FORMAT_VERSION` (bump it whenever the frame schema in `tracekit/trace.py` or what the
loader puts in the frames changes). Size + mtime catch almost every rewrite cheaply; the hash
catches a rewrite that keeps both (a copy with `cp -p`, a coarse-mtime file system).

The loader caches the frames before linking: linking reads the user's source files, which may
change between analyses, so it always runs fresh on the cached frames.

Caching is best effort: if pyarrow is missing (the GPU machines), the directory is not writable,
the disk is full or `TRACEKIT_CACHE=0` is set, nothing is cached and nothing is reported.
A cache that cannot be read is treated as absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tracekit.load.memory import release_freed
from tracekit.trace import FRAME_NAMES, Trace

# 3: launches in one row order however the file was sliced (see extract.GROUPED_BY).
CACHE_FORMAT_VERSION = 5
CACHE_DIR_NAME = ".tkcache"
KEY_FILE = "key.json"
HASH_SPAN_BYTES = 1 << 20
# Env switch so benchmarks can time cold loads and users can opt out.
CACHE_ENV = "TRACEKIT_CACHE"


def cache_enabled() -> bool:
    """False when TRACEKIT_CACHE is set to 0/false/no/off."""
    return os.environ.get(CACHE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir_for(path: Path) -> Path:
    """Where the cache of the trace at `path` lives."""
    path = Path(path)
    return path.parent / CACHE_DIR_NAME / path.name


def trace_key(path: Path) -> dict[str, Any]:
    """Identity of the trace file's current content, cheap even for gigabyte files."""
    path = Path(path)
    stat = path.stat()
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as fh:
        digest.update(fh.read(HASH_SPAN_BYTES))
        if stat.st_size > HASH_SPAN_BYTES:
            fh.seek(max(HASH_SPAN_BYTES, stat.st_size - HASH_SPAN_BYTES))
            digest.update(fh.read(HASH_SPAN_BYTES))
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "head_tail_blake2b": digest.hexdigest(),
    }


def _pyarrow_available() -> bool:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def _read_frame(path: Path, dtypes: dict[str, str]) -> pd.DataFrame:
    """Read one frame back with the dtypes it was saved with.

    Parquet stores text as strings, and pandas 3 reads strings as its `str` dtype; the loader
    builds text columns as `object` (with None for missing), so those are turned back, keeping
    cached and freshly parsed frames identical for every consumer. They are read dictionary-
    encoded so each distinct name becomes ONE Python str shared by its rows (kernel and op
    names repeat thousands of times): a str object per row would cost gigabytes on big traces.
    """
    import pyarrow.parquet as pq

    text_columns = [c for c, t in dtypes.items() if t == "object"]
    # One thread: arrow's parallel column decoding holds more buffers at once (peak memory
    # measured 349 vs 257 MB per 100 MB rank on 16 vs 2 cores) for little time saved.
    frame = pq.read_table(path, read_dictionary=text_columns, use_threads=False).to_pandas(
        use_threads=False)
    for column in text_columns:
        if column not in frame or not isinstance(frame[column].dtype, pd.CategoricalDtype):
            continue
        categorical = frame[column].cat
        names = categorical.categories.to_numpy(dtype=object)
        codes = categorical.codes.to_numpy()
        values = np.empty(len(codes), dtype=object)  # None where missing
        present = codes >= 0
        values[present] = names[codes[present]]
        frame[column] = pd.Series(values, index=frame.index, dtype=object)
    return frame


def load_cached(path: Path) -> Trace | None:
    """The cached Trace of the file at `path`, or None when absent, stale or unreadable."""
    if not cache_enabled() or not _pyarrow_available():
        return None
    path = Path(path)
    directory = cache_dir_for(path)
    key_path = directory / KEY_FILE
    try:
        if not key_path.is_file():
            return None
        stored = json.loads(key_path.read_text())
        if stored.get("key") != trace_key(path):
            return None
        dtypes = stored.get("dtypes", {})
        frames = {name: _read_frame(directory / f"{name}.parquet", dtypes.get(name, {}))
                  for name in FRAME_NAMES}
    except (OSError, ValueError, KeyError, TypeError, ImportError):
        return None
    except Exception:
        return None
    release_freed()  # arrow's pooled buffers too, once the frames are pandas objects
    scalars = stored.get("trace", {})
    return Trace(
        path=path,
        rank=int(scalars.get("rank", 0)),
        world_size=int(scalars.get("world_size", 1)),
        meta=scalars.get("meta", {}),
        num_sms=scalars.get("num_sms"),
        warnings=list(scalars.get("warnings", [])),
        linked=bool(scalars.get("linked", False)),
        device=str(scalars.get("device", "cpu")),
        **frames,
    )


def _read_only(directory: Path) -> bool:
    """True for a directory without any write permission bit (or not writable by us).

    Checked on the mode bits as well as os.access: root may write anywhere, but a directory
    someone made read-only (shared trace collections) should not get a cache dropped into it.
    """
    try:
        mode = directory.stat().st_mode
    except OSError:
        return True
    return (mode & 0o222) == 0 or not os.access(directory, os.W_OK)


def save_cache(trace: Trace) -> None:
    """Save `trace`'s frames next to its file; silently does nothing when that is not possible.

    Written to a temporary sibling directory and renamed into place, so a reader never sees a
    half-written cache and two processes saving at once leave one whole cache.
    """
    if not cache_enabled() or not _pyarrow_available():
        return
    path = Path(trace.path)
    target = cache_dir_for(path)
    tmp: Path | None = None
    try:
        if _read_only(target.parent.parent):
            return
        key = trace_key(path)
        target.parent.mkdir(exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=target.parent))
        for name in FRAME_NAMES:
            frame: pd.DataFrame = getattr(trace, name)
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
        scalars = {
            "rank": trace.rank,
            "world_size": trace.world_size,
            "meta": trace.meta,
            "num_sms": trace.num_sms,
            "warnings": trace.warnings,
            "linked": trace.linked,
            "device": trace.device,
        }
        dtypes = {name: {str(c): str(t) for c, t in getattr(trace, name).dtypes.items()}
                  for name in FRAME_NAMES}
        # default=str: meta is trace JSON, but never let an odd value cost the whole cache.
        (tmp / KEY_FILE).write_text(json.dumps({"key": key, "trace": scalars, "dtypes": dtypes},
                                               default=str))
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        tmp = None
    except Exception:
        return
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def clear_cache(path: Path) -> bool:
    """Remove the cache of the trace at `path` (never the trace); True if one was removed."""
    directory = cache_dir_for(Path(path))
    if directory.is_dir():
        shutil.rmtree(directory, ignore_errors=True)
        return True
    return False
