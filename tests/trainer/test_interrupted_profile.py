"""An interrupted `cli.py profile` (a scheduler's SIGTERM, Ctrl-C, a rank that dies, a full disk)
leaves every trace file whole or absent, a manifest that says what happened, and a run that
`analyze` does not take for a good one. Two gloo processes on the CPU, signalled mid-run."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def start_profile(out: Path, cache: Path, steps: str, num_steps: int) -> subprocess.Popen:
    env = dict(os.environ, TRACEKIT_DATA_CACHE=str(cache), CUDA_VISIBLE_DEVICES="",
               OMP_NUM_THREADS="1", TRACEKIT_CACHE="0")
    args = [sys.executable, "cli.py", "profile", "--steps", steps, "--num-steps",
            str(num_steps), "--out-dir", str(out), "--name", "run", "--no-analyze",
            "--cpu-procs", "2"]
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_steps(run_dir: Path, n: int, process: subprocess.Popen, timeout: float = 240
                   ) -> None:
    """Until steps.jsonl holds n finished steps (rank 0 writes one line per step)."""
    deadline = time.monotonic() + timeout
    log = run_dir / "steps.jsonl"
    while time.monotonic() < deadline:
        if log.is_file() and log.read_text().count("\n") >= n:
            return
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError(f"no {n} steps within {timeout} s")


def rank_processes(run_dir: Path) -> dict[int, int]:
    """rank -> pid of the trainer.train processes writing into run_dir (not torchrun)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"trainer.train" not in cmdline or b"torch.distributed.run" in cmdline \
                or b"--spec-json" not in cmdline:
            continue
        spec = cmdline[cmdline.index(b"--spec-json") + 1]
        if f'"run_dir": "{run_dir.resolve()}"'.encode() in spec:
            env = dict(v.split(b"=", 1) for v in (entry / "environ").read_bytes().split(b"\0")
                       if b"=" in v)
            found[int(env[b"RANK"])] = int(entry.name)
    return found


def assert_traces_whole_or_absent(run_dir: Path) -> list[int]:
    """Every rank file present is a complete gzip of a JSON trace; nothing half-written is
    left under a trace name or a temporary one. Returns the ranks with a trace."""
    written = []
    for path in sorted(run_dir.iterdir()):
        assert not path.name.endswith(".partial"), f"temporary file left behind: {path.name}"
        if path.name.endswith(".pt.trace.json.gz"):
            doc = json.loads(gzip.decompress(path.read_bytes()))
            assert doc["traceEvents"], path.name
            written.append(int(path.name[len("rank"):].split(".")[0]))
    return written


def analyze(run_dir: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, TRACEKIT_CACHE="0")
    return subprocess.run([sys.executable, "cli.py", "analyze", str(run_dir)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=240, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_profiled_steps_leaves_no_trace_and_an_interrupted_manifest(
        tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "traces"
    process = start_profile(out, tmp_path / "cache", "6-10", 200)
    run_dir = out / "run"
    wait_for_steps(run_dir, 8, process)  # inside the profiled steps 6-10
    process.send_signal(sig)  # what a scheduler (SIGTERM) or Ctrl-C (SIGINT) does
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr[-3000:]
    assert f"training stopped by {sig.name}" in stderr
    assert "Traceback" not in stderr.split("stopped by")[-1]

    assert assert_traces_whole_or_absent(run_dir) == []  # the cut cycle is not exported
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    assert manifest["stop"]["reason"].startswith(sig.name)
    assert 8 <= manifest["stop"]["at_step"] < 200
    assert manifest["ranks_with_traces"] == []

    done = analyze(run_dir)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert "no trace files" in done.stderr or "interrupted" in done.stderr


@pytest.mark.slow
def test_a_signal_after_the_profiled_steps_keeps_whole_traces_and_analyze_says_so(
        tmp_path: Path) -> None:
    out = tmp_path / "traces"
    process = start_profile(out, tmp_path / "cache", "2-3", 200)
    run_dir = out / "run"
    wait_for_steps(run_dir, 6, process)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert process.returncode == 2

    assert assert_traces_whole_or_absent(run_dir) == [0, 1]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["ranks_with_traces"] == [0, 1]

    done = analyze(run_dir)
    assert done.returncode == 0, done.stderr
    assert "the run was interrupted by SIGTERM at step" in done.stdout


@pytest.mark.slow
def test_a_rank_that_dies_mid_run_is_recorded_by_the_launcher(tmp_path: Path) -> None:
    out = tmp_path / "traces"
    process = start_profile(out, tmp_path / "cache", "6-10", 200)
    run_dir = out / "run"
    wait_for_steps(run_dir, 8, process)
    ranks = rank_processes(run_dir)
    assert sorted(ranks) == [0, 1]
    os.kill(ranks[1], signal.SIGKILL)  # rank 1 dies without a word
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2 and "training failed" in stderr

    assert assert_traces_whole_or_absent(run_dir) == []
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    # Rank 0 either saw its peer's connection fail (gloo raises, in several wordings) or was
    # stopped by torchrun; either way the run is "failed" with a reason.
    reason = manifest["stop"]["reason"]
    assert reason.startswith(("a rank failed or was killed", "RuntimeError: "))
    assert manifest["stop"]["launcher"].startswith("torchrun exited with code")
    assert manifest["stop"]["at_step"] >= 8


def test_a_full_disk_while_writing_a_trace_leaves_no_file(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    import errno
    import shutil

    from trainer import profiling
    from trainer.errors import TrainerError

    class Profiler:
        def export_chrome_trace(self, path: str) -> None:
            Path(path).write_text(json.dumps({"traceEvents": [{"ph": "X"}] * 1000}))

    def full_disk(src: object, dst: object, length: int = 0) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", full_disk)
    out = tmp_path / "rank0.pt.trace.json.gz"
    with pytest.raises(TrainerError, match="rank 0: could not write its trace .*No space left"):
        profiling.write_trace(Profiler(), out, 0)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_a_trace_is_written_under_a_temporary_name_then_renamed(tmp_path: Path) -> None:
    from trainer import profiling

    seen: list[list[str]] = []

    class Profiler:
        def export_chrome_trace(self, path: str) -> None:
            Path(path).write_text(json.dumps({"traceEvents": [{"ph": "X", "name": "a"}]}))
            seen.append(sorted(p.name for p in tmp_path.iterdir()))

    out = tmp_path / "rank3.pt.trace.json.gz"
    profiling.write_trace(Profiler(), out, 3)  # type: ignore[arg-type]
    assert seen == [[".rank3.pt.trace.json.partial"]]  # never the real name while writing
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    assert json.loads(gzip.decompress(out.read_bytes()))["traceEvents"][0]["name"] == "a"
