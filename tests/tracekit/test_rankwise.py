"""tracekit.pipeline.rankwise: one process per rank gives exactly the findings of one process."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from tracekit.errors import UserError
from tracekit.pipeline import analyze_rankwise, analyze_run
from tracekit.pipeline.rankwise import parse_processes
from tracekit.report import render_json

REPO = Path(__file__).resolve().parents[2]
REFERENCE_RUNS = sorted(p for p in (REPO / "traces").iterdir() if (p / "manifest.json").exists())
PLANTED = REPO / "tests" / "data" / "gpu"


@pytest.mark.parametrize("run_dir", [*REFERENCE_RUNS, PLANTED / "comm_gap_late",
                                     PLANTED / "slow_step_wait"], ids=lambda p: p.name)
def test_same_findings_as_one_process(run_dir: Path) -> None:
    """Cross-rank parts (the run's step time for severities, NCCL baselines and peer waits of
    sm_contention, steps.jsonl findings once) come out the same from rank summaries."""
    _, together = analyze_run(run_dir, progress=False)
    run, apart = analyze_rankwise(run_dir, progress=False)
    assert render_json(apart) == render_json(together)
    assert run.ranks == sorted(run.ranks) and len(run.ranks) >= 2
    # The parent holds thin traces only: what a report header needs.
    assert all(t.kernels.empty and t.ops.empty and len(t.steps) for t in run.traces)
    assert all(t.has_gpu for t in run.traces)


def test_filters_and_single_files(tmp_path: Path) -> None:
    run_dir = REPO / "traces" / "pathologies-2gpu"
    _, rank1 = analyze_rankwise(run_dir, rank=1, min_cost_us=500, progress=False)
    assert rank1 and {f.rank for f in rank1} == {1} and min(f.cost_us for f in rank1) >= 500
    _, kinds = analyze_rankwise(run_dir, kinds=["select_backward"], progress=False)
    assert kinds and {f.kind for f in kinds} == {"select_backward"}
    with pytest.raises(UserError, match="rank 5 is not in"):
        analyze_rankwise(run_dir, rank=5, progress=False)
    with pytest.raises(UserError, match="unknown detector"):
        analyze_rankwise(run_dir, kinds=["nope"], progress=False)
    one = run_dir / "rank0.pt.trace.json.gz"  # a file: the loader's one-process path
    assert render_json(analyze_rankwise(one, progress=False)[1]) == \
        render_json(analyze_run(one, progress=False)[1])


def test_non_trace_files_are_skipped_and_broken_ones_stop_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(PLANTED / "comm_gap_late", run_dir)
    (run_dir / "config.json").write_text('{"lr": 0.1}')
    run, findings = analyze_rankwise(run_dir, progress=False)
    assert run.ranks == [0, 1] and findings
    assert any("skipped config.json" in w for t in run.traces for w in t.warnings)
    broken = next(run_dir.glob("*rank1*"))
    broken.write_bytes(gzip.compress(b'{"traceEvents": [{"ph": "X", "na'))
    with pytest.raises(UserError):
        analyze_rankwise(run_dir, progress=False)


def test_rank_processes_parse_their_file_in_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """With more CPUs than rank files, each rank process also slices its file: the rank
    processes are not daemons, so they may start slice parsers. Same findings."""
    import tracekit.load.stream as stream

    monkeypatch.setenv("TRACEKIT_CACHE", "0")
    monkeypatch.setattr(stream, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(stream, "NATIVE_PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(stream, "MIN_CPUS_FOR_POOL", 1)
    run_dir = REPO / "traces" / "switch-tie-eager"
    _, sliced = analyze_rankwise(run_dir, progress=False, workers=4)
    _, together = analyze_run(run_dir, progress=False)
    assert render_json(sliced) == render_json(together)


@pytest.mark.parametrize(("base", "new"), [
    ("traces/switch-tie-eager", "traces/fixed-2gpu"),
    ("traces/pathologies-4gpu", "traces/fixed-4gpu"),
    ("tests/data/gpu/sm_contention_eager/rank0.pt.trace.json.gz",
     "tests/data/gpu/sm_contention_triton/rank0.pt.trace.json.gz"),
])
def test_diff_from_rank_processes_equals_diff_of_loaded_runs(base: str, new: str) -> None:
    """`cli.py diff` (each rank's per-name totals computed in its own process) reports what
    diff_runs reports from both runs loaded in this process."""
    from tracekit.compare import diff_runs
    from tracekit.pipeline import diff_paths

    apart, *_ = diff_paths(REPO / base, REPO / new, progress=False)
    base_run, base_findings = analyze_run(REPO / base, progress=False)
    new_run, new_findings = analyze_run(REPO / new, progress=False)
    together = diff_runs(base_run, base_findings, new_run, new_findings)
    assert apart.to_dict() == together.to_dict()
    assert apart.kernels and apart.findings.resolved


def test_ranks_of_different_runs_found_after_loading_stop_every_rank_process_at_once(
        tmp_path: Path) -> None:
    """When only the loaded traces tell that ranks belong to different runs (distributedInfo
    written after the events, so not seen before parsing), the error comes as soon as they are
    loaded: the rank processes are told to stop, not waited on for a timeout each (that was
    5 s per rank: 11 s for two rank files, 16.5 s for three)."""
    import json
    import time

    for rank, world in ((0, 2), (1, 4), (2, 8)):
        doc = {"traceEvents": [
            {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 1, "tid": 1, "ts": 0,
             "dur": 10, "args": {}}], "distributedInfo": {"rank": rank, "world_size": world}}
        (tmp_path / f"rank{rank}.json").write_text(json.dumps(doc))
    started = time.monotonic()
    with pytest.raises(UserError, match="world size"):
        analyze_rankwise(tmp_path, progress=False)
    assert time.monotonic() - started < 4.5


@pytest.mark.parametrize(("files", "cpus", "each"), [
    (2, 2, 1), (2, 4, 1), (2, 5, 1), (2, 6, 3), (2, 32, 16), (8, 32, 4), (11, 32, 1),
    (16, 32, 1), (64, 32, 1), (1, 8, 8)])
def test_a_rank_file_gets_slice_parsers_only_when_its_share_of_the_cpus_could_run_them(
        files: int, cpus: int, each: int) -> None:
    """Three CPUs per rank file at least (the one-file rule), else its rank process alone."""
    assert parse_processes(files, cpus) == each
