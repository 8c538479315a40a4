"""The parsed-frame cache: hits give identical frames without parsing; any change to the trace
misses. (How much faster a hit is: scripts/bench_analyze.py, "tracekit cached".)"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tracekit.load import cache
from tracekit.load.cache import cache_dir_for, load_cached, save_cache
from tracekit.trace import Trace

pytest.importorskip("pyarrow")

DATA = Path(__file__).resolve().parent.parent / "data" / "gpu"
# The largest committed trace (~6 MB of JSON, mostly Python frames): parsing it is measurable.
BIG_TRACE = DATA / "comm_gap_late" / "rank0.pt.trace.json.gz"


def _parse(path: Path) -> Trace:
    """A real parse: with the cache on, the loader's second call would be a cache hit."""
    from tracekit.pipeline import load

    enabled = os.environ.get(cache.CACHE_ENV)
    os.environ[cache.CACHE_ENV] = "0"
    try:
        return load(path, link=False, progress=False).traces[0]
    finally:
        if enabled is None:
            del os.environ[cache.CACHE_ENV]
        else:
            os.environ[cache.CACHE_ENV] = enabled


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def trace_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of a real trace, so caches never land in tests/data."""
    monkeypatch.setenv(cache.CACHE_ENV, "1")
    target = tmp_path / "run" / BIG_TRACE.name
    target.parent.mkdir()
    shutil.copy2(BIG_TRACE, target)
    return target


def _assert_same(a: Trace, b: Trace) -> None:
    for name in cache.FRAME_NAMES:
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=True,
                                      obj=name)
    assert (a.rank, a.world_size, a.num_sms, a.linked) == (b.rank, b.world_size, b.num_sms,
                                                            b.linked)
    assert a.meta == b.meta
    assert a.warnings == b.warnings


def test_second_load_hits_cache_with_equal_frames_without_parsing(
        trace_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tracekit.load import events, read

    assert load_cached(trace_copy) is None
    before = _digest(trace_copy)
    parsed = _parse(trace_copy)
    save_cache(parsed)
    assert (cache_dir_for(trace_copy) / cache.KEY_FILE).is_file()

    def no_parse(*_: object) -> None:
        raise AssertionError("a cache hit parsed the trace's JSON")

    for module, name in ((events, "decode_document"), (events, "decode_events"),
                         (read, "parse_json")):
        monkeypatch.setattr(module, name, no_parse)
    cached = load_cached(trace_copy)
    assert cached is not None
    _assert_same(parsed, cached)
    assert cached.path == trace_copy
    # The trace itself is untouched, and the cache does not look like a trace to a loader.
    assert _digest(trace_copy) == before
    assert sorted(p.name for p in trace_copy.parent.iterdir() if p.is_file()) == [
        trace_copy.name]


def test_loader_does_not_parse_a_cached_trace(trace_copy: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from tracekit.load import run
    from tracekit.pipeline import load

    parsed = load(trace_copy, link=False, progress=False).traces[0]
    assert (cache_dir_for(trace_copy) / cache.KEY_FILE).is_file()

    def no_parse(*_: object) -> None:
        raise AssertionError("the trace was parsed although its cache is valid")

    monkeypatch.setattr(run, "read_trace_file", no_parse)
    _assert_same(parsed, load(trace_copy, link=False, progress=False).traces[0])


def test_linked_trace_round_trips(trace_copy: Path) -> None:
    from tracekit.pipeline import load

    linked = load(trace_copy, link=True, progress=False).traces[0]
    save_cache(linked)
    cached = load_cached(trace_copy)
    assert cached is not None and cached.linked
    _assert_same(linked, cached)


from tests.planted import EXTERNAL  # noqa: E402


@pytest.mark.parametrize("name", ["cpu_only_rank34.pt.trace.json.gz", "amd_mi250_single.json.gz",
                                  "a100_event_sync_multistream.json.gz"])
def test_other_traces_round_trip(name: str, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU-only, AMD and multi-stream traces: empty frames and all-None text columns too."""
    source = EXTERNAL / name
    if not source.is_file():
        pytest.skip(f"{source} not available")
    monkeypatch.setenv(cache.CACHE_ENV, "1")
    target = tmp_path / name
    shutil.copy2(source, target)
    from tracekit.pipeline import load

    trace = load(target, progress=False).traces[0]
    save_cache(trace)
    cached = load_cached(target)
    assert cached is not None
    _assert_same(trace, cached)


