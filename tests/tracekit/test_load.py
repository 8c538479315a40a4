"""tracekit.load: frames and columns from small hand-written traces, run directories, bad input."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tracekit.errors import UserError
from tracekit.intervals import nest
from tracekit.load.frames import (
    ANNOTATION_COLUMNS,
    FLOW_COLUMNS,
    GPU_MEM_COLUMNS,
    KERNEL_COLUMNS,
    LAUNCH_COLUMNS,
    OP_COLUMNS,
    PYTHON_COLUMNS,
)
from tracekit.load.steps import STEP_COLUMNS, gpu_spans_from_launches, step_of_times
from tracekit.pipeline import load, load_trace

REPO = Path(__file__).resolve().parents[2]
PID, TID, BWD_TID = 100, 100, 200


def x(cat: str, name: str, ts: float, dur: float, tid: int = TID, pid: int = PID,
      **args: Any) -> dict[str, Any]:
    return {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur,
            "args": args}


def write_trace(path: Path, events: list[dict[str, Any]], **meta: Any) -> Path:
    doc = {"schemaVersion": 1, **meta, "traceEvents": events}
    data = json.dumps(doc).encode()
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def gpu_trace_events() -> list[dict[str, Any]]:
    """Two steps; step 1's last kernel runs after the CPU step ended (the GPU lags)."""
    return [
        x("user_annotation", "ProfilerStep#1", 0, 100, **{"External id": 1}),
        x("user_annotation", "ProfilerStep#2", 100, 100, **{"External id": 2}),
        x("cpu_op", "aten::mm", 10, 20, **{"External id": 3, "Sequence number": 5,
                                            "Fwd thread id": 0, "Input Dims": [[4, 4], [4, 4]]}),
        x("cuda_runtime", "cudaLaunchKernel", 15, 5, correlation=11, **{"External id": 3}),
        x("kernel", "sm90_xmma_gemm_bf16", 40, 30, pid=0, tid=7, device=0, stream=7,
          correlation=11, grid=[132, 2, 1], block=[128, 1, 1], **{
              "External id": 3, "blocks per SM": 2.0, "warps per SM": 8.0,
              "registers per thread": 96, "shared memory": 1024,
              "est. achieved occupancy %": 12}),
        x("cpu_op", "aten::fill_", 60, 10, **{"External id": 4}),
        x("cuda_runtime", "cudaLaunchKernel", 62, 4, correlation=12),
        x("kernel", "void at::native::vectorized_elementwise_kernel<4, FillFunctor<float>>",
          150, 20, pid=0, tid=7, device=0, stream=7, correlation=12, grid=[4096, 1, 1],
          block=[128, 1, 1]),
        x("cpu_op", "record_param_comms", 120, 30, **{"External id": 5}),
        x("cuda_driver", "cuLaunchKernelEx", 125, 5, correlation=13),
        x("kernel", "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
          180, 50, pid=0, tid=20, device=0, stream=20, correlation=13, **{
              "Collective name": "allreduce", "In msg nelems": 1024, "Out msg nelems": 1024,
              "Group size": 2, "dtype": "Float", "Process Group Name": "0"}),
        x("cuda_runtime", "cudaMemcpyAsync", 130, 3, correlation=14),
        x("gpu_memcpy", "Memcpy DtoD (Device -> Device)", 240, 2, pid=0, tid=7, device=0,
          stream=7, correlation=14, bytes=4096),
        x("gpu_memset", "Memset (Device)", 245, 1, pid=0, tid=7, device=0, stream=7,
          correlation=99, bytes=64),
        x("gpu_user_annotation", "ProfilerStep#1", 40, 140, pid=0, tid=7),
        {"ph": "s", "cat": "fwdbwd", "name": "fwdbwd", "id": 1, "pid": PID, "tid": TID,
         "ts": 10},
        {"ph": "f", "cat": "fwdbwd", "name": "fwdbwd", "id": 1, "pid": PID, "tid": BWD_TID,
         "ts": 160, "bp": "e"},
        {"ph": "M", "name": "process_name", "pid": PID, "tid": 0, "args": {"name": "python"}},
    ]


