"""The training loop: one process per GPU (torchrun), or one or more CPU processes (gloo).

Read top to bottom: set up the process group, build the model and optimizer, then for each step
fetch a batch, run forward, backward and the optimizer step, time it, log it, and let the
profiler advance. `cli.py train/profile` builds a RunSpec and runs `main` (through torchrun for
more than one process); `python -m trainer.train --spec-json '{...}'` is the torchrun entry.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.profiler import record_function

from trainer.config import Config, validate
from trainer.data import ShardLoader, read_header
from trainer.errors import TrainerError
from trainer.manifest import (
    STEPS_NAME,
    RankInfo,
    RunManifest,
    git_state,
    nccl_version,
    ranks_with_traces,
    snapshot_source,
    stop_reason,
    this_rank_info,
)
from trainer.profiling import ProfileSpec, maybe_profile, profiler_touches, trace_path

# The learning rate is flat, then falls linearly to zero over the last COOLDOWN_FRAC of training
# (no warmup, as in modded-nanogpt).
COOLDOWN_FRAC = 0.4

# Dense bf16 peak per GPU for the MFU estimate. H100 and H200 (SXM) share the same 989 TFLOP/s
# dense bf16 tensor-core peak; the H200 only adds memory. Unknown devices get no MFU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


@dataclass
class RunSpec:
    """Everything a training process needs, built once by the CLI and sent to every rank."""

    name: str
    run_dir: str
    config: dict[str, Any]
    device: str  # "cuda" or "cpu"
    shards: list[str]
    synthetic_data: bool
    command: list[str]
    start_time: str
    profile: dict[str, Any] | None = None  # ProfileSpec fields
    nnodes: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        return cls(**json.loads(text))

    def config_obj(self) -> Config:
        config = Config(**self.config)
        validate(config)
        return config

    def profile_spec(self) -> ProfileSpec | None:
        return ProfileSpec(**self.profile) if self.profile is not None else None


@dataclass
class Dist:
    """This process's place in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class StepRecord:
    """One line of steps.jsonl (written by rank 0; wall time measured on rank 0)."""

    step: int
    wall_ms: float
    loss: float
    lr_scale: float
    tokens: int  # tokens processed by all ranks in this step
    tokens_per_s: float  # global: all ranks together
    tokens_per_s_per_gpu: float  # one rank's share (per GPU, or per CPU process)
    profiled: bool
    shard_switch: bool = False
    profiler: list[str] = field(default_factory=list)  # trainer.profiling.profiler_touches


@dataclass
class RunSummary:
    median_step_ms: float
    timed_steps: list[int]
    tokens_per_s: float
    tokens_per_s_per_gpu: float
    flops_per_token: float
    mfu: float | None
    peak_flops: float | None
    profiled_over_unprofiled: float | None
    final_loss: float
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Setup


def init_distributed(device_kind: str) -> Dist:
    """Join the process group torchrun describes (env vars), or make a group of one.

    NCCL on GPU with one process per GPU (LOCAL_RANK picks the GPU); gloo on CPU.
    """
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_kind == "cuda":
        if not torch.cuda.is_available():
            raise TrainerError("this run asks for GPUs but torch sees no CUDA device")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if launched:
        kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, **kwargs)
    else:
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    return Dist(rank=rank, local_rank=local_rank, world_size=world_size, device=device,
                backend=backend)


def build_model_and_optimizer(config: Config, ctx: Dist) -> tuple[Any, Any, Any, int]:
    """(model as called in the loop, the raw model, the optimizer, parameter count).

    The optimizer gets the raw model's parameters: compilation wraps the module, not its tensors.
    """
    # The model and optimizer modules load triton (slow): only when a model is built.
    from trainer.model import GPT
    from trainer.optim import NorMuonAdam

    torch.manual_seed(config.seed)  # same seed on every rank: identical initial weights
    model = GPT(config, ctx.world_size).to(ctx.device)
    params = model.param_table()
    optimizer = NorMuonAdam(params, config, ctx.rank, ctx.world_size)
    num_params = sum(p.numel() for p in params.values())
    step_model = torch.compile(model, dynamic=False) if config.compile else model
    return step_model, model, optimizer, num_params


