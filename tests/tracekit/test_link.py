"""tracekit.link: kernels -> launches -> ops -> source lines, backward -> forward, steps."""

from __future__ import annotations

import gzip
import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tracekit.link import link_trace, op_stack
from tracekit.link.launches import launch_index, op_by_external_id
from tracekit.pipeline import load_trace
from tracekit.source import SourceIndex, choose_line
from tracekit.trace import Trace

PID, TID, BWD_TID = 100, 100, 200

MODEL_PY = textwrap.dedent('''\
    def forward(bank, x):
        w = bank[1]
        y = x @ w
        out = y.sum()
        return out


    def two_subscripts(bank):
        a = bank[0]
        b = bank[1]
        return a, b


    def launch_triton(src):
        my_copy_kernel[(16,)](src, 16)
''')


def x(cat: str, name: str, ts: float, dur: float, tid: int = TID, pid: int = PID,
      **args: Any) -> dict[str, Any]:
    return {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur,
            "args": args}


def launch(ts: float, corr: int, tid: int = TID, name: str = "cudaLaunchKernel",
           cat: str = "cuda_runtime") -> dict[str, Any]:
    return x(cat, name, ts, 2, tid=tid, correlation=corr)


def kernel(name: str, ts: float, dur: float, corr: int, stream: int = 7) -> dict[str, Any]:
    return x("kernel", name, ts, dur, pid=0, tid=stream, device=0, stream=stream,
             correlation=corr, grid=[1, 1, 1], block=[128, 1, 1])


def flow(fid: int, ph: str, ts: float, tid: int) -> dict[str, Any]:
    return {"ph": ph, "cat": "fwdbwd", "name": "fwdbwd", "id": fid, "pid": PID, "tid": tid,
            "ts": ts}


def trace_events() -> list[dict[str, Any]]:
    """One training step: forward on the main thread under Python frames, backward on the
    autograd thread, an NCCL all_reduce, and a Triton kernel launched straight from Python."""
    return [
        x("user_annotation", "ProfilerStep#1", 0, 1000),
        x("user_annotation", "ProfilerStep#2", 1000, 1000),
        x("python_function", "train.py(1): <module>", 0, 2000),
        x("python_function", "model.py(1): forward", 5, 300),
        # A torch frame inside the user frame must not be chosen as the source.
        x("python_function", "torch/nn/modules/module.py(1751): _call_impl", 8, 290),
        x("cpu_op", "aten::select", 10, 10, **{"Sequence number": 3, "Fwd thread id": 0}),
        x("cpu_op", "aten::as_strided", 12, 2),
        x("cpu_op", "aten::matmul", 30, 30, **{"Sequence number": 4, "Fwd thread id": 0}),
        x("cpu_op", "aten::mm", 32, 20, **{"Sequence number": 4, "Fwd thread id": 0}),
        launch(35, 11),
        kernel("sm90_xmma_gemm_f32", 100, 50, 11),
        x("cpu_op", "aten::sum", 70, 20, **{"Sequence number": 5, "Fwd thread id": 0}),
        launch(75, 12),
        kernel("void at::native::reduce_kernel<512, 1>", 150, 10, 12),
        flow(1, "s", 10, TID),
        # Backward on the autograd thread: SelectBackward0 linked by a flow...
        x("cpu_op", "autograd::engine::evaluate_function: SelectBackward0", 400, 100,
          tid=BWD_TID, **{"Sequence number": 3, "Fwd thread id": 1}),
        x("cpu_op", "SelectBackward0", 401, 98, tid=BWD_TID,
          **{"Sequence number": 3, "Fwd thread id": 1}),
        flow(1, "f", 401, BWD_TID),
        x("cpu_op", "aten::select_backward", 402, 90, tid=BWD_TID),
        x("cpu_op", "aten::fill_", 403, 20, tid=BWD_TID),
        launch(405, 13, tid=BWD_TID),
        kernel("void at::native::vectorized_elementwise_kernel<4, FillFunctor<float>>",
               1200, 40, 13),
        # ... MmBackward0 only by its sequence number (no flow).
        x("cpu_op", "autograd::engine::evaluate_function: MmBackward0", 600, 100,
          tid=BWD_TID, **{"Sequence number": 4, "Fwd thread id": 1}),
        x("cpu_op", "aten::mm", 610, 50, tid=BWD_TID),
        launch(615, 14, tid=BWD_TID),
        kernel("sm90_xmma_gemm_f32_bwd", 1300, 50, 14),
        # NCCL through the driver, on its own stream.
        x("cpu_op", "record_param_comms", 800, 50),
        launch(805, 15, name="cuLaunchKernelEx", cat="cuda_driver"),
        x("kernel", "ncclDevKernel_AllReduce_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)",
          1400, 80, pid=0, tid=20, device=0, stream=20, correlation=15,
          **{"Collective name": "allreduce", "In msg nelems": 1, "Out msg nelems": 1}),
        # Triton kernel launched from Python, outside any cpu_op.
        x("python_function", "model.py(14): launch_triton", 900, 50),
        x("python_function", "triton/runtime/jit.py(700): run", 901, 40),
        launch(910, 16, name="cuLaunchKernel", cat="cuda_driver"),
        kernel("my_copy_kernel", 1500, 10, 16),
    ]


