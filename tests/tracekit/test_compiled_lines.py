"""Compiled kernels -> the user lines they fused, from torch's provenance artifacts.

tests/data/torch_trace/compiled_bank_rank_0.log: the Inductor entries of a TORCH_TRACE log of
tests/programs/compiled_bank.py (torch 2.13, CPU, INDUCTOR_PROVENANCE=1), paths rewritten.
tests/data/compiled_cpu: `profile --script tests/programs/compiled_bank.py --steps 3-5` on CPU
with C++ kernel profiling on (TORCHINDUCTOR_CPP_ENABLE_KERNEL_PROFILE=1: the kernels show as
graph_0_cpp_fused_* ops), with the compiled_kernels.json the runner kept.
"""

from __future__ import annotations

from pathlib import Path

from tracekit.link.compiled import primary_line, profiler_name, relocate
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


def test_a_fused_select_backward_points_at_the_indexing_line() -> None:
    lines = [{"line": 24, "code": "x = torch.relu(x @ w) * self.scale"},
             {"line": 23, "code": "w = self.bank[i]"}]
    assert primary_line("triton_poi_fused_add_select_backward_2", lines)["line"] == 23
    assert primary_line("triton_poi_fused_add_mul_2", lines)["line"] == 24


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
