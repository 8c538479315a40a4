"""gpu_idle on synthetic steps whose idle time and its cause are known by construction."""

from __future__ import annotations

import pytest

from tests.tracekit.test_accounting import STEP, loader_trace, queued_trace, sync_trace
from tracekit.pipeline import analyze_run


def idle_findings(tmp_path, synth):
    path = synth.write(tmp_path / "rank0.pt.trace.json.gz")
    _, findings = analyze_run(path, kinds=["gpu_idle"], progress=False)
    return findings


def test_a_dataloader_on_the_training_thread_is_found_with_its_cost_and_line(tmp_path) -> None:
    [finding] = [f for f in idle_findings(tmp_path, loader_trace())
                 if f.evidence["idle_cause"] == "input"]
    assert finding.cost_us == pytest.approx(3 * 3_900.0)
    assert finding.evidence["cost_per_step_us"] == pytest.approx(3_900.0)
    assert finding.evidence["cost_pct_of_step"] == pytest.approx(39.0, abs=0.5)
    assert finding.severity == "high"
    assert finding.cause.op.startswith("enumerate(DataLoader)")
    assert (finding.cause.source.file, finding.cause.source.line) == ("train.py", 10)
    assert "input pipeline" in finding.title


def test_a_host_sync_that_empties_the_queue_is_blamed_for_the_idle_after_it(tmp_path) -> None:
    found = idle_findings(tmp_path, sync_trace())
    [sync] = [f for f in found if f.evidence["idle_cause"] == "host_sync"]
    assert sync.cause.op == "aten::item"
    assert sync.cost_us == pytest.approx(3 * 1_904.0)
    assert sum(f.cost_us for f in found) <= 3 * STEP


def test_idle_behind_already_queued_work_is_reported_as_queued(tmp_path) -> None:
    # 1.9 ms of a 10 ms step is queued: above the 5% floor, reported as such.
    [queued] = idle_findings(tmp_path, queued_trace())
    assert queued.evidence["idle_cause"] == "queued"
    assert queued.cost_us == pytest.approx(1_900.0)
