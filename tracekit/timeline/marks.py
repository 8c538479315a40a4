"""Findings on the timeline: the culprit's and victims' bars outlined, the finding's window
banded, a numbered badge and a box with its title and cost."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from tracekit.durations import ms_or_us
from tracekit.finding import Finding
from tracekit.names import cut_to
from tracekit.timeline.lanes import Timeline
from tracekit.timeline.rows import escape

CULPRIT_COLOUR = "#000000"
VICTIM_COLOUR = "#e6007e"
FINDING_BAND = "rgba(255, 200, 0, 0.22)"
# Outlines drawn per finding: enough to see the pattern, few enough to stay SVG-cheap.
MAX_OUTLINES_PER_FINDING = 40
SEVERITY_COLOUR = {"high": "#b30000", "medium": "#c76a00", "low": "#555555"}


@dataclass
class FindingMark:
    """Where one finding sits on the figure, for outlines, annotation and the table's zoom."""

    index: int
    finding: Finding
    x0: float
    x1: float
    y0: float
    y1: float
    culprits: pd.DataFrame = field(default_factory=pd.DataFrame)
    victims: pd.DataFrame = field(default_factory=pd.DataFrame)
    note: int = -1
    """Index in layout.annotations of the finding's title box (-1: none)."""

    def zoom(self) -> dict[str, list[float]]:
        """Axis ranges that frame the finding with context on both sides."""
        xs = [self.x0, self.x1]
        for frame in (self.culprits, self.victims):
            if len(frame):
                xs += [float(frame["x0"].min()), float(frame["x1"].max())]
        lo, hi = min(xs), max(xs)
        pad = max((hi - lo) * 0.6, 0.05)
        return {"x": [lo - pad, hi + pad], "y": [self.y1, self.y0]}


def finding_rows(bars: pd.DataFrame, f: Finding, lo_ms: float, hi_ms: float) -> pd.DataFrame:
    """The culprit's bars: kernels named like the finding's culprit on its stream and rank.

    Those inside the finding's window; when the window holds none (a merged finding's window
    is its first occurrence, which --step may cut away), every occurrence on the view.
    """
    kernel = f.culprit.kernel if f.culprit else None
    if not kernel:
        return bars.iloc[0:0]
    mine = bars[(bars["rank"] == f.rank) & (bars["name"] == kernel)]
    if f.culprit.stream is not None:
        mine = mine[mine["stream"] == f.culprit.stream]
    inside = mine[(mine["x1"] >= lo_ms) & (mine["x0"] <= hi_ms)]
    return (inside if len(inside) else mine).head(MAX_OUTLINES_PER_FINDING)


def victim_rows(bars: pd.DataFrame, f: Finding, lo_ms: float, hi_ms: float,
                culprits: pd.DataFrame) -> pd.DataFrame:
    """The work the finding hurts: named in evidence, else the NCCL kernels it touches.

    Detectors may name it (`evidence.victim_kernel`/`victim_stream`, or sm_contention's
    `nccl_kernel`); otherwise, for findings about communication (sm_contention, comm_gap),
    the NCCL kernels on that rank overlapping the window (a comm gap's window is the gap: the
    collectives on either edge touch it).
    """
    ev = f.evidence or {}
    mine = bars[(bars["rank"] == f.rank) & (bars["kind"] == "kernel")]
    near = mine[(mine["x1"] >= lo_ms - 1e-6) & (mine["x0"] <= hi_ms + 1e-6)]
    named = ev.get("victim_kernel") or ev.get("nccl_kernel")
    if isinstance(named, str) and named and (near["name"] == named).any():
        near = near[near["name"] == named]
        if ev.get("victim_stream") is not None:
            near = near[near["stream"] == ev["victim_stream"]]
    elif f.kind in ("sm_contention", "comm_gap"):
        near = near[near["is_nccl"]]
    else:
        return bars.iloc[0:0]
    return near[~near.index.isin(culprits.index)].head(MAX_OUTLINES_PER_FINDING)


