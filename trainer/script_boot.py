"""One rank of `cli.py profile --script`: profile someone else's training script, unedited.

torchrun starts `python -m trainer.script_boot --spec-json '{...}' ARGS...` once per rank. This
module starts torch.profiler with the trainer's schedule (`trainer.profiling`), installs what
advances it at the end of every training step, then runs the user's script as `__main__` with
`sys.argv = [script, *ARGS]` and the script's directory first on sys.path, as `python script.py`
would. The script's file is never touched.

What marks the end of a training step:
- by default, torch.optim's global optimizer step post-hook (every torch.optim.Optimizer
  subclass calls it). With several optimizers per step the first training step teaches the
  cycle: the step ends after the last distinct optimizer that steps before the first one steps
  again. Until that is known, step 0 ends after the first optimizer's step, so the other
  optimizers' step 0 updates land in step 1 (step 0 is never profiled; step 1 is at most the
  warmup step when --steps starts at 2).
- with `--step-fn module:function` (or `module:Class.method`), after each return of that
  function, for hand-written optimizers. In the script itself (module `__main__` or the script's
  own name) the name is wrapped as the script defines it; in another module, after importing it.

At every boundary the runner measures the step's wall time (after `torch.cuda.synchronize()`
when CUDA is in use, as the trainer does), advances the profiler, and rank 0 appends the step to
steps.jsonl with what the profiler did in it (`profiler`: warmup, active, export), so the steps
it did not touch give the baseline that profiled steps are compared with
(tracekit.detectors.profiler_distortion). At exit each rank leaves a small JSON note of its
host, device, software and sys.path for the launcher's manifest, and rank 0 copies the script
and the modules it imported from beside it into `source/`.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import importlib
import json
import os
import runpy
import shutil
import socket
import sys
import time
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from trainer.profiling import ProfileSpec, profiler_schedule, profiler_touches, trace_path

STACKS_DIR = "stacks"
"""Split mode: the run's second window, recorded with stacks, as its own run directory."""
RANK_NOTES_DIR = ".ranks"
"""Per-rank notes the launcher folds into manifest.json, then removes."""


@dataclass(frozen=True)
class ScriptSpec:
    """What every rank needs: the script, its arguments, the profiled steps, where to write."""

    script: str
    args: list[str]
    run_dir: str
    profile: dict[str, Any]  # ProfileSpec fields
    step_fn: str | None = None
    stack_steps: list[int] = field(default_factory=list)
    """Steps recorded a second time with stacks (the split mode): empty unless asked."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ScriptSpec:
        return cls(**json.loads(text))

    def profile_spec(self) -> ProfileSpec:
        return ProfileSpec(**self.profile)


def make_profiler(spec: ProfileSpec, out: Path) -> profile:
    """A profiler on the trainer's schedule that exports once to `out`."""
    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)

    def on_trace_ready(prof: profile) -> None:
        if out.exists():
            raise RuntimeError(f"profiler tried to export a second trace over {out}")
        out.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(out))

    return profile(activities=activities, schedule=profiler_schedule(spec),
                   on_trace_ready=on_trace_ready, record_shapes=spec.record_shapes,
                   with_stack=spec.with_stack)


@dataclass(frozen=True)
class Window:
    """Steps one profiler records, and the file it exports."""

    spec: ProfileSpec
    out: Path


