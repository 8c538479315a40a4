"""traces/<run>/manifest.json: what ran, where, with which software, and which steps were traced.

tracekit reads it (optionally) to say which switches produced a trace and on what hardware.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

MANIFEST_NAME = "manifest.json"
SOURCE_DIR = "source"
"""The run's copy of the trainer's code: traces name source lines of the code that ran, so
tracekit resolves them here first, even after the checkout has moved on."""
STEPS_NAME = "steps.jsonl"


@dataclass
class RankInfo:
    """One process of the run: where it ran and on which device."""

    rank: int
    local_rank: int
    hostname: str
    device: str
    device_name: str


@dataclass
class RunManifest:
    name: str
    command: list[str]
    start_time: str
    hostname: str
    config: dict[str, Any]
    switches: dict[str, Any]
    world_size: int
    backend: str
    ranks: list[RankInfo]
    device_names: list[str]
    torch_version: str
    cuda_version: str | None
    nccl_version: str | None
    git_sha: str | None
    git_dirty: bool | None
    num_steps: int
    profiled_steps: list[int]
    profiler: dict[str, Any] | None
    trace_files: list[str]
    data: dict[str, Any]
    status: str = "running"
    """running (or killed before it could say otherwise), complete, interrupted (a signal:
    Ctrl-C, a scheduler's SIGTERM, a rank stopped by torchrun) or failed (an error)."""
    end_time: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    stop: dict[str, Any] | None = None
    """For a run that did not complete: reason, at_step (the step in progress), steps_done, and
    (added by the launcher) how torchrun ended."""
    ranks_with_traces: list[int] = field(default_factory=list)
    """Ranks whose trace file is in the run directory (each is whole: see profiling)."""
    # Where the program ran: tracekit resolves the traces' source frames against these.
    cwd: str = field(default_factory=os.getcwd)
    sys_path: list[str] = field(default_factory=lambda: [p for p in sys.path if p])

    def write(self, run_dir: Path) -> Path:
        """Write (or, at the end of the run, rewrite) our own manifest in the run directory."""
        return write_manifest(run_dir, asdict(self))


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write manifest.json whole or not at all (a temporary file renamed over it)."""
    path = run_dir / MANIFEST_NAME
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


TRACE_NAME = re.compile(r"^rank(\d+)\.pt\.trace\.json\.gz$")


def ranks_with_traces(run_dir: Path) -> list[int]:
    """Ranks whose (whole) trace file is in the run directory."""
    found = (TRACE_NAME.match(p.name) for p in run_dir.iterdir()) if run_dir.is_dir() else ()
    return sorted(int(m.group(1)) for m in found if m)


def stop_reason(exc: BaseException) -> tuple[str, str]:
    """(status, reason) for the exception that ended a rank's training loop."""
    import signal

    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", "SIGINT (Ctrl-C)"
    signum = getattr(exc, "signum", None)
    if signum is not None:
        return "interrupted", signal.Signals(signum).name
    text = str(exc).splitlines()[0] if str(exc) else ""
    return "failed", f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def finish_after_launch(run_dir: Path, returncode: int, signal_name: str | None) -> None:
    """After torchrun has exited: record which ranks wrote traces and, when the job did not
    succeed and rank 0 could not say why (killed, crashed), that it failed and where.

    Rank 0 records its own interruption (see train.record_stop); a rank killed outright or a
    crash on another rank shows only here, in torchrun's exit code.
    """
    path = run_dir / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # no manifest: the job stopped before rank 0 wrote one
    if not isinstance(manifest, dict):
        return
    manifest["ranks_with_traces"] = ranks_with_traces(run_dir)
    if returncode != 0:
        stop = manifest.get("stop") or {}
        if manifest.get("status") in ("running", "complete", None):
            manifest["status"] = "interrupted" if signal_name else "failed"
        elif manifest.get("status") == "interrupted" and not signal_name:
            # Nobody signalled the job: torchrun stopped rank 0 because another rank died.
            manifest["status"] = "failed"
            stop["reason"] = f"a rank failed or was killed; rank 0 was then stopped by " \
                             f"{stop.get('reason', 'torchrun')}"
        if not stop.get("at_step") and stop.get("at_step") != 0:
            done = steps_done(run_dir)
            stop.update(at_step=done, steps_done=done)
        stop["launcher"] = f"torchrun exited with code {returncode}" + \
            (f" after {signal_name}" if signal_name else "")
        stop.setdefault("reason", signal_name or "a rank failed or was killed")
        manifest["stop"] = stop
    with contextlib.suppress(OSError):  # a full disk: the manifest keeps rank 0's last word
        write_manifest(run_dir, manifest)


def steps_done(run_dir: Path) -> int:
    """Whole lines in steps.jsonl: the steps that finished (rank 0 writes one per step)."""
    try:
        text = (run_dir / STEPS_NAME).read_text()
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if line.endswith("}"))


def nccl_version() -> str | None:
    """The NCCL version torch was built with, as "2.28.3", or None without CUDA/NCCL."""
    if not torch.cuda.is_available():
        return None
    try:
        version = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError):
        return None
    if isinstance(version, tuple):
        return ".".join(str(v) for v in version)
    return str(version)


def git_state(cwd: Path | None = None) -> tuple[str | None, bool | None]:
    """(HEAD sha, whether the tree has uncommitted changes); (None, None) outside a git repo."""
    where = cwd or Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True,
                                  timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if sha is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return sha, (bool(status) if status is not None else None)


def this_rank_info(rank: int, local_rank: int, device: torch.device) -> RankInfo:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({os.cpu_count()} cores)"
    return RankInfo(rank=rank, local_rank=local_rank, hostname=socket.gethostname(),
                    device=str(device), device_name=name)


def snapshot_source(run_dir: Path) -> Path:
    """Copy the trainer package's .py files into <run_dir>/source/trainer/ (about 130 KB)."""
    package = Path(__file__).resolve().parent
    target = run_dir / SOURCE_DIR / package.name
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(package.glob("*.py")):
        (target / path.name).write_bytes(path.read_bytes())
    return target
