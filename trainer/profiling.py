"""torch.profiler wiring: which steps to record, and one trace file per rank.

Like torchtitan, the training loop enters the profiler before step 0 and calls `prof.step()`
at the end of every step, so the profiler's step number is the trainer's step number and the
trace holds exactly `ProfilerStep#start` .. `ProfilerStep#end`.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from trainer.errors import TrainerError

STEPS_PATTERN = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


@dataclass(frozen=True)
class ProfileSpec:
    """Which steps every rank records, and how much detail."""

    start: int
    end: int
    with_stack: bool = True
    record_shapes: bool = True

    @property
    def steps(self) -> list[int]:
        return list(range(self.start, self.end + 1))

    def covers(self, step: int) -> bool:
        return self.start <= step <= self.end


PROFILER_TOUCHES = ("warmup", "active", "export")
"""steps.jsonl's `profiler` field: what the profiler did in a step (tracekit.link.profiler_steps
reads it): its warmup step (START-1), a recorded step, and the first step after its trace export
(END+1), which waits for ranks still exporting and pays the profiler's teardown."""


def profiler_touches(step: int, windows: list[ProfileSpec]) -> list[str]:
    """What the profiler windows did in `step`, in PROFILER_TOUCHES order (empty: untouched)."""
    touched = {name for w in windows for name, hit in (
        ("warmup", step == w.start - 1), ("active", w.covers(step)), ("export", step == w.end + 1))
        if hit}
    return [name for name in PROFILER_TOUCHES if name in touched]


def parse_steps(text: str) -> tuple[int, int]:
    """Parse `--steps 6-10` (inclusive) or `--steps 7` and enforce the warmup rule.

    The start must be >= 1: the profiler needs one warmup step before the first recorded one
    (warm-up events are discarded), and step 0 carries compilation and one-off setup anyway.
    """
    match = STEPS_PATTERN.match(text)
    if match is None:
        raise TrainerError(f"--steps takes START-END like 6-10 (inclusive), not {text!r}")
    start = int(match.group(1))
    end = int(match.group(2)) if match.group(2) is not None else start
    if end < start:
        raise TrainerError(
            f"--steps {text}: the end step {end} comes before the start step {start}")
    if start < 1:
        raise TrainerError(
            f"--steps {text}: the first profiled step must be at least 1 (step {start - 1} "
            "would have to be the profiler's warmup step, and step 0 includes compilation)"
        )
    return start, end


def check_within_training(start: int, end: int, num_steps: int) -> None:
    """Profiled steps must exist: a run of `num_steps` steps has steps 0 .. num_steps-1."""
    if end >= num_steps:
        raise TrainerError(
            f"--steps {start}-{end} goes past the end of training: --num-steps {num_steps} "
            f"runs steps 0-{num_steps - 1}; use --num-steps {end + 1} or more"
        )


def trace_path(run_dir: Path, rank: int) -> Path:
    return run_dir / f"rank{rank}.pt.trace.json.gz"


PARTIAL_SUFFIX = ".partial"
"""Files being written end in this (never a trace name): a run stopped mid-write leaves at most
such a file, which tracekit does not read, and never a cut-off trace under the real name."""


def write_trace(prof: profile, out: Path, rank: int) -> None:
    """Export the trace as `out` (gzip) so that `out` is either whole or absent.

    Kineto writes plain JSON to a hidden temporary file; it is gzipped into `<out>.partial`,
    flushed to disk, and renamed onto `out` (a rename within a directory is atomic). Any
    failure (a full disk, a signal mid-write) removes both temporary files.
    """
    text = out.with_name(f".{out.name.removesuffix('.gz')}{PARTIAL_SUFFIX}")
    part = out.with_name(out.name + PARTIAL_SUFFIX)
    try:
        prof.export_chrome_trace(str(text))  # no .gz in the name: torch writes plain JSON
        with open(text, "rb") as src, open(part, "wb") as raw:
            with gzip.GzipFile(filename=out.name.removesuffix(".gz"), mode="wb", fileobj=raw,
                               compresslevel=6) as gz:
                shutil.copyfileobj(src, gz, 1 << 20)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(part, out)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise TrainerError(f"rank {rank}: could not write its trace {out.name} "
                        f"({exc.strerror or exc}); no partial file was left") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    finally:
        text.unlink(missing_ok=True)


def profiler_schedule(spec: ProfileSpec) -> object:
    """wait until start-1, one warmup step, record start..end, and never a second cycle.

    repeat=1 matters: the default repeat=0 begins another cycle after `active`, and at exit the
    profiler exports that nearly empty cycle over the first trace.
    """
    return schedule(wait=spec.start - 1, warmup=1, active=spec.end - spec.start + 1, repeat=1)


@contextlib.contextmanager
def maybe_profile(
    spec: ProfileSpec | None, run_dir: Path, rank: int, device: torch.device
) -> Iterator[profile | None]:
    """Yield a started profiler (or None without a spec); it writes rank{R}.pt.trace.json.gz once.

    The caller must call `.step()` at the end of every training step.
    """
    if spec is None:
        yield None
        return
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    out = trace_path(run_dir, rank)
    exported: list[Path] = []
    stopped: list[BaseException] = []

    def on_trace_ready(prof: profile) -> None:
        if stopped:  # the profiler exports the cycle cut short by an interruption: skip it
            return
        # A run directory is never reused, so an existing file means a second export: refuse it
        # rather than overwrite the real trace.
        if out.exists():
            raise RuntimeError(f"profiler tried to export a second trace over {out}")
        write_trace(prof, out, rank)
        exported.append(out)

    with profile(
        activities=activities,
        schedule=profiler_schedule(spec),
        on_trace_ready=on_trace_ready,
        record_shapes=spec.record_shapes,
        with_stack=spec.with_stack,
    ) as prof:
        try:
            yield prof
        except BaseException as exc:  # Ctrl-C, a scheduler's SIGTERM, an error on this rank
            stopped.append(exc)
            raise
    if not exported:
        raise RuntimeError(f"rank {rank}: no trace was exported for steps {spec.start}-{spec.end}")
