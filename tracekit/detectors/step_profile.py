"""What a step spent its time on, label by label, and which label holds a slow step's excess
over a reference step (slow_step's attribution).

Per step: time per record_function annotation, op self time, CUDA runtime call, kernel, and GPU
idle time; a slow step's profile minus the reference step's gives each label's excess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tracekit.intervals import busy_us, window_rows
from tracekit.trace import Trace

COMPILE_PATTERN = re.compile(r"torch-compiled region|compiledfunction|dynamo|inductor|compile",
                             re.IGNORECASE)
SYNC_PATTERN = re.compile(r"synchronize|wait|barrier|_local_scalar_dense|aten::item\b",
                          re.IGNORECASE)
# Among candidates whose excess is near the largest, the most specific explanation wins: a named
# phase first, then an op/runtime call (self time), then an annotation (inclusive, so it also
# holds its children's excess), a kernel, and GPU idle last (a symptom of the others).
PRIORITY = {"data wait": 0, "compilation": 1, "synchronisation": 2, "cpu op": 3,
            "annotation": 4, "gpu kernel": 5, "gpu idle": 6}
NEAR_MAX = 0.8


@dataclass
class Candidate:
    """One label (op, annotation, runtime call, kernel, GPU idle) and its excess over median."""

    label: str
    category: str
    excess_us: float
    row: int = -1
    frame: str = ""
    """Which frame `row` is in: ops | annotations | launches | kernels."""


def categorise(label: str, default: str) -> str:
    if label.startswith("data:"):
        return "data wait"
    if COMPILE_PATTERN.search(label):
        return "compilation"
    if SYNC_PATTERN.search(label):
        return "synchronisation"
    return default


def op_self_time(trace: Trace) -> pd.Series:
    """Each op's time not spent in child ops or in CUDA runtime calls it made.

    Runtime calls carry their op's External id, so a sync inside an op is charged to the call
    (named cudaDeviceSynchronize...) rather than to the op around it.
    """
    ops = trace.ops
    child = _sum_by(ops["parent"], ops["dur"])
    launches = trace.launches
    # -1 is "no External id", not a shared one.
    runtime = _sum_by(launches["external_id"], launches["dur"])
    self_time = ops["dur"] - child.reindex(ops.index).fillna(0.0).to_numpy()
    self_time -= ops["external_id"].map(runtime).fillna(0.0).to_numpy()
    return self_time.clip(lower=0.0)


def _sum_by(keys: pd.Series, values: pd.Series) -> pd.Series:
    """Sum of `values` per key, keys < 0 left out (only the two columns are read: a rank's
    frames hold millions of rows)."""
    has = keys.to_numpy() >= 0
    return pd.Series(values.to_numpy()[has]).groupby(keys.to_numpy()[has]).sum()


EMPTY_COLUMNS = ["total", "row"]


def sum_by_window(frame: pd.DataFrame, values: np.ndarray, lo: np.ndarray,
                  hi: np.ndarray) -> list[pd.DataFrame]:
    """Per window [lo, hi) of event starts: time per name (`total`) and the row of its longest
    instance (`row`, to point at one), indexed by name in sorted order; one groupby for all
    windows."""
    out = [pd.DataFrame(columns=EMPTY_COLUMNS) for _ in range(len(lo))]
    if frame.empty or not len(lo):
        return out
    window, rows = window_rows(frame["ts"].to_numpy(dtype=np.float64), lo, hi)
    if not len(rows):
        return out
    data = pd.DataFrame({"window": window, "name": frame["name"].to_numpy()[rows],
                         "v": values[rows], "row": frame.index.to_numpy()[rows]})
    grouped = data.groupby(["window", "name"])
    table = pd.DataFrame({"total": grouped["v"].sum(),
                          "row": data["row"].to_numpy()[grouped["v"].idxmax().to_numpy()]})
    for w, part in table.groupby(level="window", sort=False):
        out[int(w)] = part.droplevel("window")
    return out


def step_profiles(trace: Trace, rows: pd.DataFrame,
                  self_time: pd.Series) -> list[dict[str, pd.DataFrame]]:
    """Time per label inside each step of `rows` (step_table rows): annotations, op self
    time, runtime calls, kernels and GPU idle; every frame is split by step in one pass."""
    c0, c1 = rows["cpu_ts"].to_numpy(np.float64), rows["cpu_end"].to_numpy(np.float64)
    has_gpu = ~np.isnan(rows["gpu_us"].to_numpy(np.float64))
    g0 = np.where(has_gpu, rows["gpu_from"].to_numpy(np.float64), np.nan)
    g1 = np.where(has_gpu, rows["gpu_end"].to_numpy(np.float64), np.nan)
    annotations = trace.annotations
    cpu_ann = annotations[(annotations["side"] == "cpu")
                          & ~annotations["name"].str.startswith("ProfilerStep#")]
    ops, launches, kernels = trace.ops, trace.launches, trace.kernels
    tables = {"annotations": sum_by_window(cpu_ann, cpu_ann["dur"].to_numpy(), c0, c1),
              "ops": sum_by_window(ops, self_time.to_numpy(), c0, c1),
              "launches": sum_by_window(launches, launches["dur"].to_numpy(), c0, c1),
              "kernels": sum_by_window(kernels, kernels["dur"].to_numpy(), g0, g1)}
    order = np.argsort(kernels["ts"].to_numpy(np.float64), kind="stable")
    k_ts = kernels["ts"].to_numpy(np.float64)[order]
    k_end = kernels["end"].to_numpy(np.float64)[order]
    profiles = []
    for i, gpu_us in enumerate(rows["gpu_us"].to_numpy(np.float64)):
        out = {name: tables[name][i] for name in ("annotations", "ops", "launches")}
        if has_gpu[i]:
            out["kernels"] = tables["kernels"][i]
            idle = gpu_us - busy_us(k_ts, k_end, g0[i], g1[i])
            out["idle"] = pd.DataFrame({"total": [idle], "row": [-1]}, index=["GPU idle"])
        profiles.append(out)
    return profiles


def excess_candidates(slow: dict[str, pd.DataFrame],
                      ref: dict[str, pd.DataFrame]) -> list[Candidate]:
    """Per label, slow-step time minus reference-step time, largest first."""
    defaults = {"annotations": "annotation", "ops": "cpu op", "launches": "cpu op",
                "kernels": "gpu kernel", "idle": "gpu idle"}
    out: list[Candidate] = []
    for frame, table in slow.items():
        base = ref.get(frame, pd.DataFrame(columns=["total", "row"]))["total"]
        excess = table["total"] - base.reindex(table.index).fillna(0.0)
        for label, value in excess[excess > 0].items():
            category = "gpu idle" if frame == "idle" else categorise(str(label), defaults[frame])
            if frame == "kernels" and category != "gpu kernel":
                category = "gpu kernel"  # a kernel named "...wait..." is still GPU work
            out.append(Candidate(str(label), category, float(value),
                                 int(table.at[label, "row"]), frame))
    return sorted(out, key=lambda c: -c.excess_us)


def choose(candidates: list[Candidate]) -> Candidate | None:
    """The most specific candidate among those near the largest excess (see PRIORITY)."""
    if not candidates:
        return None
    top = candidates[0].excess_us
    near = [c for c in candidates if c.excess_us >= NEAR_MAX * top]
    return min(near, key=lambda c: (PRIORITY[c.category], -c.excess_us))
