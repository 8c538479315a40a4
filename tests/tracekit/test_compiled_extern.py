"""Extern ops run by a compiled graph (cuBLAS mm, attention, custom ops) -> their user lines.

tests/data/torch_trace/compiled_bank_rank_0.log records the generated modules of
tests/programs/compiled_bank.py with their `extern_kernels.mm` calls; tests/data/compiled_cpu is
a profile of that program whose trace ran two generated modules of the same code (another
compile, other cache names): the tests give the log's extern calls those names.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tracekit.load.compiled import call_handles, compiled_from_log, extern_op_name
from tracekit.pipeline import load

DATA = Path(__file__).resolve().parents[1] / "data"
LOG = DATA / "torch_trace" / "compiled_bank_rank_0.log"
PROGRAM = (Path(__file__).resolve().parents[1] / "programs" / "compiled_bank.py").read_text()
FORWARD = "/tmp/torchinductor_root/hv/chvupb3kch2srad27yasmdk4a65mgbpm7svx37nrq24qpmtx3pyp.py"
BACKWARD = "/tmp/torchinductor_root/22/c22z7cdahi4lsedgvqtwvjwkuip4qgpg4k6fbomsnemdcqlyqanu.py"
MATMUL_LINE = next(n for n, t in enumerate(PROGRAM.splitlines(), 1) if "x @ w" in t)


def test_extern_handles_name_the_op_the_profiler_records() -> None:
    assert extern_op_name("extern_kernels.mm:12") == "aten::mm"
    assert extern_op_name("extern_kernels._scaled_mm:3") == "aten::_scaled_mm"
    assert extern_op_name("torch.ops.nanogpt.mm_t.default:40") == "nanogpt::mm_t"
    assert extern_op_name(
        "torch.ops.aten._scaled_dot_product_cudnn_attention.default:11") == \
        "aten::_scaled_dot_product_cudnn_attention"
    assert extern_op_name("triton_poi_fused_mul_0:2") is None


def test_the_call_body_lists_its_extern_calls_in_order() -> None:
    code = ("def call(self, args):\n"
            "    # [Provenance debug handles] extern_kernels.mm:1\n"
            "    extern_kernels.mm(a, b, out=c)\n"
            "    # [Provenance debug handles] cpp_fused_relu_0:2\n"
            "    cpp_fused_relu_0(c)\n"
            "    # [Provenance debug handles] torch.ops.ns.op.default:3\n"
            "    torch.ops.ns.op.default(c)\n"
            "\n"
            "def other():\n"
            "    # [Provenance debug handles] extern_kernels.bmm:4\n")
    assert call_handles(code) == ["extern_kernels.mm:1", "torch.ops.ns.op.default:3"]


def test_each_generated_module_keeps_its_extern_calls_with_their_lines() -> None:
    _, modules = compiled_from_log(LOG, 0)
    forward = modules[0]
    assert [c["handle"] for c in forward["calls"]] == [
        "extern_kernels.mm:1", "extern_kernels.mm:3", "extern_kernels.mm:5",
        "extern_kernels.mm:7"]
    assert {c["op"] for m in modules for c in m["calls"]} == {"aten::mm"}
    assert all([line["line"] for line in c["lines"]] == [MATMUL_LINE]
               for m in modules for c in m["calls"])


def _run_with_extern_calls(tmp_path: Path, drop: int = 0) -> Path:
    run = tmp_path / "run"
    shutil.copytree(DATA / "compiled_cpu", run)
    _, modules = compiled_from_log(LOG, 0)
    recorded = json.loads((run / "compiled_kernels.json").read_text())
    checkout = str(Path(recorded["kernels"][0]["lines"][0]["file"]).parent.parent.parent)
    for module, name in zip(modules, (FORWARD, BACKWARD), strict=True):
        module["output_code"] = name
        for call in module["calls"]:
            for line in call["lines"]:
                line["file"] = line["file"].replace("/home/user/project", checkout)
    modules[0]["calls"] = modules[0]["calls"][drop:]
    recorded.update(version=2, extern_calls=modules)
    (run / "compiled_kernels.json").write_text(json.dumps(recorded))
    return run


def test_an_extern_mm_under_the_generated_call_takes_its_statement(tmp_path: Path) -> None:
    ops = load(_run_with_extern_calls(tmp_path), progress=False).traces[0].ops
    mm = ops[ops["name"] == "aten::mm"]
    assert len(mm) == 3 * (4 + 7)  # three steps of 4 forward and 7 backward calls
    assert set(zip(mm["src_file"], mm["src_line"], mm["src_line_exact"], strict=True)) == {
        ("compiled_bank.py", MATMUL_LINE, True)}


def test_a_call_count_that_does_not_match_gives_no_line(tmp_path: Path) -> None:
    ops = load(_run_with_extern_calls(tmp_path, drop=1), progress=False).traces[0].ops
    mm = ops[ops["name"] == "aten::mm"]
    forward = mm[mm["src_line"] < 0]
    assert len(forward) == 3 * 4  # the forward module records 3 mm calls, its trace runs 4
    assert set(mm.loc[mm["src_line"] >= 0, "src_line"]) == {MATMUL_LINE}


def test_of_the_statements_inductor_lists_for_an_extern_call_the_one_that_runs_it_is_told(
        tmp_path: Path) -> None:
    from tracekit.source.narrow import SourceIndex

    (tmp_path / "attn.py").write_text(
        "def forward(self, x, a, b):\n"
        "    q, k, v = x.view(4, 8, 16).unbind(0)\n"
        "    y = F.scaled_dot_product_attention(q, k, v,\n"
        "                                       is_causal=True)\n"
        "    out = torch.ops.nanogpt.mm_t(a, b)\n"
        "    return y @ out\n")
    index = SourceIndex(roots=(tmp_path,))
    sdpa = "aten::_scaled_dot_product_cudnn_attention"
    assert index.statement_runs("attn.py", 3, sdpa)
    assert index.statement_runs("attn.py", 3, sdpa + "_backward")  # its forward's statement
    assert not index.statement_runs("attn.py", 2, sdpa)  # a view feeding it
    assert index.statement_runs("attn.py", 5, "nanogpt::mm_t_backward")
    assert not index.statement_runs("attn.py", 5, sdpa)
    assert index.statement_runs("attn.py", 6, "aten::mm")
    assert not index.statement_runs("nowhere.py", 3, sdpa)
