"""The typed decoder (msgspec structs, args decoded only where read) gives exactly the frames
of the generic parser (orjson dicts), on every committed and external trace."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.planted import EXTERNAL
from tracekit.load.events import (
    KernelArgs,
    NotTyped,
    arg_structs,
    decode_document,
    decode_events,
)
from tracekit.load.extract import ops
from tracekit.load.frames import build_trace
from tracekit.load.read import read_document
from tracekit.load.run import TraceJob, read_trace_file, read_whole
from tracekit.trace import FRAME_NAMES

REPO = Path(__file__).resolve().parents[2]

TRACE_FILES = sorted(
    [*REPO.glob("traces/*/*.json.gz"), *REPO.glob("tests/data/gpu/*/*.json.gz"),
     *REPO.glob("tests/data/external/*.json.gz"), *EXTERNAL.glob("*.json.gz")])


def assert_same_trace(a: object, b: object) -> None:
    for name in FRAME_NAMES:
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), obj=name)
    assert a.meta == b.meta and a.warnings == b.warnings  # type: ignore[attr-defined]


def test_there_are_traces_to_compare() -> None:
    assert len(TRACE_FILES) >= 20


@pytest.mark.parametrize("path", TRACE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_typed_decoding_gives_the_generic_parsers_frames(path: Path) -> None:
    job = TraceJob(path, processes=1)
    generic = build_trace(read_document(path), path)
    assert_same_trace(read_trace_file(job), generic)  # sliced, typed
    if path.stat().st_size < 200_000:  # the reference runs' rank files take the path above
        assert_same_trace(read_whole(job), generic)  # whole document, typed


def test_only_read_args_are_kept_and_absent_ones_take_their_defaults() -> None:
    events = decode_events(json.dumps([
        {"ph": "X", "cat": "kernel", "name": "k", "ts": 1, "dur": 2,
         "args": {"stream": 7, "grid": [1, 2, 3], "Python id": 9, "External id": 4}},
        {"ph": "X", "cat": "kernel", "name": "k", "ts": 1},
        {"ph": "X", "cat": "kernel", "name": "k", "ts": 1, "args": None},
        {"ph": "X", "cat": "kernel", "name": "k", "ts": 1, "args": [1, 2]},
    ]).encode())
    assert [e.dur for e in events] == [2, 0.0, 0.0, 0.0]
    first, bare, null, listed = arg_structs(events, KernelArgs)
    assert (first.stream, first.grid, first.external_id, first.device) == (7, [1, 2, 3], 4, -1)
    assert not hasattr(first, "python_id")
    assert bare == null == listed and (bare.stream, bare.external_id, bare.grid) == (-1, -1, None)


def test_each_recorded_shape_keeps_its_own_text_however_the_three_are_split() -> None:
    """An op's Input Dims, Input Strides and Input type are looked up together (one key per
    op): the same text in another of the three, or an absent one, stays where it was."""
    shapes = [{"Input Dims": [[1, 2]], "Input type": ["float"]},
              {"Input Strides": [[1, 2]], "Input type": ["float"]},
              {"Input Dims": [[1, 2]], "Input type": ["float"]},
              {"Input Dims": [], "Input Strides": None}]
    events = decode_events(json.dumps([
        {"ph": "X", "cat": "cpu_op", "name": "a", "ts": i, "dur": 1, "args": args}
        for i, args in enumerate(shapes)]).encode())
    cols = ops(events)
    assert cols["input_dims"] == ["[[1,2]]", "", "[[1,2]]", "[]"]
    assert cols["input_strides"] == ["", "[[1,2]]", "", ""]
    assert cols["input_types"] == ['["float"]', '["float"]', '["float"]', ""]
    assert cols["input_dims"][0] is cols["input_dims"][2]  # one object per distinct text


@pytest.mark.parametrize("text", [b'[{"ph": "X"}, 3]', b'[[1]]', b"{}"])
def test_forms_the_typed_decoder_cannot_type_are_refused(text: bytes) -> None:
    with pytest.raises(NotTyped):
        decode_events(text)


def test_a_document_with_odd_events_falls_back_to_the_generic_parser(tmp_path: Path) -> None:
    doc = {"traceName": "t", "traceEvents": [
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1, "ts": 5, "dur": 3,
         "args": {"External id": 8}},
        "not an event",
        {"ph": "X", "cat": "cpu_op", "name": "aten::add", "pid": 1, "tid": 1, "ts": 9,
         "dur": 1, "args": [1]}]}
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(NotTyped):
        decode_document(path.read_bytes())
    trace = read_whole(TraceJob(path, processes=1))
    assert trace.ops["name"].tolist() == ["aten::mm", "aten::add"]
    assert trace.ops["external_id"].tolist() == [8, -1]
    assert trace.meta == {"traceName": "t"}