def test_touch_invalidates(trace_copy: Path) -> None:
    save_cache(_parse(trace_copy))
    assert load_cached(trace_copy) is not None
    stat = trace_copy.stat()
    os.utime(trace_copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert load_cached(trace_copy) is None


def test_same_size_same_mtime_rewrite_invalidates(trace_copy: Path) -> None:
    """A rewrite that keeps size and mtime (cp -p of another trace) is caught by the hash."""
    save_cache(_parse(trace_copy))
    stat = trace_copy.stat()
    data = bytearray(trace_copy.read_bytes())
    data[-100] ^= 0xFF  # the gzip tail: in the hashed last MiB
    trace_copy.write_bytes(bytes(data))
    os.utime(trace_copy, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert trace_copy.stat().st_size == stat.st_size
    assert load_cached(trace_copy) is None


def test_format_version_change_invalidates(trace_copy: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    save_cache(_parse(trace_copy))
    monkeypatch.setattr(cache, "CACHE_FORMAT_VERSION", cache.CACHE_FORMAT_VERSION + 1)
    assert load_cached(trace_copy) is None


def test_resave_replaces_stale_cache(trace_copy: Path) -> None:
    trace = _parse(trace_copy)
    save_cache(trace)
    stat = trace_copy.stat()
    os.utime(trace_copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert load_cached(trace_copy) is None
    save_cache(trace)
    assert load_cached(trace_copy) is not None
    leftovers = [p for p in cache_dir_for(trace_copy).parent.iterdir()
                 if p.name != trace_copy.name]
    assert leftovers == []


def test_unwritable_location_is_skipped_silently(trace_copy: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not_a_directory"
    blocker.write_text("x")
    monkeypatch.setattr(cache, "cache_dir_for", lambda path: blocker / "sub" / "cache")
    save_cache(_parse(trace_copy))  # must not raise
    assert load_cached(trace_copy) is None


def test_read_only_directory_is_left_alone(trace_copy: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache.CACHE_ENV, "0")  # load() itself caches: parse without it
    trace = _parse(trace_copy)
    monkeypatch.setenv(cache.CACHE_ENV, "1")
    run_dir = trace_copy.parent
    run_dir.chmod(0o555)
    try:
        save_cache(trace)  # must not raise, even for root who could write there
        assert not cache_dir_for(trace_copy).parent.exists()
    finally:
        run_dir.chmod(0o755)


def test_disabled_by_environment(trace_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache.CACHE_ENV, "0")
    save_cache(_parse(trace_copy))
    assert not cache_dir_for(trace_copy).exists()
    assert load_cached(trace_copy) is None


def test_corrupt_cache_is_a_miss(trace_copy: Path) -> None:
    save_cache(_parse(trace_copy))
    (cache_dir_for(trace_copy) / "kernels.parquet").write_bytes(b"not parquet")
    assert load_cached(trace_copy) is None


def test_frames_from_the_cache_share_strings_like_parsed_ones(trace_copy: Path) -> None:
    """A cached load must be as compact as a parse: one str object per distinct value in
    every text column (a str per row would cost several times the frames' size)."""
    from tracekit.pipeline import load

    parsed = load(trace_copy, progress=False).traces[0]
    assert (cache_dir_for(trace_copy) / cache.KEY_FILE).is_file()
    cached = load(trace_copy, progress=False).traces[0]
    _assert_same(parsed, cached)
    for name in cache.FRAME_NAMES:
        frame = getattr(cached, name)
        for column in frame.columns:
            values = frame[column].to_numpy()
            if values.dtype == object and len(values):
                assert len({id(v) for v in values}) == len(pd.unique(values)), (name, column)