def lr_scale(step: int, num_steps: int) -> float:
    """1.0, then a linear cooldown over the last COOLDOWN_FRAC of the steps (never warmup)."""
    cooldown_steps = max(1, round(COOLDOWN_FRAC * num_steps))
    remaining = num_steps - step
    return min(1.0, remaining / cooldown_steps)


def peak_flops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_FLOPS.items():
        if key in device_name:
            return value
    return None


# --------------------------------------------------------------------------------------------
# The loop


def train(spec: RunSpec, ctx: Dist) -> RunSummary | None:
    """Train for config.num_steps steps; rank 0 logs and returns the summary."""
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)  # one line per step, even in logs
    config = spec.config_obj()
    profile_spec = spec.profile_spec()
    run_dir = Path(spec.run_dir)
    num_steps = config.num_steps

    model, raw_model, optimizer, num_params = build_model_and_optimizer(config, ctx)
    shards = [read_header(Path(p)) for p in spec.shards]
    loader = ShardLoader(shards, ctx.rank, ctx.world_size, config.batch_size, config.seq_len,
                         ctx.device, config.prefetch, config.vocab_size)
    manifest = make_manifest(spec, ctx, config, num_params)  # a collective: every rank calls it
    if ctx.is_main:
        manifest.write(run_dir)
        snapshot_source(run_dir)
        console.print(
            f"[bold]{spec.name}[/]: {config.preset} preset, {num_params / 1e6:.2f}M parameters, "
            f"{ctx.world_size} x {manifest.device_names[0]}, compile={config.compile}, "
            f"{num_steps} steps" + (f", profiling steps {profile_spec.start}-{profile_spec.end}"
                                    if profile_spec else "")
        )
    log = StepLog(run_dir / STEPS_NAME, console, num_steps, ctx.device.type) \
        if ctx.is_main else None
    local_tokens = config.batch_size * config.seq_len
    step = 0
    try:
        with maybe_profile(profile_spec, run_dir, ctx.rank, ctx.device) as prof:
            for step in range(num_steps):
                started = time.perf_counter()
                switched = step == config.loader_wait_step
                if switched:
                    # Without prefetch this reads the whole next shard while the GPU idles.
                    with record_function("data:wait_shard"):
                        loader.switch_shard()
                with record_function("data:next_batch"):
                    inputs, targets = loader.next_batch()
                scale = lr_scale(step, num_steps)
                optimizer.set_lr_scale(scale)
                with record_function("train:forward"):
                    loss = model(inputs, targets)
                with record_function("train:backward"):
                    loss.backward()
                with record_function("train:optimizer"):
                    optimizer.step()
                    optimizer.zero_grad()
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize(ctx.device)
                wall = time.perf_counter() - started
                if log is not None:
                    with record_function("train:log"):  # rank 0's logging is part of its step
                        log.add(StepRecord(
                            step=step, wall_ms=wall * 1e3, loss=float(loss.item()),
                            lr_scale=scale, tokens=local_tokens * ctx.world_size,
                            tokens_per_s=local_tokens * ctx.world_size / wall,
                            tokens_per_s_per_gpu=local_tokens / wall,
                            profiled=profile_spec is not None and profile_spec.covers(step),
                            shard_switch=switched,
                            profiler=profiler_touches(step, [profile_spec])
                            if profile_spec is not None else [],
                        ))
                if prof is not None:
                    prof.step()  # after step N: the profiler's step_num becomes N + 1
    except BaseException as exc:
        if log is not None:
            record_stop(manifest, run_dir, exc, step, len(log.records))
        raise
    finally:
        loader.close()
        if log is not None:
            log.close()
    dist.barrier()  # every rank has exported its trace before rank 0 declares the run complete
    if log is None:
        return None
    summary = summarize(log.records, config, ctx.world_size, manifest.device_names[0],
                        profile_spec, raw_model.flops_per_token(config.seq_len))
    manifest.status = "complete"
    manifest.end_time = now_iso()
    manifest.summary = asdict(summary)
    manifest.ranks_with_traces = ranks_with_traces(run_dir)
    manifest.write(run_dir)
    print_summary(console, summary, profile_spec, log.unit)
    return summary


