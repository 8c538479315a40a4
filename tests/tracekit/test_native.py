"""The native scanner (tracekit/load/_scan.c) gives exactly the typed decoder's columns, or
gives up on the slice; the frames are the same whichever path read a trace."""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.tracekit.test_decode import TRACE_FILES, assert_same_trace
from tracekit.load import extract, native
from tracekit.load.events import NO_RAW, NotTyped, decode_events
from tracekit.load.frames import category_counts
from tracekit.load.run import TraceJob, read_trace_file
from tracekit.load.stream import EventSlices, NotSliceable, extract_here, typed_slice

REPO = Path(__file__).resolve().parents[2]
built = pytest.mark.skipif(native._scan is None, reason="the native scanner is not built here")
MORE_TRACES = sorted([*REPO.glob("tests/data/devices/*.json.gz"),
                      *REPO.glob("tests/data/compiled_cpu/*.json.gz")])


def assert_same_columns(scanned: dict[str, Any], typed: dict[str, Any]) -> None:
    """Every frame's raw columns: same names, dtypes, shapes, values (NaN and the sign of
    zero included) and, for lists, the same type and value in every row."""
    assert list(scanned) == list(typed)
    for frame, columns in typed.items():
        assert sorted(scanned[frame]) == sorted(columns), frame
        for name, want in columns.items():
            got = scanned[frame][name]
            where = f"{frame}.{name}"
            if isinstance(want, np.ndarray):
                assert isinstance(got, np.ndarray), where
                assert (got.dtype, got.shape) == (want.dtype, want.shape), where
                assert np.array_equal(got, want, equal_nan=want.dtype.kind == "f"), where
                if want.dtype.kind == "f":
                    assert np.array_equal(np.signbit(got), np.signbit(want)), where
            else:
                assert isinstance(got, list) and len(got) == len(want), where
                assert [type(v) for v in got] == [type(v) for v in want], where
                assert got == want, where


def typed_columns(text: bytes | bytearray) -> dict[str, Any]:
    return extract.extract_all(decode_events(text))


