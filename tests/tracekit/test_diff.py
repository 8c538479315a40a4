"""`diff`: each planted pathology's kernels and findings disappear in its fixed control run,
plus the pieces (name normalisation, findings matching, step statistics, exposed comm) on
synthetic data, and the CLI's JSON/HTML/error behaviour."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from tests.synth import SynthTrace, write_run
from tracekit.commands.diff import register
from tracekit.compare import (
    RunDiff,
    compare_findings,
    diff_runs,
    finding_key,
)
from tracekit.errors import UserError
from tracekit.finding import Cause, Culprit, Finding, SourceLine
from tracekit.names import normalize_kernel_name
from tracekit.trace import Run

REPO = Path(__file__).resolve().parents[2]
GPU_DATA = REPO / "tests" / "data" / "gpu"

FILL = ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, "
        "std::array<char*, 1ul> >(int, at::native::FillFunctor<float>, std::array<char*, 1ul>)")
ADD = ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, "
       "std::array<char*, 3ul> >(int, at::native::CUDAFunctor_add<float>, std::array<char*, 3ul>)")
DIRECT_COPY = ("void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl_nocast<"
               "at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}::"
               "operator()() const::{lambda()#7}::operator()() const::{lambda(float)#1}>("
               "at::TensorIteratorBase&, at::native::direct_copy_kernel_cuda(at::TensorIterator"
               "Base&)::{lambda()#3}::operator()() const::{lambda()#7}::operator()() const::"
               "{lambda(float)#1} const&)::{lambda(int)#1}>(int, at::native::gpu_kernel_impl_"
               "nocast<at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}"
               "::operator()() const::{lambda()#7}::operator()() const::{lambda(float)#1}>(at::"
               "TensorIteratorBase&, at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)"
               "::{lambda()#3}::operator()() const::{lambda()#7}::operator()() const::{lambda("
               "float)#1} const&)::{lambda(int)#1})")


# ---- the planted GPU pairs --------------------------------------------------------------------


@cache
def analyzed(scenario: str) -> tuple[Run, tuple[Finding, ...]]:
    """A planted run, loaded, linked and analysed once per test session."""
    from tracekit.pipeline import analyze_run

    path = GPU_DATA / scenario
    if not path.is_dir():
        pytest.skip(f"{path} not recorded")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRACEKIT_CACHE", "0")  # never write caches into tests/data
        run, findings = analyze_run(path, progress=False)
    return run, tuple(findings)


def diff_of(base: str, new: str, rank: int | None = None) -> RunDiff:
    base_run, base_findings = analyzed(base)
    new_run, new_findings = analyzed(new)
    return diff_runs(base_run, list(base_findings), new_run, list(new_findings), rank=rank)


def test_select_backward_fix_removes_its_kernels_and_finding() -> None:
    result = diff_of("select_backward_index", "select_backward_unbind")
    launched = result.row("kernels_by_launching_op", "aten::select_backward")
    assert launched is not None
    assert launched.base_count > 0 and launched.new_count == 0
    assert launched.status == "disappeared" and launched.delta_us < 0
    fill = result.row("kernels", normalize_kernel_name(FILL))
    assert fill is not None and fill.new_count < fill.base_count
    resolved = [r for r in result.findings.resolved if r.kind == "select_backward"]
    assert resolved, result.findings
    assert resolved[0].base_cost_us > 0 and resolved[0].new_cost_us == 0
    assert sorted(resolved[0].ranks) == [0, 1]
    assert not [r for r in result.findings.introduced + result.findings.common
                if r.kind == "select_backward"]


def test_reverse_direction_introduces_the_finding() -> None:
    result = diff_of("select_backward_unbind", "select_backward_index")
    assert [r for r in result.findings.introduced if r.kind == "select_backward"]
    launched = result.row("kernels_by_launching_op", "aten::select_backward")
    assert launched is not None and launched.status == "appeared"


def test_sm_contention_fix_swaps_the_copy_kernel() -> None:
    result = diff_of("sm_contention_eager", "sm_contention_triton")
    copy_key = normalize_kernel_name(DIRECT_COPY)
    assert copy_key in result.kernels_disappeared
    assert "bounded_transpose_kernel" in result.kernels_appeared
    copy_row = result.row("kernels", copy_key)
    assert copy_row is not None and copy_row.base_count > 0 and copy_row.new_count == 0
    copy_op = result.row("kernels_by_launching_op", "aten::copy_")
    assert copy_op is not None and copy_op.new_count == 0
    resolved = [r for r in result.findings.resolved if r.kind == "sm_contention"]
    assert resolved, result.findings
    assert not [r for r in result.findings.introduced if r.kind == "sm_contention"]


def test_slow_step_wait_shows_in_step_times_and_findings() -> None:
    result = diff_of("slow_step_none", "slow_step_wait")
    steps = result.steps
    assert steps.source == "gpu ProfilerStep"
    assert steps.base is not None and steps.new is not None
    assert steps.base.n == steps.new.n == 5
    # One step sleeps 150 ms: it must show on the GPU side too (the GPU waits for it).
    assert steps.new.max_ms > 140 > steps.base.max_ms
    assert steps.delta_mean_ms is not None and steps.delta_mean_ms > 25
    assert steps.welch_p is not None and steps.mannwhitney_p is not None
    wait = result.row("cpu_labels", "data:wait_shard")
    assert wait is not None and wait.new_us - wait.base_us > 25_000
    assert [r for r in result.findings.introduced if r.kind == "slow_step"]
    assert not [r for r in result.findings.resolved if r.kind == "slow_step"]


def test_comm_gap_fix_resolves_the_gaps() -> None:
    result = diff_of("comm_gap_late", "comm_gap_none")
    assert [r.rank for r in result.comm] == [0, 1]
    for row in result.comm:
        assert row.base_nccl_us and row.new_nccl_us
        assert 0 <= row.base_exposed_us <= row.base_nccl_us + 1e-6
    # Findings sit at the def line of the recording script's step function in both runs, so
    # some match as "common"; what the fix must show is that their cost collapses.
    rows = [r for r in result.findings.resolved + result.findings.common
            + result.findings.introduced if r.kind == "comm_gap"]
    base_cost = sum(r.base_cost_us for r in rows)
    new_cost = sum(r.new_cost_us for r in rows)
    assert base_cost > 0 and new_cost < 0.5 * base_cost, rows


def test_same_run_diffs_to_nothing() -> None:
    result = diff_of("select_backward_index", "select_backward_index")
    assert result.kernels_appeared == [] and result.kernels_disappeared == []
    assert all(r.delta_us == 0 for r in result.kernels + result.cpu_ops)
    assert result.findings.resolved == [] and result.findings.introduced == []
    assert all(r.delta_cost_us == 0 for r in result.findings.common)
    assert result.steps.delta_mean_ms == 0


def test_rank_filter() -> None:
    result = diff_of("select_backward_index", "select_backward_unbind", rank=1)
    assert result.base.ranks == [1] and result.new.ranks == [1]
    assert all(r.ranks == [1] for r in result.findings.resolved)
    assert [r.rank for r in result.comm] == [1]


def test_json_is_plain_and_documented() -> None:
    import tracekit.compare.schema as diff_module

    data = diff_of("sm_contention_eager", "sm_contention_triton").to_dict()
    text = json.dumps(data, allow_nan=False)  # no NaN sneaks through
    assert json.loads(text) == data
    for key in data:
        assert f'"{key}"' in diff_module.__doc__, f"{key} missing from the schema docstring"
    assert data["schema_version"] == 1
    assert set(data["kernels"][0]) == {"name", "example", "base_count", "new_count", "base_us",
                                       "new_us", "delta_us", "pct_change", "status"}


# ---- pieces on synthetic data -----------------------------------------------------------------


def test_kernel_name_normalisation() -> None:
    fill, add = normalize_kernel_name(FILL), normalize_kernel_name(ADD)
    assert fill != add  # template TYPE arguments tell the work apart
    assert "FillFunctor" in fill and "(int" not in fill and not fill.startswith("void")
    assert normalize_kernel_name(FILL.replace("<4,", "<8,")) == fill
    assert normalize_kernel_name("triton_poi_fused_add_select_backward_2") == \
        normalize_kernel_name("triton_poi_fused_add_select_backward_17") == \
        "triton_poi_fused_add_select_backward"
    assert normalize_kernel_name(DIRECT_COPY.replace("#3", "#4")) == \
        normalize_kernel_name(DIRECT_COPY)
    assert normalize_kernel_name("ncclDevKernel_AllReduce_Sum_f32_RING_LL("
                                 "ncclDevKernelArgsStorage<4096ul>)") == \
        "ncclDevKernel_AllReduce_Sum_f32_RING_LL"
    cat = "void at::native::(anonymous namespace)::CatArrayBatchedCopy<int, 1>(char*)"
    assert normalize_kernel_name(cat) == "at::native::anon::CatArrayBatchedCopy<int, N>"
    assert normalize_kernel_name("kernel_a1b2c3d4e5f6a7b8c9d0e1f2") == "kernel_<hash>"


def _finding(kind: str, rank: int, cost: float, *, line: int | None = 10,
             kernel: str | None = None, op: str | None = None, count: int = 1) -> Finding:
    source = SourceLine(file="train.py", line=line, function="f") if line is not None else None
    return Finding(kind=kind, severity="high", rank=rank, step=None, start_us=0.0, dur_us=1.0,
                   cost_us=cost, count=count, title=f"{kind} at {line}",
                   culprit=Culprit(kernel=kernel), cause=Cause(op=op, source=source))


def test_findings_matching_and_costs() -> None:
    base = [
        _finding("select_backward", 0, 500.0, line=12),
        _finding("select_backward", 1, 300.0, line=12),
        _finding("sm_contention", 0, 200.0, kernel="triton_poi_fused_copy_3", line=40),
        _finding("comm_gap", 0, 50.0, line=None, op="aten::mm"),
    ]
    new = [
        _finding("sm_contention", 0, 50.0, kernel="triton_poi_fused_copy_7", line=40),
        _finding("comm_gap", 1, 80.0, line=None, op="aten::mm"),
        _finding("slow_step", 0, 900.0, line=None),
    ]
    result = compare_findings(base, new)
    resolved = {r.kind: r for r in result.resolved}
    assert set(resolved) == {"select_backward"}
    assert resolved["select_backward"].base_cost_us == 800.0
    assert resolved["select_backward"].ranks == [0, 1]
    assert resolved["select_backward"].base_count == 2
    common = {r.kind: r for r in result.common}
    # The Inductor kernel index differs between the runs; the normalised name still matches.
    assert common["sm_contention"].delta_cost_us == -150.0
    assert common["comm_gap"].delta_cost_us == 30.0 and common["comm_gap"].ranks == [0, 1]
    assert [r.kind for r in result.introduced] == ["slow_step"]
    # A different line is a different finding.
    moved = compare_findings([_finding("select_backward", 0, 1.0, line=12)],
                             [_finding("select_backward", 0, 1.0, line=13)])
    assert len(moved.resolved) == 1 and len(moved.introduced) == 1
    assert finding_key(base[3]) == ("comm_gap", None, "op aten::mm")


def _code(lines: dict[int, str], length: int = 40) -> list[str]:
    return [lines.get(n, f"filler_{n}()") for n in range(1, length + 1)]


def test_findings_match_by_line_text_across_code_versions() -> None:
    """An edit above a line moves it; the finding on that statement is still the same one."""
    base_code = {"train.py": _code({12: "x = bank[i]", 30: "y.copy_(z.T)"})}
    new_lines = _code({30: "other = work()"})
    new_lines[10:10] = ["added_one()", "added_two()"]  # lines 11-12: 12 moves to 14
    new_lines[13] = "x = bank[i]"
    new_code = {"train.py": new_lines}
    base = [_finding("select_backward", 0, 5.0, line=12), _finding("comm_gap", 0, 1.0, line=30)]
    new = [_finding("select_backward", 0, 2.0, line=14), _finding("comm_gap", 0, 1.0, line=32)]
    result = compare_findings(base, new, base_code.get, new_code.get)
    [common] = result.common
    assert common.kind == "select_backward" and common.delta_cost_us == -3.0
    assert common.source == "train.py:12 -> train.py:14"
    assert (common.base_line, common.new_line, common.line_edited) == (12, 14, False)
    # The line that held BASE's statement now holds another one: not the same finding, and
    # both ends say their line was edited.
    [resolved] = result.resolved
    [introduced] = result.introduced
    assert resolved.kind == introduced.kind == "comm_gap"
    assert (resolved.base_line, resolved.new_line, resolved.line_edited) == (30, None, True)
    assert (introduced.base_line, introduced.new_line, introduced.line_edited) == (None, 32, True)


def test_a_statement_the_change_edited_is_still_the_same_finding() -> None:
    """`self.qkvo_w[...]` became `qkvo_w[...]` on a line that also moved: the select_backward
    there is in both runs, on an edited line, not resolved and introduced again."""
    base_code = {"train.py": _code({12: "q = F.linear(x, lambdas[0] * self.qkvo_w[:d])",
                                    30: "y.copy_(z.T)"})}
    new_lines = _code({12: "q = F.linear(x, lambdas[0] * qkvo_w[:d])", 30: "other = work()"})
    new_lines[0:0] = ["qkvo_w = bank[i]"]  # everything below moves down one line
    new_code = {"train.py": new_lines}
    base = [_finding("select_backward", 0, 5.0, line=12), _finding("comm_gap", 0, 1.0, line=30)]
    new = [_finding("select_backward", 0, 5.0, line=13), _finding("comm_gap", 0, 1.0, line=31)]
    result = compare_findings(base, new, base_code.get, new_code.get)
    [common] = result.common
    assert (common.kind, common.base_line, common.new_line, common.line_edited) == (
        "select_backward", 12, 13, True)
    assert common.delta_cost_us == 0.0
    # A line rewritten into another statement is not the same finding.
    assert [r.kind for r in result.resolved] == [r.kind for r in result.introduced] == [
        "comm_gap"]


def test_findings_on_unedited_lines_say_where_the_line_is_in_the_other_run() -> None:
    """A finding gone from a statement the change did not touch is resolved by something else;
    the row says where that statement is now."""
    base_code = {"train.py": _code({20: "w = self.bank[i]"})}
    new_lines = _code({20: "w = self.bank[i]"})
    new_lines[2:3] = []  # line 3 removed: line 20 is now 19
    new_code = {"train.py": new_lines}
    result = compare_findings([_finding("select_backward", 0, 5.0, line=20)], [],
                              base_code.get, new_code.get)
    [resolved] = result.resolved
    assert (resolved.base_line, resolved.new_line, resolved.line_edited) == (20, 19, False)
    # Unreadable code: no claim either way.
    unknown = compare_findings([_finding("select_backward", 0, 5.0, line=20)], [])
    assert unknown.resolved[0].line_edited is None


def test_repeated_statements_match_by_their_place_not_their_text() -> None:
    """Two lines with the same text (two attention classes) are two findings; each matches the
    one at its own place after the edit, never both in one row."""
    base_code = {"train.py": _code({10: "y = attn(q[0], k[0])", 30: "y = attn(q[0], k[0])"})}
    new_lines = _code({10: "y = attn(q[0], k[0])", 30: "y = attn(q[0], k[0])"})
    new_lines[0:0] = ["import extra"]
    new_code = {"train.py": new_lines}
    base = [_finding("select_backward", 0, 5.0, line=10), _finding("select_backward", 0, 7.0,
                                                                   line=30)]
    new = [_finding("select_backward", 0, 4.0, line=11), _finding("select_backward", 0, 6.0,
                                                                  line=31)]
    result = compare_findings(base, new, base_code.get, new_code.get)
    assert sorted((r.base_line, r.new_line, r.delta_cost_us) for r in result.common) == [
        (10, 11, -1.0), (30, 31, -1.0)]
    assert not result.resolved and not result.introduced
    # Fusion swapped the kernels' names between the two statements: each still matches the
    # one at its own place, not the same-text statement holding its old kernel name.
    swapped = compare_findings(
        [_finding("select_backward", 0, 5.0, line=10, kernel="triton_poi_fused_a_1"),
         _finding("select_backward", 0, 7.0, line=30, kernel="triton_poi_fused_b_2")],
        [_finding("select_backward", 0, 4.0, line=11, kernel="triton_poi_fused_b_2"),
         _finding("select_backward", 0, 6.0, line=31, kernel="triton_poi_fused_a_1")],
        base_code.get, new_code.get)
    assert sorted((r.base_line, r.new_line) for r in swapped.common) == [(10, 11), (30, 31)]


def test_a_fused_kernel_renamed_by_the_change_is_still_the_same_finding() -> None:
    """Inductor names a fused kernel after what it fused: the same statement's select_backward
    kernel is named differently when fusion changed. Same kind and statement: one finding."""
    code = {"train.py": _code({12: "x = bank[i]"})}
    base = [_finding("select_backward", 0, 5.0, line=12,
                     kernel="triton_poi_fused__unsafe_view_mul_select_backward_3")]
    new = [_finding("select_backward", 0, 2.0, line=12,
                    kernel="triton_per_fused_mul_select_backward_sum_18")]
    result = compare_findings(base, new, code.get, code.get)
    assert len(result.common) == 1 and not result.resolved and not result.introduced
    # Another kind on that line is another finding.
    other = compare_findings(base, [_finding("sm_contention", 0, 2.0, line=12, kernel="k")],
                             code.get, code.get)
    assert len(other.resolved) == 1 and len(other.introduced) == 1


def test_reference_runs_of_different_code_match_findings() -> None:
    """switch-work-order ran newer code than fixed-2gpu (optim.py grew): Adam's contention
    with the reduce-scatters is one finding in both, found through the line's text. (In
    switch-work-order it costs 13 us of exposed step time per step, under sm_contention's
    reporting floor, so both runs are analysed with the floor off.)"""
    from tracekit.detectors.sm_contention import Params
    from tracekit.pipeline import analyze_run

    params = {"sm_contention": Params(min_cost_us=0.0)}
    base_run, base = analyze_run(TRACES / "switch-work-order", progress=False, params=params)
    new_run, new = analyze_run(TRACES / "fixed-2gpu", progress=False, params=params)
    result = diff_runs(base_run, base, new_run, new)
    adam = [r for r in result.findings.common if r.kind == "sm_contention"]
    assert adam and all(" -> " in (r.source or "") for r in adam), result.findings.common


def _synthetic_run(tmp_path: Path, name: str, overlap_us: float, step_ms: list[float],
                   with_log: bool) -> Path:
    """Two ranks, one step each per entry of step_ms: an NCCL kernel of 100 us per step with a
    compute kernel covering `overlap_us` of it."""
    traces = []
    for rank in (0, 1):
        t = SynthTrace(rank=rank, world_size=2)
        start = 0.0
        for n, ms in enumerate(step_ms):
            dur = ms * 1000.0
            t.step(n + 1, cpu_ts=start, cpu_dur=dur, gpu_ts=start + 10, gpu_dur=dur - 20)
            op = t.cpu_op("aten::mm", ts=start + 1, dur=5)
            t.launch_kernel("sm90_xmma_gemm_bf16", launch_ts=start + 2, kernel_ts=start + 20,
                            kernel_dur=overlap_us, external_id=op)
            comm = t.cpu_op("record_param_comms", ts=start + 8, dur=3)
            t.nccl_kernel("allreduce", launch_ts=start + 9, kernel_ts=start + 20,
                          kernel_dur=100.0, nelems=1024, external_id=comm)
            start += dur
        traces.append(t)
    log = ([{"step": i, "wall_ms": ms, "tokens_per_s": 1.0, "loss": 1.0, "profiled": True}
            for i, ms in enumerate([999.0, *step_ms])] if with_log else None)
    return write_run(tmp_path / name, traces, steps_log=log)


def test_exposed_comm_and_steps_log(tmp_path: Path) -> None:
    from tracekit.pipeline import load

    base_dir = _synthetic_run(tmp_path, "base", overlap_us=30.0,
                              step_ms=[1.0, 1.1, 0.9, 1.0], with_log=True)
    new_dir = _synthetic_run(tmp_path, "new", overlap_us=90.0,
                             step_ms=[2.0, 2.1, 1.9, 2.0, 2.05], with_log=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRACEKIT_CACHE", "0")
        base, new = load(base_dir, progress=False), load(new_dir, progress=False)
    result = diff_runs(base, [], new, [])
    assert [(r.rank, round(r.base_exposed_us, 6), round(r.new_exposed_us, 6))
            for r in result.comm] == [(0, 70.0, 10.0), (1, 70.0, 10.0)]
    assert result.comm[0].base_nccl_us == pytest.approx(100.0)
    steps = result.steps
    # steps.jsonl wins over profiler spans, and step 0 (compile/warmup) is left out.
    assert steps.source == "steps.jsonl"
    assert (steps.base.n, steps.new.n) == (4, 5)
    assert steps.base.max_ms < 2 and steps.delta_mean_ms == pytest.approx(1.01, abs=1e-9)
    assert steps.welch_p is not None and steps.welch_p < 0.001
    assert steps.mannwhitney_p is not None and steps.mannwhitney_p < 0.05
    # Per-step normalisation: 4 vs 5 steps of identical per-step GEMM work would not move.
    gemm = result.row("kernel_categories", "gemm")
    assert gemm is not None and gemm.base_count == 8 and gemm.new_count == 10
    assert gemm.new_us == pytest.approx(90.0) and gemm.base_us == pytest.approx(30.0)
    # With a rank filter steps.jsonl (rank 0's wall clock) is not used.
    assert diff_runs(base, [], new, [], rank=1).steps.source == "gpu ProfilerStep"


# ---- CLI --------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "cli.py"), "diff", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**__import__("os").environ, "TRACEKIT_CACHE": "0"})


def test_side_by_side_diff_is_the_rankwise_diff_with_each_runs_timeline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """diff --html analyses one run at a time in its process; its RunDiff is diff_paths'."""
    from tracekit.pipeline import diff_paths, diff_timelines

    monkeypatch.setenv("TRACEKIT_CACHE", "0")  # never write caches into tests/data
    base, new = GPU_DATA / "select_backward_index", GPU_DATA / "select_backward_unbind"
    rankwise, *_ = diff_paths(base, new, progress=False)
    result, timelines = diff_timelines(base, new, progress=False)
    assert result.to_dict() == rankwise.to_dict()
    assert [tl.align for tl in timelines] == ["step", "step"]
    assert [sorted(set(tl.bars["rank"])) for tl in timelines] == [[0, 1], [0, 1]]
    assert (timelines[0].bars["name"].str.contains("FillFunctor")).any()
    one, _ = diff_timelines(base, new, rank=1, progress=False)
    assert one.to_dict() == diff_paths(base, new, rank=1, progress=False)[0].to_dict()


