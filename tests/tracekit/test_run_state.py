"""A run directory must hold one whole run: rank files of different runs are refused before any
is parsed (naming the files and what differs), and a run whose manifest says it stopped is
never analysed as a good one."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tracekit.errors import UserError
from tracekit.load import load
from tracekit.load.rundir import finish_ranks, plan_load

DATA = Path(__file__).resolve().parents[1] / "data" / "gpu"
RUN = DATA / "comm_gap_late"


def copy_run(tmp_path: Path, source: Path = RUN) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    return run_dir


def rewrite_info(path: Path, **info: Any) -> None:
    doc = json.loads(gzip.decompress(path.read_bytes()))
    doc["distributedInfo"].update(info)
    path.write_bytes(gzip.compress(json.dumps(doc).encode()))


def test_two_files_of_one_rank_are_refused_before_parsing(tmp_path: Path) -> None:
    run_dir = copy_run(tmp_path)
    shutil.copy(DATA / "comm_gap_none" / "rank0.pt.trace.json.gz", run_dir / "rank0.old.json.gz")
    with pytest.raises(UserError, match=r"two trace files claim rank 0: rank0.old.json.gz and "
                                        r"rank0.pt.trace.json.gz \(rank files of different runs"):
        plan_load(run_dir)  # reads only the files' first bytes


def test_rank_files_with_different_world_sizes_are_named(tmp_path: Path) -> None:
    run_dir = copy_run(tmp_path)
    rewrite_info(run_dir / "rank1.pt.trace.json.gz", world_size=4)
    with pytest.raises(UserError) as info:
        plan_load(run_dir)
    assert str(info.value) == (f"{run_dir}: rank files of different runs (world size differs: "
                               "rank0.pt.trace.json.gz: 2; rank1.pt.trace.json.gz: 4)")


def test_rank_files_with_different_nccl_versions_are_named(tmp_path: Path) -> None:
    run_dir = copy_run(tmp_path)
    rewrite_info(run_dir / "rank0.pt.trace.json.gz", nccl_version="2.18.3")
    with pytest.raises(UserError, match=r"NCCL version differs: rank0.pt.trace.json.gz: 2.18.3; "
                                        r"rank1.pt.trace.json.gz: 2.28.9"):
        load(run_dir, progress=False)


def write_manifest(run_dir: Path, **fields: Any) -> None:
    manifest = {"world_size": 2, "profiled_steps": [6, 7, 8, 9, 10], **fields}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))


def test_an_interrupted_run_missing_a_rank_is_refused(tmp_path: Path) -> None:
    run_dir = copy_run(tmp_path)
    (run_dir / "rank1.pt.trace.json.gz").unlink()
    write_manifest(run_dir, status="interrupted", ranks_with_traces=[0],
                   stop={"reason": "SIGTERM", "at_step": 9, "steps_done": 9})
    with pytest.raises(UserError) as info:
        load(run_dir, progress=False)
    assert str(info.value).startswith(
        f"{run_dir}: incomplete run: the run was interrupted by SIGTERM at step 9; rank(s) 1 "
        "wrote no trace (only 0 did)")
    # One rank's file on its own still loads, saying what happened to its run.
    trace = load(run_dir / "rank0.pt.trace.json.gz", progress=False).traces[0]
    assert trace.warnings[0].startswith("the run was interrupted by SIGTERM at step 9")


def test_a_failed_run_whose_traces_are_all_there_loads_with_a_note(tmp_path: Path) -> None:
    run_dir = copy_run(tmp_path)
    write_manifest(run_dir, status="failed", stop={
        "reason": "a rank failed or was killed; rank 0 was then stopped by SIGTERM",
        "at_step": 14, "launcher": "torchrun exited with code 1"})
    run = load(run_dir, progress=False)
    assert run.ranks == [0, 1]
    assert run.traces[0].warnings[0] == (
        "the run failed at step 14: a rank failed or was killed; rank 0 was then stopped by "
        "SIGTERM (torchrun exited with code 1): the traces here are whole, but the run is not")


def test_the_note_goes_on_rank_0_whichever_rank_finished_loading_first(tmp_path: Path) -> None:
    run_dir = copy_run(tmp_path)
    traces = load(run_dir, progress=False).traces  # no manifest yet: no note
    write_manifest(run_dir, status="failed", stop={"reason": "rank 1 was killed", "at_step": 9})
    arrived = [t for t in reversed(traces)]  # rank 1's process answered first
    finish_ranks(plan_load(run_dir), arrived, skipped=["notes.json: not a profiler trace"])
    assert [t.rank for t in arrived] == [0, 1]
    assert arrived[0].warnings[0].startswith("the run failed at step 9: rank 1 was killed")
    assert arrived[0].warnings[-1] == "skipped notes.json: not a profiler trace"
    assert not any("the run" in w for w in arrived[1].warnings)


def test_a_run_still_marked_running_without_traces_says_so(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_manifest(run_dir, status="running")
    with pytest.raises(UserError, match="incomplete run: the run did not finish .* before any "
                                        "rank wrote its trace"):
        load(run_dir, progress=False)


def test_a_complete_run_and_a_run_without_manifest_load_without_a_note(tmp_path: Path) -> None:
    run_dir = copy_run(tmp_path)
    assert not any("the run" in w for w in load(run_dir, progress=False).traces[0].warnings)
    write_manifest(run_dir, status="complete")
    assert not any("the run" in w for w in load(run_dir, progress=False).traces[0].warnings)


def test_analyze_json_of_an_interrupted_run_says_so_on_stderr(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import cli as cli_module

    run_dir = copy_run(tmp_path)
    write_manifest(run_dir, status="interrupted", stop={"reason": "SIGTERM", "at_step": 12})
    if not cli_module.app.registered_commands:
        cli_module._register_commands()
    monkeypatch.setattr(sys, "argv", ["cli.py", "analyze", str(run_dir), "--json"])
    with pytest.raises(SystemExit) as exited:
        cli_module.main()
    out, err = capsys.readouterr()
    assert exited.value.code in (0, None)
    assert isinstance(json.loads(out), list)
    assert err.strip() == ("note: the run was interrupted by SIGTERM at step 12: the traces are "
                           "whole, but the run is not")
