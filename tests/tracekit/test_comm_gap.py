"""comm_gap on synthetic traces (each classification) and on the planted H200 traces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.planted import load_planted, planted_site
from tests.synth import SynthTrace, write_run
from tracekit.accounting.sets import gpu_sets
from tracekit.detectors import run_detectors, sm_contention
from tracekit.detectors.comm_gap import (
    COMPUTE_SATURATION,
    LATE_LAUNCH,
    WAITING_ON_COMPUTE,
    detect,
)
from tracekit.pipeline import load
from tracekit.source import call_line
from tracekit.trace import Run

COPY = "void at::native::elementwise_kernel<128, 2, direct_copy_kernel_cuda>(int)"
GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64"
UPDATE = "void at::native::vectorized_elementwise_kernel<4, addcdiv_kernel>(int)"
NELEMS = 8 * 1024 * 1024


def gap_trace(scenario: str, steps: int = 3, b_dur: float = 100) -> SynthTrace:
    """Per step two all_reduces on stream 20: A at +100..+200, then B (`b_dur` long) in one of
    the ways."""
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
        t.nccl_kernel("allreduce", launch_ts=b_launch, kernel_ts=b_start, kernel_dur=b_dur,
                      nelems=NELEMS)
    return t


def findings_for(tmp_path: Path, scenario: str, b_dur: float = 100):
    run = load(write_run(tmp_path / scenario, [gap_trace(scenario, b_dur=b_dur)]),
               progress=False)
    return detect(run)


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
    # The step loses what B would have saved by running under the 1.5 ms GEMM: its own
    # 100 us (it runs exposed after the GEMM) and the 12 us the GPU idled around the GEMM;
    # not the GEMM's 1.5 ms, which runs either way.
    assert f.cost_us == pytest.approx(3 * (100 + 12), abs=1)
    assert f.evidence["gpu_idle_us"] == pytest.approx(12, abs=0.5)
    assert f.evidence["exposed_comm_after_us"] == pytest.approx(100, abs=0.5)


def test_sm_starvation_is_left_to_sm_contention_and_gemm_saturation_kept(
        tmp_path: Path) -> None:
    # B waits 1.5 ms for SMs while a copy launched after it holds them: sm_contention's
    # finding (one home for that lost time), not a second one here.
    assert findings_for(tmp_path, "starved") == []
    run = load(write_run(tmp_path / "starved2", [gap_trace("starved")]), progress=False)
    [contention] = sm_contention.detect(run)
    assert contention.culprit.kernel == COPY
    # Behind a GEMM (which sm_contention never blames) the gap stays comm_gap's.
    [gemm] = findings_for(tmp_path, "gemm")
    assert gemm.evidence["classification"] == COMPUTE_SATURATION
    assert gemm.culprit.kernel == GEMM


def test_wait_for_input_then_for_sms_is_split(tmp_path: Path) -> None:
    """The collective's input is the last kernel launched before it on the compute stream; a
    copy launched after it that then holds every SM is a second, separate wait. A 1.5 ms B
    runs exposed after both: comm_gap claims the 810 us the input wait could have hidden,
    sm_contention the 500 us the copy held the SMs, in disjoint parts of B's run."""
    [f] = findings_for(tmp_path, "input_then_copy", b_dur=1_500)
    assert f.evidence["classification"] == WAITING_ON_COMPUTE
    assert f.evidence["waited_for_kernel"] == UPDATE
    assert f.evidence["input_wait_us"] == pytest.approx(810, abs=1)
    assert f.evidence["wait_after_input_us"] == pytest.approx(505, abs=1)
    assert ("then 505 us more while elementwise_kernel[direct_copy_kernel_cuda] (tie:copy) held "
            "every SM") in f.cause.ordering
    run = load(write_run(tmp_path / "split", [gap_trace("input_then_copy", b_dur=1_500)]),
               progress=False)
    by_kind = {g.kind: g for g in run_detectors(run, kinds=["comm_gap", "sm_contention"])}
    # the update's 800 us, plus the 15 us the GPU idled between the kernels
    assert by_kind["comm_gap"].cost_us == pytest.approx(3 * 815, abs=3)
    assert by_kind["sm_contention"].cost_us == pytest.approx(3 * 500, abs=3)  # the copy's run
    # With a 100 us B the starvation alone explains its exposed run: no comm_gap finding.
    assert findings_for(tmp_path, "short_input_then_copy") == []


def test_sm_contention_counts_only_the_wait_after_the_input(tmp_path: Path) -> None:
    """The SM-filling update B waits for is B's input, not contention: only the copy's 500 us
    count as delay, not the 1315 us from B's readiness on the comm stream to its start. Of that
    delay the step loses what B runs exposed after the copy (its 100 us): started on time, B
    would have run under the copy."""
    run = load(write_run(tmp_path / "split", [gap_trace("input_then_copy")]), progress=False)
    [f] = sm_contention.detect(run)
    assert f.culprit.kernel == COPY
    assert f.evidence["late_start_us"] == pytest.approx(505, abs=1)
    assert f.cost_us == pytest.approx(3 * 100, abs=3)


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
        # Bucket2 waits 2.5-3.2 ms for the matmul chain, but the chain runs either way: the
        # step loses only bucket2's own exposed run after it (an 8M-float all_reduce, 0.3 ms
        # alone; longer on rank 1, which also waits there for rank 0).
        assert 100 < wait[0].cost_us / wait[0].count < 1_000 < wait[0].dur_us
        wait_line, wait_def, wait_fn = planted_site("comm_gap waits on compute")
        assert wait[0].cause.source.function == wait_fn
        # Both costs together, less the gaps the control pays too (c10d issuing each
        # collective), are what the plants add to the step: measured against the control that
        # issues the same collectives first (comm_gap_none).
        control = load_planted("comm_gap_none")
        added = median_gpu_step(run, rank) - median_gpu_step(control, rank)
        control_cost = sum(f.cost_us for f in detect(control) if f.rank == rank) / 5
        claimed = (late[0].cost_us + wait[0].cost_us) / 5 - control_cost
        assert claimed == pytest.approx(added, rel=0.25)


