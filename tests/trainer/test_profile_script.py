"""`cli.py profile --script`: any training script profiled unedited, on CPU with gloo."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.profiling import ProfileSpec, profiler_schedule
from trainer.script_boot import (
    Stepper,
    Window,
    WrappingNamespace,
    snapshot_script_sources,
    wrap_attribute,
)
from trainer.script_run import overhead_summary, windows

REPO = Path(__file__).resolve().parents[2]
PROGRAMS = REPO / "tests" / "programs"
STEP_NAME = re.compile(r"^ProfilerStep#(\d+)$")


def run_cli(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "cli.py", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def line_of(path: Path, text: str) -> int:
    (hit,) = [n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line]
    return hit


def events(trace: Path) -> list[dict]:
    with gzip.open(trace, "rt") as f:
        return json.load(f)["traceEvents"]


def names_per_step(trace: Path, pattern: str) -> dict[int, list[str]]:
    """Names of the events matching `pattern` inside each ProfilerStep span (CPU clock)."""
    evs = events(trace)
    steps = {int(m.group(1)): (e["ts"], e["ts"] + e["dur"]) for e in evs
             if (m := STEP_NAME.match(str(e.get("name", ""))))}
    found: dict[int, list[str]] = {s: [] for s in steps}
    for e in evs:
        if re.search(pattern, str(e.get("name", ""))) and "dur" in e:
            for step, (start, end) in steps.items():
                if start <= e["ts"] < end:
                    found[step].append(e["name"])
    return found


class FakeProfiler:
    """What Stepper uses of torch.profiler.profile: a schedule, a step number, step/stop."""

    def __init__(self, spec: ProfileSpec, out: Path) -> None:
        self.schedule = profiler_schedule(spec)
        self.step_num, self.current_action, self.out = 0, None, out
        self.started_at: int | None = None
        self.steps, self.stopped = 0, False

    def start(self) -> None:
        self.started_at = self.step_num

    def step(self) -> None:
        self.steps += 1
        self.step_num += 1

    def stop(self) -> None:
        self.stopped = True


def stepper_with(windows: list[tuple[int, int]], log: Path | None = None):  # noqa: ANN201
    made: list[FakeProfiler] = []

    def factory(spec: ProfileSpec, out: Path) -> FakeProfiler:
        made.append(FakeProfiler(spec, out))
        return made[-1]

    stepper = Stepper([Window(ProfileSpec(a, b), Path(f"w{a}")) for a, b in windows], log,
                      factory)
    return stepper, made


def test_two_optimizers_per_step_end_the_step_after_the_second() -> None:
    stepper, _ = stepper_with([(50, 60)])
    adam, sgd = object(), object()
    ends = []
    for _ in range(4):
        for opt in (adam, sgd):
            stepper.optimizer_pre_hook(opt, (), {})
            before = stepper.step
            stepper.optimizer_post_hook(opt, (), {})
            ends.append(stepper.step > before)
    # step 0 ends at the first optimizer (the cycle is not known yet), then after sgd only
    assert ends == [True, False, False, True, False, True, False, True]
    assert stepper.step == 4


def test_one_optimizer_ends_every_step() -> None:
    stepper, _ = stepper_with([(50, 60)])
    opt = object()
    for _ in range(3):
        stepper.optimizer_pre_hook(opt, (), {})
        stepper.optimizer_post_hook(opt, (), {})
    assert stepper.step == 3


def test_each_window_runs_from_its_warmup_step_to_its_export(tmp_path: Path) -> None:
    log = tmp_path / "steps.jsonl"
    stepper, made = stepper_with([(2, 3), (5, 6)], log)
    for _ in range(9):
        stepper.boundary()
    first, second = made
    # started at the warmup step with the training step's number, stopped after the last step
    assert (first.started_at, first.steps, first.stopped) == (1, 3, True)
    assert (second.started_at, second.steps, second.stopped) == (4, 3, True)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(9))
    assert [r["step"] for r in rows if r["profiled"]] == [2, 3, 5, 6]
    assert [r["step"] for r in rows if r.get("window") == "stacks"] == [5, 6]
    # what the profiler did in each step: step 4 follows one export and warms the next window
    assert [r["profiler"] for r in rows] == [
        [], ["warmup"], ["active"], ["active"], ["warmup", "export"], ["active"], ["active"],
        ["export"], []]


def test_a_step_function_is_wrapped_when_the_script_binds_it() -> None:
    calls = []

    def wrap(fn):
        def wrapped(*args):
            calls.append(fn.__name__)
            return fn(*args)
        return wrapped

    module_globals: dict = {"__builtins__": __builtins__}
    namespace = WrappingNamespace(module_globals, ["Opt", "step"], wrap)
    code = ("class Opt:\n    def step(self):\n        return helper()\n"
            "def helper():\n    return 7\nresult = Opt().step()\n")
    exec(compile(code, "<script>", "exec"), module_globals, namespace)
    assert module_globals["result"] == 7 and calls == ["step"] and namespace.wrapped


def test_wrap_attribute_replaces_a_method_in_place() -> None:
    class Holder:
        @staticmethod
        def fn() -> int:
            return 1

    wrapped = wrap_attribute(Holder, ["fn"], lambda f: lambda: f() + 1)
    assert wrapped is Holder and Holder.fn() == 2


def test_split_mode_records_stacks_two_steps_after_the_timing_window() -> None:
    main, stacked = windows(6, 10, "split", stack=True, shapes=True)
    assert main == {"start": 6, "end": 10, "with_stack": False, "record_shapes": False}
    assert stacked == [12, 13, 14, 15, 16]
    assert windows(6, 10, "stacks", stack=True, shapes=False)[0]["record_shapes"] is False
    assert windows(6, 10, "timing", stack=True, shapes=True)[1] == []


def test_overhead_leaves_out_warmup_profiled_export_and_first_steps() -> None:
    rows = [{"step": s, "wall_ms": ms} for s, ms in
            enumerate([900.0, 50.0, 10.0, 10.0, 12.0, 30.0, 30.0, 400.0, 11.0])]
    summary = overhead_summary(rows, start=5, end=6, stack_steps=[])
    # ordinary: steps 2, 3, 8 (step 4 is the profiler's warmup step, 7 follows its export)
    assert summary["median_unprofiled_ms"] == 10.0 and summary["unprofiled_steps"] == 3
    assert summary["median_profiled_ms"] == 30.0
    assert summary["profiled_over_unprofiled"] == 3.0


@pytest.mark.slow
def test_the_source_snapshot_skips_modules_whose_file_names_no_real_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script_dir = tmp_path / "proj"
    script_dir.mkdir()
    script = script_dir / "train.py"
    script.write_text("print('hi')\n")
    (script_dir / "helper.py").write_text("X = 1\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.chdir(script_dir)
    fakes = {"tk_relative_ns": "_classes.py", "tk_helper": str(script_dir / "helper.py"),
             "tk_deleted": str(script_dir / "gone.py")}
    for name, file in fakes.items():
        module = type(sys)(name)
        module.__file__ = file
        monkeypatch.setitem(sys.modules, name, module)
    assert snapshot_script_sources(script, run_dir) == ["helper.py", "train.py"]


def test_a_torch_optim_script_on_two_gloo_ranks(tmp_path: Path) -> None:
    done = run_cli(["profile", "--script", str(PROGRAMS / "torch_optimizer.py"), "--nproc", "2",
                    "--steps", "3-5", "--out-dir", str(tmp_path), "--name", "run",
                    "--no-analyze", "--", "--steps", "10", "--width", "48"])
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "run"
    for rank in (0, 1):
        per_step = names_per_step(run_dir / f"rank{rank}.pt.trace.json.gz",
                                  r"^Optimizer\.step#")
        assert sorted(per_step) == [3, 4, 5]
        for names in per_step.values():  # each step holds both optimizers' steps, once
            assert sorted(names) == ["Optimizer.step#AdamW.step", "Optimizer.step#SGD.step"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["kind"] == "script" and manifest["status"] == "complete"
    assert manifest["world_size"] == 2 and manifest["backend"] == "gloo"
    assert manifest["script_args"] == ["--steps", "10", "--width", "48"]
    assert manifest["profiled_steps"] == [3, 4, 5] and manifest["num_steps"] == 10
    assert manifest["trace_files"] == ["rank0.pt.trace.json.gz", "rank1.pt.trace.json.gz"]
    assert manifest["torch_version"] == torch.__version__
    assert manifest["git_sha"] and manifest["command"][:2] == ["cli.py", "profile"]
    # 7-9 (2 is the warmup step, 6 follows the trace export)
    assert manifest["summary"]["unprofiled_steps"] == 3
    assert (run_dir / "source" / "torch_optimizer.py").read_bytes() == \
        (PROGRAMS / "torch_optimizer.py").read_bytes()
    assert not (run_dir / ".ranks").exists()
    rows = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["profiled"]] == [3, 4, 5] and len(rows) == 10


@pytest.mark.slow
def test_a_hand_written_step_function_on_two_gloo_ranks(tmp_path: Path) -> None:
    done = run_cli(["profile", "--script", str(PROGRAMS / "hand_step.py"), "--nproc", "2",
                    "--steps", "3-5", "--step-fn", "hand_step:sgd_step",
                    "--out-dir", str(tmp_path), "--name", "run", "--", "--steps", "8"])
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "run"
    for rank in (0, 1):
        per_step = names_per_step(run_dir / f"rank{rank}.pt.trace.json.gz",
                                  r"hand_step\.py\(\d+\): sgd_step")
        assert {s: len(n) for s, n in per_step.items()} == {3: 1, 4: 1, 5: 1}
    findings = json.loads((run_dir / "findings.json").read_text())
    banks = [f for f in findings if f["kind"] == "select_backward"]
    assert {f["rank"] for f in banks} == {0, 1}
    for finding in banks:
        assert finding["cause"]["source"]["line"] == line_of(PROGRAMS / "hand_step.py",
                                                              "x @ bank[i]")
        assert finding["cause"]["source"]["line_exact"]


@pytest.mark.slow
def test_a_hand_written_optimizer_without_step_fn_says_what_to_add(tmp_path: Path) -> None:
    done = run_cli(["profile", "--script", str(PROGRAMS / "hand_step.py"), "--steps", "2-3",
                    "--out-dir", str(tmp_path), "--name", "run", "--", "--steps", "5"])
    assert done.returncode == 2
    assert "--step-fn" in done.stderr and "saw 0 training steps" in done.stderr


def test_bad_script_requests_end_in_one_error_line(tmp_path: Path) -> None:
    missing = run_cli(["profile", "--script", str(tmp_path / "nope.py")])
    assert missing.returncode == 2 and missing.stderr.strip().startswith("error: --script")
    trainer_flag = run_cli(["profile", "--script", str(PROGRAMS / "hand_step.py"),
                            "--preset", "tiny"])
    assert trainer_flag.returncode == 2 and "--preset" in trainer_flag.stderr
    bad_fn = run_cli(["profile", "--script", str(PROGRAMS / "hand_step.py"),
                      "--step-fn", "no colon"])
    assert bad_fn.returncode == 2 and "module:function" in bad_fn.stderr
    for stderr in (missing.stderr, trainer_flag.stderr, bad_fn.stderr):
        assert len(stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_split_recording_takes_lines_from_its_stack_window(tmp_path: Path) -> None:
    done = run_cli(["profile", "--script", str(PROGRAMS / "hand_step.py"), "--nproc", "2",
                    "--steps", "3-4", "--step-fn", "hand_step:sgd_step", "--record", "split",
                    "--out-dir", str(tmp_path), "--name", "run", "--", "--steps", "10"])
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "run"
    timing = events(run_dir / "rank0.pt.trace.json.gz")
    assert not [e for e in timing if e.get("cat") == "python_function"]  # no stacks here
    assert names_per_step(run_dir / "stacks" / "rank1.pt.trace.json.gz",
                          r"^ProfilerStep#").keys() == {6, 7}  # 3-4, warmup 5, then 6-7
    rows = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("window") == "stacks"] == [6, 7]
    findings = json.loads((run_dir / "findings.json").read_text())
    banks = [f for f in findings if f["kind"] == "select_backward"]
    assert {f["rank"] for f in banks} == {0, 1}
    for finding in banks:  # lines borrowed from the stack window, steps timed without stacks
        assert finding["cause"]["source"]["line"] == line_of(PROGRAMS / "hand_step.py",
                                                              "x @ bank[i]")
        assert finding["cause"]["source"]["line_exact"]
    # The report says where the lines came from, and no longer that there are none.
    assert "source lines of" in done.stdout and "taken from the same ops" in done.stdout
    assert "no python_function events" not in done.stdout + done.stderr
    # Shapes too: the timing window recorded none; its ops take the stack window's.
    assert not [e for e in timing if "Input Dims" in (e.get("args") or {})]
    from tracekit.pipeline import load

    ops = load(run_dir, progress=False).traces[0].ops
    selects = ops[ops["name"] == "aten::select"]
    assert len(selects) and selects["input_dims"].astype(bool).all()
