"""straggler: the rank that reaches a collective last, what it was doing, how long the others
waited; the same findings in one process and one process per rank, from 2 to 64 ranks."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.planted import load_planted
from tests.synth import SynthTrace, write_run
from tracekit.detectors.straggler import Params, RankCollectives, detect, late_arrivals
from tracekit.pipeline import analyze_rankwise, analyze_run, load
from tracekit.report import render_json

NELEMS = 8 * 1024 * 1024
GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64"
STEP_US = 40_000.0


def rank_trace(rank: int, world: int, *, late_us: float = 0.0, last_us: float = 0.0,
               late_on_gpu: bool = False, steps: int = 4, clock: float = 0.0) -> SynthTrace:
    """Per step: 2 ms of compute, then an all_reduce every rank launches at +3 ms and that ends
    when the last rank has joined (`last_us` after the others) + 200 us. A late rank first
    loads a batch on the CPU for `late_us` (or, with late_on_gpu, runs a longer GEMM).
    `clock` shifts this rank's clock."""
    t = SynthTrace(rank=rank, world_size=world, pid=1000 + rank, tid=1000 + rank)
    for step in range(steps):
        base = clock + STEP_US * step
        t.step(step, cpu_ts=base, cpu_dur=STEP_US - 100, gpu_ts=base + 50,
               gpu_dur=STEP_US - 200)
        gemm_dur = 2_000.0 + (late_us if late_on_gpu else 0.0)
        t.launch_kernel(GEMM, launch_ts=base + 20, kernel_ts=base + 100, kernel_dur=gemm_dur,
                        stream=7, grid=(132, 1, 1))
        launch = base + 3_000
        if late_us and not late_on_gpu:
            t.annotation("data:load", ts=base + 2_990, dur=late_us)
            t.python_frame("train.py", 42, "load_batch", ts=base + 2_995, dur=late_us - 10)
            launch += late_us
        last_arrival = base + 3_015 + max(late_us, last_us)
        own_start = max(launch + 15, base + 100 + gemm_dur + 5)
        t.annotation("comm:all_reduce:grads", ts=launch - 3, dur=10)
        t.nccl_kernel("allreduce", launch_ts=launch, kernel_ts=own_start,
                      kernel_dur=last_arrival + 200 - own_start, nelems=NELEMS)
    return t


def run_of(tmp_path: Path, traces: list[SynthTrace]) -> Path:
    return write_run(tmp_path / "run", traces)


def test_a_rank_loading_data_makes_the_other_wait(tmp_path: Path) -> None:
    traces = [rank_trace(0, 2, last_us=13_000), rank_trace(1, 2, late_us=13_000, clock=5e6)]
    run = load(run_of(tmp_path, traces), progress=False)
    [f] = detect(run)
    assert f.kind == "straggler" and f.rank == 1 and f.count == 4
    assert f.evidence["lateness_us"] == pytest.approx(13_000, abs=1)
    assert f.evidence["waited_us_by_rank"] == {0: pytest.approx(4 * 13_000, abs=4)}
    assert f.evidence["cause_kind"] == "cpu"
    assert f.evidence["cpu_activity"]["name"] == "data:load"
    assert f.cause.source.file == "train.py" and f.cause.source.line == 42
    assert f.cost_us == pytest.approx(4 * 13_000, abs=4)
    assert "rank 1 arrives last at allreduce x4" in f.title
    assert "the other rank waits up to 13.00 ms" in f.title and "data:load" in f.title
    # Rank 1's clock runs 5 s ahead of rank 0's: the finding is placed on rank 1's own.
    assert f.start_us > 5e6


def test_a_rank_with_more_gpu_work_is_named_by_its_kernel(tmp_path: Path) -> None:
    traces = [rank_trace(0, 2, last_us=3_000),
              rank_trace(1, 2, late_us=3_000, late_on_gpu=True)]
    [f] = detect(load(run_of(tmp_path, traces), progress=False))
    assert f.rank == 1 and f.evidence["cause_kind"] == "gpu" and f.count == 4
    assert f.culprit.kernel == GEMM and "its GPU running" in f.title
    # Its GEMM ran to +5.1 ms instead of +2.1 ms: it joined 2.09 ms after rank 0.
    assert f.evidence["lateness_us"] == pytest.approx(2_090, abs=1)


