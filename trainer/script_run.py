"""`cli.py profile --script PATH`: profile any training script, the way the trainer is profiled.

The launcher checks the request, creates the run directory, starts `trainer.script_boot` on
every rank through torchrun (one process per rank; the script itself picks gloo or NCCL), and
afterwards writes manifest.json from the ranks' notes: the command, the script and its
arguments, git state of the script's checkout, torch/CUDA/NCCL versions, hosts and devices,
the profiled steps and the profiler-overhead summary from the runner's own step timing.

Recording modes (`--record`):
- `stacks` (default): Python stacks and shapes on steps START..END, as the trainer records them.
  Source lines for every finding, but the Python tracer slows Python-heavy steps (an optimizer
  written in Python: 10x on modded-nanogpt), so CPU-side timings are distorted.
- `timing`: no stacks, no shapes: close to unprofiled step times, no source lines.
- `split`: steps START..END without stacks (the run directory's rank files), then as many steps
  with stacks and shapes in `stacks/` (a run directory of its own, starting two steps after
  END so each window has its own profiler warmup step); the analysis takes timings from the
  first and source lines from the second (tracekit.attribution).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.errors import TrainerError

RECORD_MODES = ("stacks", "timing", "split")
STEP_FN_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def check_request(script: Path, nproc: int, step_fn: str | None, record: str) -> Path:
    """The script as an absolute path, or one `error:` line for what is wrong."""
    if not script.is_file():
        raise TrainerError(f"--script {script}: no such file")
    if script.suffix != ".py":
        raise TrainerError(f"--script {script}: expected a Python file (.py)")
    if nproc < 1:
        raise TrainerError(f"--nproc must be at least 1, not {nproc}")
    if step_fn is not None and not STEP_FN_PATTERN.match(step_fn):
        raise TrainerError(f"--step-fn takes module:function or module:Class.method, "
                        f"not {step_fn!r}")
    if record not in RECORD_MODES:
        raise TrainerError(f"--record takes {' | '.join(RECORD_MODES)}, not {record!r}")
    return script.resolve()


def windows(start: int, end: int, record: str, stack: bool, shapes: bool) -> \
        tuple[dict[str, Any], list[int]]:
    """The main window's ProfileSpec fields and the stack window's steps (split mode)."""
    if record == "stacks":
        return {"start": start, "end": end, "with_stack": stack, "record_shapes": shapes}, []
    main = {"start": start, "end": end, "with_stack": False, "record_shapes": False}
    if record == "timing":
        return main, []
    first = end + 2  # end + 1 is the stack profiler's own warmup step
    return main, list(range(first, first + end - start + 1))


def torchrun_command(nproc: int, spec_json: str, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(nproc), "-m", "trainer.script_boot",
            "--spec-json", spec_json, *args]


def profile_script(
    script: Path, args: list[str], steps: str, nproc: int, step_fn: str | None, record: str,
    stack: bool, shapes: bool, make_run_dir: Callable[[str], Path],
) -> Path:
    """Run the script under the profiler on `nproc` ranks; returns the run directory, made by
    `make_run_dir(script's stem)` once the request is checked."""
    from trainer.launch import LaunchPlan, child_env, compile_capture_env
    from trainer.profiling import parse_steps
    from trainer.script_boot import ScriptSpec
    from trainer.train import now_iso

    script = check_request(script, nproc, step_fn, record)
    start, end = parse_steps(steps)
    main_window, stack_steps = windows(start, end, record, stack, shapes)
    run_dir = make_run_dir(script.stem).resolve()
    spec = ScriptSpec(script=str(script), args=list(args), run_dir=str(run_dir),
                      profile=main_window, step_fn=step_fn, stack_steps=stack_steps)
    started = now_iso()
    env = child_env(LaunchPlan("cpu", nproc)) | compile_capture_env(run_dir)
    done = subprocess.run(torchrun_command(nproc, spec.to_json(), list(args)), env=env,
                          check=False)
    notes = read_rank_notes(run_dir)
    manifest = script_manifest(spec, notes, started, now_iso(), done.returncode, nproc)
    write_json(run_dir / "manifest.json", manifest)
    if stack_steps:
        stacks_manifest(run_dir, manifest, stack_steps)
    shutil.rmtree(run_dir / ".ranks", ignore_errors=True)
    traces = sorted(p.name for p in run_dir.glob("rank*.pt.trace.json.gz"))
    if done.returncode != 0:
        where = f"; traces so far in {run_dir}" if traces else ""
        raise TrainerError(f"the script failed: torchrun exited with code {done.returncode} "
                        f"(the failing rank's error is printed above){where}")
    if len(traces) < nproc:
        seen = manifest["num_steps"]
        raise TrainerError(
            f"{run_dir}: {len(traces)} of {nproc} rank traces written; the runner saw {seen} "
            f"training step{'s' if seen != 1 else ''} (needs {end + 1}: --steps {start}-{end}"
            + ("" if step_fn else "; a hand-written optimizer needs --step-fn module:function")
            + ")")
    print_overhead(manifest["summary"], start, end)
    return run_dir


def read_rank_notes(run_dir: Path) -> list[dict[str, Any]]:
    notes = []
    for path in sorted((run_dir / ".ranks").glob("rank*.json")):
        try:
            notes.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(notes, key=lambda n: n.get("rank", 0))


def read_step_log(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "steps.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def overhead_summary(rows: list[dict[str, Any]], start: int, end: int,
                     stack_steps: list[int]) -> dict[str, Any]:
    """Median wall time of profiled and of ordinary steps, and their ratio.

    Ordinary steps: steps >= 2 (step 0 compiles and warms the allocator, step 1 may still
    hold one-off work) that the profiler did not touch: neither recorded, nor a window's warmup
    step, nor the step after a window's trace export (trainer.profiling.profiler_touches)."""
    from trainer.profiling import ProfileSpec, profiler_touches

    profiled = set(range(start, end + 1))
    stacked = set(stack_steps)
    specs = [ProfileSpec(start, end)] + ([ProfileSpec(stack_steps[0], stack_steps[-1])]
                                         if stack_steps else [])

    def median(values: list[float]) -> float | None:
        return round(statistics.median(values), 4) if values else None

    wall = {int(r["step"]): float(r["wall_ms"]) for r in rows if "step" in r and "wall_ms" in r}
    plain = [ms for s, ms in wall.items() if s >= 2 and not profiler_touches(s, specs)]
    summary: dict[str, Any] = {
        "median_step_ms": median([ms for s, ms in wall.items() if s >= 1]),
        "median_unprofiled_ms": median(plain), "unprofiled_steps": len(plain),
        "median_profiled_ms": median([wall[s] for s in profiled if s in wall]),
        "median_stack_window_ms": median([wall[s] for s in stacked if s in wall]),
    }
    base = summary["median_unprofiled_ms"]
    for key, out in (("median_profiled_ms", "profiled_over_unprofiled"),
                     ("median_stack_window_ms", "stack_window_over_unprofiled")):
        summary[out] = round(summary[key] / base, 4) if summary[key] and base else None
    return summary


