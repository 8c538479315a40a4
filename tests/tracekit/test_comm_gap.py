"""comm_gap on synthetic traces (each classification) and on the planted H200 traces."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.planted import load_planted, planted_site
from tests.synth import SynthTrace, write_run
from tracekit.detectors import sm_contention
from tracekit.detectors.comm_gap import (
    COMPUTE_SATURATION,
    LATE_LAUNCH,
    SM_STARVATION,
    WAITING_ON_COMPUTE,
    detect,
)
from tracekit.pipeline import load
from tracekit.source import call_line

COPY = "void at::native::elementwise_kernel<128, 2, direct_copy_kernel_cuda>(int)"
GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64"
UPDATE = "void at::native::vectorized_elementwise_kernel<4, addcdiv_kernel>(int)"
NELEMS = 8 * 1024 * 1024


def gap_trace(scenario: str, steps: int = 3) -> SynthTrace:
    """Per step two all_reduces on stream 20: A at +100..+200, then B in one of the ways."""
    t = SynthTrace(rank=0, world_size=2)
    for step in range(steps):
        base = 10_000.0 * step
        t.step(step, cpu_ts=base, cpu_dur=9_000, gpu_ts=base + 50, gpu_dur=9_000)
        t.annotation("comm:all_reduce:a", ts=base + 5, dur=10)
        t.nccl_kernel("allreduce", launch_ts=base + 8, kernel_ts=base + 100, kernel_dur=100,
                      nelems=NELEMS)
        if scenario == "late":
            t.annotation("optim:step", ts=base + 30, dur=1_950)
            t.cpu_op("aten::_foreach_mul_", ts=base + 300, dur=1_500)
            b_launch, b_start = base + 2_000, base + 2_015
        elif scenario in ("compute", "starved", "gemm"):
            name, grid = {"compute": (GEMM, (2, 66, 1)), "starved": (COPY, (150912, 1, 1)),
                          "gemm": (GEMM, (2, 66, 1))}[scenario]
            # compute: launched before B (B's input): a dependency. starved/gemm: after B.
            k_launch = base + 20 if scenario == "compute" else base + 60
            t.annotation("compute:work", ts=k_launch - 2, dur=10)
            t.launch_kernel(name, launch_ts=k_launch, kernel_ts=base + 210, kernel_dur=1_500,
                            stream=7, grid=grid)
            b_launch, b_start = base + 50, base + 1_712
        elif scenario in ("input_then_copy", "short_input_then_copy"):
            # B's input (an SM-filling update, launched before B) ends, then a copy launched
            # after B holds every SM.
            input_dur, copy_dur = (800, 500) if scenario == "input_then_copy" else (100, 1_000)
            t.annotation("optim:update", ts=base + 18, dur=10)
            t.launch_kernel(UPDATE, launch_ts=base + 20, kernel_ts=base + 210,
                            kernel_dur=input_dur, stream=7, grid=(12576, 1, 1))
            t.annotation("tie:copy", ts=base + 58, dur=10)
            t.launch_kernel(COPY, launch_ts=base + 60, kernel_ts=base + 212 + input_dur,
                            kernel_dur=copy_dur, stream=7, grid=(150912, 1, 1))
            b_launch, b_start = base + 50, base + 215 + input_dur + copy_dur
        else:  # back to back
            b_launch, b_start = base + 50, base + 205
        t.annotation("comm:all_reduce:b", ts=b_launch - 3, dur=10)
        t.nccl_kernel("allreduce", launch_ts=b_launch, kernel_ts=b_start, kernel_dur=100,
                      nelems=NELEMS)
    return t


def findings_for(tmp_path: Path, scenario: str):
    return detect(load(write_run(tmp_path / scenario, [gap_trace(scenario)]), progress=False))


def test_late_launch_names_the_cpu_work(tmp_path: Path) -> None:
    findings = findings_for(tmp_path, "late")
    assert len(findings) == 1
    f = findings[0]
    assert f.evidence["classification"] == LATE_LAUNCH and f.count == 3
    assert f.evidence["cpu_activity"]["name"] == "aten::_foreach_mul_"
    assert f.cost_us == pytest.approx(3 * 1_815, abs=1)
    assert "allreduce(comm:all_reduce:b) issued 1.80 ms after allreduce(comm:all_reduce:a)" \
        in f.cause.ordering


def test_waiting_on_compute_names_the_kernel(tmp_path: Path) -> None:
    [f] = findings_for(tmp_path, "compute")
    assert f.evidence["classification"] == WAITING_ON_COMPUTE
    assert f.culprit.kernel == GEMM and f.culprit.stream == 7
    assert f.evidence["waited_for_kernel"] == GEMM
    assert f.cost_us == pytest.approx(3 * 1_512, abs=1)


def test_sm_starvation_and_gemm_saturation(tmp_path: Path) -> None:
    [starved] = findings_for(tmp_path, "starved")
    assert starved.evidence["classification"] == SM_STARVATION
    assert starved.culprit.kernel == COPY
    [gemm] = findings_for(tmp_path, "gemm")
    assert gemm.evidence["classification"] == COMPUTE_SATURATION
    assert gemm.culprit.kernel == GEMM


def test_wait_for_input_then_for_sms_is_split(tmp_path: Path) -> None:
    """The collective's input is the last kernel launched before it on the compute stream; a
    copy launched after it that then holds every SM is a second, separate wait."""
    [f] = findings_for(tmp_path, "input_then_copy")
    assert f.evidence["classification"] == WAITING_ON_COMPUTE
    assert f.evidence["waited_for_kernel"] == UPDATE
    assert f.evidence["input_wait_us"] == pytest.approx(810, abs=1)
    assert f.evidence["wait_after_input_us"] == pytest.approx(505, abs=1)
    assert ("then 505 us more while elementwise_kernel[direct_copy_kernel_cuda] (tie:copy) held "
            "every SM") in f.cause.ordering
    [g] = findings_for(tmp_path, "short_input_then_copy")
    assert g.evidence["classification"] == SM_STARVATION and g.culprit.kernel == COPY
    assert "waited 110 us for its input" in g.cause.ordering


def test_sm_contention_counts_only_the_wait_after_the_input(tmp_path: Path) -> None:
    """The SM-filling update B waits for is B's input, not contention: only the copy's 500 us
    count, not the 1315 us from B's readiness on the comm stream to its start."""
    run = load(write_run(tmp_path / "split", [gap_trace("input_then_copy")]), progress=False)
    [f] = sm_contention.detect(run)
    assert f.culprit.kernel == COPY
    assert f.cost_us == pytest.approx(3 * 500, abs=3)


