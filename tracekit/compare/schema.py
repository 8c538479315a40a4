"""The comparison of two runs as data, and its JSON schema (`RunDiff.to_dict()`,
`schema_version` 1; times in microseconds unless the name says `_ms`; `null` where a value
cannot be computed):

    {
      "schema_version": 1,
      "base": RunInfo, "new": RunInfo,
        RunInfo = {"path": str, "ranks": [int], "profiled_steps": int,
                   "step_time_source": str, "findings": int}
      "rank": int | null,                         # the --rank filter, or null for all ranks
      "steps": {
        "source": "steps.jsonl" | "gpu ProfilerStep" | "cpu ProfilerStep" | null,
        "base": Dist | null, "new": Dist | null,
          Dist = {"n": int, "mean_ms", "median_ms", "std_ms", "min_ms", "p90_ms", "max_ms",
                  "values_ms": [float]}
        "delta_mean_ms", "delta_median_ms", "pct_change_mean": float | null,
        "welch_t", "welch_p", "mannwhitney_u", "mannwhitney_p": float | null,
        "note": str
      },
      "kernel_categories": [Row], "kernels": [Row], "kernels_by_launching_op": [Row],
      "cpu_ops": [Row], "cpu_labels": [Row], "gpu_labels": [Row],
        Row = {"name": str,               # the matching key (normalised name)
               "example": str,            # one raw name behind the key
               "base_count": int, "new_count": int,
               "base_us": float, "new_us": float,   # per profiled step and rank
               "delta_us": float, "pct_change": float | null,
               "status": "both" | "appeared" | "disappeared"}
        rows sorted by |delta_us|, largest first
      "kernels_appeared": [str], "kernels_disappeared": [str],
      "findings": {
        "resolved": [FindingRow],  # in BASE only
        "introduced": [FindingRow],  # in NEW only
        "common": [FindingRow],
          FindingRow = {"kind", "source": str | null, "culprit": str | null,
                        "title": str, "ranks": [int],
                        "base_count": int, "new_count": int,
                        "base_cost_us": float, "new_cost_us": float, "delta_cost_us": float,
                        "file": str | null,             # the cause's source file
                        "base_line", "new_line": int | null,  # the statement's line in each
                            # run (for a finding of one run only: where its line is, unedited,
                            # in the other; null when edited or the code is unreadable)
                        "line_edited": bool | null}     # the line changed between the runs
                            # (for "common": the BASE line); null: code of a run unreadable
      },
      "comm": [CommRow],
        CommRow = {"rank": int, "base_nccl_us", "new_nccl_us", "base_exposed_us",
                   "new_exposed_us", "delta_exposed_us": float | null}   # per profiled step
      "notes": [str],
      "context": {
        "base": Context, "new": Context,
          Context = {"device": str, "world_size": int | null, "ranks": [int],
                     "torch_version", "cuda_version", "nccl_version": str | null,
                     "profiled_steps": [int]}
        "differences": [str]     # "BASE and NEW differ in device: BASE ..., NEW ...", ...
      }
    }

`kernels_by_launching_op`: GPU time of the kernels launched under each CPU op name, counting a
kernel once for every DISTINCT op name on its launch stack (so `aten::select_backward` owns the
fill it launches through `aten::zero_`); needs a linked trace.
`cpu_ops`: inclusive CPU time of each op name. `cpu_labels`/`gpu_labels`: record_function spans
on the CPU and their GPU-side copies, ProfilerStep spans excluded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 1


@dataclass
class Distribution:
    """Step times of one run, in milliseconds."""

    n: int
    mean_ms: float
    median_ms: float
    std_ms: float
    min_ms: float
    p90_ms: float
    max_ms: float
    values_ms: list[float]

    @classmethod
    def of(cls, values_ms: Iterable[float]) -> Distribution | None:
        arr = np.asarray([v for v in values_ms if v is not None and math.isfinite(v)], float)
        if arr.size == 0:
            return None
        return cls(n=int(arr.size), mean_ms=float(arr.mean()), median_ms=float(np.median(arr)),
                   std_ms=float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
                   min_ms=float(arr.min()), p90_ms=float(np.percentile(arr, 90)),
                   max_ms=float(arr.max()), values_ms=[float(v) for v in arr])


@dataclass
class StepComparison:
    source: str | None
    base: Distribution | None
    new: Distribution | None
    delta_mean_ms: float | None = None
    delta_median_ms: float | None = None
    pct_change_mean: float | None = None
    welch_t: float | None = None
    welch_p: float | None = None
    mannwhitney_u: float | None = None
    mannwhitney_p: float | None = None
    note: str = ""


@dataclass
class Row:
    """One name compared across runs (times per profiled step and rank)."""

    name: str
    example: str
    base_count: int
    new_count: int
    base_us: float
    new_us: float
    delta_us: float
    pct_change: float | None
    status: str


@dataclass
class FindingRow:
    kind: str
    source: str | None
    culprit: str | None
    title: str
    ranks: list[int]
    base_count: int
    new_count: int
    base_cost_us: float
    new_cost_us: float
    delta_cost_us: float
    file: str | None = None
    base_line: int | None = None
    new_line: int | None = None
    line_edited: bool | None = None


@dataclass
class FindingsDiff:
    resolved: list[FindingRow] = field(default_factory=list)
    introduced: list[FindingRow] = field(default_factory=list)
    common: list[FindingRow] = field(default_factory=list)


@dataclass
class CommRow:
    """Per rank NCCL kernel time and exposed (not overlapped by compute) NCCL time, per step."""

    rank: int
    base_nccl_us: float | None
    new_nccl_us: float | None
    base_exposed_us: float | None
    new_exposed_us: float | None
    delta_exposed_us: float | None


@dataclass
class RunInfo:
    path: str
    ranks: list[int]
    profiled_steps: int
    step_time_source: str | None
    findings: int


@dataclass
class RunDiff:
    base: RunInfo
    new: RunInfo
    rank: int | None
    steps: StepComparison
    kernel_categories: list[Row]
    kernels: list[Row]
    kernels_by_launching_op: list[Row]
    cpu_ops: list[Row]
    cpu_labels: list[Row]
    gpu_labels: list[Row]
    kernels_appeared: list[str]
    kernels_disappeared: list[str]
    findings: FindingsDiff
    comm: list[CommRow]
    notes: list[str] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON form documented in the module docstring (NaN becomes null)."""
        return _clean(asdict(self))

    def row(self, table: str, name: str) -> Row | None:
        """The row of `name` (a matching key) in one of the Row tables, or None."""
        for row in getattr(self, table):
            if row.name == name:
                return row
        return None


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, recursively."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
