"""Accelerators other than NVIDIA GPUs are named in the report and their device events used:
AMD (HIP), Intel (XPU), Meta MTIA; a CPU-only trace stays "CPU only"."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tests.planted import EXTERNAL
from tracekit.pipeline import analyze_run, load_trace
from tracekit.report.terminal import print_report

DATA = Path(__file__).resolve().parents[1] / "data"
MTIA_TRACE = DATA / "devices" / "mtia_inference_rank0.json.gz"
AMD_TRACE = EXTERNAL / "amd_mi250_single.json.gz"
needs_amd = pytest.mark.skipif(not AMD_TRACE.is_file(), reason="external traces not available")


def header(path: Path) -> str:
    run, findings = analyze_run(path, progress=False)
    console = Console(file=io.StringIO(), width=200)
    print_report(run, findings, console=console)
    return console.file.getvalue().splitlines()[0]


def test_an_mtia_trace_is_named_and_its_kernels_and_dma_transfers_are_read() -> None:
    trace = load_trace(MTIA_TRACE)
    assert trace.device == "mtia"
    # mtia_ccp_events: pe_exe/merge/remote are kernels, dma_request transfers are memcpys
    # (with their size), event_record/event_wait are stream-event markers and are left out.
    assert set(trace.kernels["name"]) == {"pe_exe", "merge", "remote"}
    assert len(trace.kernels) == 24 + 36 + 37
    assert len(trace.gpu_mem) == 877 and (trace.gpu_mem["bytes"] > 0).all()
    # Kernels are tied to their mtia_runtime "runFunction" launch by correlation id.
    launched = trace.kernels["launch_idx"] >= 0
    assert launched.sum() >= 70
    names = trace.launches.loc[trace.kernels.loc[launched, "launch_idx"], "name"]
    assert names.str.startswith("runFunction").all()
    assert not any("no GPU kernels" in w for w in trace.warnings)


def test_an_mtia_trace_is_not_called_cpu_only() -> None:
    assert header(MTIA_TRACE).endswith("MTIA (ARTEMIS)")


@needs_amd
def test_an_amd_trace_is_named_hip_with_its_device() -> None:
    trace = load_trace(AMD_TRACE)
    assert trace.device == "hip" and len(trace.kernels) > 0
    assert (trace.kernels["launch_idx"] >= 0).all()  # hipLaunchKernel calls link them
    assert header(AMD_TRACE).endswith("AMD GPU, HIP (AMD Radeon Graphics)")


def xpu_trace(path: Path) -> Path:
    """The shape Kineto's XPU (PTI) profiler writes: xpu_runtime calls, kernel activities."""
    def event(cat: str, name: str, ts: float, dur: float, **args: Any) -> dict[str, Any]:
        return {"ph": "X", "cat": cat, "name": name, "pid": 10, "tid": 10, "ts": ts, "dur": dur,
                "args": args}

    events = [
        event("user_annotation", "ProfilerStep#1", 0, 100, **{"External id": 1}),
        event("cpu_op", "aten::mm", 10, 30, **{"External id": 2}),
        event("xpu_runtime", "urEnqueueKernelLaunch", 15, 5, correlation=7,
              **{"External id": 2}),
        event("kernel", "gemm_kernel", 40, 20, device=0, stream=3, correlation=7,
              **{"External id": 2}) | {"pid": 0, "tid": 3},
        event("xpu_runtime", "urEnqueueUSMMemcpy", 50, 2, correlation=8),
        event("gpu_memcpy", "Memcpy M2D", 70, 3, device=0, stream=3, correlation=8, bytes=64)
        | {"pid": 0, "tid": 3},
    ]
    doc = {"deviceProperties": [{"id": 0, "name": "Intel(R) Data Center GPU Max 1550"}],
           "traceEvents": events}
    path.write_text(json.dumps(doc))
    return path


def test_an_xpu_trace_is_named_and_its_kernels_linked(tmp_path: Path) -> None:
    trace = load_trace(xpu_trace(tmp_path / "xpu.json"))
    assert trace.device == "xpu"
    kernel = trace.kernels.iloc[0]
    assert kernel["launch_idx"] >= 0
    assert trace.launches.loc[kernel["launch_idx"], "name"] == "urEnqueueKernelLaunch"
    assert trace.ops.loc[kernel["op_idx"], "name"] == "aten::mm"
    assert header(tmp_path / "xpu.json").endswith("Intel XPU (Intel(R) Data Center GPU Max 1550)")


def test_cuda_and_cpu_only_traces_keep_their_names() -> None:
    cuda = DATA / "gpu" / "slow_step_none" / "rank0.pt.trace.json.gz"
    assert load_trace(cuda).device == "cuda"
    assert header(cuda).endswith("CUDA GPU (NVIDIA H200)")
    cpu = EXTERNAL / "cpu_only_rank34.pt.trace.json.gz"
    if cpu.is_file():
        assert load_trace(cpu).device == "cpu" and header(cpu).endswith("CPU only")