class Stepper:
    """Counts training steps, times them, and runs each window's profiler over its steps.

    A window's profiler is created and started only at its warmup step and stopped right after
    it exported: a started profiler opens a `ProfilerStep#N` range at every step, which another
    window's recording would otherwise catch.
    """

    def __init__(self, windows: list[Window], log: Path | None,
                 factory: Callable[[ProfileSpec, Path], Any] = make_profiler) -> None:
        self.pending = sorted(windows, key=lambda w: w.spec.start)
        self.specs = [w.spec for w in windows]
        self.active: list[tuple[Window, Any]] = []
        self.factory = factory
        self.profiled = {s for w in windows[:1] for s in w.spec.steps}
        self.stacked = {s for w in windows[1:] for s in w.spec.steps}
        self.log = log
        self.step = 0
        self.closing: int | None = None  # id() of the optimizer whose step ends a step
        self.order: list[int] = []  # optimizers seen before the cycle repeated
        self.learning = True
        self.backend: str | None = None  # the script's process group, seen at a boundary
        self.start_windows()
        self.started = time.perf_counter()

    def start_windows(self) -> None:
        """Start the profilers whose warmup step is the step about to run."""
        while self.pending and self.pending[0].spec.start - 1 <= self.step:
            window = self.pending.pop(0)
            prof = self.factory(window.spec, window.out)
            # Its step number is the training step's, so the trace's ProfilerStep#N are too.
            prof.step_num = self.step
            prof.current_action = prof.schedule(self.step)
            if hasattr(prof, "_prev_schedule_action"):
                prof._prev_schedule_action = prof.current_action
            prof.start()
            self.active.append((window, prof))

    # -- torch.optim's global hooks
    def optimizer_pre_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        key = id(optimizer)
        if self.learning and key in self.order:
            self.learning = False  # the cycle repeats: its last optimizer closes a step
            self.closing = self.order[-1]

    def optimizer_post_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        key = id(optimizer)
        if self.learning:
            if key not in self.order:
                self.order.append(key)
            if len(self.order) == 1:
                self.boundary()  # step 0 ends at the first optimizer (see the module doc)
            return
        if key == self.closing:
            self.boundary()

    # -- --step-fn
    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def stepped(*args: Any, **kwargs: Any) -> Any:
            result = fn(*args, **kwargs)
            self.boundary()
            return result

        stepped.__tracekit_step_fn__ = True  # type: ignore[attr-defined]
        return stepped

    def boundary(self) -> None:
        if self.backend is None and torch.distributed.is_available() \
                and torch.distributed.is_initialized():
            self.backend = str(torch.distributed.get_backend())
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        now = time.perf_counter()
        wall_ms = (now - self.started) * 1e3
        if self.log is not None:
            row = {"step": self.step, "wall_ms": round(wall_ms, 4),
                   "profiled": self.step in self.profiled or self.step in self.stacked,
                   "profiler": profiler_touches(self.step, self.specs),
                   "timed_by": "script-runner"}
            if self.step in self.stacked:
                row["window"] = STACKS_DIR
            with self.log.open("a") as f:
                f.write(json.dumps(row) + "\n")
        for window, prof in list(self.active):
            prof.step()
            if self.step >= window.spec.end:  # that step() exported the window's trace
                self.active.remove((window, prof))
                with contextlib.suppress(Exception):
                    prof.stop()
        self.step += 1
        self.start_windows()
        self.started = time.perf_counter()

    def stop(self) -> None:
        """At exit: a window still recording (the script ended early) exports what it has."""
        for _, prof in self.active:
            with contextlib.suppress(Exception):
                prof.stop()
        self.active = []


class WrappingNamespace(dict):
    """Module-level locals of the script: every store also lands in its globals, and the named
    function (or Class.method) is wrapped when the script binds it."""

    def __init__(self, module_globals: dict[str, Any], path: list[str],
                 wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        super().__init__()
        self.module_globals, self.path, self.wrap_fn = module_globals, path, wrap
        self.wrapped = False

    def __getitem__(self, key: str) -> Any:
        return self.module_globals[key]

    def __contains__(self, key: object) -> bool:
        return key in self.module_globals

    def get(self, key: str, default: Any = None) -> Any:
        return self.module_globals.get(key, default)

    def __setitem__(self, key: str, value: Any) -> None:
        if key == self.path[0] and not self.wrapped:
            value = wrap_attribute(value, self.path[1:], self.wrap_fn)
            self.wrapped = True
        self.module_globals[key] = value

    def __delitem__(self, key: str) -> None:
        del self.module_globals[key]


def wrap_attribute(obj: Any, rest: list[str], wrap: Callable[[Callable[..., Any]],
                   Callable[..., Any]]) -> Any:
    """`obj` wrapped (no rest) or with `obj.a.b` replaced by its wrapped version."""
    if not rest:
        return wrap(obj)
    holder = obj
    for name in rest[:-1]:
        holder = getattr(holder, name)
    setattr(holder, rest[-1], wrap(getattr(holder, rest[-1])))
    return obj


def run_script(script: Path, args: list[str], step_fn: str | None, stepper: Stepper) -> None:
    """Run the script as __main__ (sys.argv and sys.path as `python script.py` sets them)."""
    sys.argv = [str(script), *args]
    sys.path[0] = str(script.parent)
    module_name, qualname = (step_fn.split(":", 1) if step_fn else (None, None))
    in_script = module_name in ("__main__", script.stem)
    if step_fn and not in_script:
        module = importlib.import_module(module_name)
        parts = qualname.split(".")
        setattr(module, parts[0], wrap_attribute(getattr(module, parts[0]), parts[1:],
                                                 stepper.wrap))
    if not (step_fn and in_script):
        runpy.run_path(str(script), run_name="__main__")
        return
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=str(script), __builtins__=builtins, __cached__=None,
                         __loader__=None, __package__=None, __spec__=None)
    code = compile(script.read_bytes(), str(script), "exec")
    namespace = WrappingNamespace(main.__dict__, qualname.split("."), stepper.wrap)
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = main
    try:
        exec(code, main.__dict__, namespace)  # noqa: S102 (the user's script, as python would)
    finally:
        if saved is not None:
            sys.modules["__main__"] = saved
    if not namespace.wrapped:
        raise SystemExit(f"error: --step-fn {step_fn}: the script never defined {qualname}")


