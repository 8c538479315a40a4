"""Work the autograd engine runs on its own (a parameter's gradient accumulation) points at the
`.backward()` statement that started the pass; compiled and hook code keep their own answer."""

from __future__ import annotations

import gzip
import json
import textwrap
from pathlib import Path
from typing import Any

from tracekit.link import link_trace
from tracekit.pipeline import load_trace
from tracekit.source import SourceIndex
from tracekit.source.backward_call import backward_statement

TRAIN_PY = textwrap.dedent('''\
    model, opt = build()
    loss = model(first()).sum()
    loss.backward()
    for step in range(10):
        for micro in range(4):
            loss = model(batch())
            loss.backward()
        opt.step()


    def train_step(model, x):
        loss = model(x)
        loss.backward()
        return loss


    def two_passes(model, x):
        model(x).backward()
        model(x).backward()
''')
MAIN, ENGINE = 1, 2


def ev(cat: str, name: str, ts: float, dur: float, tid: int = MAIN, **args: Any
       ) -> dict[str, Any]:
    return {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": tid, "ts": ts, "dur": dur,
            "args": args}


def accumulate(ts: float, corr: int, tid: int = ENGINE) -> list[dict[str, Any]]:
    return [
        ev("cpu_op", "autograd::engine::evaluate_function: torch::autograd::AccumulateGrad",
           ts, 30, tid=tid),
        ev("cpu_op", "torch::autograd::AccumulateGrad", ts + 1, 28, tid=tid),
        ev("cpu_op", "aten::add_", ts + 2, 20, tid=tid),
        ev("cuda_runtime", "cudaLaunchKernel", ts + 5, 2, tid=tid, correlation=corr),
        {"ph": "X", "cat": "kernel", "name": f"add_kernel_{corr}", "pid": 0, "tid": 7,
         "ts": ts + 200, "dur": 50, "args": {"device": 0, "stream": 7, "correlation": corr}},
    ]


def linked(tmp_path: Path, module_frame: str) -> Any:
    (tmp_path / "train.py").write_text(TRAIN_PY)
    events = [
        ev("user_annotation", "ProfilerStep#1", 0, 1000),
        ev("python_function", module_frame, 0, 1000),
        ev("python_function", "torch/_tensor.py(576): backward", 100, 500),
        ev("python_function", "torch/autograd/graph.py(860): _engine_run_backward", 101, 498),
        ev("python_function", "<built-in method run_backward of torch._C._EngineBase object>",
           102, 496),
        *accumulate(150, 1),
        # A Python hook the engine calls: its own frame is the answer, not the caller's.
        ev("python_function", "train.py(11): train_step", 300, 60, tid=ENGINE),
        *accumulate(310, 2),
    ]
    doc = {"traceEvents": events, "distributedInfo": {"rank": 0, "world_size": 1}}
    path = tmp_path / "rank0.pt.trace.json.gz"
    path.write_bytes(gzip.compress(json.dumps(doc).encode()))
    return link_trace(load_trace(path, link=False), source_roots=[tmp_path])


def test_gradient_accumulation_points_at_the_backward_call_of_the_running_loop(
        tmp_path: Path) -> None:
    """The training loop was running when profiling began: the tracer names its frame by the
    line it was executing (opt.step()); the accumulation is the loop's `loss.backward()`."""
    trace = linked(tmp_path, "train.py(8): <module>")
    kernels = trace.kernels.set_index("name")
    add = kernels.loc["add_kernel_1"]
    assert (add["src_file"], int(add["src_line"]), bool(add["src_line_exact"])) == (
        "train.py", 7, True)
    # Under Python code of the engine's own thread: that code's line, not the backward call.
    hooked = kernels.loc["add_kernel_2"]
    assert int(hooked["src_line"]) != 7


def test_the_backward_statement_of_a_frame(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(TRAIN_PY)
    index = SourceIndex(roots=(tmp_path,))
    # A function entered while profiling (named by its def line): its one backward call.
    assert backward_statement(index, "train.py", 11, "train_step").line == 13
    assert backward_statement(index, "train.py", 11, "train_step").exact
    # Two backward calls: no guess.
    assert not backward_statement(index, "train.py", 17, "two_passes").exact
    # Module code running outside the loop (line 2): both of its backward calls qualify.
    assert not backward_statement(index, "train.py", 2, "<module>").exact
    # Unreadable file: the frame's line, inexact.
    missing = backward_statement(index, "gone.py", 5, "<module>")
    assert (missing.line, missing.exact) == (5, False)
