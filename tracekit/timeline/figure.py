"""The Plotly figure: WebGL bars per category, step bands, findings outlined and annotated.

Why WebGL line segments: a real step has tens of thousands of kernels; one SVG shape per kernel
makes zoom/pan crawl, while one Scattergl trace per category (segments separated by NaN) keeps
the whole run in a handful of GPU buffers. Hover is on each bar's two ends (the
line's vertices).
Everything few in number (findings, steps) uses layout shapes and annotations.

Level of detail (pages of more than LOD_MIN_BARS bars): software WebGL, as in CI browsers and
remote desktops, takes seconds per redraw of 100k+ bars. So such pages start from an overview,
each lane's bars of a category merged where the gap between them is under 1/LOD_MERGE_DIVISOR
of the time span (under a pixel), and carry every bar compactly for the page's script, which
redraws only the bars near the visible window after each zoom or pan (see page.LOD_SCRIPT).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from tracekit.durations import ms_or_us
from tracekit.finding import Finding
from tracekit.names import cut_to
from tracekit.timeline.lanes import DUR, Timeline
from tracekit.trace import Run

# Category -> (legend label, colour). Colour-blind-friendly-ish, NCCL loud, CPU quiet.
CATEGORY_STYLE: dict[str, tuple[str, str]] = {
    "gemm": ("GEMM", "#1f77b4"),
    "attention": ("attention", "#9467bd"),
    "elementwise": ("elementwise", "#2ca02c"),
    "reduction": ("reduction", "#17becf"),
    "triton": ("Triton", "#ff7f0e"),
    "nccl": ("NCCL", "#d62728"),
    "memory": ("memcpy/memset", "#8c564b"),
    "other": ("other kernel", "#7f7f7f"),
    "cpu op": ("CPU op (outermost)", "#9fb3c8"),
    "annotation": ("record_function", "#bcbd22"),
}
CULPRIT_COLOUR = "#000000"
VICTIM_COLOUR = "#e6007e"
FINDING_BAND = "rgba(255, 200, 0, 0.22)"
LANE_PX = 30
BAR_PX = 16
# Outlines drawn per finding: enough to see the pattern, few enough to stay SVG-cheap.
MAX_OUTLINES_PER_FINDING = 40
SEVERITY_COLOUR = {"high": "#b30000", "medium": "#c76a00", "low": "#555555"}
# Level of detail: pages with more bars than LOD_MIN_BARS draw an overview first; a zoom draws
# every bar when at most LOD_DETAIL_MAX are near the window, else bars merged where the gap
# between them is under 1/LOD_MERGE_DIVISOR of the visible span. Redraws of ~20k bars take
# about a second in software WebGL; smaller pages keep every bar, exactly as before.
LOD_MIN_BARS = 40_000
LOD_DETAIL_MAX = 20_000
LOD_MERGE_DIVISOR = 3000
# Hover text of a merged segment; the page fills in {n} and {dur} (the bars' summed time).
MERGED_TEXT = ("<b>{n} %s bars</b> merged at this zoom: zoom in to see each<br>"
               "busy {dur} in total")


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


def segments(x0: np.ndarray, x1: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interleave bars as x0, x1, NaN (NaN breaks the line), vectorised."""
    n = len(x0)
    xs = np.full(n * 3, np.nan)
    ys = np.full(n * 3, np.nan)
    xs[0::3], xs[1::3] = x0, x1
    ys[0::3], ys[1::3] = y, y
    return xs, ys


def coords(values: np.ndarray) -> np.ndarray:
    """float32 when it keeps 0.1 us resolution (axis spans under ~1.6 s), else float64.

    Half the bytes in the page for the common case of a few steps.
    """
    finite = values[np.isfinite(values)]
    small = finite.size == 0 or float(np.abs(finite).max()) < 1600.0
    return values.astype(np.float32) if small else values


def durations_text(dur_us: np.ndarray) -> np.ndarray:
    return np.char.add(np.char.mod("%.1f", dur_us), " us").astype(object)