def test_back_to_back_collectives_have_no_gap(tmp_path: Path) -> None:
    assert findings_for(tmp_path, "none") == []


def test_gaps_across_steps_are_ignored(tmp_path: Path) -> None:
    """The idle time between the last collective of a step and the first of the next is the
    step boundary, not a comm gap."""
    t = SynthTrace(rank=0, world_size=2)
    for step in range(3):
        base = 10_000.0 * step
        t.step(step, cpu_ts=base, cpu_dur=9_000, gpu_ts=base + 50, gpu_dur=9_000)
        t.nccl_kernel("allreduce", launch_ts=base + 8, kernel_ts=base + 100, kernel_dur=100,
                      nelems=NELEMS)
    assert detect(load(write_run(tmp_path / "r", [t]), progress=False)) == []


def test_call_line_finds_the_call_or_gives_up(tmp_path: Path) -> None:
    src = tmp_path / "prog.py"
    src.write_text("import time\n\n\ndef work(n):\n    x = n\n    time.sleep(x)\n    return x\n")
    assert call_line(src, 4, "work", "sleep") == 6
    assert call_line(src, 5, "work", "sleep") is None  # no def at line 5: the file changed
    assert call_line(src, 4, "work", "perf_counter") is None


# ---- the planted H200 traces --------------------------------------------------------------------

def stale(run, function: str, def_line: int) -> bool:
    """True when the traces were recorded from an older version of the script (the profiler
    names frames by their def line, and the script's def line for `function` is not among them).
    """
    names = set(run.traces[0].python["name"].astype(str))
    return f"record_planted_traces.py({def_line}): {function}" not in names


def test_planted_late_launch_and_wait_on_compute() -> None:
    run = load_planted("comm_gap_late")
    findings = detect(run)
    late_line, late_def, late_fn = planted_site("comm_gap late launch")
    for rank in (0, 1):
        mine = [f for f in findings if f.rank == rank]
        late = [f for f in mine if f.evidence["classification"] == LATE_LAUNCH]
        wait = [f for f in mine if f.evidence["classification"] == WAITING_ON_COMPUTE]
        assert len(late) == 1 and len(wait) == 1
        # Late: before bucket1, every profiled step, ~2 ms each, CPU in the busy loop.
        assert late[0].count == 5 and late[0].step in range(6, 11)
        assert "comm:all_reduce:bucket1" in late[0].title
        assert late[0].evidence["cpu_activity"]["name"] == "cpu:busy"
        assert late[0].cost_us / late[0].count > 1_800
        src = late[0].cause.source
        assert src is not None and src.file.endswith("record_planted_traces.py")
        assert src.function == late_fn
        if not stale(run, late_fn, late_def):
            assert src.line_exact and src.line == late_line
        # Waiting: bucket2 waits for the matmul chain on the compute stream.
        assert wait[0].count == 5 and "comm:all_reduce:bucket2" in wait[0].title
        assert "nvjet" in wait[0].culprit.kernel  # the GEMM that held the compute stream
        assert wait[0].evidence["culprit_label"] == "compute:before_comm"
        assert wait[0].cost_us / wait[0].count > 2_000
        wait_line, wait_def, wait_fn = planted_site("comm_gap waits on compute")
        assert wait[0].cause.source.function == wait_fn


def test_planted_back_to_back_has_no_planted_causes() -> None:
    """comm_gap_none issues the four all_reduces back to back, then the matmul chain. The
    trace still shows real gaps (c10d needs ~150 us of CPU to issue each collective, longer
    than a 32 MB all_reduce runs; the cooperative GEMM and the .float() copy issued after the
    collectives hold every SM while the last ones wait), but none of the planted causes: no
    CPU work outside issuing the collectives, and nothing the collectives depend on."""
    findings = detect(load_planted("comm_gap_none"))
    for f in findings:
        assert f.evidence["classification"] != WAITING_ON_COMPUTE
        if f.evidence["classification"] == LATE_LAUNCH:
            assert f.evidence["cpu_activity"]["issuing_the_collective"]
            assert f.cost_us / f.count < 300
    late_total = sum(f.cost_us for f in detect(load_planted("comm_gap_late")))
    assert sum(f.cost_us for f in findings) < late_total / 2
