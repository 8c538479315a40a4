"""Every Chrome/Kineto trace form loads, through the streaming reader and the whole-document
reader alike; every broken file gets one precise line and exit 2 from `cli.py analyze`."""

from __future__ import annotations

import gzip
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import cli as cli_module
from tracekit.errors import UserError
from tracekit.load import load_trace
from tracekit.load import run as load_run_module
from tracekit.load.stream import NotSliceable

DATA = Path(__file__).resolve().parents[1] / "data" / "gpu"
SOURCE = DATA / "slow_step_none" / "rank0.pt.trace.json.gz"


def source_doc() -> dict:
    return json.loads(gzip.decompress(SOURCE.read_bytes()))


@pytest.fixture(params=["stream", "whole"])
def reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Load through the sliced streaming reader, or force the whole-document fallback."""
    if request.param == "whole":
        def refuse(*args: object, **kwargs: object) -> None:
            raise NotSliceable("forced by the test")

        monkeypatch.setattr(load_run_module, "extract_file", refuse)
    return request.param


def write(path: Path, text: bytes) -> Path:
    path.write_bytes(gzip.compress(text) if path.name.endswith(".gz") else text)
    return path


def object_form(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def object_form_indented(doc: dict) -> bytes:
    return json.dumps(doc, indent=2).encode()


def array_form(doc: dict) -> bytes:
    return json.dumps(doc["traceEvents"]).encode()


def array_form_unclosed(doc: dict) -> bytes:
    """Chrome's streaming writers may leave the closing ] off (and a trailing comma)."""
    return json.dumps(doc["traceEvents"], indent=1).encode()[:-1].rstrip() + b",\n"


def without_metadata(doc: dict) -> bytes:
    return json.dumps({"traceEvents": doc["traceEvents"]}).encode()


def with_byte_order_mark(doc: dict) -> bytes:
    return b"\xef\xbb\xbf" + json.dumps(doc).encode()


def python_nan_literals(doc: dict) -> bytes:
    """Python's json.dumps writes NaN for a non-finite float; strict JSON has no such word."""
    events = [dict(e) for e in doc["traceEvents"]]
    first_op = next(e for e in events if e.get("cat") == "cpu_op")
    first_op["dur"] = float("nan")
    return json.dumps(doc | {"traceEvents": events}).encode()


FORMS: dict[str, Callable[[dict], bytes]] = {
    "object": object_form, "object indented": object_form_indented, "array": array_form,
    "array without ]": array_form_unclosed, "no metadata": without_metadata,
    "byte order mark": with_byte_order_mark, "NaN literal": python_nan_literals,
}


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
@pytest.mark.parametrize("form", list(FORMS))
def test_every_trace_form_loads_with_the_same_events(tmp_path: Path, reader: str, form: str,
                                                    suffix: str) -> None:
    reference = load_trace(SOURCE)
    trace = load_trace(write(tmp_path / f"t{suffix}", FORMS[form](source_doc())))
    assert len(trace.kernels) == len(reference.kernels) > 0
    assert len(trace.ops) == len(reference.ops)
    assert trace.steps["step"].tolist() == reference.steps["step"].tolist() == [6, 7, 8, 9, 10]
    if form in ("array", "array without ]", "no metadata"):
        assert trace.meta == {}
    else:
        assert trace.meta["deviceProperties"] == reference.meta["deviceProperties"]


def cut_gzip(path: Path) -> str:
    path.write_bytes(SOURCE.read_bytes()[:5000])
    return "truncated gzip: the file ends at byte 5,000 before the end of the compressed data"


def corrupt_gzip(path: Path) -> str:
    data = bytearray(gzip.compress(b'{"traceEvents": [' + b'{"ph": "X"},' * 2000 + b"{}]}"))
    data[12:40] = b"\xff" * 28  # the deflate stream's first block header and data
    path.write_bytes(bytes(data))
    return "corrupt gzip at byte "


def random_bytes_named_gz(path: Path) -> str:
    path.write_bytes(bytes(range(7, 250)) * 20)
    return "not gzip (no gzip header: the file starts with 07 08 09 0a) and not JSON text"


def cut_json(path: Path) -> str:
    path.write_bytes(gzip.compress(gzip.decompress(SOURCE.read_bytes())[:30000]))
    return "truncated JSON: the text ends at byte 30,000 before the document is complete"


def empty_object(path: Path) -> str:
    path.write_bytes(gzip.compress(b'{"traceEvents": []}'))
    return "empty trace (traceEvents holds no events)"


def empty_array(path: Path) -> str:
    path.write_bytes(gzip.compress(b"[]"))
    return "empty trace (traceEvents holds no events)"


def array_of_numbers(path: Path) -> str:
    path.write_bytes(gzip.compress(b"[1, 2, 3]"))
    return "not a profiler trace (3 entries in traceEvents, none of them an event object)"


def object_without_events(path: Path) -> str:
    path.write_bytes(gzip.compress(b'{"loss": 3.2}'))
    return "not a profiler trace (a JSON object with no traceEvents key)"


def events_of_no_known_kind(path: Path) -> str:
    doc = {"traceEvents": [{"ph": "M", "name": "process_name", "pid": 1, "args": {}},
                           {"ph": "X", "cat": "my_tool", "name": "x", "ts": 1, "dur": 2}]}
    path.write_bytes(gzip.compress(json.dumps(doc).encode()))
    return "no profiler events tracekit reads (2 events, by category: (none) x1, my_tool x1"


def json_string(path: Path) -> str:
    path.write_bytes(gzip.compress(b'"a trace"'))
    return "not a profiler trace (the JSON text is a string"


def not_utf8(path: Path) -> str:
    path.write_bytes(gzip.compress(b'{"traceEvents": [{"name": "\xff\xfe"}]}'))
    return "invalid JSON at byte"


BROKEN: dict[str, Callable[[Path], str]] = {
    "cut gzip": cut_gzip, "corrupt gzip": corrupt_gzip, "random .gz": random_bytes_named_gz,
    "cut JSON": cut_json, "empty object": empty_object, "empty array": empty_array,
    "array of numbers": array_of_numbers, "object without events": object_without_events,
    "unknown events": events_of_no_known_kind, "JSON string": json_string,
    "not UTF-8": not_utf8,
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_each_broken_file_gets_its_own_line_from_both_readers(tmp_path: Path, reader: str,
                                                             case: str) -> None:
    path = tmp_path / "rank0.pt.trace.json.gz"
    expected = BROKEN[case](path)
    with pytest.raises(UserError) as info:
        load_trace(path)
    assert str(info.value).startswith(f"{path}: {expected}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("case", ["cut gzip", "random .gz", "empty object", "unknown events"])
def test_analyze_prints_one_line_and_exits_2(tmp_path: Path, case: str,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "trace.json.gz"
    expected = BROKEN[case](path)
    if not cli_module.app.registered_commands:
        cli_module._register_commands()
    monkeypatch.setattr(sys, "argv", ["cli.py", "analyze", str(path)])
    with pytest.raises(SystemExit) as exited:
        cli_module.main()
    out, err = capsys.readouterr()
    assert exited.value.code == 2 and out == ""
    assert err == f"error: {path}: {err.split(': ', 2)[2]}" and err.count("\n") == 1
    assert expected in err
    assert "No findings" not in out + err
