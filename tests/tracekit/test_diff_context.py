"""`diff` says where BASE and NEW differ beyond their timings (device, world size, ranks, PyTorch,
CUDA and NCCL versions, profiled steps) and pairs each rank only with the same rank."""

from __future__ import annotations

import gzip
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tests.planted import EXTERNAL
from tracekit.commands.diff_report import print_diff
from tracekit.errors import UserError
from tracekit.pipeline.diff import diff_paths

DATA = Path(__file__).resolve().parents[1] / "data" / "gpu"
A100 = EXTERNAL / "a100_nccl_2ranks_rank0.json.gz"
needs_external = pytest.mark.skipif(not A100.is_file(), reason="external traces not available")


def copy_run(source: Path, target: Path, manifest: dict[str, Any] | None = None,
             **info: Any) -> Path:
    shutil.copytree(source, target)
    for path in target.glob("rank*.pt.trace.json.gz"):
        doc = json.loads(gzip.decompress(path.read_bytes()))
        doc["distributedInfo"].update(info)
        path.write_bytes(gzip.compress(json.dumps(doc).encode()))
    if manifest is not None:
        (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def test_runs_alike_in_everything_but_timing_show_no_difference() -> None:
    result, *_ = diff_paths(DATA / "sm_contention_eager", DATA / "sm_contention_triton",
                            progress=False)
    assert result.context["differences"] == []
    assert result.context["base"]["device"] == "CUDA GPU (NVIDIA H200)"
    assert result.context["base"]["nccl_version"] == "2.28.9"
    assert result.context["base"]["cuda_version"] == "13.0"
    assert result.context["base"]["ranks"] == [0, 1] and result.context["base"]["world_size"] == 2


@needs_external
def test_an_h200_run_against_an_a100_rank_says_how_they_differ_and_pairs_rank_0_only() -> None:
    result, *_ = diff_paths(DATA / "sm_contention_eager", A100, progress=False)
    assert result.context["differences"] == [
        "BASE and NEW differ in device: BASE CUDA GPU (NVIDIA H200), NEW CUDA GPU "
        "(NVIDIA A100-PG509-200)",
        "BASE and NEW differ in ranks: BASE ranks 0, 1 of 2, NEW rank 0 of 2",
        "BASE and NEW differ in NCCL version: BASE 2.28.9, NEW 2.17.1",
        "BASE and NEW differ in profiled steps: BASE steps 6-10 (5), NEW steps 4-6 (3)",
    ]
    assert result.base.ranks == result.new.ranks == [0]
    assert "rank 1 of BASE has no counterpart in the other run: left out of the comparison" \
        in result.notes
    rows = result.findings.resolved + result.findings.introduced + result.findings.common
    assert rows and all(row.ranks == [0] for row in rows)
    console = Console(file=io.StringIO(), width=300)
    print_diff(result, console=console)
    lines = console.file.getvalue().splitlines()
    assert lines[2] == result.context["differences"][0]  # right after the BASE and NEW lines


def test_world_size_and_versions_from_the_manifest_are_compared(tmp_path: Path) -> None:
    base = copy_run(DATA / "comm_gap_none", tmp_path / "base",
                    manifest={"torch_version": "2.11.0", "cuda_version": "13.0"})
    new = copy_run(DATA / "comm_gap_late", tmp_path / "new", world_size=8,
                   manifest={"torch_version": "2.13.0", "cuda_version": "13.0"})
    result, *_ = diff_paths(base, new, progress=False)
    differences = result.context["differences"]
    assert "BASE and NEW differ in world size: BASE 2, NEW 8" in differences
    assert not any("differ in ranks" in d for d in differences)  # ranks 0, 1 in both
    assert "BASE and NEW differ in PyTorch version: BASE 2.11.0, NEW 2.13.0" in differences
    assert not any("CUDA version" in d for d in differences)


def test_runs_without_a_rank_in_common_are_not_compared(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"BASE and NEW have no rank in common \(BASE rank 1, "
                                        r"NEW rank 0\): diff pairs each rank only with the same"):
        diff_paths(DATA / "comm_gap_late" / "rank1.pt.trace.json.gz",
                   DATA / "comm_gap_late" / "rank0.pt.trace.json.gz", progress=False)


def test_the_json_carries_the_context(tmp_path: Path) -> None:
    result, *_ = diff_paths(DATA / "comm_gap_none", DATA / "comm_gap_late", progress=False)
    data = json.loads(json.dumps(result.to_dict()))
    assert set(data["context"]) == {"base", "new", "differences"}
    assert data["context"]["new"]["profiled_steps"] == [6, 7, 8, 9, 10]
