"""Ground truth: tracekit on every committed reference run in traces/, judged by its manifest.

Each run was recorded by `cli.py profile` on two H200s with one set of trainer switches
(traces/README.md). What must be found follows from the switches alone, so a detector that
starts missing a pathology, or starts blaming the fixed code, fails here.
"""

from __future__ import annotations

import ast
import json
import statistics
from functools import cache
from pathlib import Path

import pytest

from tracekit.detectors import comm_gap
from tracekit.finding import Finding
from tracekit.pipeline import analyze_run, load
from tracekit.source import source_snapshot

REPO = Path(__file__).resolve().parents[1]
TRACES = REPO / "traces"
RUNS = sorted(p for p in TRACES.iterdir() if (p / "manifest.json").exists())


@cache
def analysed(run_dir: Path) -> tuple[dict, list[Finding]]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    _, findings = analyze_run(run_dir, progress=False)
    return manifest, findings


def steps_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]


def source_file(run_dir: Path, path: str) -> Path:
    """The file as it was when the run was recorded: the run's copy of the trainer's code
    (what tracekit resolves against), or the checkout's for runs without one."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    snapshot = source_snapshot(run_dir, manifest)
    return snapshot / path if snapshot is not None else REPO / path


def line_of(run_dir: Path, path: str, marker: str) -> int:
    """The line of the recorded source holding `marker` (so tests follow code moves)."""
    lines = source_file(run_dir, path).read_text().splitlines()
    hits = [i + 1 for i, text in enumerate(lines) if marker in text]
    assert len(hits) == 1, f"{marker!r} found {len(hits)} times in {path}"
    return hits[0]


def function_span(run_dir: Path, path: str, name: str) -> range:
    tree = ast.parse(source_file(run_dir, path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return range(node.lineno, (node.end_lineno or node.lineno) + 1)
    raise AssertionError(f"no function {name} in {path}")


def ranks_of(manifest: dict) -> set[int]:
    return set(range(manifest["world_size"]))


def of_kind(findings: list[Finding], kind: str) -> list[Finding]:
    return [f for f in findings if f.kind == kind]


def tie_copy_blamed(run_dir: Path, finding: Finding) -> bool:
    return finding.evidence.get("culprit_label") == "tie:lm_head->embed" or (
        finding.cause.source is not None
        and finding.cause.source.line == line_of(run_dir, "trainer/optim.py", TIE_COPY_STATEMENT)
    )


TIE_COPY_STATEMENT = "embed.data.copy_(head.data.T)"


def test_reference_runs_exist() -> None:
    names = {p.name for p in RUNS}
    assert {"fixed-2gpu", "pathologies-2gpu", "switch-bank-index", "switch-tie-eager",
            "switch-work-order", "switch-loader-wait", "fixed-4gpu", "pathologies-4gpu"} <= names


@pytest.mark.parametrize("run_dir", RUNS, ids=lambda p: p.name)
def test_select_backward_exactly_when_banks_are_indexed(run_dir: Path) -> None:
    manifest, findings = analysed(run_dir)
    found = of_kind(findings, "select_backward")
    if manifest["switches"]["bank_access"] != "index":
        assert not found
        return
    assert {f.rank for f in found} == ranks_of(manifest)
    forward = function_span(run_dir, "trainer/model.py", "forward")
    for finding in found:
        assert "select_backward" in (finding.culprit.kernel or "")
        source = finding.cause.source
        assert source is not None and source.file == "trainer/model.py"
        # The compiled model's kernels name only the forward function; the def line is
        # narrowed to the bank-indexing statement itself (required for compiled runs).
        assert source.line in forward
        if manifest["switches"].get("compile"):
            assert source.line_exact
        if source.line_exact:
            assert source.line == line_of(run_dir, "trainer/model.py", "self.attn[i], self.mlp[i]")


@pytest.mark.parametrize("run_dir", RUNS, ids=lambda p: p.name)
def test_sm_contention_blames_the_eager_tie_copy(run_dir: Path) -> None:
    manifest, findings = analysed(run_dir)
    tie_findings = [f for f in of_kind(findings, "sm_contention") if tie_copy_blamed(run_dir, f)]
    if manifest["switches"]["tie_copy"] != "eager":
        assert not tie_findings
        return
    assert tie_findings
    copy_line = line_of(run_dir, "trainer/optim.py", TIE_COPY_STATEMENT)
    for finding in tie_findings:
        assert "elementwise_kernel" in (finding.culprit.kernel or "")
        assert finding.culprit.blocks_per_sm is not None and finding.culprit.blocks_per_sm >= 1
        assert finding.cause.source is not None
        assert (finding.cause.source.file, finding.cause.source.line) == (
            "trainer/optim.py", copy_line)


@pytest.mark.parametrize("run_dir", RUNS, ids=lambda p: p.name)
def test_slow_step_names_the_loader_wait(run_dir: Path) -> None:
    manifest, findings = analysed(run_dir)
    wait_step = manifest["switches"]["loader_wait_step"]
    data_waits = [f for f in of_kind(findings, "slow_step")
                  if f.step == wait_step and "data:wait_shard" in f.title]
    if manifest["switches"]["prefetch"]:
        assert not data_waits
        return
    assert {f.rank for f in data_waits} == ranks_of(manifest)
    wait_line = line_of(run_dir, "trainer/train.py", "loader.switch_shard()")
    for finding in data_waits:
        assert finding.severity == "high"
        assert finding.cause.source is not None
        assert (finding.cause.source.file, finding.cause.source.line) == (
            "trainer/train.py", wait_line)
        # Cost against the wall clock: the wait step's excess over the run's median profiled
        # step in steps.jsonl (rank 0's clock, synchronised each step). Both measure the same
        # stall, one from the trace and one from time.perf_counter; 15% covers the profiler's
        # own per-step jitter (profiled steps vary by +-4 ms around ~33 ms here).
        log = {s["step"]: s["wall_ms"] for s in steps_log(run_dir)}
        others = [ms for step, ms in log.items() if step != wait_step and step >= 1]
        excess_us = (log[wait_step] - statistics.median(others)) * 1000
        assert finding.cost_us == pytest.approx(excess_us, rel=0.15)


@pytest.mark.parametrize("run_dir", RUNS, ids=lambda p: p.name)
def test_slow_step_names_compilation_in_the_first_step(run_dir: Path) -> None:
    """Step 0 compiles the model (never profiled): named from the manifest, LOW (once per run),
    its cost the step's excess over the median in steps.jsonl."""
    manifest, findings = analysed(run_dir)
    warmup = [f for f in of_kind(findings, "slow_step") if f.evidence.get("warmup")]
    assert manifest["switches"]["compile"], "every reference run is compiled"
    [first] = warmup
    assert first.step == 0 and first.severity == "low"
    assert first.evidence["category"] == "compilation"
    step0_us = steps_log(run_dir)[0]["wall_ms"] * 1000
    assert first.cost_us == pytest.approx(step0_us - first.evidence["median_step_us"], abs=1)