@built
@pytest.mark.parametrize("path", TRACE_FILES + MORE_TRACES,
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_slice_the_scanner_reads_has_the_typed_decoders_columns(path: Path) -> None:
    try:
        slices = list(EventSlices(path, slice_bytes=1 << 20))
    except NotSliceable:
        pytest.skip("read whole, not in slices")
    for text in slices:
        scanned = native.scan_slice(text)
        if scanned is not None:
            assert_same_columns(scanned, typed_columns(text))


def joined_typed(texts: list[bytes | bytearray]) -> dict[str, Any]:
    """What the loader gives without the scanner: each slice typed, then joined."""
    return counted(extract.concat([typed_slice(text) for text in texts]))


def joined_scanned(texts: list[bytes | bytearray], bare: bool = False) -> dict[str, Any]:
    """What the one-process loader gives with it: one scanner over the file (bare: each
    slice's events without the array's brackets, as the loader's slicer hands them)."""
    if bare:
        return counted(extract.concat(extract_here(iter([t[1:-1] for t in texts]), bare=True)))
    return counted(extract.concat(extract_here(iter(texts))))


def counted(columns: dict[str, Any]) -> dict[str, Any]:
    """The census as the loader reads it (events per category, in order of first sight,
    and entries in all): one row per slice and category, or per category, say the same."""
    counts = category_counts(columns["census"])
    columns["census"] = {"cat": list(counts), "count": np.array(list(counts.values())),
                         "entries": np.array([columns["census"]["entries"].sum()])}
    return columns


@built
@pytest.mark.parametrize("path", TRACE_FILES + MORE_TRACES,
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_one_scanner_over_a_files_slices_gives_the_joined_columns_of_each_slice(
        path: Path) -> None:
    try:
        texts = list(EventSlices(path, slice_bytes=1 << 18))
    except NotSliceable:
        pytest.skip("read whole, not in slices")
    assert_same_columns(joined_scanned(texts), joined_typed(texts))
    views = EventSlices(path, slice_bytes=1 << 18, views=True)  # what the loader reads
    assert_same_columns(counted(extract.concat(extract_here(iter(views), bare=True))),
                        joined_typed(texts))


@built
def test_categories_sharing_a_frame_and_a_slice_the_scanner_refuses_keep_their_order() -> None:
    """Kernels of two categories, memcpys of two, ops of two, over four slices, the third
    refused (a pid the scanner leaves to the typed path): the rows come in the order of
    joining each slice's columns."""
    def event(cat: str, i: int, **more: Any) -> dict[str, Any]:
        return {"ph": "X", "cat": cat, "name": f"{cat}{i}", "pid": 1, "tid": 1, "ts": i,
                "dur": 1, "args": {"External id": i}, **more}

    cats = ["kernel", "Kernel", "gpu_memcpy", "Memcpy", "gpu_memset", "cpu_op", "Operator",
            "cuda_runtime", "cuda_driver", "user_annotation", "gpu_user_annotation"]
    texts = [json.dumps([event(cat, 100 * s + i) for i in range(3) for cat in cats]
                        + ([event("cpu_op", 999, pid="Spans")] if s == 2 else [])).encode()
             for s in range(4)]
    assert [native.FileScanner().feed(text) for text in texts] == [True, True, False, True]
    scanned = joined_scanned(texts)
    assert_same_columns(scanned, joined_typed(texts))
    assert scanned["kernels"]["name"][:9] == ["kernel0", "kernel1", "kernel2", "Kernel0",
                                              "Kernel1", "Kernel2", "kernel100", "kernel101",
                                              "kernel102"]


@built
def test_a_slice_the_scanner_gives_up_on_part_way_leaves_nothing_behind() -> None:
    scanner = native.FileScanner()
    good = json.dumps([EVENT]).encode()
    assert scanner.feed(good)
    assert not scanner.feed(json.dumps([EVENT] * 3 + [{**EVENT, "tid": "x"}]).encode())
    taken = scanner.take()
    assert taken is not None
    assert_same_columns(taken, typed_columns(good))
    assert scanner.take() is None


@built
def test_the_scanner_reads_the_recorded_gpu_traces_itself() -> None:
    """It does not give up on what the trainer's profiler writes (else the test above would
    compare nothing)."""
    paths = sorted(REPO.glob("tests/data/gpu/*/rank*.pt.trace.json.gz"))
    assert len(paths) >= 8
    for path in paths:
        for text in EventSlices(path):
            assert not isinstance(native.scan_raw(text), str), path


@built
@pytest.mark.parametrize("path", TRACE_FILES + MORE_TRACES,
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_trace_loads_into_the_same_frames_with_and_without_the_scanner(
        path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    job = TraceJob(path, processes=1)
    monkeypatch.setenv("TRACEKIT_NATIVE", "0")
    typed = read_trace_file(job)
    monkeypatch.setenv("TRACEKIT_NATIVE", "1")
    assert_same_trace(read_trace_file(job), typed)


def test_every_args_field_is_read_as_its_struct_default_says() -> None:
    """An absent key reads as the struct's default: the scanner's kind for each field stands
    for that same default (a field added to a struct must be given its kind here)."""
    for struct, kinds in native.ARG_KINDS.items():
        assert set(kinds) == set(struct.__struct_fields__), struct.__name__
        defaults = dict(zip(struct.__struct_fields__[-len(struct.__struct_defaults__):],
                            struct.__struct_defaults__, strict=True))
        for name, (kind, _) in kinds.items():
            default = defaults[name]
            want = native.DEFAULT_OF_KIND[kind]
            assert (bytes(default) if default is NO_RAW else default) == want, (struct, name)


EVENT = {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 2, "ts": 5.5,
         "dur": 1, "args": {"External id": 3}}


@built
@pytest.mark.parametrize("odd", [
    {"pid": "Spans"}, {"tid": 1.5}, {"name": None}, {"ts": "5"}, {"dur": None},
    {"args": [1]}, {"args": {"External id": "3"}}, {"args": {"External id": 10**19}},
    {"cat": 7}, {"cat": "mtia_ccp_events"}, {"name": "\ud800"},
], ids=lambda odd: json.dumps(odd))
def test_the_scanner_gives_up_on_values_it_does_not_read_exactly(odd: dict[str, Any]) -> None:
    text = json.dumps([EVENT, {**EVENT, **odd}]).encode()
    assert isinstance(native.scan_raw(text), str)
    assert native.scan_slice(text) is None


@built
@pytest.mark.parametrize("text", [
    b'[{"ph": "X", "ph": "X"}]', b'[{"n\\u0061me": "a"}]', b'[{"a": 1},]', b'[{"a": 01}]',
    b'[{"a": "\x01"}]', b'[{"a": "\xff"}]', b'[{"a": NaN}]', b'[{"a": 1}] x', b'[1]',
    b'[{"a": [1,]}]', b'[{"a": "\\x"}]',
], ids=repr)
def test_the_scanner_gives_up_on_text_that_is_not_strict_json_or_keyed_plainly(
        text: bytes) -> None:
    assert isinstance(native.scan_raw(text), str)


@built
def test_escapes_numbers_and_key_order_read_as_the_typed_decoder_reads_them() -> None:
    text = (b'[{"args": {"Input Dims": [[2, 3]], "External id": 4, "kernel_file": null},'
            b' "dur": 1E1, "ts": 0.1, "tid": -2, "pid": 0, "name": "a\\u00e9\\ud83d\\ude00\\n\\/",'
            b' "cat": "cpu_op", "extra": {"x": [true, false, null, "\\""]}},'
            b'{"cat":"kernel","name":"k","ts":-0.0,"pid":1,"tid":1,"args":{"grid":[1,2,3],'
            b'"blocks per SM":3,"Collective name":"all\\u005freduce","dtype":null}},'
            b'{"cat":"gpu_memset","name":"m","ts":12345678901234567,"pid":1,"tid":1,'
            b'"dur":-0,"args":{"bytes":null,"size":8}},'
            b'{"cat":"fwdbwd","ph":"s","id":9,"tid":3,"ts":2.5e-3}]')
    scanned = native.scan_slice(text)
    assert scanned is not None
    assert_same_columns(scanned, typed_columns(text))
    assert scanned["ops"]["name"] == ["a\u00e9\U0001F600\n/"]
    assert scanned["kernels"]["collective"] == ["all_reduce"]
    assert scanned["gpu_mem"]["bytes"].tolist() == [8]


# ---- odd but valid JSON, generated -------------------------------------------------------

scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8), st.none(),
    st.booleans())
ints_or_floats = st.one_of(st.integers(-(2**60), 2**60), st.floats(allow_nan=False,
                                                                   allow_infinity=False))
any_values = st.one_of(scalars, st.lists(st.integers(-5, 2**40), max_size=4),
                       st.lists(st.lists(st.integers(0, 9), max_size=2), max_size=2),
                       st.dictionaries(st.text(max_size=3), scalars, max_size=2))
USUAL = {native.I64: st.integers(-(2**62), 2**62), native.I64_OPT: st.integers(0, 2**40),
         native.F64: ints_or_floats, native.STR: st.text(max_size=8),
         native.TRIPLE: st.lists(st.integers(-1, 2**31), min_size=3, max_size=3),
         native.RAW: any_values}
"""A value of each field kind in its usual form (the form the scanner reads itself)."""
KEY_KINDS = {key: kind for struct, kinds in native.ARG_KINDS.items()
             for name, key in zip(struct.__struct_fields__, struct.__struct_encode_fields__,
                                  strict=True) for kind in [kinds[name][0]]}
usual_args = st.fixed_dictionaries({}, optional={
    **{key: st.one_of(USUAL[kind], st.none()) for key, kind in KEY_KINDS.items()},
    "Python id": any_values, "other": any_values})
CATEGORIES = sorted({cat for cats, _ in native.GROUPS.values() for part in cats for cat in part}
                    | {"ac2g", "Trace"})
usual_events = st.fixed_dictionaries({
    "cat": st.sampled_from(CATEGORIES), "name": st.text(max_size=12),
    "pid": st.integers(-(2**40), 2**40), "tid": st.integers(-(2**40), 2**40),
    "ts": ints_or_floats,
}, optional={
    "ph": st.sampled_from(["X", "s", "f", "i", "t"]), "dur": ints_or_floats,
    "id": st.integers(0, 2**40), "args": st.one_of(st.none(), usual_args), "extra": any_values,
})
odd_fields = st.dictionaries(
    st.sampled_from(["ph", "cat", "name", "pid", "tid", "ts", "dur", "id", "args"]),
    st.one_of(any_values, usual_args), max_size=1)
events = st.builds(lambda event, odd, keep: {**event, **odd} if keep else
                   {k: v for k, v in event.items() if k not in odd},
                   usual_events, st.one_of(st.just({}), st.just({}), st.just({}), odd_fields),
                   st.booleans())
"""Events mostly as profilers write them, a quarter with one field odd or missing."""


def write(value: Any, rng: random.Random, escapes: float = 0.3) -> str:
    """JSON text of value, written with random (valid) whitespace, string escapes and
    number forms."""
    ws = rng.choice(["", " ", "\n  ", "\t", " \r\n"])
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return "{" + ws + ",".join(f"{write(k, rng, 0.001)}{ws}:{rng.choice(['', ' '])}"
                                   f"{write(v, rng)}" for k, v in items) + ws + "}"
    if isinstance(value, list):
        return "[" + ws + f",{ws}".join(write(v, rng) for v in value) + ws + "]"
    if isinstance(value, str):
        return '"' + "".join(_char(c, rng, escapes) for c in value) + '"'
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        form = rng.choice(["{!r}", "{:.17e}", "{:.17E}", "{:.3f}"])
        text = form.format(value)
        return text if "inf" not in text.lower() else repr(value)
    # An integer: sometimes with a sign on zero, or written as a float literal.
    if rng.random() < 0.03:
        return rng.choice([f"{value}.0", f"{value}e0"])
    return "-0" if value == 0 and rng.random() < 0.5 else str(value)


def _char(c: str, rng: random.Random, escapes: float) -> str:
    if c in '"\\' or c < " ":
        return json.dumps(c)[1:-1]
    if rng.random() < escapes:
        return json.dumps(c, ensure_ascii=True)[1:-1] if ord(c) > 127 or rng.random() < 0.5 \
            else f"\\u{ord(c):04x}"
    return c


@built
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events, max_size=12), st.integers(0, 2**32).map(random.Random))
def test_generated_event_arrays_read_as_the_typed_decoder_reads_them_or_are_given_up(
        batch: list[dict[str, Any]], rng: random.Random) -> None:
    text = ("[" + ",".join(write(e, rng) for e in batch) + "]").encode()
    try:
        typed = typed_columns(text)
    except (NotTyped, msgspec.DecodeError, ValueError, TypeError, OverflowError):
        assert native.scan_slice(text) is None  # what the typed path refuses, it refuses
        return
    scanned = native.scan_slice(text)
    if scanned is not None:
        assert_same_columns(scanned, typed)