@dataclass
class HoverTable:
    """Hover texts stored once each: bars point at them by number (HTML page mode).

    Also carries, for level-of-detail pages, every bar of each overview trace (`detail`), since
    this table is what the figure hands on to the page.
    """

    texts: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    detail: list[dict] = field(default_factory=list)
    """Per overview trace: its index and its bars sorted by start, as base64 arrays."""

    def code(self, text: str) -> int:
        """The number of one text, adding it when new."""
        found = self.index.get(text)
        if found is None:
            found = self.index[text] = len(self.texts)
            self.texts.append(text)
        return found

    def codes(self, hover: pd.Series) -> np.ndarray:
        """Numbers of each bar's text, adding new texts (vectorised through factorize)."""
        local_codes, uniques = pd.factorize(hover.astype(str), use_na_sentinel=False)
        mapping = np.array([self.code(text) for text in uniques],  # per distinct text
                           dtype=np.int64)
        return mapping[local_codes]


def per_vertex(values: np.ndarray, fill: object) -> np.ndarray:
    """Repeat a per-bar value on the bar's two vertices, `fill` on its NaN separator."""
    out = np.empty(len(values) * 3, dtype=values.dtype if fill is not None else object)
    out[0::3], out[1::3], out[2::3] = values, values, fill
    return out


def b64(values: np.ndarray, dtype: str) -> str:
    """Little-endian bytes of an array as base64 (the page decodes it into a typed array)."""
    return base64.b64encode(np.ascontiguousarray(values, dtype=dtype).tobytes()).decode("ascii")


def merge_close(x0: np.ndarray, x1: np.ndarray, y: np.ndarray, gap: float,
                ) -> tuple[np.ndarray, np.ndarray]:
    """Group each lane's bars that are under `gap` apart; returns (bar order, group starts).

    `order` sorts the bars by lane then start; group k is order[starts[k]:starts[k + 1]].
    A lane's furthest end so far (not the previous bar's end) decides the gap, so a long bar
    that covers later short ones keeps them in its group.
    """
    order = np.lexsort((x0, y))
    xs0, xs1, ys = x0[order], x1[order], y[order]
    reach = pd.Series(xs1).groupby(ys).cummax().to_numpy()
    new = np.ones(len(order), dtype=bool)
    new[1:] = (ys[1:] != ys[:-1]) | (xs0[1:] - reach[:-1] > gap)
    return order, np.flatnonzero(new)


def overview(x0: np.ndarray, x1: np.ndarray, y: np.ndarray, dur_us: np.ndarray,
             codes: np.ndarray, merged_code: int, gap: float) -> dict[str, np.ndarray]:
    """Merged segments: x0, x1, y, summed duration, bar count, and hover code of each.

    A segment of one bar keeps that bar's hover; a merged one points at `merged_code`.
    """
    order, starts = merge_close(x0, x1, y, gap)
    n = np.diff(np.append(starts, len(order)))
    first = order[starts]
    return {"x0": x0[first], "x1": np.maximum.reduceat(x1[order], starts), "y": y[first],
            "dur": np.add.reduceat(dur_us[order], starts), "n": n.astype(np.float64),
            "code": np.where(n == 1, codes[first], merged_code).astype(np.float64)}


def detail_payload(index: int, x0: np.ndarray, x1: np.ndarray, y: np.ndarray,
                   dur_us: np.ndarray, codes: np.ndarray, merged_code: int) -> dict:
    """Every bar of one trace sorted by start, for the page's zoomed-in redraws.

    Starts sorted let the page find the bars near a window by binary search; `max_len` bounds
    how far before the window a bar that reaches into it can start.
    """
    order = np.argsort(x0, kind="stable")
    wide = "<f4" if coords(np.concatenate([x0, x1])).dtype == np.float32 else "<f8"
    starts, ends = x0[order].astype(wide), x1[order].astype(wide)  # as the page will see them
    return {"index": index, "n": len(x0), "x_bytes": int(wide[-1]), "merged_code": merged_code,
            "max_len": float((ends - starts).max()) if len(x0) else 0.0,
            "x0": b64(starts, wide), "x1": b64(ends, wide),
            "y": b64(y[order], "<f4"), "dur": b64(dur_us[order], "<f4"),
            "code": b64(codes[order], "<i4")}


