"""Other people's traces (tests/data/external, README.md there) against numbers checked by hand.

The numbers live in tests/data/external/expectations.json (explained in EXPECTATIONS.md). They
were computed by scripts/handcheck_external.py, which reads the traces with json + numpy and
never imports tracekit, and confirmed event by event. Tests marked xfail(strict=True) are what
issue 10 asks for and today's code does not do yet: the mark comes off when they pass.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest

from tracekit.finding import Finding
from tracekit.pipeline import analyze_run, load_trace

CORPUS = Path(__file__).resolve().parents[1] / "data" / "external"
EXPECTED: dict[str, dict] = json.loads((CORPUS / "expectations.json").read_text())["files"]
TOLERANCE = 0.25  # a hand-checked cost is matched within 25%
IDLE_SHARE = 0.30  # steps at least this idle ...
EXPLAINED = 0.80  # ... have at least this much of their idle explained by findings

# What is missing today, per test id (pytest.param ids below). Remove an entry when it passes.
MISSING: dict[str, str] = {}
# Invariants that fail today on these traces only.
FAILING: dict[str, set[str]] = {}
WASTED_COMPUTE = {"select_backward", "strided_elementwise"}  # cost: busy GPU time, not idle


@functools.cache
def findings_of(name: str) -> tuple[Finding, ...]:
    _, findings = analyze_run(CORPUS / name, progress=False)
    return tuple(findings)


@functools.cache
def trace_of(name: str):
    return load_trace(CORPUS / name)


def steps_of(name: str) -> dict[int, dict]:
    return {s["step"]: s for s in EXPECTED[name]["steps"]}


def trusted_steps_of(name: str) -> dict[int, dict]:
    """Steps whose accounting is trusted (EXPECTATIONS.md says why the others are not: there
    a step's length itself is uncertain, so invariants measured against it skip them)."""
    return {n: s for n, s in steps_of(name).items() if s["reliable"]}


def text_of(f: Finding) -> str:
    """Everything a reader sees of a finding, to match it to a hand-checked problem."""
    parts = [f.kind, f.title, f.cause.op or "", " ".join(f.cause.op_stack),
             f.cause.ordering or "", f.culprit.kernel or "", json.dumps(f.evidence, default=str)]
    return " ".join(parts).lower()


def cost_in(f: Finding, step: int) -> float:
    """What a finding costs in one step: its `cost_by_step_us` entry when it has one (a finding
    merged over steps), else its whole cost when it is that step's."""
    by_step = f.evidence.get("cost_by_step_us")
    if isinstance(by_step, dict):
        return float({int(k): v for k, v in by_step.items()}.get(step, 0.0))
    return f.cost_us if f.step == step else 0.0


def cost_of(findings: list[Finding] | tuple[Finding, ...], step: int) -> float:
    return sum(cost_in(f, step) for f in findings)


def matching(name: str, step: int, words: list[str]) -> list[Finding]:
    return [f for f in findings_of(name) if cost_in(f, step) > 0
            and any(w.lower() in text_of(f) for w in words)]


def xfail_if(key: str | None, *values: object, id: str) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=MISSING[key])] if key in MISSING else []
    return pytest.param(*values, id=id, marks=marks)


# ---- every trace ------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_trace_loads_through_the_public_loader_with_its_profiler_steps(name: str) -> None:
    trace = trace_of(name)
    assert sorted(int(s) for s in trace.steps["step"]) == sorted(steps_of(name))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_no_finding_occurrence_costs_more_than_its_step(name: str) -> None:
    steps = trusted_steps_of(name)
    longest = max((s["wall_us"] for s in steps_of(name).values()), default=None)
    for f in findings_of(name):
        by_step = f.evidence.get("cost_by_step_us")
        if isinstance(by_step, dict):  # merged over steps: what it costs in each
            for n, us in by_step.items():
                if int(n) in steps:
                    assert us <= steps[int(n)]["wall_us"] * 1.01, (f.kind, f.title, n, us)
            continue
        step_us = steps[f.step]["wall_us"] if f.step in steps else longest
        if step_us is not None:
            per_occurrence = f.cost_us / max(f.count, 1)
            assert per_occurrence <= step_us * 1.01, (f.kind, f.title, f.cost_us, step_us)


SLOWDOWN = re.compile(r"slow\w*\D*?(\d+(?:\.\d+)?)x\b")  # "slowed up to 23.86x"


def _failing(key: str) -> list[object]:
    return [xfail_if(key if n in FAILING.get(key, set()) else None, n, id=n)
            for n in sorted(EXPECTED)]


@pytest.mark.parametrize("name", _failing("step_sum"))
def test_the_findings_of_a_step_together_cost_no_more_than_the_step(name: str) -> None:
    for n, s in trusted_steps_of(name).items():
        claimed = cost_of(findings_of(name), n)
        assert claimed <= s["wall_us"] * 1.01, (n, claimed, s["wall_us"])