def rank_note(rank: int, backend: str | None) -> dict[str, Any]:
    """This rank's host, device and software, and the sys.path its frames were named against."""
    from trainer.manifest import nccl_version

    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    device = f"cuda:{torch.cuda.current_device()}" if cuda else "cpu"
    name = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    return {"rank": rank, "local_rank": int(os.environ.get("LOCAL_RANK", 0)),
            "hostname": socket.gethostname(), "device": device, "device_name": name,
            "backend": backend, "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda,
            "nccl_version": nccl_version() if cuda else None,
            "sys_path": [p for p in sys.path if p], "cwd": os.getcwd()}


def snapshot_script_sources(script: Path, run_dir: Path) -> list[str]:
    """Copy the script and every imported module from its directory tree into source/."""
    from trainer.manifest import SOURCE_DIR

    root = script.parent.resolve()
    files = {script.resolve()}
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        # A relative __file__ (torch's op namespaces say "_classes.py") names no file: resolved
        # against the working directory it would point into the script's folder.
        if not isinstance(file, str) or not file.endswith(".py") or not Path(file).is_absolute():
            continue
        path = Path(file).resolve()
        if path.is_relative_to(root) and "site-packages" not in path.parts and path.is_file():
            files.add(path)
    copied = []
    for path in sorted(files):
        target = run_dir / SOURCE_DIR / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        copied.append(str(path.relative_to(root)))
    return copied


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] != "--spec-json":
        raise SystemExit("usage: python -m trainer.script_boot --spec-json JSON [ARGS...]")
    spec = ScriptSpec.from_json(argv[1])
    script, run_dir = Path(spec.script), Path(spec.run_dir)
    rank = int(os.environ.get("RANK", 0))
    profile_spec = spec.profile_spec()
    windows = [Window(profile_spec, trace_path(run_dir, rank))]
    if spec.stack_steps:
        stacked = ProfileSpec(spec.stack_steps[0], spec.stack_steps[-1], with_stack=True,
                              record_shapes=True)
        windows.append(Window(stacked, trace_path(run_dir / STACKS_DIR, rank)))
    log = run_dir / "steps.jsonl" if rank == 0 else None
    stepper = Stepper(windows, log)
    handles = []
    if spec.step_fn is None:
        from torch.optim.optimizer import (
            register_optimizer_step_post_hook,
            register_optimizer_step_pre_hook,
        )

        handles = [register_optimizer_step_pre_hook(stepper.optimizer_pre_hook),
                   register_optimizer_step_post_hook(stepper.optimizer_post_hook)]
    try:
        run_script(script, spec.args, spec.step_fn, stepper)
    finally:
        stepper.stop()
        for handle in handles:
            handle.remove()
        note = rank_note(rank, stepper.backend) | {"steps_seen": stepper.step}
        if rank == 0:
            try:
                note["source_files"] = snapshot_script_sources(script, run_dir)
            except OSError as error:  # the traces are written: a failed copy must not lose them
                note["source_snapshot_error"] = str(error)
        notes = run_dir / RANK_NOTES_DIR
        notes.mkdir(exist_ok=True)
        (notes / f"rank{rank}.json").write_text(json.dumps(note))


if __name__ == "__main__":
    main()
