"""Detector parameters: one frozen Params per detector, overridable from the API and the CLI
(`--param DETECTOR.NAME=VALUE`), and honoured in rank processes as in one process."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from tracekit.detectors import load_detectors, parse_params
from tracekit.detectors import sm_contention as sm
from tracekit.errors import UserError
from tracekit.pipeline import analyze_rankwise, analyze_run
from tracekit.report import render_json

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "traces" / "fixed-2gpu"


def test_every_detector_has_frozen_params_with_defaults() -> None:
    for kind, detector in load_detectors().items():
        params = detector.params()
        assert dataclasses.is_dataclass(params), kind
        assert detector.params.__dataclass_params__.frozen, kind


def test_param_strings_become_typed_params() -> None:
    params = parse_params(["sm_contention.min_slowdown=0.5", "slow_step.min_steps=4"])
    assert params["sm_contention"] == sm.Params(min_slowdown=0.5)
    assert params["slow_step"].min_steps == 4 and isinstance(params["slow_step"].min_steps, int)


@pytest.mark.parametrize(("item", "message"), [
    ("sm_contention.min_slowdown", "must look like DETECTOR.NAME=VALUE"),
    ("nope.x=1", "unknown detector 'nope'"),
    ("comm_gap.nope=1", "comm_gap has no parameter 'nope'"),
    ("slow_step.min_steps=many", "min_steps takes a int, not 'many'"),
])
def test_bad_param_strings_are_one_line_errors(item: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_params([item])


def test_overrides_reach_rank_processes_as_in_one_process() -> None:
    strict = parse_params(["sm_contention.min_slowdown=0.5"])
    _, default = analyze_run(RUN, kinds=["sm_contention"], progress=False)
    _, one = analyze_run(RUN, kinds=["sm_contention"], progress=False, params=strict)
    _, apart = analyze_rankwise(RUN, kinds=["sm_contention"], progress=False, params=strict)
    assert render_json(apart) == render_json(one)
    # The reference run's contention slows NCCL 1.41x at most: with a 50% floor no collective
    # counts as slowed any more (late starts still do).
    assert sum(f.evidence["slowed_count"] for f in default) > 0
    assert sum(f.evidence["slowed_count"] for f in one) == 0


def test_cli_rejects_a_bad_param_before_loading() -> None:
    result = subprocess.run([sys.executable, str(REPO / "cli.py"), "analyze", str(RUN),
                             "--param", "comm_gap.min_gap=5"], capture_output=True, text=True,
                            cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --param comm_gap.min_gap=5: comm_gap has no parameter 'min_gap'; known: "
        "min_gap_us, min_gap_step_frac, min_cost_us, min_waves, dominant_frac"]