def test_ranks_arriving_together_give_nothing(tmp_path: Path) -> None:
    # 40 us apart: launch jitter (25-35 us at the 90th percentile on the reference runs).
    traces = [rank_trace(0, 2, last_us=40), rank_trace(1, 2, late_us=40)]
    assert detect(load(run_of(tmp_path, traces), progress=False)) == []


def test_one_rank_alone_cannot_be_compared(tmp_path: Path) -> None:
    assert detect(load(run_of(tmp_path, [rank_trace(0, 2, late_us=13_000)]),
                       progress=False)) == []


@pytest.mark.parametrize("world", [3, 12])
def test_many_ranks_one_straggler_same_findings_per_rank_process(tmp_path: Path,
                                                                  world: int) -> None:
    late = world - 2
    traces = [rank_trace(r, world, late_us=5_000 if r == late else 10.0 * r, last_us=5_000,
                         clock=1e4 * r, steps=3) for r in range(world)]
    run_dir = run_of(tmp_path, traces)
    _, together = analyze_run(run_dir, kinds=["straggler"], progress=False)
    _, apart = analyze_rankwise(run_dir, kinds=["straggler"], progress=False)
    stragglers = [f for f in together if f.kind == "straggler"]
    assert render_json(apart) == render_json(together)
    [f] = stragglers
    assert f.rank == late and f.evidence["ranks_waiting"] == world - 1
    # Lateness: after the next-to-last rank (10 us x its rank number of jitter).
    assert f.evidence["lateness_us"] == pytest.approx(5_000 - 10.0 * (world - 1), abs=1)
    assert len(f.evidence["waited_us_by_rank"]) == min(8, world - 1)


def test_hundreds_of_ranks_from_their_summaries() -> None:
    """256 ranks' summaries (what per-rank processes send), clocks each off by up to 2.5 s:
    rank 200 is 3 ms late at the second of two collectives per step. Every collective runs
    exposed."""
    rows = []
    for rank in range(256):
        for step in range(5):
            for order in (1, 2):
                start = step * 50_000.0 + order * 10_000 + 3.0 * (rank % 7)
                if rank == 200 and order == 2:
                    start += 3_000
                end = step * 50_000.0 + order * 10_000 + 3_500
                rows.append({"pg": "0", "step": step, "order": float(order),
                             "key": f"allreduce|{order}", "collective": "allreduce",
                             "ts": start + 1e4 * rank, "end": end + 1e4 * rank, "rank": rank})
    frame = pd.DataFrame(rows)
    tables = {r: g.drop(columns="rank").reset_index(drop=True) for r, g in frame.groupby("rank")}
    summaries = {r: RankCollectives(table=t, exposed=(t["ts"].to_numpy(), t["end"].to_numpy()))
                 for r, t in tables.items()}
    late = late_arrivals(summaries, Params())
    assert len(late) == 5 and set(late["late_rank"]) == {200} and set(late["order"]) == {2.0}
    # Rank 200 (jitter 3 us x 200 % 7 = 12 us) after the ranks with 6 x 3 = 18 us of jitter.
    assert late["lateness"].tolist() == pytest.approx([3_000 + 12 - 18] * 5)
    assert all(len(w) == 255 for w in late["waits"])
    # The next-to-last rank's exposed time there: its whole collective (it ran alone).
    assert late["exposed_us"].tolist() == pytest.approx([3_500 - 18] * 5)


def test_planted_control_run_shows_its_real_straggler() -> None:
    """comm_gap_none (2x H200) ends each step with torch.cuda.synchronize(). On rank 1 the
    GEMM issued after the collectives takes the SMs before the third all_reduce, on rank 0
    after it, so rank 0's GPU is still running that GEMM when rank 1 has already started the
    next step: rank 0 launches the next first all_reduce 1.87-1.94 ms after rank 1 (launch
    times checked by hand in the trace), and rank 1's all_reduce spins that long."""
    findings = detect(load_planted("comm_gap_none"))
    gemm = [f for f in findings if f.rank == 0 and f.evidence["cause_kind"] == "gpu"]
    [f] = gemm
    assert "nvjet" in f.culprit.kernel and f.count >= 4
    assert f.evidence["lateness_us"] == pytest.approx(1_900, rel=0.05)
    assert set(f.evidence["waited_us_by_rank"]) == {1}
