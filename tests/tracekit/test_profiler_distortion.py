"""profiler_distortion: profiled steps much slower than unprofiled ones, and what it spoils."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.synth import SynthTrace, write_run
from tracekit.detectors.profiler_distortion import detect
from tracekit.pipeline import analyze_rankwise, analyze_run, load

NELEMS = 8 * 1024 * 1024
PROFILED = (5, 6, 7)


def late_launch_trace(rank: int, frames_per_step: int = 40) -> SynthTrace:
    """Steps 5-7 of 9 ms: an all_reduce, then a second one issued ~2 ms late by the CPU (a
    Python loop under the stack tracer), `frames_per_step` Python frames per step."""
    t = SynthTrace(rank=rank, world_size=2)
    for step in PROFILED:
        base = 10_000.0 * step
        t.step(step, cpu_ts=base, cpu_dur=9_000, gpu_ts=base + 50, gpu_dur=9_000)
        t.nccl_kernel("allreduce", launch_ts=base + 8, kernel_ts=base + 100, kernel_dur=100,
                      nelems=NELEMS)
        t.annotation("optim:step", ts=base + 30, dur=1_950)
        for i in range(frames_per_step):
            t.python_frame("optim.py", 10, "update", ts=base + 40 + 40 * i, dur=30)
        t.nccl_kernel("allreduce", launch_ts=base + 2_000, kernel_ts=base + 2_015,
                      kernel_dur=100, nelems=NELEMS)
    return t


def steps_log(profiled_ms: float, plain_ms: float, stack_window: tuple[int, ...] = ()) -> list:
    rows = []
    for step in range(14):
        profiled = step in PROFILED or step in stack_window
        ms = profiled_ms if profiled else (500.0 if step == 0 else plain_ms)
        row = {"step": step, "wall_ms": ms, "profiled": profiled}
        if step in stack_window:
            row["window"] = "stacks"
        rows.append(row)
    return rows


def test_profiled_steps_three_times_slower_are_a_high_finding(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", [late_launch_trace(0), late_launch_trace(1)],
                        steps_log(profiled_ms=9.0, plain_ms=3.0))
    run, findings = analyze_run(run_dir, progress=False)
    distortion = [f for f in findings if f.kind == "profiler_distortion"]
    assert len(distortion) == 1
    f = distortion[0]
    assert f.severity == "high" and f.rank == 0 and f.step in PROFILED
    assert f.evidence["ratio"] == pytest.approx(3.0)
    assert f.evidence["unprofiled_step_ms"] == 3.0 and f.evidence["profiled_step_ms"] == 9.0
    assert f.evidence["python_events_per_step"] == {"0": 40.0, "1": 40.0}
    assert f.cost_us == pytest.approx(3 * 6_000)
    assert "3.0x" in f.title and "40 function events per step" in f.title
    late = [g for g in findings if g.kind == "comm_gap"]
    assert {g.rank for g in late} == {0, 1}
    for gap in late:  # every rank's late launch is marked, and listed in the finding
        assert gap.evidence["profiler_distortion"]["ratio"] == pytest.approx(3.0)
    listed = f.evidence["unreliable_findings"]
    assert sorted(u["rank"] for u in listed if u["kind"] == "comm_gap") == [0, 1]
    marked = [g for g in findings if "profiler_distortion" in g.evidence]  # gpu_idle too
    assert sorted((u["kind"], u["rank"], u["title"]) for u in listed) == \
        sorted((g.kind, g.rank, g.title) for g in marked)


def test_the_per_rank_analysis_marks_every_rank_too(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", [late_launch_trace(0), late_launch_trace(1)],
                        steps_log(profiled_ms=9.0, plain_ms=3.0))
    _, findings = analyze_rankwise(run_dir, progress=False)
    assert sum(f.kind == "profiler_distortion" for f in findings) == 1
    late = [g for g in findings if g.kind == "comm_gap"]
    assert late and all("profiler_distortion" in g.evidence for g in late)


def test_profiled_steps_near_unprofiled_ones_say_nothing(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", [late_launch_trace(0)],
                        steps_log(profiled_ms=3.5, plain_ms=3.0))
    run, findings = analyze_run(run_dir, progress=False)
    assert not [f for f in findings if f.kind == "profiler_distortion"]
    assert all("profiler_distortion" not in f.evidence for f in findings)


def test_a_given_baseline_is_compared_with_the_traces_steps(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", [late_launch_trace(0)])  # no steps.jsonl
    run = load(run_dir, progress=False)
    assert detect(run) == []
    (f,) = detect(run, baseline_step_ms=2.0)
    assert f.evidence["baseline_from"] == "--baseline-step-ms"
    assert f.evidence["profiled_from"] == "traces (median step)"
    assert f.evidence["ratio"] == pytest.approx(run_step_ms(run) / 2.0, rel=1e-3)


def run_step_ms(run) -> float:  # noqa: ANN001
    from tracekit.link.steptime import run_step_us

    return run_step_us(run) / 1000


def test_the_stack_window_of_a_split_recording_is_not_a_baseline(tmp_path: Path) -> None:
    # steps 5-7 timed without stacks (4 ms), 9-11 with stacks (12 ms), the rest 3.8 ms
    rows = steps_log(profiled_ms=4.0, plain_ms=3.8, stack_window=(9, 10, 11))
    for row in rows:
        if row.get("window") == "stacks":
            row["wall_ms"] = 12.0
    run_dir = write_run(tmp_path / "run", [late_launch_trace(0)], rows)
    assert detect(load(run_dir, progress=False)) == []  # the timing window is honest
    rows = [dict(r, wall_ms=12.0) if r["step"] in PROFILED else r for r in rows]
    run_dir = write_run(tmp_path / "run2", [late_launch_trace(0)], rows)
    (f,) = detect(load(run_dir, progress=False))
    assert f.evidence["unprofiled_step_ms"] == 3.8
    assert f.evidence["baseline_steps"] == [2, 3, 13]  # not 4 or 8 (warmups), 9-11, 12
    assert f.evidence["stack_window_ratio"] == pytest.approx(12.0 / 3.8, rel=1e-3)


def test_too_few_unprofiled_steps_give_no_baseline(tmp_path: Path) -> None:
    rows = [r for r in steps_log(profiled_ms=9.0, plain_ms=3.0) if r["step"] <= 7]
    run_dir = write_run(tmp_path / "run", [late_launch_trace(0)], rows)
    assert detect(load(run_dir, progress=False)) == []  # only steps 2 and 3 are ordinary
    assert detect(load(run_dir, progress=False), min_baseline_steps=2)


def test_the_step_after_the_trace_export_is_not_a_baseline_step(tmp_path: Path) -> None:
    rows = steps_log(profiled_ms=9.0, plain_ms=3.0)
    rows[8]["wall_ms"] = 80.0  # step 8 follows the export of window 5-7 (and is no baseline)
    run_dir = write_run(tmp_path / "run", [late_launch_trace(0)], rows)
    (f,) = detect(load(run_dir, progress=False))
    assert f.evidence["baseline_steps"] == [2, 3, 9, 10, 11, 12, 13]  # not 4 (warmup) nor 8
    assert f.evidence["unprofiled_step_ms"] == 3.0
