"""select_backward: found on the planted GPU traces at the bank-indexing line, silent on unbind,
and on synthetic eager / CPU-only traces."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.planted import REPO, load_planted, planted_line
from tests.synth import SynthTrace, write_run
from tracekit.detectors.select_backward import detect, fused_ops
from tracekit.pipeline import load
from tracekit.source import source_snapshot

FILL = re.compile(r"FillFunctor")


def test_planted_index_found_at_the_indexing_line() -> None:
    run = load_planted("select_backward_index")
    findings = detect(run)
    assert {f.rank for f in findings} == {0, 1}
    line = planted_line("select_backward")
    for rank in (0, 1):
        mine = [f for f in findings if f.rank == rank]
        assert len(mine) == 1, [f.title for f in mine]
        f = mine[0]
        assert f.kind == "select_backward"
        assert f.count == 4 * 5  # 4 bank slices per step, steps 6..10
        assert f.step == 6  # the first occurrence's step; every step's share in evidence
        assert sorted(f.evidence["per_step"]) == ["10", "6", "7", "8", "9"]
        assert set(f.evidence["count_per_step"].values()) == {4}
        assert FILL.search(f.culprit.kernel or "")
        assert f.culprit.grid == [4096, 1, 1]
        assert f.culprit.blocks_per_sm and f.culprit.blocks_per_sm > 30
        assert f.cause.op == "aten::select_backward"
        assert "aten::select_backward" in f.cause.op_stack
        assert f.cause.source is not None
        assert f.cause.source.file.endswith("record_planted_traces.py")
        assert f.cause.source.line == line
        assert f.evidence["bank_bytes"] == 4 * 1024 * 1024 * 4
        assert f.evidence["bytes_zero_filled"] == 20 * 4 * 1024 * 1024 * 4
        assert f.cost_us > 0 and f.dur_us > 0


def test_planted_unbind_is_silent() -> None:
    run = load_planted("select_backward_unbind")
    assert detect(run) == []


def test_planted_compiled_names_the_inductor_kernel() -> None:
    run = load_planted("select_backward_compiled")
    findings = detect(run)
    assert {f.rank for f in findings} == {0, 1}
    for f in findings:
        assert "select_backward" in (f.culprit.kernel or "")
        assert f.evidence["compiled"] is True
        assert f.count >= 5  # at least once per profiled step


def test_planted_compiled_is_one_finding_per_line_with_a_bytes_estimate() -> None:
    """`triton_poi_fused_add_select_backward_2` fuses the fill with an add: the fill's share
    of the kernel is estimated from the bytes it writes, not the whole kernel."""
    findings = detect(load_planted("select_backward_compiled"))
    assert sorted(f.rank for f in findings) == [0, 1]  # one line, one finding per rank
    for f in findings:
        assert f.step == 6 and f.evidence["cost_basis"] == "bytes estimate"
        (kernel,) = f.evidence["kernels"]
        assert kernel["fused_with"] == "add"
        assert 0 < kernel["fill_share_of_bytes"] < 1
        assert f.cost_us == pytest.approx(kernel["kernel_time_us"]
                                          * kernel["fill_share_of_bytes"], rel=1e-3)
        assert f.cost_us < f.evidence["kernel_time_us"]
        assert "fused into 1 Inductor kernel with add" in f.title


@pytest.mark.parametrize(("name", "others"), [
    ("triton_poi_fused_select_backward_zeros_0", ""),
    ("triton_poi_fused__to_copy_select_backward_3", ""),
    ("triton_poi_fused__to_copy_add_select_backward_stack_14", "add_stack"),
    ("triton_red_fused_add_mul_select_backward_sum_12", "add_mul_sum"),
    ("void at::native::vectorized_elementwise_kernel<4, FillFunctor<float> >()", None),
])
def test_inductor_names_say_what_the_fill_is_fused_with(name: str, others: str | None) -> None:
    assert fused_ops(name) == others


def test_planted_compiled_points_at_the_indexing_line() -> None:
    """Inductor fuses the select_backward into a kernel launched from the compiled graph's
    backward, whose frame gives only forward_index's def line: narrowed to `bank[i]`."""
    run = load_planted("select_backward_compiled")
    line = planted_line("select_backward")
    for f in detect(run):
        source = f.cause.source
        assert source is not None and source.file.endswith("record_planted_traces.py")
        assert source.function == "forward_index"
        assert (source.line, source.line_exact) == (line, True)


