"""`analyze --engine dask`: the per-rank work on a dask.distributed LocalCluster gives the
local engine's findings (`analyze_rankwise`, the rank processes `analyze` runs), on a run of
16 synthetic ranks with a straggler."""

from __future__ import annotations

import json
from pathlib import Path

import distributed
import pytest

from tests.synth import SynthTrace, write_run
from tracekit.errors import UserError
from tracekit.pipeline import analyze_rankwise

RANKS = 16
SLOW_RANK = 11


def straggler_run(run_dir: Path) -> Path:
    """16 ranks, five 2 ms steps of a matmul then an all-reduce; in step 3 rank 11 waits 50 ms
    on data, and every other rank waits for it in the all-reduce."""
    traces = []
    for rank in range(RANKS):
        t = SynthTrace(rank=rank, world_size=RANKS)
        cpu = 0.0
        for step in range(1, 6):
            extra = 50_000.0 if step == 3 else 0.0
            late = extra if rank == SLOW_RANK else 0.0
            t.step(step, cpu, 2000 + extra, cpu + 300 + late, 1700 + extra - late)
            if late:
                t.annotation("data:wait_shard", cpu + 100, late)
            op = t.cpu_op("aten::mm", cpu + 200 + late, 100)
            t.launch_kernel("sm90_xmma_gemm_f32f32", cpu + 210 + late, cpu + 300 + late, 1200,
                            external_id=op, grid=(132, 1, 1))
            comm = t.cpu_op("record_param_comms", cpu + 320 + late, 20)
            t.nccl_kernel("allreduce", launch_ts=cpu + 330 + late, kernel_ts=cpu + 1500 + late,
                          kernel_dur=400 + extra - late, nelems=1 << 20, external_id=comm)
            cpu += 2000 + extra
        traces.append(t)
    return write_run(run_dir, traces)


def canonical(finding: object) -> str:
    return json.dumps(finding.to_dict(), sort_keys=True, default=str)


@pytest.fixture(scope="module")
def cluster() -> object:
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as local:
        yield local


def test_findings_on_a_local_cluster_equal_the_local_engines(tmp_path: Path,
                                                             cluster: object) -> None:
    from tracekit.pipeline.dask_engine import analyze_on_dask

    run_dir = straggler_run(tmp_path / "run")
    (run_dir / "config.json").write_text('{"lr": 0.1}')  # skipped by both: not a trace
    _, local_findings = analyze_rankwise(run_dir, progress=False)
    run, findings, _ = analyze_on_dask(run_dir, cluster)
    assert {f.kind for f in local_findings} >= {"slow_step"}
    # Equal findings; findings of equal severity and cost may come back in either order.
    assert sorted(map(canonical, findings)) == sorted(map(canonical, local_findings))
    assert [t.rank for t in run.traces] == list(range(RANKS))
    assert "skipped config.json: not a profiler trace" in run.traces[0].warnings


def test_a_scheduler_that_does_not_answer_is_a_one_line_error() -> None:
    from tracekit.pipeline.dask_engine import client_for

    with pytest.raises(UserError, match="cannot connect"):
        client_for("tcp://127.0.0.1:9", timeout_s=2)


@pytest.mark.parametrize(("engine", "scheduler", "html", "message"), [
    ("ray", None, None, "--engine must be one of local, dask"),
    ("local", "tcp://10.0.0.1:8786", None, "--scheduler goes with --engine dask"),
    ("dask", None, Path("t.html"), "--html needs every rank's events"),
])
def test_engine_options_are_checked_before_loading(engine: str, scheduler: str | None,
                                                   html: Path | None, message: str) -> None:
    from tracekit.commands.analyze import check_engine

    with pytest.raises(UserError, match=message):
        check_engine(engine, scheduler, html)
