"""How many processes, on which devices, and how to start them (torchrun or in-process).

`--gpus N` (N >= 1) starts N processes on this node through torchrun, one per GPU, NCCL.
`--gpus 0` runs one CPU process in the CLI's own process (gloo, a group of one).
`--cpu-procs K` starts K CPU processes through torchrun (gloo); CI uses 2.
Multi-node: every node runs the same command with its own `--node-rank`; torchrun's static
rendezvous at `--rdzv-endpoint` (host:port of node 0) numbers the ranks node by node.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import TrainerError

REPO_ROOT = Path(__file__).resolve().parents[1]
ENDPOINT_PATTERN = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:\d+$")


@dataclass(frozen=True)
class LaunchPlan:
    device: str  # "cuda" or "cpu"
    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def in_process(self) -> bool:
        """A single CPU process needs no torchrun: it runs inside the CLI process."""
        return self.device == "cpu" and self.world_size == 1


def available_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan_launch(
    gpus: int | None, cpu_procs: int | None, nnodes: int = 1, node_rank: int = 0,
    rdzv_endpoint: str | None = None,
) -> LaunchPlan:
    """Check the process layout the user asked for against this machine.

    Without --gpus: one GPU when the machine has any (predictable; ask for more explicitly),
    else one CPU process.
    """
    if nnodes < 1:
        raise TrainerError(f"--nnodes must be at least 1, not {nnodes}")
    if not 0 <= node_rank < nnodes:
        raise TrainerError(f"--node-rank must be in 0..{nnodes - 1}, not {node_rank}")
    if nnodes > 1 and not rdzv_endpoint:
        raise TrainerError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (node 0's address)")
    if rdzv_endpoint and not ENDPOINT_PATTERN.match(rdzv_endpoint):
        raise TrainerError(f"--rdzv-endpoint takes HOST:PORT, not {rdzv_endpoint!r}")
    if cpu_procs is not None:
        if gpus:
            raise TrainerError("use either --gpus N or --cpu-procs K, not both")
        if cpu_procs < 1:
            raise TrainerError(f"--cpu-procs must be at least 1, not {cpu_procs}")
        return LaunchPlan("cpu", cpu_procs, nnodes, node_rank, rdzv_endpoint)
    have = available_gpus()
    if gpus is None:
        gpus = 1 if have else 0
    if gpus < 0:
        raise TrainerError(f"--gpus must be 0 (CPU) or more, not {gpus}")
    if gpus > have:
        raise TrainerError(
            f"--gpus {gpus} asks for {gpus} GPU{'s' if gpus > 1 else ''} but this machine has "
            f"{have}" + (" (torch sees no CUDA device)" if have == 0 else "")
        )
    if gpus == 0:
        return LaunchPlan("cpu", 1, nnodes, node_rank, rdzv_endpoint)
    return LaunchPlan("cuda", gpus, nnodes, node_rank, rdzv_endpoint)


def torchrun_command(plan: LaunchPlan, spec_json: str) -> list[str]:
    """The torchrun command line that starts this node's processes of the run."""
    command = [sys.executable, "-m", "torch.distributed.run"]
    if plan.nnodes == 1:
        command += ["--standalone"]
    else:
        # static rendezvous (torchrun's default backend): ranks are numbered node by node, so
        # global rank 0 (manifest, steps.jsonl) is always on node 0.
        command += ["--nnodes", str(plan.nnodes), "--node-rank", str(plan.node_rank),
                    "--rdzv-endpoint", str(plan.rdzv_endpoint)]
    command += ["--nproc-per-node", str(plan.nproc_per_node),
                "-m", "trainer.train", "--spec-json", spec_json]
    return command


def child_env(plan: LaunchPlan) -> dict[str, str]:
    """Environment for the ranks: the project importable, and CPU threads split between ranks."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    if "OMP_NUM_THREADS" not in env:
        # torchrun would otherwise force 1 thread per rank and print a warning about it.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // plan.nproc_per_node))
    return env


TORCH_TRACE_DIR = ".torch_trace"
"""Where a profiled run's processes write torch's structured logs (TORCH_TRACE), from which
`cli.py profile` keeps the compiled kernels' source lines (compiled_kernels.json); removed
afterwards."""


def compile_capture_env(run_dir: Path) -> dict[str, str]:
    """Environment that makes torch.compile record which user lines every generated kernel
    came from: Inductor's provenance tracking into structured logs under the run directory
    (compile time only; nothing changes in the compiled code). A TORCH_TRACE the user set is
    left alone (and read from)."""
    env = {"INDUCTOR_PROVENANCE": os.environ.get("INDUCTOR_PROVENANCE", "1")}
    if not os.environ.get("TORCH_TRACE"):
        env["TORCH_TRACE"] = str(run_dir.resolve() / TORCH_TRACE_DIR)
    return env


def torch_trace_dir(run_dir: Path) -> Path:
    """Where the run's structured logs are: the user's TORCH_TRACE, else ours."""
    theirs = os.environ.get("TORCH_TRACE")
    return Path(theirs) if theirs else run_dir / TORCH_TRACE_DIR


def launch(plan: LaunchPlan, spec_json: str, run_dir: Path | None = None) -> None:
    """Run the job: in this process for one CPU process, else through torchrun (and wait).
    With `run_dir` (a profiled run), torch.compile's provenance is recorded there.

    Ctrl-C or SIGTERM given to this process is passed on to torchrun, which passes it to every
    rank; each rank then stops cleanly (trace files whole or absent, rank 0 records the stop in
    the manifest), and here the manifest is completed with what only the launcher knows.
    """
    from trainer.manifest import finish_after_launch
    from trainer.train import RunSpec, Stopped, run  # torch: imported only when a job runs

    spec = RunSpec.from_json(spec_json)
    if plan.in_process:
        try:
            run(spec)
        except Stopped as stop:
            raise TrainerError(f"training {stop} (the run's manifest.json records where)"
                               ) from None
        return
    received: list[int] = []
    env = child_env(plan) | (compile_capture_env(run_dir) if run_dir is not None else {})
    process = subprocess.Popen(torchrun_command(plan, spec_json), env=env,
                               start_new_session=True)

    def forward(signum: int, frame: object) -> None:
        if not received:  # once: torchrun stops its ranks on the first
            received.append(signum)
            process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        returncode = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    signal_name = signal.Signals(received[0]).name if received else None
    if plan.node_rank == 0:
        finish_after_launch(Path(spec.run_dir), returncode, signal_name)
    if signal_name:
        raise TrainerError(f"training stopped by {signal_name} (the run's manifest.json records "
                        "where, and which ranks wrote their traces)")
    if returncode != 0:
        raise TrainerError(
            f"training failed: torchrun exited with code {returncode} "
            "(the failing rank's error is printed above)"
        )