def script_manifest(spec: Any, notes: list[dict[str, Any]], started: str, ended: str,
                    returncode: int, nproc: int) -> dict[str, Any]:
    """manifest.json of a --script run: the trainer's manifest keys, filled for a script."""
    from trainer.manifest import git_state

    script = Path(spec.script)
    sha, dirty = git_state(script.parent)
    first = notes[0] if notes else {}
    prof = spec.profile_spec()
    run_dir = Path(spec.run_dir)
    rows = read_step_log(run_dir)
    return {
        "name": run_dir.name, "kind": "script", "command": list(sys.argv),
        "script": str(script), "script_args": list(spec.args), "step_fn": spec.step_fn,
        "step_marker": spec.step_fn or "torch.optim step post-hook",
        "start_time": started, "end_time": ended, "hostname": socket.gethostname(),
        "status": "complete" if returncode == 0 else "failed",
        "stop": None if returncode == 0 else {"reason": f"torchrun exited with code {returncode}",
                                              "launcher": "profile --script"},
        "config": {"script": str(script), "args": list(spec.args), "nproc": nproc},
        "switches": {}, "world_size": len(notes) or nproc, "backend": first.get("backend"),
        "ranks": [{k: n.get(k) for k in ("rank", "local_rank", "hostname", "device",
                                         "device_name")} for n in notes],
        "device_names": sorted({str(n.get("device_name")) for n in notes}),
        "torch_version": first.get("torch_version"), "cuda_version": first.get("cuda_version"),
        "nccl_version": first.get("nccl_version"), "git_sha": sha, "git_dirty": dirty,
        "num_steps": max((int(n.get("steps_seen", 0)) for n in notes), default=0),
        "profiled_steps": prof.steps,
        "profiler": dict(spec.profile) | {"activities": activities(notes),
                                          "stack_window": spec.stack_steps},
        "trace_files": sorted(p.name for p in run_dir.glob("rank*.pt.trace.json.gz")),
        "source_files": first.get("source_files", []),
        "summary": overhead_summary(rows, prof.start, prof.end, spec.stack_steps),
        "cwd": first.get("cwd", os.getcwd()), "sys_path": first.get("sys_path", []),
    }


def activities(notes: list[dict[str, Any]]) -> list[str]:
    on_gpu = any(str(n.get("device", "")).startswith("cuda") for n in notes)
    return ["CPU", "CUDA"] if on_gpu else ["CPU"]


def stacks_manifest(run_dir: Path, manifest: dict[str, Any], stack_steps: list[int]) -> None:
    """The stack window's directory gets a manifest of its own: same run, its steps, the
    shared source snapshot."""
    from trainer.script_boot import STACKS_DIR

    stacks = run_dir / STACKS_DIR
    if not stacks.is_dir():
        return
    own = dict(manifest, name=f"{manifest['name']}/{STACKS_DIR}", profiled_steps=stack_steps,
               source_dir="../source", window="stacks",
               trace_files=sorted(p.name for p in stacks.glob("rank*.pt.trace.json.gz")))
    own["profiler"] = dict(manifest["profiler"], with_stack=True, record_shapes=True,
                           start=stack_steps[0], end=stack_steps[-1])
    write_json(stacks / "manifest.json", own)


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, default=str) + "\n")


def print_overhead(summary: dict[str, Any], start: int, end: int) -> None:
    ratio = summary.get("profiled_over_unprofiled")
    if ratio is None:
        print(f"profiled steps {start}-{end}: no unprofiled steps >= 2 to compare with "
              "(run more steps for a baseline)")
        return
    print(f"profiled steps {start}-{end} take {ratio:.3f}x the median unprofiled step "
          f"({summary['median_profiled_ms']:.2f} ms vs {summary['median_unprofiled_ms']:.2f} "
          f"ms over {summary['unprofiled_steps']} steps)")
    stack_ratio = summary.get("stack_window_over_unprofiled")
    if stack_ratio is not None:
        print(f"the stack window's steps take {stack_ratio:.3f}x")
