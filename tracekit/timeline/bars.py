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
