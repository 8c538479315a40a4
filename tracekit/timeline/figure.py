"""The Plotly figure: WebGL bars per category, step bands, findings outlined and annotated.

Why WebGL line segments: a real step has tens of thousands of kernels; one SVG shape per kernel
makes zoom/pan crawl, while one Scattergl trace per category (segments separated by NaN) keeps
the whole run in a handful of GPU buffers. Hover is on each bar's two ends (the
line's vertices).
Everything few in number (findings, steps) uses layout shapes and annotations.

Level of detail (pages of more than LOD_MIN_BARS bars): software WebGL, as in CI browsers and
remote desktops, takes seconds per redraw of 100k+ bars. So such pages start from an overview,
each lane's bars merged where the gap between them is under 1/LOD_MERGE_DIVISOR of the time
span (under a pixel), whatever their category (a merged segment takes the colour of the one
with most time in it), and carry every bar compactly, per rank and in chunks, for the page's
script, which redraws only the bars near the visible window after each zoom or pan, choosing
bar by bar or merged for each rank (see page.LOD_SCRIPT). The overview holds at most
LOD_MERGE_DIVISOR + 1 segments per lane, however long the run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from tracekit.finding import Finding
from tracekit.timeline.bars import LOD_MERGE_DIVISOR, LOD_MIN_BARS, HoverTable, bar_traces
from tracekit.timeline.lanes import Timeline
from tracekit.timeline.marks import (
    CULPRIT_COLOUR,
    VICTIM_COLOUR,
    FindingMark,
    finding_layout,
    finding_marks,
)
from tracekit.timeline.rows import escape
from tracekit.trace import Run

LANE_PX = 30


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
        x_range = lod_range([tl])
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


def lod_range(timelines: list[Timeline]) -> list[float]:
    """The x range of all bars of some timelines, with 1% room each side."""
    lo = min(float(tl.bars["x0"].min()) for tl in timelines if len(tl.bars))
    hi = max(float(tl.bars["x1"].max()) for tl in timelines if len(tl.bars))
    return [lo - (hi - lo) * 0.01, hi + (hi - lo) * 0.01]


def side_by_side(timelines: list[Timeline], titles: list[str], hover: HoverTable,
                 ) -> go.Figure:
    """Timelines as rows on ONE time axis (matched x axes), for `diff --html`.

    Bars hover through `hover` (the page's tooltip). Above LOD_MIN_BARS bars in all, every
    row is an overview on the same merge gap, and the page's level of detail redraws each
    row's ranks for the shared window (their payloads name each row's axes).
    """
    from plotly.subplots import make_subplots

    heights = [max(float(tl.lanes["y"].max()) + 1, 1.0) if len(tl.lanes) else 1.0
               for tl in timelines]
    fig = make_subplots(rows=len(timelines), cols=1, shared_xaxes=True,
                        vertical_spacing=0.06, row_heights=heights, subplot_titles=titles)
    drawn = [tl for tl in timelines if len(tl.bars)]
    lod = sum(len(tl.bars) for tl in timelines) > LOD_MIN_BARS and bool(drawn)
    x_range = lod_range(drawn) if lod else None
    merge_gap = (x_range[1] - x_range[0]) / LOD_MERGE_DIVISOR if x_range else None
    seen: set[str] = set()
    for row, tl in enumerate(timelines, start=1):
        suffix = "" if row == 1 else str(row)
        traces = bar_traces(tl.bars, hover, merge_gap, first_index=len(fig.data),
                            axes=(f"x{suffix}", f"y{suffix}")) if len(tl.bars) else []
        for trace in traces:
            # One legend entry per category across the rows; clicking hides it in all.
            trace.showlegend = trace.legendgroup not in seen
            seen.add(trace.legendgroup)
            fig.add_trace(trace, row=row, col=1)
        lanes = tl.lanes
        fig.update_yaxes(tickvals=lanes["y"].tolist(), ticktext=lanes["label"].tolist(),
                         range=[float(lanes["y"].max()) + 0.8 if len(lanes) else 1, -0.8],
                         tickfont={"size": 11, "family": "monospace"}, row=row, col=1)
    if x_range is not None:
        # Explicit, so that double-click resets to both runs (see make_figure).
        fig.update_xaxes(range=x_range)
    fig.update_layout(height=int(200 + 30 * sum(heights)), template="plotly_white",
                      hovermode="closest", hoverdistance=30, uirevision="timeline")
    return fig
