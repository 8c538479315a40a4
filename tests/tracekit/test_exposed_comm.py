"""exposed_comm: communication with nothing computing beside it is a finding with that cost;
overlap that works is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.synth import SynthTrace, write_run
from tracekit.detectors.exposed_comm import detect
from tracekit.link import link_trace
from tracekit.pipeline import load

GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64"
REPO = Path(__file__).resolve().parents[2]
DDP = REPO / "tests" / "data" / "gpu" / "planted_ddp"


def overlap_trace(hidden_us: float) -> SynthTrace:
    """Per step a 2 ms GEMM and a 1 ms all_reduce that starts `hidden_us` before it ends."""
    t = SynthTrace(rank=0, world_size=2)
    for step in range(3):
        base = 10_000.0 * step
        t.step(step, cpu_ts=base, cpu_dur=5_000, gpu_ts=base + 50, gpu_dur=4_000)
        t.launch_kernel(GEMM, launch_ts=base + 10, kernel_ts=base + 100, kernel_dur=2_000,
                        stream=7, grid=(2, 66, 1))
        t.nccl_kernel("allreduce", launch_ts=base + 20, kernel_ts=base + 2_100 - hidden_us,
                      kernel_dur=1_000, nelems=1 << 20)
    return t


def test_an_all_reduce_after_the_compute_is_exposed_and_one_under_it_is_not(
        tmp_path: Path) -> None:
    exposed = load(write_run(tmp_path / "a", [overlap_trace(hidden_us=300)]), progress=False)
    [f] = detect(exposed)
    assert f.cost_us == pytest.approx(3 * 700) and f.count == 3
    assert "runs exposed" in f.title
    hidden = load(write_run(tmp_path / "b", [overlap_trace(hidden_us=1_000)]), progress=False)
    assert detect(hidden) == []


def test_ddp_overlap_that_works_has_no_exposed_comm_finding() -> None:
    """The planted DDP control: its last bucket runs exposed 0.05-0.20 ms of a 14.9 ms step."""
    run = load(DDP / "none", link=False, progress=False)
    for trace in run.traces:
        link_trace(trace, source_roots=[REPO / "tests" / "programs", REPO])
    assert detect(run) == []