@pytest.fixture()
def gpu_trace(tmp_path: Path) -> Path:
    return write_trace(tmp_path / "rank0.pt.trace.json.gz", gpu_trace_events(),
                       deviceProperties=[{"id": 0, "numSms": 132}],
                       distributedInfo={"rank": 0, "world_size": 2})


def test_frames_have_the_schema_columns(gpu_trace: Path) -> None:
    trace = load_trace(gpu_trace, link=False)
    assert list(trace.kernels.columns) == KERNEL_COLUMNS
    assert list(trace.gpu_mem.columns) == GPU_MEM_COLUMNS
    assert list(trace.ops.columns) == OP_COLUMNS
    assert list(trace.launches.columns) == LAUNCH_COLUMNS
    assert list(trace.python.columns) == PYTHON_COLUMNS
    assert list(trace.flows.columns) == FLOW_COLUMNS
    assert list(trace.annotations.columns) == ANNOTATION_COLUMNS
    assert list(trace.steps.columns) == STEP_COLUMNS
    assert trace.num_sms == 132 and trace.rank == 0 and trace.world_size == 2
    assert not trace.linked


def test_kernel_columns(gpu_trace: Path) -> None:
    k = load_trace(gpu_trace, link=False).kernels.set_index("correlation")
    gemm = k.loc[11]
    assert (gemm.grid_x, gemm.grid_y, gemm.grid_z) == (132, 2, 1)
    assert (gemm.block_x, gemm.registers, gemm.shared_mem) == (128, 96, 1024)
    assert gemm.blocks_per_sm == 2.0 and gemm.occupancy == 12
    assert gemm.end == pytest.approx(70.0)
    assert gemm.category == "gemm" and not gemm.is_nccl
    nccl = k.loc[13]
    assert nccl.is_nccl and nccl.category == "nccl" and nccl.collective == "allreduce"
    assert (nccl.in_nelems, nccl.out_nelems, nccl.group_size) == (1024, 1024, 2)
    assert nccl["dtype"] == "Float" and nccl.pg_name == "0" and nccl.stream == 20
    fill = k.loc[12]
    assert fill.category == "elementwise" and fill.collective is None
    assert np.isnan(fill.blocks_per_sm) and fill.registers == -1


def test_gpu_mem_launches_annotations_flows(gpu_trace: Path) -> None:
    trace = load_trace(gpu_trace, link=False)
    mem = trace.gpu_mem.set_index("correlation")
    assert mem.loc[14, "kind"] == "memcpy" and mem.loc[14, "bytes"] == 4096
    assert mem.loc[99, "kind"] == "memset"
    launches = trace.launches.set_index("correlation")
    assert launches.loc[11, "is_kernel_launch"] and launches.loc[13, "is_kernel_launch"]
    assert not launches.loc[14, "is_kernel_launch"]
    ann = trace.annotations
    assert set(ann["side"]) == {"cpu", "gpu"}
    gpu_step = ann[ann["side"] == "gpu"].iloc[0]
    assert gpu_step["stream"] == 7 and gpu_step["tid"] == -1
    assert trace.flows.to_dict("records") == [
        {"id": 1, "src_tid": TID, "src_ts": 10.0, "dst_tid": BWD_TID, "dst_ts": 160.0}]
    ops = trace.ops.set_index("name")
    assert ops.loc["aten::mm", "seq"] == 5 and ops.loc["aten::fill_", "seq"] == -1
    assert ops.loc["aten::mm", "input_dims"] == "[[4,4],[4,4]]"
    assert ops.loc["aten::fill_", "input_dims"] == ""


def test_steps_cpu_and_gpu_spans(gpu_trace: Path) -> None:
    steps = load_trace(gpu_trace, link=False).steps.set_index("step")
    assert steps.loc[1, "cpu_ts"] == 0 and steps.loc[1, "cpu_end"] == 100
    # Step 1 has a GPU-side annotation; step 2 takes first..last GPU work launched in it.
    assert (steps.loc[1, "gpu_ts"], steps.loc[1, "gpu_end"]) == (40, 180)
    assert (steps.loc[2, "gpu_ts"], steps.loc[2, "gpu_end"]) == (180, 242)