def bar_traces(bars: pd.DataFrame, hover: HoverTable | None = None,
               merge_gap: float | None = None) -> list[go.Scattergl]:
    """One WebGL line trace per category; hovering a bar's either end shows its details.

    Without a HoverTable the vertices carry their full hover text (plotly's own tooltip, for
    notebooks); with one they carry [text number, duration] and the page draws the tooltip.
    With a HoverTable and `merge_gap` (ms), each trace is the overview (bars under merge_gap
    apart merged; vertices carry [text number, duration, bar count]) and its every bar goes
    to `hover.detail` for the page's level of detail.
    (A marker trace at each bar's middle would hover long bars better, but markers of the
    `line-ns` kind cost 5x the lines' render time in software WebGL, as CI browsers use.)
    """
    traces: list[go.Scattergl] = []
    order = {c: i for i, c in enumerate(CATEGORY_STYLE)}
    cats = sorted(bars["category"].unique(), key=lambda c: order.get(c, len(order)))
    for cat in cats:
        label, colour = CATEGORY_STYLE.get(cat, (cat, "#7f7f7f"))
        b = bars[bars["category"] == cat]
        xs, ys = segments(b["x0"].to_numpy(dtype=float), b["x1"].to_numpy(dtype=float),
                          b["y"].to_numpy(dtype=float))
        dur_us = (b["end"] - b["ts"]).to_numpy(dtype=float)
        line = {"x": coords(xs), "y": ys.astype(np.float32), "mode": "lines",
                "name": f"{label} ({len(b):,})", "legendgroup": cat, "meta": "bar-hover",
                "line": {"color": colour, "width": BAR_PX}, "connectgaps": False}
        if hover is None:
            head, _, tail = (b["hover"].astype(str).str.partition(DUR).iloc[:, i]
                             for i in (0, 1, 2))
            text = head.to_numpy(dtype=object) + durations_text(dur_us) + tail.to_numpy(
                dtype=object)
            traces.append(go.Scattergl(**line, text=per_vertex(text, None),
                                       hovertemplate="%{text}<extra></extra>"))
        elif merge_gap is None:
            codes = per_vertex(hover.codes(b["hover"]).astype(np.float64), -1.0)
            data = np.column_stack([codes, per_vertex(dur_us, 0.0)]).astype(np.float32)
            traces.append(go.Scattergl(**line, customdata=data, hoverinfo="none"))
        else:
            traces.append(overview_trace(line, b, dur_us, hover, label, len(traces), merge_gap))
    return traces


def overview_trace(line: dict, b: pd.DataFrame, dur_us: np.ndarray, hover: HoverTable,
                   label: str, index: int, merge_gap: float) -> go.Scattergl:
    """A category's overview trace; its bars in full go to `hover.detail` (see bar_traces)."""
    x0, x1, y = (b[c].to_numpy(dtype=float) for c in ("x0", "x1", "y"))
    codes = hover.codes(b["hover"])
    merged_code = hover.code(MERGED_TEXT % escape(label))
    hover.detail.append(detail_payload(index, x0, x1, y, dur_us, codes, merged_code))
    seg = overview(x0, x1, y, dur_us, codes, merged_code, merge_gap)
    xs, ys = segments(seg["x0"], seg["x1"], seg["y"])
    data = np.column_stack([per_vertex(seg["code"], -1.0), per_vertex(seg["dur"], 0.0),
                            per_vertex(seg["n"], 0.0)]).astype(np.float32)
    return go.Scattergl(**{**line, "x": coords(xs), "y": ys.astype(np.float32)},
                        customdata=data, hoverinfo="none")


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


