"""traces/<run>/manifest.json: what ran, where, with which software, and which steps were traced.

tracekit reads it (optionally) to say which switches produced a trace and on what hardware.
"""

from __future__ import annotations

import json
import os
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
    end_time: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    # Where the program ran: tracekit resolves the traces' source frames against these.
    cwd: str = field(default_factory=os.getcwd)
    sys_path: list[str] = field(default_factory=lambda: [p for p in sys.path if p])

    def write(self, run_dir: Path) -> Path:
        """Write (or, at the end of the run, rewrite) our own manifest in the run directory."""
        path = run_dir / MANIFEST_NAME
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2, default=str) + "\n")
        os.replace(tmp, path)
        return path


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