def make_manifest(spec: RunSpec, ctx: Dist, config: Config, num_params: int) -> RunManifest:
    """Gather every rank's host and device (a collective: all ranks call it)."""
    mine = this_rank_info(ctx.rank, ctx.local_rank, ctx.device)
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, asdict(mine))
    ranks = [RankInfo(**r) for r in gathered]
    sha, dirty = git_state()
    profile_spec = spec.profile_spec()
    return RunManifest(
        name=spec.name, command=spec.command, start_time=spec.start_time,
        hostname=socket.gethostname(), config=config.to_dict(), switches=config.switches(),
        world_size=ctx.world_size, backend=ctx.backend, ranks=ranks,
        device_names=sorted({r.device_name for r in ranks}),
        torch_version=torch.__version__, cuda_version=torch.version.cuda,
        nccl_version=nccl_version() if ctx.backend == "nccl" else None,
        git_sha=sha, git_dirty=dirty, num_steps=config.num_steps,
        profiled_steps=profile_spec.steps if profile_spec else [],
        profiler=asdict(profile_spec) | {"activities": profiler_activities(ctx.device)}
        if profile_spec else None,
        trace_files=[trace_path(Path(""), r).name for r in range(ctx.world_size)]
        if profile_spec else [],
        data={"shards": spec.shards, "synthetic": spec.synthetic_data,
              "prefetch": config.prefetch, "loader_wait_step": config.loader_wait_step,
              "num_params": num_params, "nnodes": spec.nnodes},
    )


def record_stop(manifest: RunManifest, run_dir: Path, exc: BaseException, step: int,
                done: int) -> None:
    """Rank 0 notes in the manifest that the run stopped early, why, and at which step."""
    manifest.status, reason = stop_reason(exc)
    manifest.stop = {"reason": reason, "at_step": step, "steps_done": done}
    manifest.end_time = now_iso()
    manifest.ranks_with_traces = ranks_with_traces(run_dir)
    with contextlib.suppress(OSError):  # a full disk: the manifest keeps saying "running"
        manifest.write(run_dir)


class Stopped(Exception):  # noqa: N818 - named for what happened, like KeyboardInterrupt
    """A termination signal (SIGTERM from a scheduler or torchrun) arrived during training."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into a `Stopped` exception in the training loop, so that the profiler,
    the step log and the manifest are closed properly (Python's default is to die at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signum, signal.SIG_IGN)  # a second one must not cut the cleanup short
        raise Stopped(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def profiler_activities(device: torch.device) -> list[str]:
    return ["CPU", "CUDA"] if device.type == "cuda" else ["CPU"]


# --------------------------------------------------------------------------------------------
# Reporting


class StepLog:
    """Rank 0's record of every step: steps.jsonl (flushed per step) and one printed line."""

    def __init__(self, path: Path, console: Any, num_steps: int, device_type: str) -> None:
        self.file = open(path, "w")  # noqa: SIM115 (open for the whole run; closed in close())
        self.console, self.num_steps = console, num_steps
        self.unit = "GPU" if device_type == "cuda" else "rank"
        self.records: list[StepRecord] = []

    def add(self, record: StepRecord) -> None:
        self.records.append(record)
        self.file.write(json.dumps(asdict(record)) + "\n")
        self.file.flush()  # a crashed or interrupted run keeps every finished step
        print_step(self.console, record, self.num_steps, self.unit)

    def close(self) -> None:
        self.file.close()


