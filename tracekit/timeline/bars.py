"""The timeline's bars as WebGL line segments, one Scattergl trace per category, with hover
text per bar and, for big pages, the level-of-detail overview (see tracekit.timeline.figure).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from tracekit.timeline.rows import DUR, escape

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
    "exposed comm": ("exposed communication", "#ff9896"),
    "idle:input": ("GPU idle: input pipeline", "#e377c2"),
    "idle:host_sync": ("GPU idle: host sync", "#a50026"),
    "idle:memcpy": ("GPU idle: blocking memcpy", "#c49c94"),
    "idle:gc": ("GPU idle: garbage collection", "#dbdb8d"),
    "idle:peer": ("GPU idle: waiting for peers", "#f46d43"),
    "idle:launch": ("GPU idle: kernel launch", "#fdae61"),
    "idle:python": ("GPU idle: Python/CPU work", "#fee090"),
    "idle:queued": ("GPU idle: queued work waiting", "#c7c7c7"),
    "idle:unknown": ("GPU idle: unknown", "#e0e0e0"),
}
BAR_PX = 16

# Level of detail: pages with more bars than LOD_MIN_BARS draw an overview first: each lane's
# bars merged where the gap between them is under 1/LOD_MERGE_DIVISOR of the whole span (under
# half a pixel). A zoom draws a rank's bars near the window (LOD_PAD window widths either
# side) one by one when they fit its share of LOD_DETAIL_MAX, else merged where under
# LOD_MERGE_PX pixels apart. Redraws of ~20k bars take about a second in software WebGL;
# smaller pages keep every bar, exactly as before.
LOD_MIN_BARS = 40_000
LOD_DETAIL_MAX = 20_000
LOD_MERGE_DIVISOR = 3000
LOD_MERGE_PX = 1.5
LOD_PAD = 0.5
# Bars per chunk of a rank's detail: the page decodes chunks (base64 typed arrays) only when a
# window reaches them, so opening a page costs the same whatever the run's length.
LOD_CHUNK_BARS = 16_384
# Hover text of a merged segment; the page fills in {n} and {dur} (the bars' summed time).
MERGED_TEXT = ("<b>{n} %s bars</b> merged at this zoom: zoom in to see each<br>"
               "busy {dur} in total")
# ... of a segment merging bars of several categories, coloured as the one with most time.
MIXED_TEXT = ("<b>{n} bars</b> merged at this zoom, most time in %s: zoom in to see each<br>"
              "busy {dur} in total")


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
    """Per overview trace: its index, axes, overview segments and bars (see detail_payload)."""
    overview_gap: float = 0.0
    """The overview's merge gap (ms): zooms no finer than it redraw the overview."""

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


def overview(bars: pd.DataFrame, dur_us: np.ndarray, codes: np.ndarray,
             merged_codes: dict[str, tuple[int, int]], gap: float) -> pd.DataFrame:
    """Each lane's bars merged where under `gap` apart, whatever their category.

    One row per segment: x0, x1, y, rank, dur (summed us), n (bars), category (the one with
    most time in it: the segment's colour) and code (hover: the bar's own for a single bar,
    else the category's merged text from `merged_codes` [same category, mixed]). Merging
    across categories keeps a busy lane to a few segments however its kernels interleave.
    """
    x0, x1, y = (bars[c].to_numpy(dtype=float) for c in ("x0", "x1", "y"))
    order, starts = merge_close(x0, x1, y, gap)
    n = np.diff(np.append(starts, len(order)))
    first = order[starts]
    group = np.repeat(np.arange(len(starts)), n)
    cat = bars["category"].to_numpy(dtype=object)[order]
    time_in = pd.DataFrame({"g": group, "cat": cat, "dur": dur_us[order]}).groupby(
        ["g", "cat"], sort=False)["dur"].sum().reset_index()
    kinds = time_in.groupby("g")["cat"].size().to_numpy()
    top = time_in.sort_values(["g", "dur"], ascending=[True, False], kind="stable")
    dominant = top.drop_duplicates("g")["cat"].to_numpy(dtype=object)
    merged = np.array([merged_codes[c][0] for c in merged_codes], dtype=np.int64)
    mixed = np.array([merged_codes[c][1] for c in merged_codes], dtype=np.int64)
    at = pd.Index(list(merged_codes)).get_indexer(dominant)
    code = np.where(n == 1, codes[first], np.where(kinds == 1, merged[at], mixed[at]))
    return pd.DataFrame({
        "x0": x0[first], "x1": np.maximum.reduceat(x1[order], starts) if len(order) else x0[:0],
        "y": y[first], "rank": bars["rank"].to_numpy(dtype=np.int64)[first],
        "dur": np.add.reduceat(dur_us[order], starts) if len(order) else dur_us[:0],
        "n": n.astype(np.float64), "category": dominant, "code": code.astype(np.float64)})


