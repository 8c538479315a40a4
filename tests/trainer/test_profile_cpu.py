"""End to end on CPU: `cli.py profile --steps 6-10` with one process and with two (gloo)."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.errors import TrainerError as UserError
from trainer.profiling import ProfileSpec, check_within_training, parse_steps, profiler_schedule

REPO = Path(__file__).resolve().parents[2]
STEP_NAME = re.compile(r"^ProfilerStep#(\d+)$")


def run_cli(args: list[str], cache: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, TRACEKIT_DATA_CACHE=str(cache), CUDA_VISIBLE_DEVICES="",
               OMP_NUM_THREADS="1")  # tests run side by side: more threads only contend
    return subprocess.run([sys.executable, "cli.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def profiler_steps(trace: Path) -> list[int]:
    with gzip.open(trace, "rt") as f:
        events = json.load(f)["traceEvents"]
    steps = [int(m.group(1)) for e in events if (m := STEP_NAME.match(str(e.get("name", ""))))]
    return sorted(steps)


def annotations(trace: Path) -> set[str]:
    with gzip.open(trace, "rt") as f:
        events = json.load(f)["traceEvents"]
    return {e["name"] for e in events if e.get("cat") == "user_annotation"}


@pytest.mark.slow
@pytest.mark.parametrize("procs", [1, 2])
def test_profile_steps_6_to_10(tmp_path: Path, procs: int) -> None:
    out = tmp_path / "traces"
    args = ["profile", "--steps", "6-10", "--out-dir", str(out), "--name", "run",
            "--no-analyze", "--no-prefetch"]
    if procs > 1:
        args += ["--cpu-procs", str(procs)]
    done = run_cli(args, tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = out / "run"

    for rank in range(procs):
        trace = run_dir / f"rank{rank}.pt.trace.json.gz"
        assert profiler_steps(trace) == [6, 7, 8, 9, 10]  # once each; no #5, no #11
        names = annotations(trace)
        for label in ("train:forward", "train:backward", "train:optimizer", "data:next_batch",
                      "data:wait_shard"):
            assert label in names, label
    assert not (run_dir / f"rank{procs}.pt.trace.json.gz").exists()

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["world_size"] == procs
    assert manifest["profiled_steps"] == [6, 7, 8, 9, 10]
    assert manifest["num_steps"] == 11
    assert manifest["config"]["preset"] == "tiny" and manifest["config"]["prefetch"] is False
    assert manifest["switches"]["prefetch"] is False
    assert manifest["command"][:2] == ["cli.py", "profile"]
    assert len(manifest["ranks"]) == procs and manifest["backend"] == "gloo"
    assert manifest["profiler"]["with_stack"] and manifest["profiler"]["record_shapes"]
    assert manifest["trace_files"] == [f"rank{r}.pt.trace.json.gz" for r in range(procs)]
    for key in ("torch_version", "hostname", "start_time", "end_time", "git_sha", "summary"):
        assert key in manifest
    assert manifest["summary"]["median_step_ms"] > 0

    lines = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(11))
    assert [r["step"] for r in lines if r["profiled"]] == [6, 7, 8, 9, 10]
    assert [r["step"] for r in lines if r["shard_switch"]] == [6]
    assert [r["step"] for r in lines if r["profiler"] == ["warmup"]] == [5]
    assert [r["step"] for r in lines if r["profiler"] == ["active"]] == [6, 7, 8, 9, 10]
    for r in lines:
        assert r["wall_ms"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["tokens_per_s_per_gpu"] * procs)
    assert lines[-1]["loss"] < lines[0]["loss"]  # the synthetic data is learnable
    assert "summary: median step" in done.stdout
    assert f"traces: {run_dir}" in done.stdout
    # The code that ran, for tracekit's source lines after the checkout moves on.
    snapshot = run_dir / "source" / "trainer" / "model.py"
    assert snapshot.read_text() == (Path(__file__).resolve().parents[2]
                                    / "trainer" / "model.py").read_text()


@pytest.mark.slow
def test_train_without_profiler(tmp_path: Path) -> None:
    out = tmp_path / "traces"
    done = run_cli(["train", "--num-steps", "3", "--out-dir", str(out), "--name", "t"],
                   tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (out / "t").iterdir()) == [
        "manifest.json", "source", "steps.jsonl"]
    lines = (out / "t" / "steps.jsonl").read_text().splitlines()
    assert len(lines) == 3 and not any(json.loads(x)["profiled"] for x in lines)


def test_parse_steps_rules() -> None:
    assert parse_steps("6-10") == (6, 10)
    assert parse_steps("7") == (7, 7)
    for bad in ("10-6", "0-3", "a-b", "6-", "-3", ""):
        with pytest.raises(UserError):
            parse_steps(bad)
    check_within_training(6, 10, 11)
    with pytest.raises(UserError, match="past the end"):
        check_within_training(6, 10, 10)


def test_schedule_records_exactly_the_requested_steps() -> None:
    from torch.profiler import ProfilerAction

    sched = profiler_schedule(ProfileSpec(6, 10))
    actions = [sched(step) for step in range(30)]
    recording = [s for s, a in enumerate(actions)
                 if a in (ProfilerAction.RECORD, ProfilerAction.RECORD_AND_SAVE)]
    assert recording == [6, 7, 8, 9, 10]
    assert actions[5] == ProfilerAction.WARMUP
    assert [s for s, a in enumerate(actions) if a == ProfilerAction.RECORD_AND_SAVE] == [10]
