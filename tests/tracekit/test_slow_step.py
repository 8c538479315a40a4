"""slow_step: the planted data wait at step 8 is found and attributed; controls stay silent."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.planted import GPU_DATA, load_planted, planted_line
from tests.synth import SynthTrace, write_run
from tracekit.detectors.slow_step import detect
from tracekit.link.steptime import median_step_us, step_table
from tracekit.pipeline import load

COMPILED_CPU = Path(__file__).resolve().parents[1] / "data" / "compiled_cpu"


def test_planted_wait_found_at_step_8() -> None:
    run = load_planted("slow_step_wait")
    findings = detect(run)
    assert sorted((f.rank, f.step) for f in findings) == [(0, 8), (1, 8)]
    line = planted_line("slow_step")
    for f in findings:  # the planted sleep runs on both ranks
        assert f.kind == "slow_step"
        assert 140_000 < f.cost_us < 170_000  # the planted 150 ms sleep
        assert f.evidence["category"] == "data wait"
        assert f.cause.op == "data:wait_shard"
        assert f.cause.op_stack[0] == "ProfilerStep#8"
        assert f.cause.op_stack[-1] == "data:wait_shard"
        assert f.cause.source is not None
        assert f.cause.source.file.endswith("record_planted_traces.py")
        assert f.cause.source.line == line
        assert f.severity == "high"


def test_planted_none_is_silent() -> None:
    run = load_planted("slow_step_none")
    assert detect(run) == []


def test_other_planted_scenarios_have_no_slow_steps() -> None:
    """Ordinary profiled steps (jitter up to ~1.5x) stay under the default 2x factor."""
    for scenario in ("select_backward_index", "select_backward_unbind", "comm_gap_none"):
        path = GPU_DATA / scenario
        if path.is_dir():
            assert detect(load(path, link=True, progress=False)) == [], scenario


def steps_trace(n_steps: int = 5, slow_step: int | None = None, wait_us: float = 50_000,
                name: str = "data:wait_shard") -> SynthTrace:
    """Steps of 2 ms (CPU and GPU); `slow_step` also waits inside `name` before its kernels."""
    t = SynthTrace()
    cpu = gpu = 0.0
    for step in range(1, n_steps + 1):
        extra = wait_us if step == slow_step else 0.0
        t.step(step, cpu, 2000 + extra, gpu + 300 + extra, 1700)
        t.annotation("data:next_batch", cpu + 10, 50)
        if extra:
            t.annotation(name, cpu + 100, extra)
        op = t.cpu_op("aten::mm", cpu + 200 + extra, 100)
        t.launch_kernel("sm90_xmma_gemm_f32f32", cpu + 210 + extra, gpu + 300 + extra, 1600,
                        external_id=op, grid=(132, 1, 1))
        cpu += 2000 + extra
        gpu += 2000 + extra
    return t


def test_synthetic_slow_step_attributed(tmp_path: Path) -> None:
    run = load(write_run(tmp_path / "run", [steps_trace(slow_step=3)]), link=True,
               progress=False)
    (f,) = detect(run)
    assert f.step == 3 and f.rank == 0
    assert f.cost_us == pytest.approx(50_000, rel=0.05)
    assert f.cause.op == "data:wait_shard" and f.evidence["category"] == "data wait"
    assert f.evidence["reference_step"] != 3
    assert f.dur_us == pytest.approx(52_000, rel=0.05)


def test_synthetic_sync_is_named(tmp_path: Path) -> None:
    t = steps_trace(slow_step=None)
    t.launch(4 * 2000 + 500, 30_000, name="cudaDeviceSynchronize")  # inside step 5's CPU span
    t.events[:] = [e for e in t.events if e.get("name") != "ProfilerStep#5"]
    t.step(5, 8000, 32_000, 8300, 1700)
    run = load(write_run(tmp_path / "run", [t]), link=True, progress=False)
    (f,) = detect(run)
    assert f.step == 5 and f.cause.op == "cudaDeviceSynchronize"
    assert f.evidence["category"] == "synchronisation"


def test_even_steps_and_small_jitter_are_silent(tmp_path: Path) -> None:
    run = load(write_run(tmp_path / "run", [steps_trace(slow_step=2, wait_us=800)]), link=True,
               progress=False)
    assert detect(run) == []  # 1.4x, under the factor (and under the 1 ms floor)
    assert median_step_us(run.traces[0]) == pytest.approx(2000, rel=0.05)


def test_fewer_than_three_steps_says_nothing(tmp_path: Path) -> None:
    run = load(write_run(tmp_path / "run", [steps_trace(n_steps=2, slow_step=2)]), link=True,
               progress=False)
    assert detect(run) == []


def test_steps_log_reports_unprofiled_slow_steps(tmp_path: Path) -> None:
    run = load(write_run(tmp_path / "run", [steps_trace()]), link=True, progress=False)
    wall = [900.0, 300.0] + [20.0] * 18  # compile warm-up, then steady 20 ms steps
    wall[12] = 170.0  # unprofiled stall at step 12
    wall[3] = 150.0  # step 3 is profiled (in the trace): the trace analysis covers it
    run.steps_log = pd.DataFrame({"step": range(20), "wall_ms": wall,
                                  "profiled": [s in (1, 2, 3, 4, 5) for s in range(20)]})
    findings = [f for f in detect(run) if not f.evidence.get("warmup")]
    assert [f.step for f in findings] == [12]
    assert findings[0].evidence["profiled"] is False
    assert findings[0].cost_us == pytest.approx(150_000)
    assert findings[0].evidence["category"] == "unknown"
    run.steps_log["shard_switch"] = run.steps_log["step"] == 12
    (f,) = [f for f in detect(run) if not f.evidence.get("warmup")]
    assert f.evidence["category"] == "data wait" and "shard" in f.title
    run.steps_log = run.steps_log.iloc[:4]  # warm-up skipped -> 2 steps left: nothing said
    assert detect(run) == []


@pytest.mark.parametrize("compiled", [True, False])
def test_steps_log_reports_a_slow_first_step_as_warmup(tmp_path: Path, compiled: bool) -> None:
    """Step 0 is never profiled; what it spent is named from the manifest, at LOW severity
    (paid once per process), and a profiled warm-up step is left to the trace analysis."""
    run = load(write_run(tmp_path / "run", [steps_trace()]), link=True, progress=False)
    run.manifest = {"config": {"compile": compiled}}
    wall = [900.0, 300.0] + [20.0] * 18
    run.steps_log = pd.DataFrame({"step": range(20), "wall_ms": wall,
                                  "profiled": [s in (1, 2, 3, 4, 5) for s in range(20)]})
    [f] = detect(run)
    assert f.step == 0 and f.severity == "low" and f.evidence["warmup"] is True
    assert f.evidence["category"] == ("compilation" if compiled else "warm-up")
    assert f.cost_us == pytest.approx(880_000)
    run.steps_log.loc[0, "wall_ms"] = 30.0  # a fast first step says nothing
    assert detect(run) == []


def mng_shaped_log(window: tuple[int, int] = (6, 6)) -> pd.DataFrame:
    """modded-nanogpt's #200 run in shape: 10 steps of ~121 ms after warm-up, step `window`
    profiled at 10x, and the step after the profiler's trace export at 849 ms."""
    start, end = window
    wall = [117_416.0, 5_107.0, 121.0, 122.0, 120.0, 123.0] + [121.0] * 4
    for step in range(start, end + 1):
        wall[step] = 1_224.0
    wall[end + 1] = 849.2
    return pd.DataFrame({"step": range(10), "wall_ms": wall,
                         "profiled": [start <= s <= end for s in range(10)]})