def rank_blocks(rank: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sort by rank (stable): (order, each rank's value, start and end in the order)."""
    order = np.argsort(rank, kind="stable")
    ranks = rank[order]
    starts = np.flatnonzero(np.r_[True, ranks[1:] != ranks[:-1]]) if len(ranks) else \
        np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], len(order)].astype(np.int64) if len(ranks) else starts
    return order, ranks[starts], starts, ends


def detail_payload(index: int, b: pd.DataFrame, dur_us: np.ndarray, codes: np.ndarray,
                   merged_codes: tuple[int, int], seg: pd.DataFrame) -> dict:
    """One overview trace's bars for the page's redraws, per rank and in chunks.

    Per rank ("blocks"): its lanes (y0..y1), its overview segments (a slice of `overview`,
    drawn again when a zoom is no finer than the overview), and every bar sorted by start in
    chunks of at most LOD_CHUNK_BARS, each with the time it spans (lo: first start, hi: last
    end): the page decodes a chunk only once a window reaches it. Starts sorted let the page
    find the bars near a window by binary search; `max_len` bounds how far before the window
    a bar that reaches into it can start.
    """
    x0, x1, y = (b[c].to_numpy(dtype=float) for c in ("x0", "x1", "y"))
    rank = b["rank"].to_numpy(dtype=np.int64)
    wide = "<f4" if coords(np.concatenate([x0, x1])).dtype == np.float32 else "<f8"
    by_rank, ranks, starts, ends = rank_blocks(rank)
    # Within a rank, bars by start (stable: equal starts keep the frame's order).
    order = by_rank[np.lexsort((x0[by_rank], rank[by_rank]))]
    sx0, sx1 = x0[order].astype(wide), x1[order].astype(wide)  # as the page will see them
    seg_order, seg_ranks, seg_starts, seg_ends = rank_blocks(seg["rank"].to_numpy(np.int64))
    ov = {k: seg[k].to_numpy(dtype=float)[seg_order] for k in ("x0", "x1", "y", "dur", "n",
                                                              "code")}
    seg_at = dict(zip(seg_ranks.tolist(), zip(seg_starts.tolist(), seg_ends.tolist(),
                                             strict=True), strict=True))
    blocks = []
    for r, a, e in zip(ranks.tolist(), starts.tolist(), ends.tolist(), strict=True):
        cuts = list(range(a, e, LOD_CHUNK_BARS)) + [e]
        chunks = [{"lo": float(sx0[c0]), "hi": float(sx1[c0:c1].max()), "n": c1 - c0,
                   "x0": b64(sx0[c0:c1], wide), "x1": b64(sx1[c0:c1], wide),
                   "y": b64(y[order[c0:c1]], "<f4"), "dur": b64(dur_us[order[c0:c1]], "<f4"),
                   "code": b64(codes[order[c0:c1]], "<i4")}
                  for c0, c1 in zip(cuts[:-1], cuts[1:], strict=True)]
        lanes = y[order[a:e]]
        blocks.append({"rank": r, "n": e - a, "y0": float(lanes.min()), "y1": float(lanes.max()),
                       "max_len": float((sx1[a:e] - sx0[a:e]).max()),
                       "overview": list(seg_at.get(r, (0, 0))), "chunks": chunks})
    return {"index": index, "n": len(x0), "x_bytes": int(wide[-1]),
            "merged_code": merged_codes[0], "mixed_code": merged_codes[1],
            "overview": {"x0": b64(ov["x0"], "<f8"), "x1": b64(ov["x1"], "<f8"),
                         "y": b64(ov["y"], "<f4"), "dur": b64(ov["dur"], "<f4"),
                         "n": b64(ov["n"], "<f4"), "code": b64(ov["code"], "<f4")},
            "overview_len": float((ov["x1"] - ov["x0"]).max()) if len(ov["x0"]) else 0.0,
            "blocks": blocks}