def test_cli_json_and_html(tmp_path: Path) -> None:
    pytest.importorskip("plotly")
    out = tmp_path / "diff.html"
    proc = _cli(str(GPU_DATA / "select_backward_index"), str(GPU_DATA / "select_backward_unbind"),
                "--json", "--html", str(out))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["schema_version"] == 1
    assert any(r["name"] == "aten::select_backward" and r["new_count"] == 0
               for r in data["kernels_by_launching_op"])
    page = out.read_text()
    assert "BASE" in page and "NEW" in page and "plotly" in page.lower()


def _in_process(*args: str) -> Result:
    """Run `diff` through typer in this process (no interpreter/torch start-up per call)."""
    app = typer.Typer()
    register(app)
    app.command("unused")(lambda: None)  # two commands: typer then wants the command name
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRACEKIT_CACHE", "0")
        mp.setenv("COLUMNS", "200")
        return CliRunner().invoke(app, ["diff", *args])


def test_cli_terminal_report_and_errors(tmp_path: Path) -> None:
    ok = _in_process(str(GPU_DATA / "sm_contention_eager"), str(GPU_DATA / "sm_contention_triton"),
                     "--top", "5")
    assert ok.exit_code == 0, ok.output
    assert "Step time" in ok.output and "bounded_transpose_kernel" in ok.output
    for args, words in (
        ((str(tmp_path / "nope"), str(GPU_DATA / "sm_contention_triton")), "no such file"),
        ((str(GPU_DATA / "sm_contention_eager"), str(GPU_DATA / "sm_contention_triton"),
          "--rank", "7"), "rank 7"),
        ((str(GPU_DATA / "sm_contention_eager"), str(GPU_DATA / "sm_contention_triton"),
          "--html", str(GPU_DATA / "sm_contention_eager" / "rank0.pt.trace.json.gz")), "refusing"),
    ):
        bad = _in_process(*args)
        # cli.main turns a UserError into "error: <message>" and exit status 2.
        assert isinstance(bad.exception, UserError), bad.output
        assert words in str(bad.exception) and "\n" not in str(bad.exception)