def median_gpu_step(run: Run, rank: int) -> float:
    """The median GPU-side step period of one rank (tracekit.accounting's step windows)."""
    windows = gpu_sets(run.rank(rank)).windows
    return float(np.median(windows[1] - windows[0]))


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


EXTERNAL = Path("/work/shared/traces-external")


def ddp_trace(hooked: bool) -> SynthTrace:
    """Per step, backward's GEMMs on stream 7 for 3 ms; bucket A's all_reduce when the first
    half of the gradients is ready, bucket B's when the rest is, each 200 us. With `hooked`,
    both are issued from a gradient hook inside the autograd engine, as DDP does."""
    t = SynthTrace(rank=0, world_size=2)
    for step in range(3):
        base = 10_000.0 * step
        t.step(step, cpu_ts=base, cpu_dur=9_000, gpu_ts=base + 50, gpu_dur=9_000)
        t.launch_kernel(GEMM, launch_ts=base + 10, kernel_ts=base + 100, kernel_dur=1_500,
                        stream=7, grid=(2, 66, 1))
        t.launch_kernel(GEMM, launch_ts=base + 40, kernel_ts=base + 1_600, kernel_dur=1_500,
                        stream=7, grid=(2, 66, 1))
        for launch, start in ((base + 20, base + 1_605), (base + 50, base + 3_105)):
            if hooked:
                t.cpu_op("autograd::engine::evaluate_function: torch::autograd::AccumulateGrad",
                         ts=launch - 4, dur=9)
            t.nccl_kernel("allreduce", launch_ts=launch, kernel_ts=start, kernel_dur=200,
                          nelems=NELEMS)
    return t


def test_ddp_overlap_that_works_is_not_a_finding(tmp_path: Path) -> None:
    """Bucket B waits 1.3 ms for the backward GEMM that produces its gradients, and then runs
    exposed; issued by a gradient hook, it could not have run earlier: no finding. The same
    collectives issued from user code could have (the control keeps the finding)."""
    hooked = load(write_run(tmp_path / "hooked", [ddp_trace(True)]), progress=False)
    assert detect(hooked) == []
    plain = load(write_run(tmp_path / "plain", [ddp_trace(False)]), progress=False)
    [f] = detect(plain)
    assert f.evidence["classification"] == WAITING_ON_COMPUTE
    assert f.cost_us == pytest.approx(3 * (200 + 5), abs=1)  # B's exposed run + 5 us idle


def test_gaps_on_two_comm_streams_are_counted_once(tmp_path: Path) -> None:
    """Two comm streams idle over the same 1 ms while the GPU does nothing: the step lost
    1 ms, not 2."""
    t = SynthTrace(rank=0, world_size=2)
    for step in range(3):
        base = 10_000.0 * step
        t.step(step, cpu_ts=base, cpu_dur=9_000, gpu_ts=base + 50, gpu_dur=9_000)
        for stream, label in ((20, "a"), (21, "b")):
            t.annotation(f"comm:{label}:first", ts=base + 5, dur=5)
            t.nccl_kernel("allreduce", launch_ts=base + 8, kernel_ts=base + 100, kernel_dur=100,
                          nelems=NELEMS, stream=stream)
            t.annotation(f"comm:{label}:second", ts=base + 1_190, dur=5)
            t.nccl_kernel("allreduce", launch_ts=base + 1_195, kernel_ts=base + 1_200,
                          kernel_dur=100, nelems=NELEMS, stream=stream)
    run = load(write_run(tmp_path / "two", [t]), progress=False)
    findings = run_detectors(run, kinds=["comm_gap"])
    assert sum(f.count for f in findings) == 6  # both streams' gaps, every step
    assert sum(f.cost_us for f in findings) == pytest.approx(3 * 1_000, abs=1)
    assert sum(f.cost_us for f in detect(run)) == pytest.approx(3 * 1_000, abs=1)


@pytest.mark.skipif(not EXTERNAL.is_dir(), reason="external traces not present")
def test_real_ddp_trace_reports_no_allreduce_gaps() -> None:
    """HTA's A100 DDP trace (rank 0 of 2): every all_reduce is issued from DDP's gradient hook
    while the CPU runs backward; the comm stream's 170 ms of idle per step was reported as
    gaps. What stays is DDP's buffer broadcast before the forward, which the CPU issues after
    flattening the buffers while the GPU idles (2.5 ms per step, checked on the timeline)."""
    findings = detect(load(EXTERNAL / "a100_nccl_2ranks_rank0.json.gz", progress=False))
    assert all("allreduce" not in f.title for f in findings)
    [broadcast] = findings
    assert "broadcast" in broadcast.evidence["next_collective"]
    assert broadcast.cost_us / broadcast.count == pytest.approx(2_460, rel=0.05)
