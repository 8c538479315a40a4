"""One rank's share of a comparison, small enough to send from the rank's own process."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from tracekit.compare.comm import comm_per_rank
from tracekit.compare.tables import (
    kernel_table,
    labels_table,
    launching_op_table,
    ops_table,
)
from tracekit.trace import Trace

TABLES = ("kernels", "kernel_categories", "kernels_by_launching_op", "cpu_ops", "cpu_labels",
          "gpu_labels")


@dataclass
class RankTotals:
    """One rank's share of a diff: per-name counts and summed (not per-step) times, and its
    NCCL time. Small (one row per distinct name), so a rank's process can compute it and send
    it on (tracekit.pipeline.rankwise) instead of its frames."""

    rank: int
    tables: dict[str, pd.DataFrame]
    comm: tuple[float, float] | None


def rank_totals(trace: Trace) -> RankTotals:
    traces = [trace]
    tables = {
        "kernels": kernel_table(traces, "name", per=1),
        "kernel_categories": kernel_table(traces, "category", per=1),
        "kernels_by_launching_op": launching_op_table(traces, per=1),
        "cpu_ops": ops_table(traces, per=1),
        "cpu_labels": labels_table(traces, "cpu", per=1),
        "gpu_labels": labels_table(traces, "gpu", per=1),
    }
    return RankTotals(trace.rank, tables, comm_per_rank(traces).get(trace.rank))


def combined_table(totals: list[RankTotals], name: str, per: int) -> pd.DataFrame:
    """The ranks' tables summed per name, per step: what one table over all ranks gives (the
    example name is the first rank's, in rank order)."""
    frames = [t.tables[name] for t in sorted(totals, key=lambda t: t.rank)
              if not t.tables[name].empty]
    if not frames:
        return pd.DataFrame(columns=["count", "us", "example"])
    grouped = pd.concat(frames).groupby(level=0, sort=False)
    return pd.DataFrame({"count": grouped["count"].sum(), "us": grouped["us"].sum() / per,
                         "example": grouped["example"].first()})