@pytest.mark.parametrize("name", _failing("slowdown"))
def test_no_slowdown_above_20x_is_claimed_without_a_same_size_baseline(name: str) -> None:
    for f in findings_of(name):
        claims = [float(x) for x in SLOWDOWN.findall(f.title)]
        if not claims or max(claims) <= 20:
            continue
        sizes = {k: v for k, v in f.evidence.items() if "nelems" in k and v is not None}
        baseline = {v for k, v in sizes.items() if "baseline" in k}
        own = {v for k, v in sizes.items() if "baseline" not in k}
        assert baseline and baseline == own, (f.title, f.evidence)


def _idle_steps() -> list[object]:
    params = []
    for name in sorted(EXPECTED):
        for s in EXPECTED[name]["steps"]:
            if s["reliable"] and s["gpu_idle_us"] >= IDLE_SHARE * s["wall_us"]:
                id_ = f"{name}:{s['step']}"
                params.append(xfail_if("idle" if id_ in FAILING.get("idle", set()) else None, name,
                                       s["step"], id=id_))
    return params


@pytest.mark.parametrize(("name", "step"), _idle_steps())
def test_a_mostly_idle_step_has_findings_that_explain_most_of_its_idle_and_no_more(
        name: str, step: int) -> None:
    s = steps_of(name)[step]
    lost = s["gpu_idle_us"] + s["comm_exposed_us"]
    explained = cost_of([f for f in findings_of(name) if f.kind not in WASTED_COMPUTE], step)
    assert EXPLAINED * s["gpu_idle_us"] <= explained <= lost * 1.01, (explained, s)


# ---- the problems checked by hand ---------------------------------------------------------

def _problems(kinds: set[str]) -> list[object]:
    params = []
    for name in sorted(EXPECTED):
        for p in EXPECTED[name]["problems"]:
            if p["kind"] in kinds:
                key = p["kind"] if p["kind"] in MISSING and (
                    p["kind"] not in FAILING or name in FAILING[p["kind"]]) else None
                params.append(xfail_if(key, name, p, id=f"{name}:{p['kind']}"))
    return params


@pytest.mark.parametrize(("name", "problem"),
                         _problems({"input_pipeline", "cpu_bound", "exposed_comm"}))
def test_a_hand_checked_problem_is_found_with_its_cost_within_25_percent(
        name: str, problem: dict) -> None:
    wrong = []
    for s in problem["steps"]:
        cost = cost_of(matching(name, s["step"], problem["match_any"]), s["step"])
        if abs(cost - s["cost_us"]) > TOLERANCE * s["cost_us"]:
            wrong.append((s["step"], round(cost), s["cost_us"]))
    assert not wrong, f"(step, found cost, hand-checked cost): {wrong}"


@pytest.mark.parametrize(("name", "problem"),
                         _problems({"input_pipeline_absent", "host_sync_free"}))
def test_a_cause_that_costs_little_is_not_blamed_for_more(name: str, problem: dict) -> None:
    for s in problem["steps"]:
        cost = cost_of(matching(name, s["step"], problem["match_any"]), s["step"])
        assert cost <= max((1 + TOLERANCE) * s["cost_us"], 1000.0), (s, cost)


@pytest.mark.parametrize(("name", "problem"), _problems({"host_sync"}))
def test_a_blocking_copy_whose_cost_is_unknowable_is_found_and_bounded_by_its_step(
        name: str, problem: dict) -> None:
    steps = steps_of(name)
    for s in problem["steps"]:
        found = matching(name, s["step"], problem["match_any"])
        assert found, s
        assert cost_of(found, s["step"]) <= steps[s["step"]]["wall_us"]


def _named(field: str, key: str, unless: str | None = None) -> list[object]:
    """Traces listing kernels in `field`; xfail (`key`) unless every name contains `unless`."""
    return [xfail_if(None if unless and all(unless in n.lower() for n in EXPECTED[name][field])
                     else key, name, id=name)
            for name in sorted(EXPECTED) if EXPECTED[name][field]]


@pytest.mark.parametrize("name", _named("kernels_not_gemm", "gemm"))
def test_fbgemm_embedding_kernels_are_not_categorised_as_gemm(name: str) -> None:
    k = trace_of(name).kernels
    listed = k[k["name"].isin(EXPECTED[name]["kernels_not_gemm"])]
    assert len(listed) and not listed["category"].eq("gemm").any()


@pytest.mark.parametrize("name", _named("communication_kernels", "comm_name", unless="nccl"))
def test_communication_kernels_are_recognised_whatever_their_library(name: str) -> None:
    k = trace_of(name).kernels
    listed = k[k["name"].isin(EXPECTED[name]["communication_kernels"])]
    assert len(listed) and listed["is_nccl"].all()


@pytest.mark.parametrize("name", [n for n in sorted(EXPECTED)
                                  if any(s["reliable"] for s in EXPECTED[n]["steps"])])
def test_step_accounting_matches_the_hand_checked_numbers(name: str) -> None:
    from tracekit.accounting import account_rank

    table = account_rank(trace_of(name)).set_index("step")
    for n, s in steps_of(name).items():
        if not s["reliable"]:
            continue
        row = table.loc[n]
        for ours, theirs in (("wall_us", "wall_us"), ("busy_us", "gpu_busy_us"),
                             ("idle_us", "gpu_idle_us"),
                             ("exposed_comm_us", "comm_exposed_us")):
            assert abs(row[ours] - s[theirs]) <= max(0.02 * s["wall_us"], 50.0), (n, ours)