def test_compiled_trainer_points_at_the_bank_subscript() -> None:
    """The trainer's compiled GPT.forward also indexes Python containers by variables
    (value_embeds[ve_index], attn_layers[i], self.ve_layers[i]): only the bank subscript can be
    the aten::select behind the kernel."""
    run_dir = REPO / "traces" / "switch-bank-index"
    if not run_dir.is_dir():
        pytest.skip(f"{run_dir} not recorded")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    model = source_snapshot(run_dir, manifest) / "trainer" / "model.py"  # the code that ran
    hits = [n for n, text in enumerate(model.read_text().splitlines(), start=1)
            if "self.attn[i], self.mlp[i]" in text]
    assert len(hits) == 1
    findings = detect(load(run_dir, progress=False))
    assert {f.rank for f in findings} == {0, 1}
    for f in findings:
        assert "select_backward" in (f.culprit.kernel or "")
        source = f.cause.source
        assert source is not None and source.file == "trainer/model.py"
        assert (source.function, source.line, source.line_exact) == ("forward", hits[0], True)


MODEL_SRC = '''\
import torch


def forward(bank, x):
    for i in range(bank.size(0)):
        w = bank[i]
        x = x @ w
    return x
'''


def bank_trace(tmp_path: Path, index: bool, gpu: bool = True, steps: int = 4) -> SynthTrace:
    """A rank whose forward indexes (or not) a [4, 256, 256] fp32 bank, backward per slice."""
    model = tmp_path / "model.py"
    model.write_text(MODEL_SRC)
    t = SynthTrace()
    for s in range(steps):
        t0, g0 = s * 1000.0, 100_000 + s * 1000.0
        t.step(s + 1, t0, 990, g0 if gpu else None, 990)
        frame = t.python_frame(str(model), 4, "forward", t0 + 1, 400)
        for layer in range(4):
            fwd_ts = t0 + 10 + layer * 50
            if index:
                t.cpu_op("aten::select", fwd_ts, 5, input_dims=[[4, 256, 256], [], []],
                         input_types=["float", "Scalar", "Scalar"], seq=layer)
            t.cpu_op("aten::mm", fwd_ts + 10, 20, input_dims=[[8, 256], [256, 256]])
            if not index:
                continue
            bwd = t0 + 500 + layer * 100
            t.fwdbwd(fwd_ts, bwd)
            t.cpu_op("autograd::engine::evaluate_function: SelectBackward0", bwd, 90)
            t.cpu_op("SelectBackward0", bwd + 1, 88)
            t.cpu_op("aten::select_backward", bwd + 2, 80, input_dims=[[256, 256], [], [], []],
                     input_types=["float", "ScalarList", "Scalar", "Scalar"])
            fill = t.cpu_op("aten::fill_", bwd + 5, 30)
            copy = t.cpu_op("aten::copy_", bwd + 40, 30)
            if gpu:
                g = g0 + 500 + layer * 100
                t.launch_kernel("void at::native::vectorized_elementwise_kernel<4, "
                                "at::native::FillFunctor<float> >()", bwd + 6, g, 7.0,
                                external_id=fill, grid=(1024, 1, 1))
                t.launch_mem("memcpy", bwd + 41, g + 10, 3.0, nbytes=256 * 256 * 4,
                             external_id=copy)
        del frame
    return t


def test_synthetic_eager_groups_by_forward_line(tmp_path: Path) -> None:
    run = load(write_run(tmp_path / "run", [bank_trace(tmp_path, index=True)]), link=True,
               progress=False)
    findings = detect(run)
    assert len(findings) == 1
    f = findings[0]
    assert f.count == 16 and f.rank == 0 and f.step == 1
    assert f.evidence["count_per_step"] == {"1": 4, "2": 4, "3": 4, "4": 4}
    assert f.cost_us == pytest.approx(16 * (7.0 + 3.0))
    assert FILL.search(f.culprit.kernel or "")
    assert f.culprit.grid == [1024, 1, 1]
    assert f.evidence["bytes_zero_filled"] == 16 * 4 * 256 * 256 * 4
    assert f.cause.source is not None and f.cause.source.file.endswith("model.py")
    # the statement `w = bank[i]` (line 6) when narrowed, else the def line (4)
    assert f.cause.source.line == (6 if f.cause.source.line_exact else 4)


def test_synthetic_unbind_is_silent(tmp_path: Path) -> None:
    run = load(write_run(tmp_path / "run", [bank_trace(tmp_path, index=False)]), link=True,
               progress=False)
    assert detect(run) == []


def test_synthetic_cpu_only_reports_cpu_time(tmp_path: Path) -> None:
    run = load(write_run(tmp_path / "run", [bank_trace(tmp_path, index=True, gpu=False)]),
               link=True, progress=False)
    findings = detect(run)
    assert len(findings) == 1
    f = findings[0]
    assert f.count == 16
    assert f.cost_us == pytest.approx(16 * 80.0)
    assert "cpu_time_us" in f.evidence and f.culprit.kernel is None


def test_one_step_only_gets_that_step(tmp_path: Path) -> None:
    run = load(write_run(tmp_path / "run", [bank_trace(tmp_path, index=True, steps=1)]),
               link=True, progress=False)
    (f,) = detect(run)
    assert f.step == 1