@pytest.mark.parametrize("run_dir", RUNS, ids=lambda p: p.name)
def test_comm_gap_findings_name_the_ordering(run_dir: Path) -> None:
    _, findings = analysed(run_dir)
    for finding in of_kind(findings, "comm_gap"):
        ordering = finding.cause.ordering or ""
        assert "comm:" in ordering or "issued" in ordering or "behind" in ordering, ordering


def lm_head_gather_gaps(findings: list[Finding]) -> list[Finding]:
    return [f for f in of_kind(findings, "comm_gap")
            if "all_gather:lm_head" in str(f.evidence.get("next_collective"))]


@pytest.mark.parametrize("run_dir", RUNS, ids=lambda p: p.name)
def test_comm_gap_names_the_gap_opening_work_order(run_dir: Path) -> None:
    """last-first updates lm_head first, whose reduce-scatter is issued last: its all_gather
    waits on the comm stream for the whole Adam update, every step, on every rank. In the
    default order the small parameters' gathers keep the stream busy there.

    Each rank updates 1/world_size of lm_head's rows, so the wait shrinks with the world size:
    ~280 us on two H200s (reported by default), ~130 us on four, under the default floor of
    0.5% of a ~28 ms step (140 us). With the floor at 0.2% the four-GPU waits are found too.
    """
    manifest, findings = analysed(run_dir)
    gaps = lm_head_gather_gaps(findings)
    order = manifest["switches"]["work_order"]
    if order == "small-first":
        low_floor = comm_gap.detect(load(run_dir, progress=False), min_gap_step_frac=0.002)
        assert not gaps and not lm_head_gather_gaps(low_floor), [f.title for f in gaps]
        return
    if order != "last-first":
        pytest.skip(f"no expectation for work order {order}")
    if manifest["world_size"] > 2:
        gaps = lm_head_gather_gaps(comm_gap.detect(load(run_dir, progress=False),
                                                   min_gap_step_frac=0.002))
    for rank in ranks_of(manifest):
        [gap] = [f for f in gaps if f.rank == rank]
        assert gap.evidence["classification"] == "waiting_on_compute"
        assert gap.evidence["culprit_label"] == "optim:adam:lm_head"
        assert sorted(gap.evidence["steps"]) == manifest["profiled_steps"]
        # Its input: the update, which itself waited for the last reduce-scatter.
        assert "comm:reduce_scatter:lm_head" in gap.evidence["previous_collective"]
        assert gap.evidence["input_wait_us"] >= 50
        ordering = gap.cause.ordering or ""
        assert "comm:all_gather:lm_head" in ordering and "optim:adam:lm_head" in ordering
        assert gap.cause.source is not None and gap.cause.source.file == "trainer/optim.py"
        assert gap.cause.source.line in function_span(run_dir, "trainer/optim.py",
                                                      "_adam_update")


