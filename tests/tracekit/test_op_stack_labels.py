"""Findings' cause.op_stack interleaves the CPU record_function labels (ProfilerStep#N,
optimizer.step, tie:...) with the op chain, outermost first, on a real trainer trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracekit.detectors.sm_contention import detect
from tracekit.pipeline import load

REPO = Path(__file__).resolve().parents[2]
TIE_RUN = REPO / "traces" / "switch-tie-eager"
TIE_LABEL = "tie:lm_head->embed"


def test_tie_copy_finding_stack_holds_step_and_tie_labels() -> None:
    if not TIE_RUN.is_dir():
        pytest.skip(f"{TIE_RUN} not recorded")
    findings = [f for f in detect(load(TIE_RUN, progress=False))
                if f.cause.source is not None and f.cause.source.function == "_tie_copy"]
    assert {f.rank for f in findings} == {0, 1}
    for f in findings:
        stack = f.cause.op_stack
        assert stack[0].startswith("ProfilerStep#"), stack
        assert TIE_LABEL in stack, stack
        assert stack[-1] == f.cause.op == "aten::copy_"
        # Outermost first: the step, then the optimizer's labels, then the tie, then the op.
        assert stack.index("optimizer.step") < stack.index(TIE_LABEL) < len(stack) - 1
        assert sum(name.startswith("ProfilerStep#") for name in stack) == 1
