"""Bad input to `cli.py train/profile/data`: exit code != 0, one `error:` line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer.data import write_shard

REPO = Path(__file__).resolve().parents[2]


def run_cli(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    # No GPUs, whatever the machine: `--gpus 4` must fail the same way everywhere.
    env = dict(os.environ, TRACEKIT_DATA_CACHE=str(cache), CUDA_VISIBLE_DEVICES="",
               OMP_NUM_THREADS="1")  # tests run side by side: more threads only contend
    return subprocess.run([sys.executable, "cli.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--steps", "10-6"], ["comes before"]),
        (["--steps", "0-3"], ["at least 1"]),
        (["--steps", "6-10", "--num-steps", "8"], ["past the end", "0-7"]),
        (["--steps", "six"], ["START-END"]),
        (["--preset", "huge"], ["unknown preset", "tiny"]),
        (["--pathologies", "some"], ["--pathologies"]),
        (["--bank-access", "sideways"], ["--bank-access"]),
        (["--gpus", "4"], ["--gpus 4", "has 0"]),
        (["--gpus", "1", "--cpu-procs", "2"], ["not both"]),
        (["--nnodes", "2"], ["--rdzv-endpoint"]),
        # tiny: 2 layers x 4 attention matrices cannot be split over 3 ranks; refused before
        # torchrun starts (each rank used to fail alone and torchrun printed its traceback).
        (["--cpu-procs", "3"], ["attn", "8 rows/matrices", "3 ranks"]),
    ],
)
def test_bad_profile_requests(tmp_path: Path, extra: list[str], fragments: list[str]) -> None:
    out = tmp_path / "traces"
    done = run_cli(["profile", "--out-dir", str(out), "--no-analyze", *extra], tmp_path)
    assert_one_line_error(done, *fragments)
    assert not out.exists()  # nothing was created for a refused run


def test_shards_that_cannot_be_read(tmp_path: Path) -> None:
    out = tmp_path / "traces"
    done = run_cli(["train", "--out-dir", str(out), "--data", str(tmp_path / "none_*.bin")],
                   tmp_path)
    assert_one_line_error(done, "no shard files match")

    bad = tmp_path / "bad_000000.bin"
    write_shard(bad, np.arange(5000, dtype=np.uint16) % 512)
    raw = bytearray(bad.read_bytes())
    raw[0:4] = np.int32(7).tobytes()
    bad.write_bytes(bytes(raw))
    done = run_cli(["train", "--out-dir", str(out), "--data", str(bad)], tmp_path)
    assert_one_line_error(done, "magic 7")

    short = tmp_path / "short_000000.bin"
    write_shard(short, np.arange(5000, dtype=np.uint16) % 512)
    short.write_bytes(short.read_bytes()[:-100])
    done = run_cli(["train", "--out-dir", str(out), "--data", str(short)], tmp_path)
    assert_one_line_error(done, "truncated")
    assert not out.exists()


def test_existing_run_dir_is_never_touched(tmp_path: Path) -> None:
    run_dir = tmp_path / "traces" / "mine"
    run_dir.mkdir(parents=True)
    (run_dir / "keep.txt").write_text("a user's file")
    done = run_cli(["profile", "--out-dir", str(tmp_path / "traces"), "--name", "mine",
                    "--no-analyze"], tmp_path)
    assert_one_line_error(done, "already exists")
    assert [p.name for p in run_dir.iterdir()] == ["keep.txt"]


def test_data_synth_writes_shards_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    args = ["data", "synth", "--out", str(out), "--shards", "2", "--tokens", "3000",
            "--vocab-size", "300"]
    done = run_cli(args, tmp_path)
    assert done.returncode == 0, done.stderr
    from trainer.data import read_shard, resolve_shards

    shards = resolve_shards(str(out / "*.bin"))
    assert [s.num_tokens for s in shards] == [3000, 3000]
    assert read_shard(shards[0].path).max() < 300
    before = shards[0].path.read_bytes()
    assert_one_line_error(run_cli(args, tmp_path), "already exists")
    assert shards[0].path.read_bytes() == before


def test_data_synth_into_a_file_or_a_bad_vocabulary(tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("a user's file")
    for out in (a_file, a_file / "below"):
        done = run_cli(["data", "synth", "--out", str(out), "--tokens", "100"], tmp_path)
        assert_one_line_error(done, "cannot create shard directory", str(out))
    assert a_file.read_text() == "a user's file"
    out = tmp_path / "shards"
    done = run_cli(["data", "synth", "--out", str(out), "--vocab-size", "70000"], tmp_path)
    assert_one_line_error(done, "--vocab-size", "70000")
    assert not out.exists()


def test_far_loader_wait_step_makes_no_giant_shard(tmp_path: Path) -> None:
    """A switch step past the end of training sizes the synthetic shard 0 for the steps that
    run (it used to ask numpy for wait_step x global batch tokens)."""
    out, cache = tmp_path / "traces", tmp_path / "cache"
    done = run_cli(["train", "--out-dir", str(out), "--name", "far", "--num-steps", "2",
                    "--loader-wait-step", "1000000000"], cache)
    assert done.returncode == 0, done.stderr[-3000:]
    sizes = [p.stat().st_size for p in cache.rglob("*.bin")]
    assert sizes and max(sizes) < 10_000_000, sizes
    lines = (out / "far" / "steps.jsonl").read_text().splitlines()
    assert len(lines) == 2