TRACES = Path(__file__).resolve().parents[2] / "traces"


@cache
def analyzed_reference(name: str) -> tuple[Run, tuple[Finding, ...]]:
    from tracekit.pipeline import analyze_run

    run, findings = analyze_run(TRACES / name, progress=False)
    return run, tuple(findings)


def reference_diff(base: str, new: str) -> RunDiff:
    base_run, base_findings = analyzed_reference(base)
    new_run, new_findings = analyzed_reference(new)
    return diff_runs(base_run, list(base_findings), new_run, list(new_findings))


def test_trainer_bank_index_fix_drops_the_select_backward_kernels() -> None:
    """The trainer's own pair: switch-bank-index -> fixed-2gpu (compiled)."""
    result = reference_diff("switch-bank-index", "fixed-2gpu")
    gone = [k for k in result.kernels_disappeared if "select_backward" in k]
    assert gone, result.kernels_disappeared
    assert not [k for k in result.kernels_appeared if "select_backward" in k]
    resolved = [r for r in result.findings.resolved if r.kind == "select_backward"]
    assert resolved and sorted({rank for r in resolved for rank in r.ranks}) == [0, 1]
    assert not [r for r in result.findings.introduced if r.kind == "select_backward"]


def test_trainer_tie_copy_fix_swaps_eager_copies_for_the_triton_kernels() -> None:
    result = reference_diff("switch-tie-eager", "fixed-2gpu")
    assert {"transpose_copy_kernel", "transpose_add_kernel"} <= set(result.kernels_appeared)
    copy_op = result.row("kernels_by_launching_op", "aten::copy_")
    assert copy_op is not None and copy_op.new_us < copy_op.base_us
    tie = [r for r in result.findings.resolved
           if r.kind == "sm_contention" and r.source and "optim.py" in r.source]
    assert tie, result.findings.resolved