def write(path: Path, events: list[dict[str, Any]]) -> Path:
    doc = {"traceEvents": events, "distributedInfo": {"rank": 0, "world_size": 1},
           "deviceProperties": [{"id": 0, "numSms": 132}]}
    path.write_bytes(gzip.compress(json.dumps(doc).encode()))
    return path


@pytest.fixture()
def linked(tmp_path: Path) -> Trace:
    (tmp_path / "model.py").write_text(MODEL_PY)
    trace = load_trace(write(tmp_path / "rank0.pt.trace.json.gz", trace_events()), link=False)
    return link_trace(trace, source_roots=[tmp_path])


def by_name(trace: Trace, frame: str, name: str) -> Any:
    df = getattr(trace, frame)
    rows = df[df["name"] == name]
    assert len(rows) >= 1, name
    return rows.iloc[0]


def op_name(trace: Trace, row: int) -> str | None:
    return None if row < 0 else str(trace.ops["name"].iat[row])


def test_kernel_launch_op_chain(linked: Trace) -> None:
    k = linked.kernels.set_index("correlation")
    launches = linked.launches
    for corr in (11, 12, 13, 14, 15, 16):
        assert launches["correlation"].iat[k.loc[corr, "launch_idx"]] == corr
    assert op_name(linked, k.loc[11, "op_idx"]) == "aten::mm"  # innermost, not aten::matmul
    assert op_name(linked, k.loc[12, "op_idx"]) == "aten::sum"
    assert op_name(linked, k.loc[13, "op_idx"]) == "aten::fill_"
    assert op_name(linked, k.loc[15, "op_idx"]) == "record_param_comms"  # via cuLaunchKernelEx
    assert k.loc[16, "op_idx"] == -1  # Triton launched from Python: no cpu_op around it
    assert linked.linked


def test_op_stack_outermost_first(linked: Trace) -> None:
    fill = linked.kernels.set_index("correlation").loc[13, "op_idx"]
    assert op_stack(linked, fill) == [
        "autograd::engine::evaluate_function: SelectBackward0", "SelectBackward0",
        "aten::select_backward", "aten::fill_"]
    mm = linked.kernels.set_index("correlation").loc[11, "op_idx"]
    assert op_stack(linked, mm) == ["ProfilerStep#1", "aten::matmul", "aten::mm"]
    assert op_stack(linked, -1) == []


def test_comm_stream_and_triton_category(linked: Trace) -> None:
    k = linked.kernels.set_index("correlation")
    assert k.loc[15, "is_comm_stream"] and k.loc[15, "is_nccl"]
    assert not k.loc[11, "is_comm_stream"]
    # A plain-identifier kernel launched with cuLaunchKernel is Triton-compiled.
    assert k.loc[16, "category"] == "triton"


def test_gpu_step_comes_from_the_launch(linked: Trace) -> None:
    k = linked.kernels.set_index("correlation")
    # The fill kernel runs at 1200 us, inside the CPU span of step 2, but was launched in step 1.
    assert k.loc[13, "ts"] >= 1000 and k.loc[13, "step"] == 1
    assert set(k["step"]) == {1}
    assert by_name(linked, "ops", "aten::mm")["step"] == 1
    steps = linked.steps.set_index("step")
    assert steps.loc[1, "gpu_ts"] == 100 and steps.loc[1, "gpu_end"] == 1510
    assert (linked.launches["step"] == 1).all()