def test_the_step_after_the_trace_export_is_the_profilers_not_a_high_slow_step(
        tmp_path: Path) -> None:
    """A log without the runners' `profiler` field (older runs): step 7 follows the export of
    window 6-6, so its 849 ms are said to be the profiler's, at LOW, and it stays out of the
    median."""
    run = load(write_run(tmp_path / "run", [steps_trace()]), link=True, progress=False)
    run.steps_log = mng_shaped_log()
    after = [f for f in detect(run) if f.step == 7]
    assert [f.severity for f in after] == ["low"]
    (f,) = after
    assert f.evidence["category"] == "profiler" and f.evidence["profiler"] == "export"
    assert "after the profiler exported its trace" in f.title and "not the program's" in f.title
    assert f.evidence["median_step_us"] == 121_000.0  # steps 2-6, 8, 9: the export left out
    assert not [g for g in detect(run) if g.severity == "high"]


def test_a_slow_step_the_profiler_did_not_touch_is_still_the_programs(tmp_path: Path) -> None:
    run = load(write_run(tmp_path / "run", [steps_trace()]), link=True, progress=False)
    log = mng_shaped_log()
    log.loc[log["step"] == 9, "wall_ms"] = 900.0  # two steps after the export: not touched
    run.steps_log = log
    (f,) = [f for f in detect(run) if f.step == 9]
    assert f.severity == "high" and f.evidence["category"] == "unknown"
    assert "not profiled" in f.title


