"""The step accounting table: per rank and step, where the wall time went.

    wall_us = compute_us + exposed_comm_us + idle_us
    idle_us = sum of idle_<cause>_us over tracekit.accounting.causes.IDLE_CAUSES

`busy_us` is compute plus exposed communication (the union of all GPU work), `comm_us` all
communication and `hidden_comm_us` the part of it that compute hides. One row per GPU-side
step window (tracekit.accounting.sets), step -1 for a trace without ProfilerStep spans.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tracekit.accounting.causes import idle_split
from tracekit.accounting.events import IDLE_CAUSES
from tracekit.accounting.sets import gpu_sets
from tracekit.trace import Run, Trace

ACCOUNT_COLUMNS = ["rank", "step", "start_us", "wall_us", "busy_us", "compute_us", "comm_us",
                   "hidden_comm_us", "exposed_comm_us", "idle_us",
                   *[f"idle_{c}_us" for c in IDLE_CAUSES]]


def account_rank(trace: Trace) -> pd.DataFrame:
    """One row per step of one rank (ACCOUNT_COLUMNS)."""
    sets = gpu_sets(trace)
    if len(sets.steps) == 0:
        return pd.DataFrame(columns=ACCOUNT_COLUMNS)
    table = pd.DataFrame({
        "rank": trace.rank, "step": sets.steps, "start_us": sets.windows[0],
        "wall_us": sets.windows[1] - sets.windows[0],
        "busy_us": sets.per_window(sets.busy), "compute_us": sets.per_window(sets.compute),
        "comm_us": sets.per_window(sets.comm),
        "hidden_comm_us": sets.per_window(sets.hidden_comm),
        "exposed_comm_us": sets.per_window(sets.exposed_comm),
        "idle_us": sets.per_window(sets.idle)})
    by_cause = idle_split(trace).per_window(sets)
    for cause in IDLE_CAUSES:
        table[f"idle_{cause}_us"] = by_cause[cause].to_numpy()
    return table[ACCOUNT_COLUMNS]


def idle_sources(trace: Trace, top: int = 3) -> pd.DataFrame:
    """Per idle cause, the events/lines holding most of it: cause, name, file, line,
    line_exact, us (over all steps)."""
    p = idle_split(trace).pieces
    if p.empty:
        return pd.DataFrame(columns=["cause", "name", "file", "line", "line_exact", "us"])
    # src_line turns float where the pieces' frames were concatenated with lineless ones.
    p = p.assign(us=p["end"] - p["start"], file=p["src_file"].astype(str),
                 src_line=p["src_line"].fillna(-1).astype(np.int64),
                 src_line_exact=p["src_line_exact"].fillna(False).astype(bool))
    g = (p.groupby(["cause", "name", "file", "src_line", "src_line_exact"], sort=False)["us"]
         .sum().reset_index().rename(columns={"src_line": "line",
                                               "src_line_exact": "line_exact"}))
    g = g.sort_values(["cause", "us"], ascending=[True, False])
    return g.groupby("cause", sort=False).head(top).reset_index(drop=True)


def accounting_json(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The table as JSON rows: times rounded to 0.001 us, idle causes in one dict."""
    rows = []
    for r in table.itertuples(index=False):
        d = r._asdict()
        row = {k: (int(d[k]) if k in ("rank", "step") else round(float(d[k]), 3))
               for k in ACCOUNT_COLUMNS[:10]}
        row["idle_by_cause_us"] = {c: round(float(d[f"idle_{c}_us"]), 3) for c in IDLE_CAUSES}
        rows.append(row)
    return rows


SOURCE_COLUMNS = ["rank", "cause", "name", "file", "line", "line_exact", "us"]


@dataclass
class RunAccounting:
    """Every rank's step table (ACCOUNT_COLUMNS) and, per rank and idle cause, the events and
    source lines holding most of the idle time (SOURCE_COLUMNS, us over all steps)."""

    steps: pd.DataFrame
    sources: pd.DataFrame

    @classmethod
    def of_traces(cls, traces: list[Trace]) -> RunAccounting:
        # Thin traces (gpu_activity set) hold no events to account for.
        full = [t for t in traces if t.has_gpu and t.gpu_activity is None]
        tables = [account_rank(t) for t in full]
        sources = [idle_sources(t).assign(rank=t.rank) for t in full]
        return cls.combine([cls(t, s[SOURCE_COLUMNS]) for t, s in zip(tables, sources,
                                                                        strict=True)])

    @classmethod
    def combine(cls, parts: list[RunAccounting]) -> RunAccounting:
        steps = [p.steps for p in parts if len(p.steps)]
        sources = [p.sources for p in parts if len(p.sources)]
        return cls(
            pd.concat(steps, ignore_index=True) if steps else pd.DataFrame(
                columns=ACCOUNT_COLUMNS),
            pd.concat(sources, ignore_index=True) if sources else pd.DataFrame(
                columns=SOURCE_COLUMNS))

    def to_json(self) -> dict[str, Any]:
        """The accounting as JSON (`analyze --accounting FILE`, `profile`'s accounting.json)."""
        sources = [{"rank": int(r.rank), "cause": str(r.cause), "name": str(r.name),
                    "file": str(r.file) or None, "line": int(r.line) if r.line >= 0 else None,
                    "line_exact": bool(r.line_exact), "us": round(float(r.us), 3)}
                   for r in self.sources.itertuples(index=False)]
        return {"schema_version": 1, "steps": accounting_json(self.steps),
                "idle_sources": sources}


def run_accounting(run: Run) -> RunAccounting:
    """The run's accounting: computed once from its traces' events (or set by the per-rank
    analysis) and kept on the Run."""
    if run.accounting is None:
        run.accounting = RunAccounting.of_traces(run.traces)
    return run.accounting