def test_forward_op_by_flow_and_by_sequence_number(linked: Trace) -> None:
    ops = linked.ops
    fwd_of = {name: op_name(linked, f) for name, f in zip(ops["name"], ops["fwd_op_idx"],
                                                          strict=True)
              if ops["tid"].iat[list(ops["name"]).index(name)] == BWD_TID}
    assert fwd_of["SelectBackward0"] == "aten::select"  # the flow
    assert fwd_of["aten::select_backward"] == "aten::select"  # inherited by children
    assert fwd_of["aten::fill_"] == "aten::select"
    # No flow for MmBackward0: the sequence number picks the innermost forward op (aten::mm).
    assert fwd_of["autograd::engine::evaluate_function: MmBackward0"] == "aten::mm"
    assert by_name(linked, "ops", "aten::select")["fwd_op_idx"] == -1


def test_source_lines_skip_torch_frames_and_narrow(linked: Trace) -> None:
    select = by_name(linked, "ops", "aten::select")
    assert (select.src_file, select.src_function) == ("model.py", "forward")
    assert (select.src_line, select.src_line_exact) == (2, True)  # w = bank[1]
    assert by_name(linked, "ops", "aten::mm")[["src_line", "src_line_exact"]].tolist() == [3, True]
    assert by_name(linked, "ops", "aten::sum")["src_line"] == 4
    # record_param_comms has no matching call in <module> of an unreadable train.py.
    comms = by_name(linked, "ops", "record_param_comms")
    assert (comms.src_file, comms.src_line, comms.src_line_exact) == ("train.py", 1, False)


def test_backward_kernels_point_at_the_forward_line(linked: Trace) -> None:
    src = linked.kernels
    k = linked.kernels.reset_index(drop=True)
    fill = src[k["correlation"] == 13].iloc[0]
    assert (fill.src_file, fill.src_line, fill.src_line_exact, fill.src_from_fwd) == (
        "model.py", 2, True, True)
    mm_bwd = src[k["correlation"] == 14].iloc[0]
    assert (mm_bwd.src_line, mm_bwd.src_from_fwd) == (3, True)
    triton = src[k["correlation"] == 16].iloc[0]
    assert (triton.src_function, triton.src_line, triton.src_line_exact) == (
        "launch_triton", 15, True)
    assert (linked.kernels[["src_file", "src_line"]].to_numpy() ==
            src[["src_file", "src_line"]].to_numpy()).all()


def test_unreadable_source_keeps_the_def_line(tmp_path: Path) -> None:
    trace = load_trace(write(tmp_path / "t.json.gz", trace_events()), link=False)
    link_trace(trace, source_roots=[tmp_path / "nowhere"])
    select = by_name(trace, "ops", "aten::select")
    assert (select.src_line, select.src_line_exact) == (1, False)