def step_layout(steps: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    """Alternate shaded bands per step, a line at each step start, ProfilerStep#N labels."""
    shapes: list[dict] = []
    notes: list[dict] = []
    for side, step, x0, x1, y0, y1 in steps[
            ["side", "step", "x0", "x1", "y0", "y1"]].itertuples(index=False):
        shade = "rgba(120,120,160,0.07)" if step % 2 == 0 else "rgba(0,0,0,0)"
        shapes.append({"type": "rect", "xref": "x", "yref": "y", "x0": x0, "x1": x1,
                       "y0": y0, "y1": y1, "layer": "below", "fillcolor": shade,
                       "line": {"width": 0}})
        shapes.append({"type": "line", "xref": "x", "yref": "y", "x0": x0, "x1": x0,
                       "y0": y0, "y1": y1, "layer": "below",
                       "line": {"color": "#555", "width": 1,
                                "dash": "dot" if side == "cpu" else "solid"}})
        label = f"ProfilerStep#{step}" + (" (CPU)" if side == "cpu" else " (GPU)")
        notes.append({"x": x0, "y": y0, "xref": "x", "yref": "y", "showarrow": False,
                      "xanchor": "left", "yanchor": "bottom", "text": label,
                      "font": {"size": 10, "color": "#444"}})
    return shapes, notes


def legend_only(name: str, colour: str, dash: str) -> go.Scatter:
    """A legend entry explaining an outline style (shapes have no legend of their own)."""
    return go.Scatter(x=[None], y=[None], mode="lines", name=name, hoverinfo="skip",
                      line={"color": colour, "width": 3, "dash": dash})


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def figure_title(run: Run, tl: Timeline, step: int | None) -> str:
    ranks = sorted(set(tl.lanes["rank"]))
    what = f"step {step}" if step is not None else "all profiled steps"
    if tl.window_ms:
        what += f", {tl.window_ms[0]:g}–{tl.window_ms[1]:g} ms"
    n_kernels = int((tl.bars["kind"] == "kernel").sum())
    return (f"<b>tracekit timeline</b> · run <b>{escape(run.path.name)}</b> · "
            f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} · {what}"
            f"<br><span style='font-size:12px'>{n_kernels:,} kernels · x = ms since "
            f"{tl.origin_text} · drag to zoom, double-click to reset, click a legend entry to "
            f"hide it</span>")


def make_figure(run: Run, tl: Timeline, findings: list[Finding], step: int | None = None,
                title: str | None = None, hover: HoverTable | None = None,
                ) -> tuple[go.Figure, list[FindingMark]]:
    """The interactive figure, and where each finding landed (for the table's zoom links).

    Pass a HoverTable to store hover texts once (the HTML page); without, plotly's tooltips.
    """
    marks = finding_marks(tl, findings)
    lod = hover is not None and len(tl.bars) > LOD_MIN_BARS
    x_range: list[float] | None = None
    if tl.window_ms and np.isfinite(tl.window_ms).all():
        x_range = list(tl.window_ms)
    elif lod:
        # Explicit, so that double-click resets to the whole run: autorange would fit the
        # bars drawn at the time, only those near a zoomed window.
        lo, hi = float(tl.bars["x0"].min()), float(tl.bars["x1"].max())
        x_range = [lo - (hi - lo) * 0.01, hi + (hi - lo) * 0.01]
    merge_gap = (x_range[1] - x_range[0]) / LOD_MERGE_DIVISOR if lod and x_range else None
    fig = go.Figure(bar_traces(tl.bars, hover, merge_gap))
    if marks:
        fig.add_trace(legend_only("finding: culprit kernel", CULPRIT_COLOUR, "solid"))
        if any(len(m.victims) for m in marks):
            fig.add_trace(legend_only("finding: victim kernel", VICTIM_COLOUR, "dot"))
    s_shapes, s_notes = step_layout(tl.steps)
    x_mid = float((tl.bars["x0"].min() + tl.bars["x1"].max()) / 2) if len(tl.bars) else 0.0
    f_shapes, f_notes = finding_layout(marks, x_mid)
    for m in marks:
        m.note += len(s_notes)
    lanes = tl.lanes
    y_max = float(lanes["y"].max()) if len(lanes) else 0.0
    height = int(150 + (y_max + 1) * LANE_PX + 120)
    fig.update_layout(
        title={"text": title or figure_title(run, tl, step), "x": 0.01, "xanchor": "left",
               "font": {"size": 16}},
        height=max(height, 360), template="plotly_white", hovermode="closest", hoverdistance=30,
        dragmode="zoom", margin={"l": 10, "r": 20, "t": 120, "b": 120},
        # Below the time axis: above the plot the legend wraps into the two-line title.
        legend={"orientation": "h", "yref": "container", "yanchor": "bottom", "y": 0.005,
                "x": 0.0, "font": {"size": 11}},
        shapes=s_shapes + f_shapes, annotations=s_notes + f_notes,
        hoverlabel={"font": {"family": "monospace", "size": 11}, "align": "left"},
        uirevision="timeline")
    fig.update_yaxes(tickvals=lanes["y"].tolist(), ticktext=lanes["label"].tolist(),
                     range=[y_max + 0.8, -0.8], automargin=True, showgrid=True,
                     gridcolor="#eee", zeroline=False, fixedrange=False,
                     tickfont={"size": 12, "family": "monospace"})
    fig.update_xaxes(title={"text": f"time (ms since {tl.origin_text})"}, showgrid=True,
                     gridcolor="#eee", zeroline=False, range=x_range, ticksuffix=" ms",
                     showspikes=True, spikemode="across", spikethickness=1,
                     spikecolor="#999")
    return fig, marks