def test_equal_costs_get_equal_severity_on_every_rank() -> None:
    """Severity is measured against one step time per run, not each rank's own: the same
    finding costing the same per step on two ranks has one severity."""
    compared = 0
    for run_dir in RUNS:
        _, findings = analysed(run_dir)
        by_cause: dict[tuple, list[Finding]] = {}
        for f in findings:
            key = (f.kind, f.evidence.get("classification"), f.culprit.kernel,
                   f.cause.source.line if f.cause.source else None)
            by_cause.setdefault(key, []).append(f)
        for group in by_cause.values():
            pairs = [(a, b) for a in group for b in group if a.rank < b.rank]
            for a, b in pairs:
                cost_a, cost_b = (a.evidence.get("cost_per_step_us"),
                                  b.evidence.get("cost_per_step_us"))
                if cost_a and cost_b and cost_a == pytest.approx(cost_b, rel=0.01):
                    compared += 1
                    assert a.severity == b.severity, (run_dir.name, a.title, a.rank, b.rank)
    assert compared >= 10  # the ranks run the same code: many findings repeat across ranks


@pytest.mark.parametrize("name", ["fixed-2gpu", "fixed-4gpu"])
def test_fixed_run_has_no_high_findings_of_a_planted_kind(name: str) -> None:
    """gpu_idle is not a planted pathology of this trainer, and the fixed runs are not free of
    GPU idle time: every step ends in torch.cuda.synchronize (the step timer) and the next one
    starts by pinning and copying its batch on the main thread (data:next_batch), so 11-20% of
    each step is idle (fixed-4gpu rank 0: 2.9 ms of 30 ms per step waiting for
    data:next_batch), which gpu_idle reports as it is. Nor are the fixed runs free of ranks
    waiting for each other: on four GPUs the attention reduce-scatter runs exposed 1.0-3.6 ms
    per step, mostly waiting for the rank whose flash-attention backward finished last
    (exposed_comm, straggler), which are not planted either."""
    _, findings = analysed(TRACES / name)
    planted = {"select_backward", "sm_contention", "comm_gap", "slow_step"}
    assert not [f.title for f in findings if f.severity == "high" and f.kind in planted]


def test_costs_do_not_exceed_the_paired_step_time_difference() -> None:
    """A switch's findings may not claim more time per step than switching it costs.

    The eager tie copy, the indexed banks and the last-first work order cost well under a
    millisecond per step on this preset, inside the run-to-run spread of step times
    (unprofiled medians of 25.0-31.8 ms across the six runs, whose code differs by one switch),
    so the check is one-sided: the per-step cost the findings attribute to the switch stays
    under the measured step-time difference plus that 7 ms spread.
    """
    fixed_ms = statistics.median(s["wall_ms"] for s in steps_log(TRACES / "fixed-2gpu")
                                 if s["profiled"])
    spread_ms = 7.0
    for name, select in [("switch-tie-eager",
                          lambda f: tie_copy_blamed(TRACES / "switch-tie-eager", f)),
                         ("switch-bank-index", lambda f: f.kind == "select_backward"),
                         ("switch-work-order", lambda f: f in lm_head_gather_gaps([f]))]:
        _, findings = analysed(TRACES / name)
        profiled = [s["wall_ms"] for s in steps_log(TRACES / name) if s["profiled"]]
        diff_ms = statistics.median(profiled) - fixed_ms
        per_rank_us = max(sum(f.cost_us for f in findings if select(f) and f.rank == r)
                          for r in (0, 1))
        per_step_ms = per_rank_us / 1000 / len(profiled)
        assert per_step_ms > 0
        assert per_step_ms <= max(diff_ms, 0.0) + spread_ms


def test_a_gpu_idle_finding_at_several_lines_lists_each_line_with_its_idle_time() -> None:
    _, findings = analysed(TRACES / "switch-work-order")
    spread = [f for f in of_kind(findings, "gpu_idle") if "line_costs" in f.evidence]
    assert spread, "switch-work-order has launch idle spread over several lines"
    for f in spread:
        lines = f.evidence["line_costs"]
        places = [(x["file"], x["line"]) for x in lines]
        assert len(set(places)) == len(places) <= f.evidence["lines"]
        assert [x["us"] for x in lines] == sorted((x["us"] for x in lines), reverse=True)
        assert 0 < sum(x["us"] for x in lines) <= f.evidence["idle_us"] + 0.01
        assert f.cost_us <= f.evidence["idle_us"] + 0.01