def test_nesting_depth_and_parent() -> None:
    # Thread 1: a [0,100] > b [10,50] > c [20,30]; d [50,60] starts when b ends (sibling);
    # e [60,60] zero-length; f [40, 50.001] ends a rounding hair after b. Thread 2: g.
    tid = np.array([1, 1, 1, 1, 1, 1, 2])
    ts = np.array([0, 10, 20, 50, 60, 40, 10], dtype=float)
    end = np.array([100, 50, 30, 60, 60, 50.001, 20], dtype=float)
    depth, parent = nest(tid, ts, end)
    assert depth.tolist() == [0, 1, 2, 1, 1, 2, 0]
    assert parent.tolist() == [-1, 0, 1, 0, 0, 1, -1]


def test_ops_nesting_by_thread(tmp_path: Path) -> None:
    events = [
        x("cpu_op", "outer", 0, 100), x("cpu_op", "inner", 10, 10), x("cpu_op", "leaf", 12, 2),
        x("cpu_op", "next", 30, 10),
        x("cpu_op", "other_thread", 11, 5, tid=BWD_TID),
    ]
    ops = load_trace(write_trace(tmp_path / "t.json", events), link=False).ops.set_index("name")
    assert ops["depth"].to_dict() == {"outer": 0, "inner": 1, "leaf": 2, "next": 1,
                                      "other_thread": 0}
    rows = load_trace(tmp_path / "t.json", link=False).ops
    name_of = dict(enumerate(rows["name"]))
    assert {name_of[i]: name_of.get(p) for i, p in enumerate(rows["parent"])} == {
        "outer": None, "inner": "outer", "leaf": "inner", "next": "outer",
        "other_thread": None}


def test_python_frames_parsed(tmp_path: Path) -> None:
    events = [
        x("python_function", "train.py(10): main", 0, 100),
        x("python_function", "torch/nn/modules/module.py(1751): _call_impl", 5, 50),
        x("python_function", "trainer/model.py(42): forward", 10, 40),
        x("python_function", "<built-in method sum of Tensor object at 0x7f>", 20, 1),
        x("python_function", "typing.py(359): inner", 30, 1),
    ]
    py = load_trace(write_trace(tmp_path / "t.json", events), link=False).python
    assert py["file"].tolist() == ["train.py", "torch/nn/modules/module.py", "trainer/model.py",
                                   "", "typing.py"]
    assert py["line"].tolist() == [10, 1751, 42, -1, 359]
    assert py["function"].tolist()[:3] == ["main", "_call_impl", "forward"]
    assert py["is_user"].tolist() == [True, False, True, False, False]
    assert py["depth"].tolist() == [0, 1, 2, 3, 3]


def test_graceful_warnings(tmp_path: Path) -> None:
    events = [x("cpu_op", "aten::add", 0, 10)]
    trace = load_trace(write_trace(tmp_path / "cpu.json", events), link=False)
    text = " ".join(trace.warnings)
    assert "no GPU kernels" in text
    assert "no python_function events (record with with_stack=True)" in text
    assert "no distributedInfo" in text
    assert "no ProfilerStep" in text
    assert len(trace.kernels) == 0 and list(trace.kernels.columns) == KERNEL_COLUMNS


def test_malformed_events_are_dropped(tmp_path: Path) -> None:
    events = [x("cpu_op", "ok", 0, 10), {"ph": "X", "cat": "cpu_op", "name": "no_ts"},
              x("cpu_op", "bad_ts", 0, 1) | {"ts": "soon"}]
    trace = load_trace(write_trace(tmp_path / "t.json", events), link=False)
    assert trace.ops["name"].tolist() == ["ok"]