def test_narrowing_rules(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(MODEL_PY)
    index = SourceIndex(roots=[tmp_path])
    assert index.narrow("model.py", 1, "forward", "aten::select", 0, 1).line == 2
    assert index.narrow("model.py", 1, "forward", "aten::matmul", 0, 1).line == 3
    # Two candidate subscripts: one select op is ambiguous; two are matched in order.
    ambiguous = index.narrow("model.py", 8, "two_subscripts", "aten::select", 0, 1)
    assert (ambiguous.line, ambiguous.exact) == (8, False)
    assert index.narrow("model.py", 8, "two_subscripts", "aten::select", 1, 2).line == 10
    # A def line that no longer names that function (the file changed): keep the def line.
    assert not index.narrow("model.py", 2, "forward", "aten::select", 0, 1).exact
    assert choose_line([5, 5], 1, 0, 3).line == 5
    assert choose_line([5, 6], 1, 3, 4).line == 6  # a loop over both statements


def test_narrowing_finds_scripts_below_the_project_root(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "model.py").write_text(MODEL_PY)
    index = SourceIndex(roots=[tmp_path])
    assert index.resolve("model.py") == tmp_path / "scripts" / "model.py"
    assert index.narrow("model.py", 1, "forward", "aten::sum", 0, 1).exact


def test_label_and_copy_matchers(tmp_path: Path) -> None:
    (tmp_path / "opt.py").write_text(textwrap.dedent('''\
        def step(self, params):
            with record_function("optimizer.tie"):
                self.embed.copy_(self.head.T)
            self.opt.step()
    '''))
    index = SourceIndex(roots=[tmp_path])
    assert index.narrow("opt.py", 1, "step", "aten::copy_", 0, 1).line == 3
    assert index.narrow("opt.py", 1, "step", "optimizer.tie", 0, 1).line == 2
    assert index.narrow("opt.py", 1, "step", "Optimizer.step#AdamW.step", 0, 1).line == 4


def test_link_without_gpu_or_python(tmp_path: Path) -> None:
    events = [x("cpu_op", "aten::add", 0, 10)]
    trace = link_trace(load_trace(write(tmp_path / "cpu.json.gz", events), link=False))
    assert trace.linked and len(trace.kernels) == 0
    for column in ("launch_idx", "op_idx", "step", "is_comm_stream", "src_line"):
        assert column in trace.kernels.columns
    assert trace.ops["src_line"].tolist() == [-1]
    assert trace.ops["fwd_op_idx"].tolist() == [-1]


LOOP_PY = textwrap.dedent('''\
    def main(bank, x):
        for step in range(10):
            y = x @ bank
            report(step)
''')


def running_frame_events(first_line: int, started_after_a_return: bool) -> list[dict[str, Any]]:
    """`main` named "loop.py(N): main" with a matmul in its loop; with `started_after_a_return`,
    a short frame returns before `main` starts (so `main` was entered while profiling)."""
    start = 50 if started_after_a_return else 0
    events = [x("python_function", f"loop.py({first_line}): main", start, 900)]
    if started_after_a_return:
        events.append(x("python_function", "loop.py(1): main", 0, 10))
    return events + [x("cpu_op", "aten::matmul", 100, 20)]


def test_a_frame_running_when_profiling_began_is_narrowed_within_its_function(
        tmp_path: Path) -> None:
    """The profiler names a frame already on the stack by the line it was executing (here the
    `report(step)` line): the matmul it ran is found in the function holding that line."""
    (tmp_path / "loop.py").write_text(LOOP_PY)
    trace = load_trace(write(tmp_path / "rank0.pt.trace.json.gz",
                             running_frame_events(4, started_after_a_return=False)), link=False)
    link_trace(trace, source_roots=[tmp_path])
    matmul = by_name(trace, "ops", "aten::matmul")
    assert (matmul.src_function, matmul.src_line, matmul.src_line_exact) == ("main", 3, True)


def test_a_frame_entered_while_profiling_with_a_stale_line_keeps_it(tmp_path: Path) -> None:
    """The same name on a frame entered after profiling began is a def line that no longer
    names `main` (the file changed since recording): nothing is guessed from it."""
    (tmp_path / "loop.py").write_text(LOOP_PY)
    trace = load_trace(write(tmp_path / "rank0.pt.trace.json.gz",
                             running_frame_events(4, started_after_a_return=True)), link=False)
    link_trace(trace, source_roots=[tmp_path])
    matmul = by_name(trace, "ops", "aten::matmul")
    assert (matmul.src_line, matmul.src_line_exact) == (4, False)


def test_the_nearest_marked_ancestor_is_found_from_any_rows_with_a_mask_or_a_question() -> None:
    """ops: 0 <- 1 <- 2 and 3 (a root); marked: 0. From every op, from chosen rows (-1: none),
    and asking only about the ops met on the way up."""
    import numpy as np
    import pandas as pd

    from tracekit.link.ancestry import ancestor_matching

    ops = pd.DataFrame({"parent": [-1, 0, 1, -1], "name": ["outer", "mid", "leaf", "alone"]})
    marked = np.array([True, False, False, False])
    assert ancestor_matching(ops, marked).tolist() == [0, 0, 0, -1]
    assert ancestor_matching(ops, marked, np.array([2, -1, 3])).tolist() == [0, -1, -1]
    asked: list[int] = []

    def is_mid(rows: np.ndarray) -> np.ndarray:
        asked.extend(rows.tolist())
        return ops["name"].to_numpy()[rows] == "mid"

    assert ancestor_matching(ops, is_mid, np.array([2])).tolist() == [1]
    assert 3 not in asked


def test_a_correlation_id_shared_by_a_runtime_and_a_driver_call_goes_to_the_kernel_launch() -> None:
    launches = pd.DataFrame({"correlation": [5, 5, 7, -1, 7, 5],
                             "is_kernel_launch": [False, True, False, True, False, True]})
    found = launch_index(launches, pd.Series([5, 7, 9, -1, 5]))
    assert list(found) == [1, 2, -1, -1, 1]


def test_gpu_work_without_a_launch_goes_to_the_deepest_op_with_its_external_id() -> None:
    ops = pd.DataFrame({"external_id": [3, 3, 3, -1, 4], "depth": [0, 2, 2, 1, 0]})
    assert list(op_by_external_id(ops, np.array([3, 4, 5, -1]))) == [1, 4, -1, -1]
