"""Real traces recorded elsewhere (A100, MI250, CPU-only, 128-rank sample; HTA's test data) and
the planted H200 traces: every one loads and links, and says sensible things."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tracekit.pipeline import load, load_trace
from tracekit.trace import Trace

REPO = Path(__file__).resolve().parents[2]
from tests.planted import EXTERNAL  # noqa: E402

if not EXTERNAL.is_dir():  # a checkout without the shared folder
    EXTERNAL = REPO / "tests" / "data" / "external"
GPU_DATA = REPO / "tests" / "data" / "gpu"
SCRIPT = REPO / "scripts" / "record_planted_traces.py"

EXTERNAL_FILES = sorted(EXTERNAL.glob("*.json.gz")) if EXTERNAL.is_dir() else []
needs_external = pytest.mark.skipif(not EXTERNAL_FILES, reason="external traces not available")


def external(name: str) -> Trace:
    return load_trace(EXTERNAL / name)


@needs_external
@pytest.mark.parametrize("path", EXTERNAL_FILES, ids=lambda p: p.name)
def test_every_external_trace_loads_and_links(path: Path) -> None:
    trace = load_trace(path)
    assert trace.linked
    assert len(trace.ops) > 0
    assert all(isinstance(w, str) and "\n" not in w for w in trace.warnings)
    # None of these was recorded with_stack=True, so every one says so.
    assert any("with_stack=True" in w for w in trace.warnings)
    if len(trace.kernels):
        assert trace.kernels["end"].ge(trace.kernels["ts"]).all()
        assert (trace.kernels["launch_idx"] >= 0).mean() > 0.95


@needs_external
def test_cpu_only_trace() -> None:
    trace = external("cpu_only_rank34.pt.trace.json.gz")
    assert len(trace.kernels) == 0 and not trace.has_gpu
    assert any("no GPU kernels" in w for w in trace.warnings)
    assert (trace.rank, trace.world_size) == (34, 300)
    assert trace.steps["step"].tolist() == [551]


@needs_external
def test_amd_kernels_link_to_hip_launches() -> None:
    trace = external("amd_mi250_single.json.gz")
    k = trace.kernels
    assert len(k) > 0 and (k["launch_idx"] >= 0).all()
    launch_names = set(trace.launches["name"].to_numpy()[k["launch_idx"]])
    assert launch_names <= {"hipLaunchKernel", "hipExtModuleLaunchKernel"}
    assert (k["op_idx"] >= 0).all()
    assert trace.num_sms == 104
    assert "gemm" in set(k["category"])  # Tensile Cijk_ kernels


@needs_external
def test_a100_nccl_trace() -> None:
    started = time.perf_counter()
    trace = external("a100_nccl_2ranks_rank0.json.gz")
    seconds = time.perf_counter() - started
    k = trace.kernels
    print(f"\nload+link a100_nccl_2ranks_rank0 (40k events): {seconds:.3f} s")
    nccl = k[k["is_nccl"]]
    assert len(nccl) > 0 and set(nccl["category"]) == {"nccl"}
    assert set(nccl["collective"]) >= {"allreduce"}
    assert k["is_comm_stream"].any()
    assert set(k.loc[k["is_comm_stream"], "stream"]) == set(nccl["stream"])
    assert (k["launch_idx"] >= 0).mean() > 0.95
    assert (trace.rank, trace.world_size, trace.num_sms) == (0, 2, 108)
    assert trace.steps["step"].tolist() == [4, 5, 6]
    assert set(k["step"]) <= {4, 5, 6}
    # Backward ops found their forward ops through the fwdbwd flows.
    assert (trace.ops["fwd_op_idx"] >= 0).sum() > 100


@needs_external
def test_sampled_128_ranks_without_device_properties() -> None:
    trace = external("sampled_128ranks_rank0.json.gz")
    assert (trace.rank, trace.world_size, trace.num_sms) == (0, 128, None)
    assert any("numSms" in w for w in trace.warnings)
    assert trace.kernels["is_nccl"].any()


def _line(number: int) -> str:
    return SCRIPT.read_text().splitlines()[number - 1]


@pytest.mark.skipif(not (GPU_DATA / "select_backward_index").is_dir(), reason="no GPU data")
def test_planted_select_backward_points_at_the_indexing_line() -> None:
    run = load(GPU_DATA / "select_backward_index", progress=False)
    assert run.ranks == [0, 1]
    trace = run.rank(0)
    ops, k = trace.ops, trace.kernels
    under = ops["name"].to_numpy()[k["op_idx"].clip(lower=0)]
    has_op = (k["op_idx"] >= 0).to_numpy()
    stacks_select_bwd = [
        i for i in range(len(k))
        if has_op[i] and "aten::select_backward" in _ancestors(trace, int(k["op_idx"].iat[i]))
    ]
    assert stacks_select_bwd, under
    rows = k.iloc[stacks_select_bwd]
    assert rows["src_from_fwd"].all()
    assert set(rows["src_function"]) == {"forward_index"}
    for line, exact in rows[["src_line", "src_line_exact"]].drop_duplicates().to_numpy():
        if exact and SCRIPT.is_file():
            assert "bank[" in _line(int(line))


@pytest.mark.skipif(not (GPU_DATA / "sm_contention_triton").is_dir(), reason="no GPU data")
def test_planted_triton_launch_from_python() -> None:
    trace = load_trace(GPU_DATA / "sm_contention_triton" / "rank0.pt.trace.json.gz")
    k = trace.kernels
    triton = k[~k["is_nccl"]]
    assert len(triton) and set(triton["category"]) == {"triton"}
    assert (triton["src_function"] == "transpose_copy_bounded").all()
    assert k["is_comm_stream"].any()


def _ancestors(trace: Trace, row: int) -> list[str]:
    names: list[str] = []
    parent = trace.ops["parent"].to_numpy()
    while row >= 0:
        names.append(str(trace.ops["name"].iat[row]))
        row = int(parent[row])
    return names