def test_run_directory_ranks_manifest_and_steps_log(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for rank in (1, 0):
        write_trace(run / f"rank{rank}.pt.trace.json.gz", gpu_trace_events(),
                    distributedInfo={"rank": rank, "world_size": 2})
    (run / "manifest.json").write_text(json.dumps({"world_size": 2, "name": "run"}))
    (run / "steps.jsonl").write_text(
        "\n".join(json.dumps({"step": s, "wall_ms": 10.0 + s, "profiled": s > 0})
                  for s in range(3)) + "\n{\"step\": 3, \"wall")  # torn last line
    loaded = load(run, progress=False, workers=2)
    assert loaded.ranks == [0, 1]
    assert all(t.world_size == 2 and t.linked for t in loaded.traces)
    assert loaded.manifest == {"world_size": 2, "name": "run"}
    assert loaded.steps_log is not None and loaded.steps_log["step"].tolist() == [0, 1, 2]
    assert loaded.rank(1).path.name == "rank1.pt.trace.json.gz"


def test_rank_from_file_name_then_order(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    events = [x("cpu_op", "aten::add", 0, 10)]
    write_trace(run / "worker_rank3.json", events)
    write_trace(run / "b.json", events)
    loaded = load(run, progress=False, workers=1)
    # b.json sorts first (order 0); the other names its rank.
    assert sorted(loaded.ranks) == [0, 3]
    assert loaded.rank(3).path.name == "worker_rank3.json"
    assert all(t.world_size == 4 for t in loaded.traces)


def test_non_trace_json_in_a_directory_is_skipped(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write_trace(run / "rank0.json", [x("cpu_op", "aten::add", 0, 10)])
    (run / "summary.json").write_text(json.dumps({"loss": 3.2}))
    loaded = load(run, progress=False, workers=1)
    assert loaded.ranks == [0]
    assert any("summary.json" in w for w in loaded.traces[0].warnings)


def _truncated_gzip(path: Path) -> None:
    data = gzip.compress(json.dumps({"traceEvents": [x("cpu_op", "a", 0, 1)] * 50}).encode())
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(("setup", "message"), [
    (lambda p: None, "no such file"),
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(gzip.compress(b"")), "empty file"),
    (_truncated_gzip, "truncated gzip: the file ends at byte"),
    (lambda p: p.write_text('{"traceEvents": [1, 2'), "truncated JSON"),
    (lambda p: p.write_text('{"events": []}'), "not a profiler trace"),
    (lambda p: p.write_text("[1, 2, 3]"), "not a profiler trace"),
])
def test_bad_files_raise_one_line_user_errors(tmp_path: Path, setup: Any, message: str) -> None:
    path = tmp_path / "trace.json.gz"
    setup(path)
    with pytest.raises(UserError, match=message) as info:
        load(path, progress=False)
    assert "\n" not in str(info.value)


def test_directory_without_traces(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="no trace files"):
        load(tmp_path, progress=False)


def test_directory_of_non_traces(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(UserError, match="no profiler traces"):
        load(tmp_path, progress=False)


def test_ranks_with_different_world_sizes(tmp_path: Path) -> None:
    events = [x("cpu_op", "aten::add", 0, 10)]
    write_trace(tmp_path / "rank0.json", events, distributedInfo={"rank": 0, "world_size": 2})
    write_trace(tmp_path / "rank1.json", events, distributedInfo={"rank": 1, "world_size": 4})
    with pytest.raises(UserError, match="world size"):
        load(tmp_path, progress=False, workers=1)


def test_two_files_claiming_one_rank(tmp_path: Path) -> None:
    events = [x("cpu_op", "aten::add", 0, 10)]
    write_trace(tmp_path / "a.json", events, distributedInfo={"rank": 0, "world_size": 2})
    write_trace(tmp_path / "b.json.gz", events, distributedInfo={"rank": 0, "world_size": 2})
    with pytest.raises(UserError, match="claim rank 0"):
        load(tmp_path, progress=False, workers=1)


def test_broken_file_in_a_directory_is_an_error(tmp_path: Path) -> None:
    write_trace(tmp_path / "rank0.json", [x("cpu_op", "aten::add", 0, 10)])
    (tmp_path / "rank1.json").write_text('{"traceEvents": [')
    with pytest.raises(UserError, match="rank1.json: truncated JSON"):
        load(tmp_path, progress=False, workers=2)


def _frames_equal(a: Any, b: Any) -> None:
    import pandas as pd

    for name in ("kernels", "gpu_mem", "ops", "launches", "python", "flows", "annotations",
                 "steps"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    assert a.meta == b.meta and a.warnings == b.warnings


@pytest.mark.parametrize("processes", [1, 3])
def test_sliced_and_parallel_reading_equals_whole_document(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: int) -> None:
    from tracekit.load import stream
    from tracekit.load.frames import build_trace, compact_trace
    from tracekit.load.read import read_document
    from tracekit.load.run import TraceJob, load_trace_file

    events = []
    for copy in range(40):  # ~700 events, so tiny slices give many of them
        for event in gpu_trace_events():
            shifted = json.loads(json.dumps(event))
            if "ts" in shifted:
                shifted["ts"] += copy * 1000
            events.append(shifted)
    path = write_trace(tmp_path / "rank0.json.gz", events,
                       deviceProperties=[{"id": 0, "numSms": 132}], traceName="t")
    whole = compact_trace(build_trace(read_document(path), path))
    monkeypatch.setattr(stream, "SLICE_BYTES", 4096)
    monkeypatch.setattr(stream, "MIN_SLICE_BYTES", 4096)
    monkeypatch.setattr(stream, "READ_BYTES", 4096)  # slices are cut between reads
    monkeypatch.setattr(stream, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(stream, "NATIVE_PARALLEL_MIN_BYTES", 0)
    assert len(list(stream.EventSlices(path, 4096))) > 5
    # Runtime and driver launches alternate in the file; every slice holds both kinds.
    assert set(whole.launches["name"]) >= {"cuLaunchKernelEx", "cudaLaunchKernel"}
    meta, columns = stream.extract_file(path, processes - 1)
    assert meta == whole.meta and len(columns["kernels"]["ts"]) == len(whole.kernels)
    sliced = load_trace_file(TraceJob(path, processes=processes))
    _frames_equal(whole, sliced)


def test_unsliceable_text_is_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    # Over 64 KB on one line with no separator the slicer knows: read through the whole-file
    # parse instead.
    events = [x("cpu_op", "a", 0, 10), x("cpu_op", "b", 1, 2)] * 600
    text = json.dumps({"traceEvents": events}, separators=(",", ":")).replace("},{", "} ,{")
    path = tmp_path / "odd.json"
    path.write_text(text)
    from tracekit.load import stream

    monkeypatch.setattr(stream, "READ_BYTES", 4096)
    with pytest.raises(stream.NotSliceable):
        stream.extract_file(path)
    assert load_trace(path, link=False).ops["name"].tolist() == ["a", "b"] * 600


def test_progress_bar_over_rank_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tracekit.load.progress import show_progress

    for rank in (0, 1):
        write_trace(tmp_path / f"rank{rank}.json", [x("cpu_op", "aten::add", 0, 10)],
                    distributedInfo={"rank": rank, "world_size": 2})
    assert show_progress(True, 2) and not show_progress(False, 2)
    run = load(tmp_path, progress=True, workers=2)
    assert run.ranks == [0, 1]
    # The bar is transient: it leaves nothing behind that could precede an error line.
    assert "Traceback" not in capsys.readouterr().err


def test_run_files_beside_the_traces_are_not_traces(tmp_path: Path) -> None:
    """findings.json (even empty, mid-write) and manifest.json are the run's, not rank traces."""
    run_dir = tmp_path / "run"
    shutil.copytree(Path(__file__).resolve().parents[1] / "data/gpu/slow_step_none", run_dir)
    (run_dir / "findings.json").write_text("")
    (run_dir / "manifest.json").write_text("{}")
    run = load(run_dir, progress=False)
    assert sorted(t.rank for t in run.traces) == [0, 1]


DATA = Path(__file__).resolve().parents[1] / "data" / "gpu"


def _distinct_objects(values: np.ndarray) -> int:
    return len({id(v) for v in values})


def _text_columns_sharing_strings(trace: Any) -> int:
    """How many text columns of the trace's frames there are, each asserted to hold one str
    object per distinct value."""
    import pandas as pd

    from tracekit.trace import FRAME_NAMES

    checked = 0
    for name in FRAME_NAMES:
        frame = getattr(trace, name)
        for column in frame.columns:
            values = frame[column].to_numpy()
            if frame[column].dtype != object or \
                    pd.api.types.infer_dtype(values, skipna=True) != "string":
                continue
            assert _distinct_objects(values) == len(pd.unique(values)), (name, column)
            checked += 1
    return checked


def test_equal_strings_are_one_object_in_every_frame() -> None:
    """Names, recorded shapes and source columns repeat every step: each distinct string is
    held once, whichever way the column was made (parser, linker, pandas operations)."""


    trace = load(DATA / "select_backward_index", progress=False).traces[0]
    checked = _text_columns_sharing_strings(trace)
    assert checked >= 25  # every text column of the schema, linked ones included


def test_slices_parsed_in_other_processes_share_their_strings_before_linking(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A slice parsed in a forked process comes back with its own copy of every string: the
    loaded (not yet linked) frames still hold one object per distinct value."""

    import tracekit.load.stream as stream
    from tracekit.load.run import TraceJob, read_trace_file

    monkeypatch.setenv("TRACEKIT_CACHE", "0")
    monkeypatch.setattr(stream, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(stream, "NATIVE_PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(stream, "MIN_SLICE_BYTES", 1 << 16)  # several slices per process
    monkeypatch.setattr(stream, "READ_BYTES", 1 << 16)
    trace = read_trace_file(TraceJob(DATA / "select_backward_index" / "rank0.pt.trace.json.gz",
                                     processes=2))
    checked = _text_columns_sharing_strings(trace)
    assert checked >= 10


def _frame_bytes(trace: Any) -> int:
    """Memory held by a trace's frames, each shared object counted once."""
    import sys

    from tracekit.trace import FRAME_NAMES

    seen: set[int] = set()
    total = 0
    for name in FRAME_NAMES:
        frame = getattr(trace, name)
        for column in frame.columns:
            values = frame[column].to_numpy()
            total += values.nbytes
            if values.dtype == object:
                for value in values:
                    if id(value) not in seen:
                        seen.add(id(value))
                        total += sys.getsizeof(value)
    return total


def test_frames_are_a_fraction_of_the_json() -> None:
    """A rank's linked frames must stay well below its JSON text: the parent of a multi-rank
    load holds every rank's frames at once. Measured on this eager trace (recorded shapes on
    every op): 0.35x, and 0.69x when each row held its own copy of its strings and
    every integer was int64."""
    path = DATA / "select_backward_index" / "rank0.pt.trace.json.gz"
    json_bytes = len(gzip.decompress(path.read_bytes()))
    trace = load(path, progress=False).traces[0]
    assert _frame_bytes(trace) < 0.5 * json_bytes


def test_worker_results_match_in_process_load_and_leave_no_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank files loaded by worker processes come back through spooled pickles: same frames
    as loading in this process, and the spool directory is gone afterwards."""
    import tempfile

    spool_root = tmp_path / "tmp"
    spool_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool_root))
    run_dir = tmp_path / "run"
    shutil.copytree(DATA / "sm_contention_eager", run_dir)
    monkeypatch.setenv("TRACEKIT_CACHE", "0")
    in_process = load(run_dir, progress=False, workers=1)
    in_workers = load(run_dir, progress=False, workers=2)
    assert in_process.ranks == in_workers.ranks == [0, 1]
    for a, b in zip(in_process.traces, in_workers.traces, strict=True):
        _frames_equal(a, b)
    assert list(spool_root.iterdir()) == []


def test_small_integer_columns_are_int32_and_out_of_range_values_stay_int64() -> None:
    import pandas as pd

    from tracekit.load.columns import narrow_ints
    from tracekit.load.frames import INT32_COLUMNS

    frame = pd.DataFrame({"row": np.array([5, -1], dtype=np.int64),
                          "huge": np.array([2**40, 0], dtype=np.int64)})
    narrow_ints(frame, ("row", "huge", "absent"))
    assert frame["row"].dtype == np.int32 and frame["row"].tolist() == [5, -1]
    assert frame["huge"].dtype == np.int64 and frame["huge"].tolist() == [2**40, 0]
    trace = load(DATA / "select_backward_index", progress=False).traces[0]
    for name, columns in INT32_COLUMNS.items():
        frame = getattr(trace, name)
        assert all(frame[c].dtype == np.int32 for c in columns), name
    assert trace.kernels["correlation"].dtype == np.int64  # ids stay int64 (join keys)


def test_sharing_strings_makes_equal_strings_one_object_and_leaves_the_rest_as_it_was() -> None:
    """Copies of equal strings become the first one; None, NaN and a column mixing numbers
    with strings (where merging by value would merge 1 with 1.0) keep their own objects."""
    import numpy as np
    import pandas as pd

    from tracekit.load.columns import share_strings

    def copy(text: str) -> str:
        return "".join(list(text))

    nan = float("nan")
    texts = np.array(["ab", copy("ab"), None, copy("cd"), nan, "cd", copy("ab")], dtype=object)
    mixed = np.array([1, 1.0, "ab", copy("ab")], dtype=object)
    frame = pd.DataFrame({"text": pd.Series(texts, dtype=object),
                          "mixed": pd.Series(np.r_[mixed, mixed[:3]], dtype=object)})
    share_strings(frame)
    shared = frame["text"].to_numpy()
    assert list(shared[[0, 1, 3, 5, 6]]) == ["ab", "ab", "cd", "cd", "ab"]
    assert shared[1] is shared[0] and shared[6] is shared[0] and shared[5] is shared[3]
    assert shared[3] is texts[3] and shared[2] is None and shared[4] is nan
    assert all(a is b for a, b in zip(frame["mixed"], np.r_[mixed, mixed[:3]], strict=True))


COMMITTED_TRACES = sorted(
    p for p in [*(REPO / "tests/data/gpu").rglob("*.pt.trace.json.gz"),
                *(REPO / "tests/data/external").glob("*.json.gz")]
    if ".tkcache" not in p.parts)


def spans_by_grouping(steps, kernels, gpu_mem, launches) -> pd.DataFrame:
    """What gpu_spans_from_launches computes, said with pandas joins and a groupby."""
    gpu = pd.concat([kernels[["ts", "end", "correlation"]], gpu_mem[["ts", "end", "correlation"]]],
                    ignore_index=True)
    by_corr = launches.drop_duplicates("correlation").set_index("correlation")["ts"]
    launch_ts = gpu["correlation"].map(by_corr).to_numpy(dtype=np.float64, na_value=np.nan)
    step = step_of_times(steps["cpu_ts"].to_numpy(), steps["cpu_end"].to_numpy(),
                         steps["step"].to_numpy(), np.nan_to_num(launch_ts, nan=-np.inf))
    gpu = gpu.assign(step=step)
    spans = gpu[gpu["step"] >= 0].groupby("step").agg(gpu_ts=("ts", "min"), gpu_end=("end", "max"))
    return steps[["step"]].join(spans, on="step")[["gpu_ts", "gpu_end"]]


@pytest.mark.parametrize("path", COMMITTED_TRACES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_each_steps_gpu_span_is_the_first_to_last_gpu_work_it_launched(path: Path) -> None:
    """On every committed trace (ours, and other people's: ROCm, old Kineto, no launches),
    also with the steps shuffled, one step that launched nothing and one row given twice."""
    trace = load_trace(path, link=False)
    steps = trace.steps
    shuffled = pd.concat([steps, pd.DataFrame({"step": [10**6], "cpu_ts": [-2.0],
                                                "cpu_end": [-1.0]}), steps.iloc[:1]],
                         ignore_index=True)  # a step that launched nothing; a repeated row
    for table in (steps, shuffled.sample(frac=1.0, random_state=5)):
        got = gpu_spans_from_launches(table, trace.kernels, trace.gpu_mem, trace.launches)
        expected = spans_by_grouping(table, trace.kernels, trace.gpu_mem, trace.launches)
        pd.testing.assert_frame_equal(got, expected.astype(np.float64))


@pytest.mark.parametrize(("mb", "scanner", "extra"), [
    (20, False, 0), (54, False, 7), (54, True, 0), (300, True, 7), (300, False, 7)])
def test_a_file_is_parsed_by_a_pool_only_where_that_pays(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path, mb: int,
                                                          scanner: bool, extra: int) -> None:
    """With eight processes to spend: the typed path pools files from 24 MB, the native
    scanner (whose slices cost more to send back than to scan) from 256 MB."""
    from tracekit.load import stream

    trace = tmp_path / "rank0.json"
    trace.write_text("{}")
    monkeypatch.setattr(stream, "text_size", lambda path: mb * 2**20)
    monkeypatch.setattr(stream.native, "enabled", lambda: scanner)
    assert stream.worker_count(trace, processes=8) == extra