def finding_marks(tl: Timeline, findings: list[Finding]) -> list[FindingMark]:
    """Place each finding of a shown rank on the aligned axis; drop those outside the view.

    A finding whose own window is outside the drawn range (a merged finding, drawn with
    --step of another occurrence) is placed on its culprit's occurrences in view instead.
    """
    marks: list[FindingMark] = []
    shown = set(tl.lanes["rank"])
    for i, f in enumerate(findings):
        if f.rank not in shown:
            continue
        mine = tl.bars[tl.bars["rank"] == f.rank]
        if mine.empty:
            continue
        lo, hi = float(mine["x0"].min()), float(mine["x1"].max())
        if tl.window_ms:
            lo, hi = max(lo, tl.window_ms[0]), min(hi, tl.window_ms[1])
        x0 = float(tl.to_ms(f.rank, f.start_us))
        x1 = float(tl.to_ms(f.rank, f.start_us + max(f.dur_us, 0.0)))
        culprits = finding_rows(mine, f, x0, x1)
        if x1 < lo or x0 > hi:  # its window is not drawn: use its culprit's occurrences
            culprits = culprits[(culprits["x1"] >= lo) & (culprits["x0"] <= hi)]
            if culprits.empty:
                continue
            x0, x1 = float(culprits["x0"].min()), float(culprits["x1"].max())
        y0, y1 = tl.rank_span(f.rank)
        victims = victim_rows(mine, f, x0, x1, culprits)
        marks.append(FindingMark(i, f, x0, x1, y0, y1, culprits, victims))
    return marks


def outline_shapes(rows: pd.DataFrame, colour: str, dash: str, width: float) -> list[dict]:
    """Unfilled rectangles around bars (few per finding, so SVG shapes are fine)."""
    half = 0.42
    return [{"type": "rect", "xref": "x", "yref": "y", "x0": a, "x1": max(b, a + 1e-4),
             "y0": y - half, "y1": y + half, "layer": "above", "fillcolor": "rgba(0,0,0,0)",
             "line": {"color": colour, "width": width, "dash": dash}}
            for a, b, y in rows[["x0", "x1", "y"]].itertuples(index=False)]


def finding_layout(marks: list[FindingMark], x_mid: float) -> tuple[list[dict], list[dict]]:
    """Shapes (window band, culprit/victim outlines) and annotations for the findings.

    Each finding gets a "#n" badge at its culprit, and a box with its title and cost; the box
    is shown for the worst finding of each rank only (more would cover the bars), the table's
    rows show the others' (their `note` index says which annotation is theirs).
    """
    shapes: list[dict] = []
    notes: list[dict] = []
    boxed_ranks: set[int] = set()
    for m in marks:
        f = m.finding
        shapes.append({"type": "rect", "xref": "x", "yref": "y", "x0": m.x0,
                       "x1": max(m.x1, m.x0 + 1e-3), "y0": m.y0, "y1": m.y1, "layer": "below",
                       "fillcolor": FINDING_BAND, "line": {"width": 0}})
        shapes += outline_shapes(m.culprits, CULPRIT_COLOUR, "solid", 2.5)
        shapes += outline_shapes(m.victims, VICTIM_COLOUR, "dot", 2.5)
        target = m.culprits if len(m.culprits) else m.victims
        if len(target):
            x, y = float(target["x0"].iloc[0]), float(target["y"].iloc[0]) - 0.42
        else:
            x, y = m.x0, m.y0 + 0.1
        colour = SEVERITY_COLOUR.get(f.severity, "#333")
        notes.append({"x": x, "y": y, "xref": "x", "yref": "y", "showarrow": False,
                      "xanchor": "right", "yanchor": "bottom", "text": f"<b>#{m.index + 1}</b>",
                      "font": {"size": 11, "color": "white"}, "bgcolor": colour,
                      "borderpad": 1})
        step = f" · step {f.step}" if f.step is not None else ""
        left = x > x_mid  # the box goes toward the middle of the plot
        m.note = len(notes)
        notes.append({
            "x": x, "y": y, "xref": "x", "yref": "y", "showarrow": True, "arrowhead": 2,
            "arrowcolor": colour, "ax": -50 if left else 50, "ay": -34,
            "xanchor": "right" if left else "left", "align": "left",
            "visible": f.rank not in boxed_ranks,
            "text": (f"<b>#{m.index + 1} {f.kind}</b>{step} · costs {ms_or_us(f.cost_us)}"
                     f"<br>{escape(cut_to(f.title, 90))}"),
            "font": {"size": 11, "color": "#111"}, "bgcolor": "rgba(255,255,240,0.9)",
            "bordercolor": colour, "borderwidth": 1.5, "borderpad": 3})
        boxed_ranks.add(f.rank)
    return shapes, notes