def focus_on(fig: go.Figure, marks: list[FindingMark], finding: Finding) -> None:
    """Zoom a figure onto one finding and show its title box (hiding the others')."""
    mark = next((m for m in marks if m.finding is finding), None)
    if mark is None:
        return
    zoom = mark.zoom()
    fig.update_xaxes(range=zoom["x"])
    fig.update_yaxes(range=zoom["y"])
    for m in marks:
        if m.note >= 0:
            fig.layout.annotations[m.note].visible = m is mark


def stack_figures(figs: list[go.Figure], titles: list[str]) -> go.Figure:
    """Several timeline figures as rows of one figure (before/after comparisons).

    Each row keeps its own x and y axes (the runs have different clocks); the traces, shapes
    and annotations of row i are moved onto axes xi/yi.
    """
    from plotly.subplots import make_subplots

    heights = [max(f.layout.height or 400, 300) for f in figs]
    out = make_subplots(rows=len(figs), cols=1, subplot_titles=titles, vertical_spacing=0.12,
                        row_heights=[h / sum(heights) for h in heights])
    seen: set[str] = set()
    for row, fig in enumerate(figs, start=1):
        suffix = "" if row == 1 else str(row)
        for trace in fig.data:
            trace = go.Scattergl(trace) if trace.type == "scattergl" else go.Scatter(trace)
            trace.showlegend = trace.showlegend is not False and trace.legendgroup not in seen
            seen.add(trace.legendgroup or trace.name)
            out.add_trace(trace, row=row, col=1)
        for shape in fig.layout.shapes:
            out.add_shape(shape.update(xref=f"x{suffix}", yref=f"y{suffix}"))
        for note in fig.layout.annotations:
            out.add_annotation(note.update(xref=f"x{suffix}", yref=f"y{suffix}"))
        src_y, src_x = fig.layout.yaxis, fig.layout.xaxis
        out.update_yaxes(tickvals=src_y.tickvals, ticktext=src_y.ticktext, range=src_y.range,
                         tickfont=src_y.tickfont, gridcolor="#eee", row=row, col=1)
        out.update_xaxes(range=src_x.range, ticksuffix=" ms", gridcolor="#eee", row=row, col=1)
    legend = {"orientation": "h", "yanchor": "bottom", "y": 1.06, "x": 0.0,
              "font": {"size": 11}}
    out.update_layout(height=sum(heights) + 80, template="plotly_white", hovermode="closest",
                      hoverdistance=30, legend=legend,
                      margin={"l": 10, "r": 20, "t": 130, "b": 40},
                      hoverlabel=figs[0].layout.hoverlabel,
                      title={"text": " vs ".join(f"<b>{t}</b>" for t in titles), "x": 0.01})
    return out
