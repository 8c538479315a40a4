"""Per-name tables of one or more ranks: count and time per profiled step of every kernel, kernel
category, launching op, CPU op and record_function label, and two such tables joined into Rows."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from tracekit.compare.schema import Row
from tracekit.link.ancestry import launching_op_pairs
from tracekit.names import normalize_each, normalize_kernel_name, normalize_label
from tracekit.trace import Trace

_STEP_LABEL = re.compile(r"^ProfilerStep#\d+$")


def step_count(traces: list[Trace]) -> int:
    """Denominator of the per-step tables: ProfilerStep spans over the traces (>= 1 per rank)."""
    return sum(max(len(t.steps), 1) for t in traces)


def _concat(traces: list[Trace], frame: str) -> pd.DataFrame:
    frames = [getattr(t, frame).assign(rank=t.rank) for t in traces]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _aggregate(frame: pd.DataFrame, key: pd.Series, raw: pd.Series, value: pd.Series,
               per: int) -> pd.DataFrame:
    """count, per-step time and one raw example name per key."""
    if frame.empty:
        return pd.DataFrame(columns=["count", "us", "example"])
    grouped = pd.DataFrame({"key": key.to_numpy(), "raw": raw.astype(str).to_numpy(),
                            "value": value.to_numpy(dtype=np.float64)}).groupby("key", sort=False)
    out = pd.DataFrame({"count": grouped.size(), "us": grouped["value"].sum() / per,
                        "example": grouped["raw"].first()})
    return out


def compare_tables(base: pd.DataFrame, new: pd.DataFrame) -> list[Row]:
    """Outer-join two aggregates into Rows sorted by |delta|."""
    joined = base.add_suffix("_b").join(new.add_suffix("_n"), how="outer")
    rows: list[Row] = []
    if joined.empty:
        return rows
    joined["count_b"] = joined["count_b"].fillna(0).astype(int)
    joined["count_n"] = joined["count_n"].fillna(0).astype(int)
    joined["us_b"] = joined["us_b"].astype(float).fillna(0.0)
    joined["us_n"] = joined["us_n"].astype(float).fillna(0.0)
    joined["delta"] = joined["us_n"] - joined["us_b"]
    joined = joined.reindex(joined["delta"].abs().sort_values(ascending=False, kind="stable")
                            .index)
    for key, rec in joined.iterrows():  # one row per distinct name (hundreds), not per event
        status = ("appeared" if rec["count_b"] == 0 else
                  "disappeared" if rec["count_n"] == 0 else "both")
        example = rec["example_b"] if isinstance(rec["example_b"], str) else rec["example_n"]
        pct = (100.0 * rec["delta"] / rec["us_b"]) if rec["us_b"] > 0 else None
        rows.append(Row(name=str(key), example=str(example), base_count=int(rec["count_b"]),
                        new_count=int(rec["count_n"]), base_us=float(rec["us_b"]),
                        new_us=float(rec["us_n"]), delta_us=float(rec["delta"]),
                        pct_change=pct, status=status))
    return rows


def kernel_table(traces: list[Trace], by: str, per: int | None = None) -> pd.DataFrame:
    kernels = _concat(traces, "kernels")
    per = per or step_count(traces)
    if kernels.empty:
        return _aggregate(kernels, kernels.get("name", pd.Series()), pd.Series(), pd.Series(), 1)
    if by == "category":
        key = kernels["category"].fillna("other").astype(str)
        return _aggregate(kernels, key, key, kernels["dur"], per)
    key = normalize_each(kernels["name"], normalize_kernel_name)
    return _aggregate(kernels, key, kernels["name"], kernels["dur"], per)


def launching_op_table(traces: list[Trace], per: int | None = None) -> pd.DataFrame:
    per = per or step_count(traces)
    parts = []
    for trace in traces:
        pairs = launching_op_pairs(trace)
        if pairs.empty:
            continue
        dur = trace.kernels["dur"].to_numpy(dtype=np.float64)[pairs["kernel"].to_numpy()]
        parts.append(pd.DataFrame({"op": pairs["op"].to_numpy(), "dur": dur}))
    if not parts:
        return pd.DataFrame(columns=["count", "us", "example"])
    both = pd.concat(parts, ignore_index=True)
    key = normalize_each(both["op"], normalize_label)
    return _aggregate(both, key, both["op"], both["dur"], per)


def ops_table(traces: list[Trace], per: int | None = None) -> pd.DataFrame:
    ops = _concat(traces, "ops")
    if ops.empty:
        return pd.DataFrame(columns=["count", "us", "example"])
    key = normalize_each(ops["name"], normalize_label)
    return _aggregate(ops, key, ops["name"], ops["dur"], per or step_count(traces))


def labels_table(traces: list[Trace], side: str, per: int | None = None) -> pd.DataFrame:
    ann = _concat(traces, "annotations")
    if ann.empty:
        return pd.DataFrame(columns=["count", "us", "example"])
    names = ann["name"].astype(str)
    ann = ann[(ann["side"] == side) & ~names.str.match(_STEP_LABEL)]
    if ann.empty:
        return pd.DataFrame(columns=["count", "us", "example"])
    key = normalize_each(ann["name"], normalize_label)
    return _aggregate(ann, key, ann["name"], ann["dur"], per or step_count(traces))