def bar_traces(bars: pd.DataFrame, hover: HoverTable | None = None,
               merge_gap: float | None = None, first_index: int = 0,
               axes: tuple[str, str] = ("x", "y")) -> list[go.Scattergl]:
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
    all_dur = (bars["end"] - bars["ts"]).to_numpy(dtype=float)
    seg = None
    if hover is not None and merge_gap is not None:
        all_codes = hover.codes(bars["hover"])
        labels = {c: escape(CATEGORY_STYLE.get(c, (c, ""))[0]) for c in cats}
        merged_codes = {c: (hover.code(MERGED_TEXT % labels[c]), hover.code(MIXED_TEXT % labels[c]))
                        for c in cats}
        seg = overview(bars, all_dur, all_codes, merged_codes, merge_gap)
        hover.overview_gap = merge_gap
    for cat in cats:
        label, colour = CATEGORY_STYLE.get(cat, (cat, "#7f7f7f"))
        mine = (bars["category"] == cat).to_numpy()
        b = bars[mine]
        dur_us = all_dur[mine]
        line = {"mode": "lines", "name": f"{label} ({len(b):,})", "legendgroup": cat,
                "meta": "bar-hover", "line": {"color": colour, "width": BAR_PX},
                "connectgaps": False}
        if seg is not None:
            payload = detail_payload(first_index + len(traces), b, dur_us, all_codes[mine],
                                     merged_codes[cat], seg[seg["category"] == cat])
            hover.detail.append({**payload, "axes": list(axes)})
            traces.append(overview_trace(line, seg[seg["category"] == cat]))
            continue
        xs, ys = segments(b["x0"].to_numpy(dtype=float), b["x1"].to_numpy(dtype=float),
                          b["y"].to_numpy(dtype=float))
        line.update(x=coords(xs), y=ys.astype(np.float32))
        if hover is None:
            head, _, tail = (b["hover"].astype(str).str.partition(DUR).iloc[:, i]
                             for i in (0, 1, 2))
            text = head.to_numpy(dtype=object) + durations_text(dur_us) + tail.to_numpy(
                dtype=object)
            traces.append(go.Scattergl(**line, text=per_vertex(text, None),
                                       hovertemplate="%{text}<extra></extra>"))
        else:
            codes = per_vertex(hover.codes(b["hover"]).astype(np.float64), -1.0)
            data = np.column_stack([codes, per_vertex(dur_us, 0.0)]).astype(np.float32)
            traces.append(go.Scattergl(**line, customdata=data, hoverinfo="none"))
    return traces


def overview_trace(line: dict, seg: pd.DataFrame) -> go.Scattergl:
    """A category's overview trace: the segments it colours (see `overview`)."""
    xs, ys = segments(*(seg[c].to_numpy(dtype=float) for c in ("x0", "x1", "y")))
    data = np.column_stack([per_vertex(seg[c].to_numpy(dtype=float), fill)
                            for c, fill in (("code", -1.0), ("dur", 0.0), ("n", 0.0))])
    return go.Scattergl(**line, x=coords(xs), y=ys.astype(np.float32),
                        customdata=data.astype(np.float32), hoverinfo="none")