@built
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(events, max_size=6), min_size=1, max_size=4),
       st.integers(0, 2**32).map(random.Random))
def test_generated_slices_read_by_one_scanner_join_as_the_typed_slices_do(
        batches: list[list[dict[str, Any]]], rng: random.Random) -> None:
    texts = [("[" + ",".join(write(e, rng) for e in batch) + "]").encode()
             for batch in batches]
    try:
        typed = joined_typed(texts)
    except (NotSliceable, msgspec.DecodeError, ValueError, TypeError, OverflowError):
        return  # the loader reads such a file whole
    assert_same_columns(joined_scanned(texts), typed)
    assert_same_columns(joined_scanned(texts, bare=True), typed)


def test_the_scanner_compiles_where_a_c_compiler_is_found(tmp_path: Path) -> None:
    """setup.py builds it (what `pip install -e .` runs); built here into a scratch
    directory, it reads a small array."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}) on this machine")
    subprocess.run([sys.executable, str(REPO / "setup.py"), "-q", "build_ext",
                    "--build-lib", str(tmp_path), "--build-temp", str(tmp_path / "tmp")],
                   cwd=REPO, check=True, capture_output=True)
    (built_file,) = tmp_path.glob("tracekit/load/_scan*.so")
    spec = importlib.util.spec_from_file_location("tracekit.load._scan", built_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    census, entries, _ = module.scan(json.dumps([EVENT]).encode(), native.CATS, native.SPECS,
                                     {})
    assert census == [("cpu_op", 1)] and entries == 1