def test_a_split_recording_is_diffed_with_its_borrowed_lines(tmp_path: Path) -> None:
    """`profile --record split`: timings without stacks, lines from `stacks/`. diff uses the
    borrowed lines as analyze does (the findings of a run diffed with itself are all "in both",
    at their statements)."""
    import gzip
    import json

    from tracekit.pipeline.diff import diff_paths

    (tmp_path / "model.py").write_text("def forward(bank, x):\n    w = bank[1]\n"
                                       "    return x @ w\n")

    def ev(cat: str, name: str, ts: float, dur: float, tid: int = 1, **args: object
           ) -> dict[str, object]:
        return {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": tid, "ts": ts,
                "dur": dur, "args": args}

    def window(step: int, stacks: bool) -> list[dict[str, object]]:
        t0 = step * 10000.0
        events = [ev("user_annotation", f"ProfilerStep#{step}", t0, 5000)]
        if stacks:
            events.append(ev("python_function", "model.py(1): forward", t0 + 5, 300))
        events += [
            ev("cpu_op", "aten::select", t0 + 10, 10, **{"Sequence number": 3,
                                                          "Fwd thread id": 0}),
            {"ph": "s", "cat": "fwdbwd", "name": "fwdbwd", "id": step, "pid": 1, "tid": 1,
             "ts": t0 + 10},
            ev("cpu_op", "autograd::engine::evaluate_function: SelectBackward0", t0 + 400,
               100, tid=2),
            ev("cpu_op", "SelectBackward0", t0 + 401, 98, tid=2),
            {"ph": "f", "cat": "fwdbwd", "name": "fwdbwd", "id": step, "pid": 1, "tid": 2,
             "ts": t0 + 401},
            ev("cpu_op", "aten::select_backward", t0 + 402, 90, tid=2),
            ev("cpu_op", "aten::fill_", t0 + 403, 20, tid=2),
            ev("cuda_runtime", "cudaLaunchKernel", t0 + 405, 2, tid=2, correlation=step),
            {"ph": "X", "cat": "kernel", "pid": 0, "tid": 7, "ts": t0 + 1200, "dur": 400,
             "name": "void at::native::vectorized_elementwise_kernel<4, FillFunctor<float>>",
             "args": {"device": 0, "stream": 7, "correlation": step, "grid": [4096, 1, 1],
                      "block": [128, 1, 1]}},
        ]
        return events

    def write(path: Path, rank: int, events: list[dict[str, object]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"traceEvents": events, "distributedInfo": {"rank": rank, "world_size": 2},
               "deviceProperties": [{"id": 0, "numSms": 132}]}
        path.write_bytes(gzip.compress(json.dumps(doc).encode()))

    for rank in (0, 1):  # two rank files: diff would analyse them one process per rank
        write(tmp_path / f"rank{rank}.pt.trace.json.gz", rank, window(6, stacks=False))
        write(tmp_path / "stacks" / f"rank{rank}.pt.trace.json.gz", rank,
              window(8, stacks=True))
    result, *_ = diff_paths(tmp_path, tmp_path, progress=False)
    banks = [r for r in result.findings.common if r.kind == "select_backward"]
    assert banks and not result.findings.resolved and not result.findings.introduced
    assert [(r.file, r.base_line, r.new_line, r.ranks) for r in banks] == [
        ("model.py", 2, 2, [0, 1])]
    # A rank missing from stacks/: its note says so, the other rank's says where its lines
    # came from; neither claims the run has no lines at all.
    from tracekit.pipeline import load

    (tmp_path / "stacks" / "rank1.pt.trace.json.gz").unlink()
    notes = {t.rank: t.warnings for t in load(tmp_path, progress=False).traces}
    assert not [w for w in notes[0] if "no python_function events" in w]
    assert [w for w in notes[0] if "taken from the same ops" in w]
    assert [w for w in notes[1] if "rank 1 recorded without stacks and stacks/ holds" in w]
    assert not [w for w in notes[1] if "no python_function events" in w]