def test_a_split_recordings_stack_window_is_the_profilers_time(tmp_path: Path) -> None:
    """The runners' `profiler` field: steps 6-7 timed, 9-10 with stacks at 10x."""
    run = load(write_run(tmp_path / "run", [steps_trace()]), link=True, progress=False)
    touches = [[], [], [], [], [], ["warmup"], ["active"], ["active"], ["warmup", "export"],
               ["active"], ["active"], ["export"], []]
    wall = [900.0, 300.0] + [120.0] * 11
    wall[9] = wall[10] = 1_300.0
    run.steps_log = pd.DataFrame({
        "step": range(13), "wall_ms": wall, "profiler": touches,
        "profiled": [bool(t) and "active" in t for t in touches],
        "window": ["stacks" if s in (9, 10) else None for s in range(13)]})
    slow = [f for f in detect(run) if not f.evidence.get("warmup")]
    assert [(f.step, f.severity, f.evidence["profiler"]) for f in slow] == [
        (9, "low", "stacks"), (10, "low", "stacks")]
    assert "stack window" in slow[0].title


def test_the_compiled_cpu_run_says_its_step_6_is_the_profilers() -> None:
    run = load(COMPILED_CPU, link=True, progress=False)
    by_step = {f.step: f for f in detect(run)}
    assert by_step[6].severity == "low" and by_step[6].evidence["profiler"] == "export"
    assert "profiler" not in by_step[7].evidence  # step 7 is an ordinary step of the script


def median_from_step_table(trace) -> float | None:
    table = step_table(trace)
    if table["gpu_end"].notna().any():  # a GPU trace: its steps that ran GPU work
        table = table[table["gpu_end"].notna()]
    times = table[["cpu_us", "gpu_us"]].max(axis=1, skipna=True).dropna()
    return float(times.median()) if len(times) else None


@pytest.mark.parametrize("run_dir", sorted({p.parent for p in GPU_DATA.rglob("*.pt.trace.json.gz")
                                     if ".tkcache" not in p.parts}),
                         ids=lambda p: p.relative_to(GPU_DATA).as_posix())
def test_a_ranks_median_step_is_the_median_of_its_step_tables_longer_side(run_dir) -> None:
    """median_step_us reads the steps as arrays; it agrees with step_table's columns on every
    recorded GPU run, a step without GPU work (left out) and a first step without a predecessor
    included."""
    for trace in load(run_dir).traces:
        with_a_gap = trace.steps.copy()
        with_a_gap.loc[with_a_gap.index[:1], ["gpu_ts", "gpu_end"]] = float("nan")
        for steps in (trace.steps, with_a_gap.sample(frac=1.0, random_state=3)):
            trace.steps = steps
            assert median_step_us(trace) == median_from_step_table(trace)


def test_a_step_that_ran_no_gpu_work_is_not_a_step_of_a_gpu_job() -> None:
    """The MI250 trace's step 2 is a 0.2 ms CPU span with no GPU work (the profiler's export):
    the rank's step is step 1 (its 9.3 ms CPU span, longer than its GPU period), not the 4.7 ms
    median of both steps, which made a 6.8 ms idle finding "146% of the step"."""
    path = Path(__file__).resolve().parents[1] / "data/external/amd_mi250_single.json.gz"
    trace = load(path).traces[0]
    assert median_step_us(trace) == pytest.approx(9288.3, abs=0.1)
