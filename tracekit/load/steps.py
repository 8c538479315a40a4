"""ProfilerStep spans of a trace: each step's CPU span and GPU span (`Trace.steps`)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from tracekit.load.keys import RowsByKey
from tracekit.names import name_matches

STEP_NAME = re.compile(r"^ProfilerStep#(\d{1,9})$")
"""A profiler step span; a number too big for the int32 step columns is not a step."""


STEP_COLUMNS = ["step", "cpu_ts", "cpu_end", "gpu_ts", "gpu_end"]


def build_steps(ops: pd.DataFrame, annotations: pd.DataFrame, kernels: pd.DataFrame,
                gpu_mem: pd.DataFrame, launches: pd.DataFrame) -> pd.DataFrame:
    """One row per ProfilerStep#N: CPU span, and GPU span.

    The GPU span is the GPU-side ProfilerStep annotation when the trace has one; otherwise the
    first..last kernel (or memcpy/memset) whose launch lies inside the CPU span. Kernel times are
    never compared with CPU spans: the GPU runs behind the CPU.
    """
    cpu_steps = _step_spans(pd.concat([
        _step_spans(ops),
        _step_spans(annotations.loc[annotations["side"] == "cpu"]),
    ], ignore_index=True))
    if cpu_steps.empty:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == "step" else "float64")
                             for c in STEP_COLUMNS})
    gpu_steps = _step_spans(annotations.loc[annotations["side"] == "gpu", ["name", "ts", "end"]])
    steps = cpu_steps.rename(columns={"ts": "cpu_ts", "end": "cpu_end"}).merge(
        gpu_steps.rename(columns={"ts": "gpu_ts", "end": "gpu_end"}), on="step", how="left"
    )
    missing = steps["gpu_ts"].isna().to_numpy()
    if missing.any():
        fallback = gpu_spans_from_launches(steps, kernels, gpu_mem, launches)
        steps.loc[missing, "gpu_ts"] = fallback["gpu_ts"].to_numpy()[missing]
        steps.loc[missing, "gpu_end"] = fallback["gpu_end"].to_numpy()[missing]
    steps["step"] = steps["step"].astype(np.int64)
    return steps[STEP_COLUMNS].reset_index(drop=True)


def _step_spans(rows: pd.DataFrame) -> pd.DataFrame:
    """(step, ts, end) of rows named ProfilerStep#N (or already having `step`), one row per
    N (widest span)."""
    if "step" in rows:
        found = rows[["step", "ts", "end"]]
    else:
        is_step = name_matches(rows["name"], STEP_NAME)
        found = rows.loc[is_step, ["ts", "end"]].copy()
        found["step"] = (
            rows.loc[is_step, "name"].astype(object).str.extract(STEP_NAME, expand=False)
            .astype(np.int64)
        )
    if found.empty:
        return pd.DataFrame({"step": pd.Series(dtype="int64"), "ts": pd.Series(dtype="float64"),
                             "end": pd.Series(dtype="float64")})
    spans = found.groupby("step", as_index=False).agg(ts=("ts", "min"), end=("end", "max"))
    return spans.sort_values("ts", ignore_index=True)


def step_of_times(steps_ts: np.ndarray, steps_end: np.ndarray, step_numbers: np.ndarray,
                  t: np.ndarray) -> np.ndarray:
    """Step number whose [ts, end] contains each time t (-1 if none). Steps do not overlap."""
    out = np.full(len(t), -1, dtype=np.int64)
    if len(steps_ts) == 0 or len(t) == 0:
        return out
    order = np.argsort(steps_ts, kind="stable")
    starts, ends, numbers = steps_ts[order], steps_end[order], step_numbers[order]
    pos = np.searchsorted(starts, t, side="right") - 1
    ok = pos >= 0
    ok[ok] = t[ok] <= ends[pos[ok]]
    out[ok] = numbers[pos[ok]]
    return out


def gpu_spans_from_launches(steps: pd.DataFrame, kernels: pd.DataFrame, gpu_mem: pd.DataFrame,
                            launches: pd.DataFrame) -> pd.DataFrame:
    """Per step, first start and last end of the GPU work launched inside its CPU span
    (NaN for a step that launched none), indexed like `steps`."""
    def column(name: str, dtype: type) -> np.ndarray:
        return np.concatenate([kernels[name].to_numpy(dtype=dtype),
                               gpu_mem[name].to_numpy(dtype=dtype)])

    ts, end = column("ts", np.float64), column("end", np.float64)
    correlation = column("correlation", np.int64)
    # The launch of each GPU row: the first launch call with its correlation id.
    launch_corr = launches["correlation"].to_numpy(dtype=np.int64)
    launch = RowsByKey.first(launch_corr, np.zeros(len(launch_corr))).lookup(correlation)
    launched = launch >= 0
    launch_ts = np.full(len(ts), -np.inf)
    launch_ts[launched] = launches["ts"].to_numpy(dtype=np.float64)[launch[launched]]
    numbers = steps["step"].to_numpy()
    step = step_of_times(steps["cpu_ts"].to_numpy(), steps["cpu_end"].to_numpy(), numbers,
                         launch_ts)
    # First start and last end per step number, then on every row of that number.
    distinct, row_number = np.unique(numbers, return_inverse=True)
    inside = step >= 0
    of_step = np.searchsorted(distinct, step[inside])
    gpu_ts = np.full(len(distinct), np.inf)
    gpu_end = np.full(len(distinct), -np.inf)
    np.fmin.at(gpu_ts, of_step, ts[inside])
    np.fmax.at(gpu_end, of_step, end[inside])
    none = np.bincount(of_step, minlength=len(distinct)) == 0
    gpu_ts[none] = gpu_end[none] = np.nan
    return pd.DataFrame({"gpu_ts": gpu_ts[row_number], "gpu_end": gpu_end[row_number]},
                        index=steps.index)
