"""The step-accounting summary at the top of every report: where each rank's step time went.

Per rank, the mean over its GPU-side steps of wall = compute + exposed communication + GPU idle
(and the communication hidden under compute); then the idle split by what the CPU was doing,
with the lines holding most of it; then every step that is at least `IDLE_STEP_FRAC` idle,
with where that idle went (so no report shows such a step without saying it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracekit.accounting.events import CAUSE_LABELS, IDLE_CAUSES
from tracekit.accounting.table import RunAccounting
from tracekit.durations import format_us

IDLE_STEP_FRAC = 0.30
"""A step at least this idle is listed with its idle causes (the issue's bar)."""
MAX_RANK_ROWS = 8
"""Above this many ranks the table shows min / median / max over ranks instead."""
MAX_IDLE_STEPS = 6


def pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.0f}%" if whole > 0 else "-"


def rank_rows(steps: pd.DataFrame) -> pd.DataFrame:
    """Mean per step of each rank."""
    cols = ["wall_us", "compute_us", "hidden_comm_us", "exposed_comm_us", "idle_us",
            *[f"idle_{c}_us" for c in IDLE_CAUSES]]
    g = steps.groupby("rank", sort=True)
    rows = g[cols].mean()
    rows["steps"] = g.size()
    return rows.reset_index()


def summary_lines(acc: RunAccounting) -> list[str]:
    """Plain lines of the summary (no markup): the terminal and Markdown reports print them."""
    steps = acc.steps
    if steps is None or len(steps) == 0:
        return []
    per_rank = rank_rows(steps)
    no_steps = bool((steps["step"] < 0).all())
    unit = "the traced window" if no_steps else "mean per GPU-side step"
    lines = [f"Step accounting ({unit}; wall = compute + exposed comm + GPU idle)",
             f"  {'rank':>6} {'steps':>5} {'wall':>9} {'compute':>15} {'comm hidden':>11} "
             f"{'comm exposed':>15} {'GPU idle':>15}"]
    shown = per_rank
    if len(per_rank) > MAX_RANK_ROWS:
        order = per_rank.sort_values("wall_us")
        picks = [order.iloc[0], order.iloc[len(order) // 2], order.iloc[-1]]
        shown = pd.DataFrame(picks)
        labels = ["min", "median", "max"]
    else:
        labels = [str(int(r)) for r in per_rank["rank"]]
    for label, r in zip(labels, shown.itertuples(index=False), strict=True):
        wall = float(r.wall_us)
        lines.append(
            f"  {label:>6} {int(r.steps):>5} {format_us(wall):>9} "
            f"{format_us(r.compute_us):>9} {pct(r.compute_us, wall):>5} "
            f"{format_us(r.hidden_comm_us):>11} "
            f"{format_us(r.exposed_comm_us):>9} {pct(r.exposed_comm_us, wall):>5} "
            f"{format_us(r.idle_us):>9} {pct(r.idle_us, wall):>5}")
    causes = per_rank[[f"idle_{c}_us" for c in IDLE_CAUSES]].mean()
    total_idle = float(per_rank["idle_us"].mean())
    if total_idle > 0:
        by_cause = {c: float(causes[f"idle_{c}_us"]) for c in IDLE_CAUSES}
        lines.append("  GPU idle by what the CPU was doing (mean over ranks, per step): "
                     + ", ".join(cause_parts(by_cause, 0.01 * total_idle)))
        lines += top_sources(acc, n_steps=float(per_rank["steps"].mean()))
    lines += idle_steps(acc)
    return lines


def cause_parts(by_cause: dict[str, float], least_us: float) -> list[str]:
    """Idle causes from the largest, those of at least `least_us` each; the rest together as
    "other", so that the parts add up to the idle time they split."""
    ordered = sorted(by_cause.items(), key=lambda kv: -kv[1])
    parts = [f"{CAUSE_LABELS[c]} {format_us(v)}" for c, v in ordered if v >= least_us]
    rest = sum(v for _, v in ordered if v < least_us)
    if rest >= 0.5:  # what rounds to "0 us" says nothing
        parts.append(f"other {format_us(rest)}")
    return parts


def top_sources(acc: RunAccounting, n_steps: float, top: int = 3) -> list[str]:
    """The events/lines holding the most idle time, over all ranks."""
    s = acc.sources
    if s is None or len(s) == 0:
        return []
    s = s[~s["cause"].isin(["queued", "unknown"])]
    g = (s.groupby(["cause", "name", "file", "line", "line_exact"], sort=False)["us"].sum()
         .sort_values(ascending=False).head(top))
    n_ranks = max(int(acc.steps["rank"].nunique()), 1)
    out = []
    for (cause, name, file, line, exact), us in g.items():
        where = f" at {file}:{int(line)}{'' if exact else '~'}" if file and line >= 0 else ""
        label = f" {name}" if name else ""
        out.append(f"    {CAUSE_LABELS[cause]}:{label}{where}: "
                   f"{format_us(float(us) / max(n_steps, 1) / n_ranks)} per step")
    return out


def idle_steps(acc: RunAccounting) -> list[str]:
    """Steps at least IDLE_STEP_FRAC idle, each with its largest idle causes."""
    steps = acc.steps
    wall = steps["wall_us"].to_numpy(np.float64)
    heavy = steps[steps["idle_us"].to_numpy(np.float64) >= IDLE_STEP_FRAC * wall]
    if heavy.empty:
        return []
    out = [f"  Steps at least {IDLE_STEP_FRAC:.0%} idle ({len(heavy)}):"]
    for r in heavy.sort_values("idle_us", ascending=False).head(MAX_IDLE_STEPS).itertuples():
        by_cause = {c: float(getattr(r, f"idle_{c}_us")) for c in IDLE_CAUSES}
        parts = cause_parts(by_cause, 0.05 * r.idle_us)
        step = "-" if r.step < 0 else str(int(r.step))
        out.append(f"    rank {int(r.rank)} step {step}: {format_us(r.idle_us)} of "
                   f"{format_us(r.wall_us)} idle ({pct(r.idle_us, r.wall_us)}): "
                   + ", ".join(parts))
    if len(heavy) > MAX_IDLE_STEPS:
        out.append(f"    ... and {len(heavy) - MAX_IDLE_STEPS} more")
    return out
