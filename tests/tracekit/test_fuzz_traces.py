"""Property: whatever is done to a real trace (fields dropped, wrong types, negative or NaN
durations, events shuffled or duplicated, correlation ids or flows removed, metadata broken,
the file cut short), `analyze` either reports findings or stops with one clear line
(UserError), never a traceback.

CI runs a short seeded campaign (TRACEKIT_FUZZ_EXAMPLES, default 12 per test, derandomized).
A long one: `TRACEKIT_FUZZ_EXAMPLES=3000 TRACEKIT_FUZZ_LOG=fuzz.jsonl nice pytest -p no:xdist
tests/tracekit/test_fuzz_traces.py` (random seeds; the log gets one line per case: the
mutations and the outcome).
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from rich.console import Console

from tracekit.errors import UserError
from tracekit.pipeline import analyze_run
from tracekit.report import print_report, render_json, render_markdown

TESTS = Path(__file__).resolve().parents[1]
BASES = [
    TESTS / "data/gpu/comm_gap_late/rank0.pt.trace.json.gz",
    TESTS / "data/gpu/select_backward_compiled/rank1.pt.trace.json.gz",
    TESTS / "data/gpu/sm_contention_eager/rank0.pt.trace.json.gz",
    TESTS / "data/gpu/slow_step_wait/rank1.pt.trace.json.gz",
]
RUN_BASE = TESTS / "data/gpu/comm_gap_late"
EXAMPLES = int(os.environ.get("TRACEKIT_FUZZ_EXAMPLES", "12"))
LOG = os.environ.get("TRACEKIT_FUZZ_LOG")
CONTINUE = os.environ.get("TRACEKIT_FUZZ_CONTINUE") == "1"
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES, deadline=None, database=None, report_multiple_bugs=False,
    # No shrinking: a case takes a second, and the mutation list already says what was done.
    phases=(Phase.explicit, Phase.generate),
    derandomize="TRACEKIT_FUZZ_EXAMPLES" not in os.environ,  # CI: the same cases every run
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)

_TEXT: dict[Path, bytes] = {}


def base_doc(path: Path) -> dict[str, Any]:
    """A fresh copy of a base trace (parsed from cached text: cheaper than a deep copy)."""
    if path not in _TEXT:
        _TEXT[path] = gzip.decompress(path.read_bytes())
    return orjson.loads(_TEXT[path])


def first_steps(doc: dict[str, Any], steps: int = 3) -> dict[str, Any]:
    """The trace cut after its first `steps` profiled steps (events starting later dropped;
    metadata events kept): a smaller real trace, so a long campaign runs more cases."""
    starts = sorted({e["ts"] for e in doc["traceEvents"]
                     if str(e.get("name", "")).startswith("ProfilerStep#")
                     and e.get("cat") == "user_annotation"})
    if len(starts) > steps:
        doc["traceEvents"] = [e for e in doc["traceEvents"]
                              if not isinstance(e.get("ts"), (int, float))
                              or e["ts"] < starts[steps]]
    return doc


JUNK = [None, "", "x", "ProfilerStep#x", -1, 0, 2**63, -(2**63), 10**30, 1e308, -1e308,
        float("nan"), float("inf"), -float("inf"), [], {}, [1, 2], [[1]], {"a": 1}, True, 0.5]
EVENT_KEYS = ["name", "ts", "dur", "ph", "cat", "args", "pid", "tid", "id", "bp"]
ARG_KEYS = ["correlation", "External id", "stream", "device", "grid", "block",
            "blocks per SM", "Collective name", "In msg nelems", "Group size", "Sequence number",
            "Fwd thread id", "Input Dims", "kernel_file", "bytes", "registers per thread"]
Draw = Callable[[st.SearchStrategy[Any]], Any]


def pick(draw: Draw, events: list[Any]) -> int:
    return draw(st.integers(0, len(events) - 1))


def some(draw: Draw, events: list[Any]) -> list[int]:
    """A handful of event indices, or every index of one category."""
    if draw(st.booleans()):
        return [pick(draw, events) for _ in range(draw(st.integers(1, 20)))]
    cats = sorted({str(e.get("cat")) for e in events if isinstance(e, dict)})
    cat = draw(st.sampled_from(cats))
    return [i for i, e in enumerate(events) if isinstance(e, dict) and str(e.get("cat")) == cat]


def drop_field(doc: dict[str, Any], draw: Draw) -> str:
    events = doc["traceEvents"]
    key = draw(st.sampled_from(EVENT_KEYS + ARG_KEYS))
    for i in some(draw, events):
        target = events[i].get("args") if key in ARG_KEYS else events[i]
        if isinstance(target, dict):
            target.pop(key, None)
    return f"drop {key}"


def wrong_type(doc: dict[str, Any], draw: Draw) -> str:
    events = doc["traceEvents"]
    key = draw(st.sampled_from(EVENT_KEYS + ARG_KEYS))
    value = draw(st.sampled_from(JUNK))
    for i in some(draw, events):
        target = events[i].get("args") if key in ARG_KEYS else events[i]
        if isinstance(target, dict):
            target[key] = value
    return f"{key}={value!r}"


def bad_durations(doc: dict[str, Any], draw: Draw) -> str:
    events = doc["traceEvents"]
    value = draw(st.sampled_from([-1.0, -1e9, float("nan"), float("inf"), 0.0, 1e15]))
    for i in some(draw, events):
        events[i]["dur"] = value
    return f"dur={value}"


def bad_times(doc: dict[str, Any], draw: Draw) -> str:
    events = doc["traceEvents"]
    value = draw(st.sampled_from([-1e12, 0.0, 1e18, float("nan"), -5.0]))
    for i in some(draw, events):
        events[i]["ts"] = value
    return f"ts={value}"


def shuffle(doc: dict[str, Any], draw: Draw) -> str:
    draw(st.randoms(use_true_random=False)).shuffle(doc["traceEvents"])
    return "shuffle"


def duplicate(doc: dict[str, Any], draw: Draw) -> str:
    events = doc["traceEvents"]
    start = pick(draw, events)
    length = draw(st.integers(1, max(1, len(events) // 2)))
    events.extend(json.loads(json.dumps(events[start:start + length])))
    return f"duplicate {length}"


def strip_links(doc: dict[str, Any], draw: Draw) -> str:
    """Correlation ids, External ids or flow events gone (from some events or all)."""
    what = draw(st.sampled_from(["correlation", "External id", "flows", "flow ids"]))
    events = doc["traceEvents"]
    if what == "flows":
        doc["traceEvents"] = [e for e in events if e.get("ph") not in ("s", "f")]
        return "no flows"
    share = draw(st.sampled_from([1.0, 0.5, 0.1]))
    for i, event in enumerate(events):
        if i % int(1 / share) == 0:
            if what == "flow ids":
                event.pop("id", None)
            elif isinstance(event.get("args"), dict):
                event["args"].pop(what, None)
    return f"no {what} ({share:.0%})"


def drop_category(doc: dict[str, Any], draw: Draw) -> str:
    events = doc["traceEvents"]
    cats = sorted({str(e.get("cat")) for e in events})
    cat = draw(st.sampled_from(cats))
    doc["traceEvents"] = [e for e in events if str(e.get("cat")) != cat]
    return f"no {cat}"


def break_metadata(doc: dict[str, Any], draw: Draw) -> str:
    key = draw(st.sampled_from(["deviceProperties", "distributedInfo", "schemaVersion",
                                "baseTimeNanoseconds"]))
    value = draw(st.sampled_from([*JUNK, "drop", [{"id": "0", "numSms": "many"}],
                                  {"rank": "0", "world_size": -3}, {"rank": 5, "world_size": 2},
                                  [{"id": 0, "numSms": 0}]]))
    if value == "drop":
        doc.pop(key, None)
    else:
        doc[key] = value
    return f"meta {key}={value!r}"


def odd_steps(doc: dict[str, Any], draw: Draw) -> str:
    """ProfilerStep names renumbered: duplicated, negative, huge, or out of order."""
    number = draw(st.sampled_from([-1, 0, 7, 10**20, 2**31]))
    events = doc["traceEvents"]
    steps = [e for e in events if str(e.get("name", "")).startswith("ProfilerStep#")]
    for event in steps[: draw(st.integers(1, max(1, len(steps))))]:
        event["name"] = f"ProfilerStep#{number}"
    return f"steps #{number}"


def junk_names(doc: dict[str, Any], draw: Draw) -> str:
    name = draw(st.sampled_from(["", "x" * 5000, "ü∂\u0000名", "file.py(notanumber): f",
                                 "file.py(-3): f", "nccl:all_reduce", "triton_", "(1): "]))
    events = doc["traceEvents"]
    for i in some(draw, events):
        events[i]["name"] = name
    return f"names={name[:20]!r}"


MUTATIONS = [drop_field, wrong_type, bad_durations, bad_times, shuffle, duplicate,
             strip_links, drop_category, break_metadata, odd_steps, junk_names]


@st.composite
def mutated_trace(draw: Draw, bases: list[Path] = BASES) -> tuple[bytes, list[str]]:
    """(file bytes, what was done) for one mutated trace file."""
    base = draw(st.sampled_from(bases))
    doc = first_steps(base_doc(base)) if draw(st.booleans()) else base_doc(base)
    done = [base.parent.name]
    for _ in range(draw(st.integers(1, 4))):
        done.append(draw(st.sampled_from(MUTATIONS))(doc, draw))
    as_array = draw(st.integers(0, 4)) == 0
    text = json.dumps(doc["traceEvents"] if as_array else doc, indent=draw(
        st.sampled_from([None, 1]))).encode()  # NaN/Infinity as Python writes them
    data = gzip.compress(text, compresslevel=1) if draw(st.booleans()) else text
    if draw(st.integers(0, 5)) == 0:
        cut = draw(st.integers(0, len(data) - 1))
        data = data[:cut]
        done.append(f"cut at {cut} of {len(text) if data is text else len(data)}")
    if as_array:
        done.append("array form")
    return data, done


def outcome(path: Path) -> str:
    """Analyse like `cli.py analyze` does and render every report; the one-line error when
    the input is refused. Anything else propagates and fails the property."""
    try:
        run, findings = analyze_run(path, progress=False)
    except UserError as err:
        message = str(err)
        assert message and "\n" not in message, repr(message)
        assert "Traceback" not in message
        return "error: " + message.split(": ", 1)[-1][:60]
    render_json(findings)
    render_markdown(run, findings)
    print_report(run, findings, console=Console(file=io.StringIO(), width=120))
    for finding in findings:
        assert math.isfinite(finding.cost_us) and finding.cost_us >= 0, finding
    return f"{len(findings)} findings"


def log(done: list[str], result: str) -> None:
    if LOG:
        with open(LOG, "a") as fh:
            fh.write(json.dumps({"mutations": done, "outcome": result}) + "\n")


def check(done: list[str], path: Path) -> None:
    """Run `outcome` and log it; a crash is logged with its exception, and (in a long
    campaign with TRACEKIT_FUZZ_CONTINUE=1) the campaign goes on to the next case."""
    try:
        log(done, outcome(path))
    except Exception as exc:
        import traceback

        where = traceback.extract_tb(exc.__traceback__)[-1]
        log(done, f"CRASH {type(exc).__name__}: {str(exc)[:200]} at "
                  f"{Path(where.filename).name}:{where.lineno}")
        if not CONTINUE:
            raise


@FUZZ_SETTINGS
@given(case=mutated_trace())
def test_a_mutated_trace_gives_findings_or_one_clear_line(tmp_path: Path,
                                                          case: tuple[bytes, list[str]]) -> None:
    data, done = case
    note(f"mutations: {done}")
    path = tmp_path / ("rank0.pt.trace.json.gz" if data[:2] == b"\x1f\x8b" else "rank0.json")
    path.write_bytes(data)
    check(done, path)
    path.unlink()


@FUZZ_SETTINGS
@given(case=mutated_trace(bases=[RUN_BASE / "rank1.pt.trace.json.gz"]))
def test_a_run_with_one_mutated_rank_gives_findings_or_one_clear_line(
        tmp_path: Path, case: tuple[bytes, list[str]]) -> None:
    data, done = case
    note(f"mutations: {done}")
    run_dir = tmp_path / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    shutil.copy(RUN_BASE / "rank0.pt.trace.json.gz", run_dir)
    (run_dir / ("rank1.pt.trace.json.gz" if data[:2] == b"\x1f\x8b" else "rank1.json")
     ).write_bytes(data)
    check(["run", *done], run_dir)


# Cases the long campaign found (each crashed before its fix), kept as plain tests.


def write_doc(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_launches_without_correlation_ids_leave_kernels_unlinked(tmp_path: Path) -> None:
    doc = base_doc(BASES[3])
    for event in doc["traceEvents"]:
        if event.get("cat") in ("cuda_runtime", "cuda_driver"):
            event["args"].pop("correlation", None)
    run, _ = analyze_run(write_doc(tmp_path / "t.json", doc), progress=False)
    assert (run.traces[0].kernels["launch_idx"] == -1).all()
    assert any("no launch in the trace" in w for w in run.traces[0].warnings)


def test_events_with_a_nan_or_infinite_start_are_dropped(tmp_path: Path) -> None:
    doc = base_doc(BASES[2])
    ops = [e for e in doc["traceEvents"] if e.get("cat") == "cpu_op"]
    ops[0]["ts"], ops[1]["ts"], ops[2]["dur"] = float("nan"), float("inf"), float("inf")
    run, _ = analyze_run(write_doc(tmp_path / "t.json", doc), progress=False)
    trace = run.traces[0]
    assert len(trace.ops) == len(ops) - 2
    assert np.isfinite(trace.ops[["ts", "end"]].to_numpy()).all()


def test_events_whose_args_are_not_an_object_keep_their_other_fields(tmp_path: Path) -> None:
    doc = base_doc(BASES[3])
    launches = [e for e in doc["traceEvents"] if e.get("cat") == "cuda_runtime"]
    for event in launches[:5]:
        event["args"] = 1e308
    run, _ = analyze_run(write_doc(tmp_path / "t.json", doc), progress=False)
    assert len(run.traces[0].launches) == len(
        [e for e in doc["traceEvents"] if e.get("cat") in ("cuda_runtime", "cuda_driver")])


def test_a_step_number_too_big_for_a_step_column_is_not_a_step(tmp_path: Path) -> None:
    doc = base_doc(BASES[0])
    steps = [e for e in doc["traceEvents"] if str(e.get("name")).startswith("ProfilerStep#")]
    first = steps[0]["name"]
    for event in steps:
        if event["name"] == first:
            event["name"] = "ProfilerStep#100000000000000000000"
    run, _ = analyze_run(write_doc(tmp_path / "t.json", doc), progress=False)
    assert int(first.split("#")[1]) not in set(run.traces[0].steps["step"])
    assert len(run.traces[0].steps) == len({e["name"] for e in steps}) - 1


def test_an_event_whose_category_is_a_list_is_left_out(tmp_path: Path) -> None:
    doc = base_doc(BASES[2])
    ops = [e for e in doc["traceEvents"] if e.get("cat") == "cpu_op"]
    ops[0]["cat"] = [1, 2]
    run, _ = analyze_run(write_doc(tmp_path / "t.json", doc), progress=False)
    assert len(run.traces[0].ops) == len(ops) - 1


def test_ids_too_big_for_int64_or_infinite_read_as_missing(tmp_path: Path) -> None:
    doc = base_doc(BASES[2])
    ops = [e for e in doc["traceEvents"] if e.get("cat") == "cpu_op"]
    ops[0]["args"]["External id"] = 10**30
    ops[1]["args"]["External id"] = float("inf")
    ops[2]["tid"] = 1e308
    run, _ = analyze_run(write_doc(tmp_path / "t.json", doc), progress=False)
    frame = run.traces[0].ops
    assert len(frame) == len(ops)
    assert (frame["external_id"] == -1).sum() >= 2


def test_list_valued_ids_and_durations_read_as_missing(tmp_path: Path) -> None:
    doc = base_doc(BASES[0])
    kernels = [e for e in doc["traceEvents"] if e.get("cat") == "kernel"]
    for event in kernels:
        event["pid"], event["dur"] = [1, 2], []
    run, _ = analyze_run(write_doc(tmp_path / "t.json", doc), progress=False)
    frame = run.traces[0].kernels
    assert len(frame) == len(kernels) and (frame["dur"] == 0).all()


def test_events_whose_name_is_not_a_string_are_left_out(tmp_path: Path) -> None:
    doc = base_doc(BASES[1])
    annotations = [e for e in doc["traceEvents"] if e.get("cat") == "gpu_user_annotation"]
    for event in annotations:
        event["name"] = True
    run, _ = analyze_run(write_doc(tmp_path / "t.json", doc), progress=False)
    assert (run.traces[0].annotations["side"] == "gpu").sum() == 0


def test_steps_of_no_measurable_length_give_no_slow_step() -> None:
    """Timestamps so large (1e18 us) that a float loses the steps' lengths: a median step of
    0 us has no outliers (it divided by zero)."""
    import pandas as pd

    from tracekit.detectors.slow_step import slow_steps

    table = pd.DataFrame({"step": [1, 2, 3, 4], "cpu_us": [0.0, 0.0, 0.0, 128.0],
                          "cpu_ts": [1e18] * 4, "gpu_us": [0.0] * 4, "gpu_from": [1e18] * 4})
    assert slow_steps(table, factor=1.5, min_excess_us=10.0) == []
