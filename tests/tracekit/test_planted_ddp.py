"""tests/programs/planted_ddp.py, a plain DDP program with one switchable plant, and its two-rank
H200 recordings (tests/data/gpu/planted_ddp): the program runs on the CPU with gloo, every
recording holds its plant where the program puts it, and tracekit finds each plant at its line
with the cost measured by running with and without it (expected.json, README.md there)."""

from __future__ import annotations

import ast
import functools
import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.planted import GPU_DATA, REPO
from tracekit.finding import Finding
from tracekit.link import link_trace
from tracekit.pipeline import analyze_run, load
from tracekit.trace import Run

PROGRAM = REPO / "tests" / "programs" / "planted_ddp.py"
DATA = GPU_DATA / "planted_ddp"
EXPECTED = json.loads((DATA / "expected.json").read_text())
CASES = EXPECTED["cases"]
PLANTS = [case for case, spec in CASES.items() if "marker" in spec]
STEADY = EXPECTED["steady_steps"]
TOLERANCE = EXPECTED["tolerance"]
COMM_KINDS = ("comm_gap", "sm_contention", "straggler")


def marker_line(marker: str) -> int:
    lines = PROGRAM.read_text().splitlines()
    hits = [i + 1 for i, text in enumerate(lines) if f"# planted: {marker}" in text]
    assert len(hits) == 1, f"{PROGRAM} marks {marker!r} {len(hits)} times"
    return hits[0]


def def_line(function: str) -> int:
    tree = ast.parse(PROGRAM.read_text())
    return next(n.lineno for n in ast.walk(tree)
                if isinstance(n, ast.FunctionDef) and n.name == function)


def frame_names(case: str, rank: int) -> set[str]:
    path = DATA / case / f"rank{rank}.pt.trace.json.gz"
    events = json.loads(gzip.decompress(path.read_bytes()))["traceEvents"]
    return {e["name"] for e in events if e.get("cat") == "python_function"}


@functools.cache
def findings(case: str) -> tuple[Run, list[Finding]]:
    run = load(DATA / case, link=False, progress=False)
    for trace in run.traces:
        link_trace(trace, source_roots=[PROGRAM.parent, REPO])
    return analyze_run(run, progress=False)


def at_plant(finding: Finding, line: int) -> bool:
    source = finding.cause.source
    return source is not None and Path(source.file).name == PROGRAM.name and source.line == line


def cost_per_steady_step(finding: Finding, steps: list[int]) -> float:
    """The finding's mean cost over the steady steps (what the cost budget gave it there)."""
    by_step = finding.evidence.get("cost_by_step_us") or {}
    return sum(float(by_step.get(s, by_step.get(str(s), 0.0))) for s in steps) / len(steps)


def claims_steady_steps(finding: Finding) -> bool:
    """Whether the finding claims time in a steady step (run-level findings always do)."""
    by_step = finding.evidence.get("cost_by_step_us")
    if by_step is None:
        return finding.step is None or finding.step in STEADY
    return any(float(by_step.get(s, by_step.get(str(s), 0.0))) > 0 for s in STEADY)


def described(found: list[Finding]) -> str:
    return "; ".join(f"{f.kind} r{f.rank} {f.evidence.get('idle_cause', '')} "
                     f"{f.cause.source.file if f.cause.source else '-'}:"
                     f"{f.cause.source.line if f.cause.source else '-'} {f.cost_us:.0f} us"
                     for f in found) or "no findings"


@pytest.mark.slow
def test_the_program_trains_two_gloo_ranks_on_cpu_and_records_each(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(PROGRAM), "--smoke", "--plant", "item", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert timing["world_size"] == 2 and timing["plant"] == "item"
    run = load(tmp_path, link=False, progress=False)
    assert sorted(t.rank for t in run.traces) == [0, 1]
    for rank in (0, 1):
        events = json.loads(gzip.decompress(
            (tmp_path / f"rank{rank}.pt.trace.json.gz").read_bytes()))["traceEvents"]
        steps = {e["name"] for e in events if str(e.get("name", "")).startswith("ProfilerStep")}
        assert len(steps) == 2
        assert f"planted_ddp.py({def_line('log_loss')}): log_loss" in {
            e["name"] for e in events if e.get("cat") == "python_function"}


@pytest.mark.parametrize("case", PLANTS)
def test_each_expected_line_is_the_line_the_program_marks_for_its_plant(case: str) -> None:
    spec = CASES[case]
    assert marker_line(spec["marker"]) == spec["line"]


@pytest.mark.parametrize("case", PLANTS)
def test_each_recording_ran_the_plant_function_as_the_program_defines_it(case: str) -> None:
    spec = CASES[case]
    frame = f"{PROGRAM.name}({def_line(spec['function'])}): {spec['function']}"
    ranks = [spec["late_rank"]] if spec["finding"] == "straggler" else [0, 1]
    for rank in ranks:
        assert frame in frame_names(case, rank), f"{case} rank {rank}"
    if spec["finding"] == "straggler":
        assert not any(re.search(rf"\): {spec['function']}$", n)
                       for n in frame_names(case, spec["waiting_rank"]))


@pytest.mark.parametrize("case", [case for case in PLANTS if CASES[case]["finding"] == "gpu_idle"])
def test_gpu_idle_finds_each_plant_at_its_line_with_its_measured_cost(case: str) -> None:
    spec = CASES[case]
    _, found = findings(case)
    hits = [f for f in found if f.kind == "gpu_idle" and at_plant(f, spec["line"])
            and f.evidence.get("idle_cause") == spec["idle_cause"]
            and spec["rank"] in (None, f.rank)]
    assert hits, f"no gpu_idle/{spec['idle_cause']} at line {spec['line']}: {described(found)}"
    cost = max(cost_per_steady_step(f, spec.get("steady_steps", STEADY)) for f in hits)
    effect = spec["effect_us"]["profiled"]
    assert abs(cost - effect) <= TOLERANCE * effect, f"{cost:.0f} us per step against {effect}"


def test_straggler_names_the_late_rank_and_its_sleep_with_the_measured_cost() -> None:
    spec = CASES["straggler"]
    _, found = findings("straggler")
    hits = [f for f in found if f.kind == "straggler" and at_plant(f, spec["line"])
            and f.evidence.get("late_rank", f.rank) == spec["late_rank"]]
    assert hits, f"no straggler on rank {spec['late_rank']} at line {spec['line']}: " \
                 f"{described(found)}"
    cost = max(cost_per_steady_step(f, spec.get("steady_steps", STEADY)) for f in hits)
    effect = spec["effect_us"]["profiled"]
    assert abs(cost - effect) <= TOLERANCE * effect, f"{cost:.0f} us per step against {effect}"


def test_ddp_all_reduce_overlapping_backward_gives_no_communication_finding() -> None:
    _, found = findings("none")
    comm = [f for f in found if f.kind in COMM_KINDS and claims_steady_steps(f)]
    assert not comm, described(comm)