def summarize(
    records: list[StepRecord], config: Config, world_size: int, device_name: str,
    profile_spec: ProfileSpec | None, fpt: float,
) -> RunSummary:
    """Median step time over steps >= 1 (step 0 compiles), throughput, MFU, profiler overhead.

    The profiler overhead compares the median of the profiled steps with the median of the
    unprofiled steps >= 1, leaving out the steps the profiler touched (its warmup step, the
    step after its trace export) and the shard switch step, which are not ordinary steps.
    """
    timed = [r for r in records if r.step >= 1] or records
    median_s = statistics.median(r.wall_ms for r in timed) / 1e3
    local_tokens = config.batch_size * config.seq_len
    per_gpu = local_tokens / median_s
    peak = peak_flops(device_name)
    ratio = None
    if profile_spec is not None:
        profiled = [r.wall_ms for r in records if r.profiled]
        plain = [r.wall_ms for r in records
                 if not r.profiled and r.step >= 1 and not r.profiler and not r.shard_switch]
        if profiled and plain:
            ratio = statistics.median(profiled) / statistics.median(plain)
    return RunSummary(
        median_step_ms=median_s * 1e3, timed_steps=[r.step for r in timed],
        tokens_per_s=per_gpu * world_size, tokens_per_s_per_gpu=per_gpu,
        flops_per_token=fpt, mfu=(fpt * per_gpu / peak) if peak else None, peak_flops=peak,
        profiled_over_unprofiled=ratio, final_loss=records[-1].loss,
    )


def print_step(console: Any, r: StepRecord, num_steps: int, unit: str) -> None:
    tags = " [magenta]profiled[/]" if r.profiled else ""
    tags += " [yellow]shard switch[/]" if r.shard_switch else ""
    console.print(
        f"step {r.step:>4}/{num_steps}  loss {r.loss:7.4f}  {r.wall_ms:9.2f} ms  "
        f"{r.tokens_per_s:>12,.0f} tok/s  ({r.tokens_per_s_per_gpu:,.0f} per {unit}){tags}"
    )


def print_summary(
    console: Any, s: RunSummary, profile_spec: ProfileSpec | None, unit: str
) -> None:
    mfu = (f"MFU {100 * s.mfu:.1f}% of {s.peak_flops / 1e12:.0f} TFLOP/s dense bf16 peak"
           if s.mfu is not None and s.peak_flops else "MFU n/a (no known peak for this device)")
    console.print(
        f"[bold]summary[/]: median step {s.median_step_ms:.2f} ms over steps "
        f"{s.timed_steps[0]}-{s.timed_steps[-1]}, "
        f"{s.tokens_per_s_per_gpu:,.0f} tokens/s per {unit} ({s.tokens_per_s:,.0f} total), "
        f"{mfu}, final loss {s.final_loss:.4f}"
    )
    if s.profiled_over_unprofiled is not None and profile_spec is not None:
        console.print(
            f"profiled steps {profile_spec.start}-{profile_spec.end} take "
            f"{s.profiled_over_unprofiled:.3f}x the median unprofiled step"
        )


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# Entry points


def run(spec: RunSpec) -> RunSummary | None:
    """Run this process's part of the job; always leaves the process group."""
    with stop_on_sigterm():
        ctx = init_distributed(spec.device)
        try:
            return train(spec, ctx)
        finally:
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    """torchrun entry: `python -m trainer.train --spec-json '{...}'`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec-json", required=True, help="a RunSpec as JSON (from cli.py)")
    args = parser.parse_args(argv)
    try:
        run(RunSpec.from_json(args.spec_json))
    except TrainerError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except (Stopped, KeyboardInterrupt) as stop:
        name = "SIGINT" if isinstance(stop, KeyboardInterrupt) else \
            signal.Signals(stop.signum).name
        print(f"rank {os.environ.get('RANK', 0)}: stopped by {name}", file=sys.stderr)
        sys.exit(128 + (stop.signum if isinstance(stop, Stopped) else signal.SIGINT))


if __name__ == "__main__":
    main()
