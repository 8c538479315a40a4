"""Compiled kernels -> the user lines they fused, from torch's provenance artifacts.

tests/data/torch_trace/compiled_bank_rank_0.log: the Inductor entries of a TORCH_TRACE log of
tests/programs/compiled_bank.py (torch 2.13, CPU, INDUCTOR_PROVENANCE=1), paths rewritten.
tests/data/compiled_cpu: `profile --script tests/programs/compiled_bank.py --steps 3-5` on CPU
with C++ kernel profiling on (TORCHINDUCTOR_CPP_ENABLE_KERNEL_PROFILE=1: the kernels show as
graph_0_cpp_fused_* ops), with the compiled_kernels.json the runner kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tracekit.link.compiled import kernel_lines, primary_line, profiler_name, relocate
from tracekit.load.compiled import innermost_frame, kernel_files, kernels_from_log
from tracekit.pipeline import analyze_run, load
from tracekit.source import SourceIndex

DATA = Path(__file__).resolve().parents[1] / "data"
PROGRAM = (Path(__file__).resolve().parents[1] / "programs" / "compiled_bank.py").read_text()


def line_of(text: str) -> int:
    (hit,) = [n for n, line in enumerate(PROGRAM.splitlines(), 1) if text in line]
    return hit


def test_every_generated_kernel_gets_the_statements_it_fused() -> None:
    kernels = {k["name"]: k for k in kernels_from_log(DATA / "torch_trace" /
                                                     "compiled_bank_rank_0.log")}
    assert "cpp_fused_add_select_backward_4" in kernels
    assert not [name for name in kernels if name.startswith("extern_kernels")]
    (bank,) = kernels["cpp_fused_add_select_backward_4"]["lines"]
    assert (bank["line"], bank["code"]) == (line_of("w = self.bank[i]"), "w = self.bank[i]")
    assert bank["file"] == "/home/user/project/tests/programs/compiled_bank.py"
    # a backward kernel fusing the loss and the layer's activation lists both statements
    fused = kernels["cpp_fused_div_expand_mul_pow_relu_threshold_backward_0"]["lines"]
    assert [line["line"] for line in fused] == [line_of("x = torch.relu(x @ w)"),
                                                line_of("return x.square().mean()")]
    assert all(k["output_code"].endswith(".py") for k in kernels.values())


def test_triton_kernels_keep_their_generated_file() -> None:
    code = ("# kernel path: /tmp/torchinductor_u/ab/cabc.py\n# Topologically Sorted Source "
            "Nodes: [w], Original ATen: [aten.select_backward]\n"
            "triton_poi_fused_select_backward_0 = async_compile.triton("
            "'triton_poi_fused_select_backward_0', '''\n"
            "cpp_fused_add_1 = async_compile.cpp_pybinding(['float*'], r'''\n")
    assert kernel_files(code) == {"triton_poi_fused_select_backward_0":
                                  "/tmp/torchinductor_u/ab/cabc.py", "cpp_fused_add_1": None}


def test_the_innermost_frame_is_the_statement() -> None:
    stack = ('  File "/a/train.py", line 90, in forward\n    x = block(x)\n'
             '  File "/a/model.py", line 12, in block\n    return bank[i] @ x\n'
             '           ^^^^^^^\n')
    assert innermost_frame(stack) == {"file": "/a/model.py", "line": 12, "function": "block",
                                      "code": "return bank[i] @ x"}


def test_files_are_named_as_the_profiler_names_frames() -> None:
    roots = (Path("/home/u/proj"), Path("/home/u/proj/tests/programs"))
    assert profiler_name("/home/u/proj/tests/programs/x.py", roots) == "x.py"
    assert profiler_name("/home/u/proj/trainer/model.py", roots) == "trainer/model.py"
    assert profiler_name("/elsewhere/y.py", roots) == "/elsewhere/y.py"


def test_a_fused_select_backward_points_at_the_indexing_line_even_without_the_file(
        tmp_path: Path) -> None:
    lines = [{"file": "gone.py", "line": 24, "code": "x = torch.relu(x @ w) * self.scale"},
             {"file": "gone.py", "line": 23, "code": "w = self.bank[i]"}]
    index = SourceIndex(roots=(tmp_path,))  # the file is not there: its recorded text decides
    assert primary_line("triton_poi_fused_add_select_backward_2", lines, index)["line"] == 23
    assert primary_line("triton_poi_fused_add_mul_2", lines, index)["line"] == 24


def test_compiled_cpu_kernels_take_their_recorded_lines() -> None:
    run = load(DATA / "compiled_cpu", progress=False)
    ops = run.traces[0].ops
    kernels = ops[ops["name"].str.startswith("graph_0_cpp_fused")]
    assert len(kernels) and kernels["src_line_exact"].all()
    assert set(kernels["src_file"]) == {"compiled_bank.py"}
    relu = kernels[kernels["name"] == "graph_0_cpp_fused_mul_relu_0"]
    assert set(relu["src_line"]) == {line_of("x = torch.relu(x @ w)")}


def test_compiled_select_backward_is_found_at_the_bank_line_as_an_upper_bound() -> None:
    _, findings = analyze_run(DATA / "compiled_cpu", kinds=["select_backward"], progress=False)
    (f,) = findings
    assert (f.cause.source.file, f.cause.source.line, f.cause.source.line_exact) == \
        ("compiled_bank.py", line_of("w = self.bank[i]"), True)
    assert f.step == 3 and f.count == 3
    assert f.evidence["cost_basis"] == "upper bound"  # fused with an add; no shapes recorded
    assert f.evidence["fused_lines"] == {
        "cpp_fused_add_select_backward_4": [f"compiled_bank.py:{line_of('w = self.bank[i]')}"]}
    assert "fused into 1 Inductor kernel with add" in f.title


def test_a_script_the_profiler_ran_is_not_spoken_of_in_the_trainers_words() -> None:
    """`profile --script` writes a manifest as the trainer does; the program is still someone
    else's: no "bank", and the generic advice, not the trainer's."""
    run, findings = analyze_run(DATA / "compiled_cpu", kinds=["select_backward"],
                                progress=False)
    assert run.manifest["kind"] == "script" and not run.from_trainer
    (f,) = findings
    assert f.title.startswith("select_backward: indexing at compiled_bank.py:")
    assert "bank.unbind(0)" not in f.suggestion and ".unbind(0)" in f.suggestion


def test_a_line_recorded_by_another_checkout_is_found_by_its_statement(tmp_path: Path) -> None:
    """A graph taken from Inductor's cache keeps the stack of the run that compiled it: the
    other checkout's file and line numbers. The statement text finds the line in this run's
    copy of the file; a statement this copy lacks is dropped."""
    (tmp_path / "prog.py").write_text("import torch\n\n\ndef f(bank, i):\n    w = bank[i]\n")
    index = SourceIndex(roots=(tmp_path,))
    moved = {"file": "/old/checkout/prog.py", "line": 3, "function": "f", "code": "w = bank[i]"}
    assert relocate(moved, (tmp_path,), index) == dict(moved, file="prog.py", line=5)
    gone = dict(moved, code="w = bank.unbind(0)[i]")
    assert relocate(gone, (tmp_path,), index) is None
    here = dict(moved, file=str(tmp_path / "prog.py"), line=5)
    assert relocate(here, (tmp_path,), index) == dict(here, file="prog.py")


GENERATED = "/tmp/cache/qk/cqkzt5mdn3x2gwa7o4bnyrdqfhqj6m2vmvzhd4dmb3h7xzqymkqk.py"
GENERATED_BACKWARD = "/tmp/cache/b2/cb2ph7o4bnyrdqfhqj6m2vmvzhd4dmb3h7xzqymkqkaaaaaaaaaaa.py"
"""Where Inductor's code cache keeps a compiled graph's module (any cache directory)."""


def _graph_run(tmp_path: Path) -> Path:
    """A compiled forward whose graph's `call` (in a generated module) runs an extern custom op
    and a Triton kernel, beside an eager op on a user line."""
    import gzip
    import json

    (tmp_path / "model.py").write_text(
        "def forward(x, w):\n    y = head(x, w)\n    return y\n\n\n"
        "def step(p):\n    p.add_(1)\n")

    def ev(cat: str, name: str, ts: float, dur: float, **args: object) -> dict[str, object]:
        return {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": 1, "ts": ts, "dur": dur,
                "args": args}

    def gpu(name: str, ts: float, corr: int) -> list[dict[str, object]]:
        return [ev("cuda_runtime", "cudaLaunchKernel", ts, 2, correlation=corr),
                {"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": 7, "ts": ts + 100,
                 "dur": 20, "args": {"device": 0, "stream": 7, "correlation": corr}}]

    def flow(ph: str, ts: float, tid: int) -> dict[str, object]:
        return {"ph": ph, "cat": "fwdbwd", "name": "fwdbwd", "id": 9, "pid": 1, "tid": tid,
                "ts": ts}

    backward = [
        dict(ev("cpu_op", "CompiledFunctionBackward", 700, 200), tid=2),
        flow("f", 700, 2),
        dict(ev("python_function", f"{GENERATED_BACKWARD}(12): call", 705, 190), tid=2),
        dict(ev("cpu_op", "mylib::head_backward", 710, 50), tid=2),
        dict(ev("cuda_runtime", "cudaLaunchKernel", 715, 2, correlation=4), tid=2),
        {"ph": "X", "cat": "kernel", "name": "head_backward_gemm", "pid": 0, "tid": 7,
         "ts": 900, "dur": 20, "args": {"device": 0, "stream": 7, "correlation": 4}},
    ]
    events = [
        ev("user_annotation", "ProfilerStep#1", 0, 1000),
        ev("python_function", "model.py(1): forward", 5, 400),
        ev("cpu_op", "CompiledFunction", 6, 380),
        flow("s", 6, 1),
        ev("python_function", "torch/_dynamo/eval_frame.py(1240): _fn", 6, 390),
        ev("python_function", f"{GENERATED}(40): call", 10, 300),
        ev("cpu_op", "mylib::head", 20, 50),
        *gpu("head_gemm_kernel", 30, 1),
        ev("cpu_op", "triton_poi_fused_mul_0", 100, 20),
        *gpu("triton_poi_fused_mul_0", 105, 2),
        ev("python_function", "model.py(6): step", 500, 100),
        ev("cpu_op", "aten::add_", 510, 20),
        *gpu("add_kernel", 515, 3),
        *backward,
    ]
    doc = {"traceEvents": events, "distributedInfo": {"rank": 0, "world_size": 1}}
    (tmp_path / "rank0.pt.trace.json.gz").write_bytes(gzip.compress(json.dumps(doc).encode()))
    (tmp_path / "compiled_kernels.json").write_text(json.dumps({"version": 1, "kernels": [
        {"name": "triton_poi_fused_mul_0", "kernel_file": None, "output_code": GENERATED,
         "rank": 0, "lines": [{"file": "model.py", "line": 2, "function": "forward",
                               "code": "y = head(x, w)"}]}]}))
    return tmp_path


def test_generated_graph_code_is_compiled_code_not_a_user_file(tmp_path: Path) -> None:
    """An extern op run from a compiled graph's `call`, forward or backward, gets no user line
    (never the generated module, never a `~` def line of the compiled function); a generated
    kernel there gets the statement its node came from; an eager op keeps its own line."""
    from tracekit.load.userframes import is_generated_file, is_user_file

    assert is_generated_file(GENERATED) and not is_user_file(GENERATED)
    assert is_generated_file("/tmp/torchinductor_me/ab/cabqqqqqqqqqqqqqqqqqqqqqqqq.py")
    assert not is_generated_file("project/ab/cab_tools.py") and is_user_file("project/ab/x.py")
    trace = load(_graph_run(tmp_path), progress=False).traces[0]
    kernels = trace.kernels.set_index("name")
    extern = kernels.loc["head_gemm_kernel"]
    assert extern["src_file"] == "" and extern["src_line"] == -1
    compiled = kernels.loc["triton_poi_fused_mul_0"]
    assert (compiled["src_file"], compiled["src_line"], bool(compiled["src_line_exact"])) == (
        "model.py", 2, True)
    eager = kernels.loc["add_kernel"]
    assert (eager["src_file"], eager["src_line"], bool(eager["src_line_exact"])) == (
        "model.py", 7, True)
    # The compiled backward graph's extern op: its forward link is the compiled call, whose
    # line is only the compiled function's def: no line rather than a `~` one.
    assert kernels.loc["head_backward_gemm"]["src_line"] == -1
    # ... nor from the op that ran the compiled graph around it.
    from tracekit.link import kernel_source

    row = int(np.flatnonzero(trace.kernels["name"].to_numpy() == "head_backward_gemm")[0])
    assert kernel_source(trace, row)[2] is None
    assert (trace.ops["src_line"][trace.ops["name"].str.startswith("CompiledFunction")]
            == -1).all()
    assert not (trace.ops["src_file"].astype(str).str.contains("/cache/")).any()


def test_a_fused_select_backward_is_reported_at_the_statement_that_indexes_a_tensor(
        tmp_path: Path) -> None:
    (tmp_path / "rope.py").write_text(
        "def forward(self, x, q, k, v):\n"
        "    x_flip = x.view(*x.shape[:-1], x.shape[-1] // 2, 2).flip(-1)\n"
        "    scale = self.factor[None, : x.size(-3), None, :]\n"
        "    y = attend(q[0], k[0], v[0])\n")
    lines = [{"file": "rope.py", "line": n, "function": "forward", "code": ""} for n in (2, 3, 4)]
    name = "triton_red_fused_add_flip_mul_select_backward_slice_0"
    best = primary_line(name, lines, SourceIndex(roots=(tmp_path,)))
    assert best["line"] == 4
    # A fill that is not select_backward keeps the first line the provenance gives.
    other = primary_line("triton_poi_fused_add_0", lines, SourceIndex(roots=(tmp_path,)))
    assert other["line"] == 2


def _two_generated(tmp_path: Path, second_line: int) -> tuple[list[dict[str, object]], SourceIndex]:
    """One kernel name generated twice (two graphs or two ranks' caches), as a trace recorded
    without shapes shows it: no kernel_file to tell which one ran."""
    (tmp_path / "opt.py").write_text("def update(v, s):\n    s.lerp_(v, 0.1)\n"
                                     "    r = s.rsqrt()\n    return v.mul_(r)\n")
    statements = {2: "s.lerp_(v, 0.1)", 3: "r = s.rsqrt()", 4: "return v.mul_(r)"}

    def kernel(path: str, first: int) -> dict[str, object]:
        lines = [first] + [n for n in (2, 3, 4) if n != first]
        return {"name": "triton_poi_fused_lerp_mul_rsqrt_0", "kernel_file": path, "lines": [
            {"file": str(tmp_path / "opt.py"), "line": n, "function": "update",
             "code": statements[n]} for n in lines]}

    return [kernel("/tmp/c/a.py", 2), kernel("/tmp/c/b.py", second_line)], \
        SourceIndex(roots=(tmp_path,))


def test_same_named_kernels_that_fused_the_same_statements_give_an_exact_line(
        tmp_path: Path) -> None:
    candidates, index = _two_generated(tmp_path, second_line=2)
    lines, best, exact = kernel_lines("triton_poi_fused_lerp_mul_rsqrt_0", candidates, None,
                                      (tmp_path,), index)
    assert (best["file"], best["line"], exact) == ("opt.py", 2, True)
    assert [line["line"] for line in lines] == [2, 3, 4]


def test_same_named_kernels_reported_at_different_statements_give_an_inexact_line(
        tmp_path: Path) -> None:
    candidates, index = _two_generated(tmp_path, second_line=3)
    _, best, exact = kernel_lines("triton_poi_fused_lerp_mul_rsqrt_0", candidates, None,
                                  (tmp_path,), index)
    assert (best["line"], exact) == (2, False)
    _, best, exact = kernel_lines("triton_poi_fused_lerp_mul_rsqrt_0", candidates,
                                  "/tmp/c/b.py", (tmp_path,), index)
    assert (best["line"], exact) == (3, True)
