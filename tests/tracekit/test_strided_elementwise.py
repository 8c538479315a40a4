"""strided_elementwise: an elementwise op on same-shaped operands laid out differently, found
on the trainer's eager tie (its reference traces), on a foreign Qwen inference trace, silent
where the tie is a Triton transpose."""

from __future__ import annotations

import json
from pathlib import Path

from tracekit.detectors.strided_elementwise import detect, operands_of
from tracekit.pipeline import load

ROOT = Path(__file__).resolve().parents[2]
TRACES = ROOT / "traces"
EXTERNAL = ROOT / "tests" / "data" / "external"


def _dims(*values: object) -> str:
    return json.dumps(list(values))


def test_a_transposed_operand_of_the_same_shape_is_a_layout_mismatch() -> None:
    add = operands_of("aten::add_", _dims([512, 64], [512, 64], []),
                      _dims([64, 1], [1, 512], []), _dims("float", "float", "Scalar"))
    assert add is not None and add.mismatched
    assert add.elements == 512 * 64 and add.bytes == 512 * 64 * 4 * 3  # two reads, one write
    # A copy does not read its destination.
    copy = operands_of("aten::copy_", _dims([512, 64], [512, 64], []),
                       _dims([64, 1], [1, 512], []), _dims("c10::BFloat16", "c10::BFloat16",
                                                           "Scalar"))
    assert copy is not None and copy.bytes == 512 * 64 * 2 * 2


def test_alike_layouts_broadcasting_and_unrecorded_shapes_are_not() -> None:
    same = operands_of("aten::add_", _dims([512, 64], [512, 64]), _dims([64, 1], [64, 1]),
                       _dims("float", "float"))
    assert same is not None and not same.mismatched
    # A size-1 dimension's stride says nothing about the layout.
    column = operands_of("aten::add_", _dims([512, 1], [512, 1]), _dims([1, 1], [1, 512]),
                         _dims("float", "float"))
    assert column is not None and not column.mismatched
    assert operands_of("aten::mul", _dims([16, 559, 1024], [16, 559, 1]),
                       _dims([572416, 1024, 1], [559, 1, 1]), _dims("float", "float")) is None
    assert operands_of("aten::add_", "", "", "") is None


def test_the_trainers_eager_tie_add_and_copy_are_found_at_their_lines() -> None:
    findings = detect(load(TRACES / "pathologies-2gpu", progress=False))
    lines = {(f.rank, f.cause.op, f.cause.source.file, f.cause.source.line) for f in findings}
    assert lines == {(r, op, "trainer/optim.py", line) for r in (0, 1)
                     for op, line in (("aten::add_", 310), ("aten::copy_", 321))}
    for f in findings:
        assert f.cause.source.line_exact and f.step is not None
        assert 2.0 <= f.evidence["slowdown"] < 6.0, f.evidence
        # The trace's own contiguous rate on an H200: most of its ~4.8 TB/s.
        assert 2500 < f.evidence["contiguous_gb_per_s"] < 4800
        assert f.cost_us < f.count * f.evidence["kernel_us_mean"]
        per_step = f.evidence["cost_per_step_us"]
        assert abs(per_step * f.evidence["steps"] - f.cost_us) < 0.01 * f.cost_us
        assert f.culprit.kernel.startswith("void at::native::elementwise_kernel<128, ")


def test_a_tie_done_by_a_triton_transpose_is_silent() -> None:
    assert detect(load(TRACES / "fixed-2gpu", progress=False)) == []


def test_without_enough_contiguous_kernels_to_measure_the_device_nothing_is_claimed() -> None:
    run = load(TRACES / "pathologies-2gpu", progress=False)
    assert detect(run, min_reference_kernels=10**6) == []


def test_qwens_transposing_attention_copies_are_found_with_hand_checked_numbers() -> None:
    """TraceLens' Qwen1.5-0.5B H100 inference trace: attention's q/k/v are permuted views of
    [16, 559, 16, 64]; their transposing copies (72 launches of 29.3 us) run the generic
    kernel. A copy moves 16*16*559*64 = 9,158,656 bf16 elements, read and written: 36.6 MB.
    The rotary add of a permuted and a contiguous operand runs 1.9x the contiguous rate: under
    the 2x floor, not reported."""
    findings = detect(load(EXTERNAL / "qwen05b_h100_inference.json.gz", progress=False))
    by = {(f.cause.op, tuple(f.evidence["shape"])): f for f in findings}
    copy = by[("aten::copy_", (16, 16, 559, 64))]
    assert copy.count == 72 and copy.evidence["bytes"] == 9_158_656 * 4
    assert round(copy.evidence["kernel_us_mean"], 1) == 29.3
    assert 2.0 <= copy.evidence["slowdown"] < 3.0
    assert {op for op, _ in by} == {"aten::copy_"}
