"""The self-contained HTML page: the figure (plotly.js embedded) and a findings table.

Clicking a table row zooms the plot onto that finding through `Plotly.relayout`; the page needs
no network, so it can be mailed or attached to an issue. Large runs also get the level-of-detail
script (LOD_SCRIPT), which redraws the bars near the visible window after each zoom or pan.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import plotly.graph_objects as go

from tracekit.durations import ms_or_us
from tracekit.timeline.bars import LOD_DETAIL_MAX, LOD_MERGE_DIVISOR, HoverTable
from tracekit.timeline.marks import FindingMark

PLOT_DIV = "tracekit-timeline"

STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 12px;
       color: #1a1a1a; }
h2 { font-size: 16px; margin: 18px 0 6px; }
p.help { font-size: 13px; color: #444; margin: 4px 0 8px; }
table.findings { border-collapse: collapse; font-size: 13px; width: 100%; }
table.findings th, table.findings td { border-bottom: 1px solid #ddd; padding: 4px 8px;
       text-align: left; vertical-align: top; }
table.findings tr.finding { cursor: pointer; }
table.findings tr.finding:hover { background: #fff6cc; }
table.findings tr.selected { background: #ffe680; }
td.sev-high { color: #b30000; font-weight: 600; } td.sev-medium { color: #c76a00; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
button#reset-view { font-size: 13px; margin-left: 8px; }
#tracekit-tip { position: fixed; display: none; z-index: 1000; pointer-events: none;
       background: rgba(255,255,255,0.97); border: 1px solid #888; border-radius: 3px;
       padding: 5px 7px; font: 11px monospace; line-height: 1.35; max-width: 720px;
       box-shadow: 0 1px 4px rgba(0,0,0,0.25); }
"""

# Row click -> zoom onto the finding; the reset button restores the first view.
SCRIPT = """
(function () {
  var gd = document.getElementById(%(div)s);
  var initial = null;
  function remember() {
    if (initial === null && gd && gd.layout) {
      initial = {"xaxis.range": gd.layout.xaxis.range.slice(),
                 "yaxis.range": gd.layout.yaxis.range.slice()};
    }
  }
  document.querySelectorAll("tr.finding").forEach(function (row) {
    row.addEventListener("click", function () {
      remember();
      document.querySelectorAll("tr.finding.selected").forEach(function (r) {
        r.classList.remove("selected");
      });
      row.classList.add("selected");
      var z = JSON.parse(row.getAttribute("data-zoom"));
      var update = {"xaxis.range": z.x, "yaxis.range": z.y};
      // Show this finding's title box, hide the other findings' boxes.
      var mine = Number(row.getAttribute("data-note"));
      document.querySelectorAll("tr.finding").forEach(function (r) {
        var n = Number(r.getAttribute("data-note"));
        if (n >= 0) { update["annotations[" + n + "].visible"] = (n === mine); }
      });
      Plotly.relayout(gd, update);
      gd.scrollIntoView({behavior: "smooth", block: "start"});
    });
  });
  // Bars carry [text number, duration us]; texts are stored once in #tracekit-hover.
  var texts = JSON.parse(document.getElementById("tracekit-hover").textContent);
  var tip = document.getElementById("tracekit-tip");
  gd.on("plotly_hover", function (ev) {
    var p = ev.points && ev.points[0];
    if (!p || p.data.meta !== "bar-hover" || !p.customdata) { return; }
    var text = texts[Math.round(p.customdata[0])] || "";
    // A third number (level-of-detail pages) is how many bars a merged segment holds.
    if (p.customdata.length > 2) { text = text.replace("{n}", String(p.customdata[2])); }
    tip.innerHTML = text.replace("{dur}", Number(p.customdata[1]).toFixed(1) + " us");
    var x = ev.event ? ev.event.clientX : 0, y = ev.event ? ev.event.clientY : 0;
    tip.style.display = "block";
    var w = tip.offsetWidth, h = tip.offsetHeight;
    tip.style.left = Math.max(4, x + 14 + w > window.innerWidth ? x - w - 14 : x + 14) + "px";
    tip.style.top = Math.max(4, y + 14 + h > window.innerHeight ? y - h - 14 : y + 14) + "px";
  });
  gd.on("plotly_unhover", function () { tip.style.display = "none"; });
  var reset = document.getElementById("reset-view");
  if (reset) {
    reset.addEventListener("click", function () {
      remember();
      if (initial) { Plotly.relayout(gd, initial); }
    });
  }
})();
"""

# Level of detail (figure.py explains when): each bar trace starts as the overview; after any
# relayout, the bars near the visible window (one window width either side, so a pan shows
# bars at once) are drawn one by one when at most detail_max of them, else merged where under
# 1/merge_divisor of the visible span apart. Bars sorted by start are found by binary search,
# back to max_len before the window for those reaching into it. gd._tracekitLod.pending is
# the promise of the redraw in flight (for tests and measurements).
LOD_SCRIPT = """
(function () {
  var gd = document.getElementById(%(div)s);
  var lod = JSON.parse(document.getElementById("tracekit-lod").textContent);
  function decode(text, Type) {
    var raw = atob(text), bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) { bytes[i] = raw.charCodeAt(i); }
    return new Type(bytes.buffer);
  }
  var traces = lod.traces.map(function (t) {
    var X = t.x_bytes === 8 ? Float64Array : Float32Array;
    return {index: t.index, mergedCode: t.merged_code, maxLen: t.max_len,
            x0: decode(t.x0, X), x1: decode(t.x1, X), y: decode(t.y, Float32Array),
            dur: decode(t.dur, Float32Array), code: decode(t.code, Int32Array)};
  });
  // Index of the first start above v (after: true) or at or above v.
  function search(starts, v, after) {
    var lo = 0, hi = starts.length;
    while (lo < hi) {
      var mid = (lo + hi) >> 1;
      if (starts[mid] < v || (after && starts[mid] === v)) { lo = mid + 1; } else { hi = mid; }
    }
    return lo;
  }
  // A trace's bars in [lo, hi] as NaN-separated segments, each lane's bars under `gap` apart
  // merged (gap -Infinity: none); customdata per vertex: [text number, us, bar count].
  function draw(t, first, last, lo, gap) {
    var xs = [], ys = [], cd = [], sep = [-1, 0, 0], open = new Map();
    function flush(s, y) {
      var c = [s[3] === 1 ? s[4] : t.mergedCode, s[2], s[3]];
      xs.push(s[0], s[1], NaN); ys.push(y, y, NaN); cd.push(c, c, sep);
    }
    for (var i = first; i < last; i++) {
      var a = t.x0[i], b = t.x1[i], y = t.y[i];
      if (b < lo) { continue; }
      var s = open.get(y);
      if (s && a - s[1] <= gap) {
        s[1] = Math.max(s[1], b); s[2] += t.dur[i]; s[3] += 1;
      } else {
        if (s) { flush(s, y); }
        open.set(y, [a, b, t.dur[i], 1, t.code[i]]);
      }
    }
    open.forEach(flush);
    return {x: new Float64Array(xs), y: new Float32Array(ys), customdata: cd};
  }
  var r0 = gd.layout.xaxis.range;
  var state = {pending: null, lo: r0[0], hi: r0[1], width: r0[1] - r0[0], merged: true};
  gd._tracekitLod = state;
  function update() {
    var r = gd._fullLayout.xaxis.range;
    var lo = Math.min(r[0], r[1]), hi = Math.max(r[0], r[1]), w = hi - lo;
    var sameScale = !state.merged || Math.abs(w - state.width) <= 1e-9 * w;
    if (lo >= state.lo && hi <= state.hi && sameScale) { return; }
    var plo = lo - w, phi = hi + w, total = 0;
    var spans = traces.map(function (t) {
      var span = [search(t.x0, plo - t.maxLen, false), search(t.x0, phi, true)];
      total += span[1] - span[0];
      return span;
    });
    var gap = total > lod.detail_max ? w / lod.merge_divisor : -Infinity;
    var change = {x: [], y: [], customdata: []};
    traces.forEach(function (t, k) {
      var d = draw(t, spans[k][0], spans[k][1], plo, gap);
      change.x.push(d.x); change.y.push(d.y); change.customdata.push(d.customdata);
    });
    state.lo = plo; state.hi = phi; state.width = w; state.merged = gap > -Infinity;
    state.pending = Plotly.restyle(gd, change, traces.map(function (t) { return t.index; }));
  }
  gd.on("plotly_relayout", update);
})();
"""


def findings_table(marks: list[FindingMark]) -> str:
    """One clickable row per finding shown on the timeline, worst first (as given)."""
    if not marks:
        return "<p class='help'>No findings on the ranks and time range shown.</p>"
    rows = []
    for m in marks:
        f = m.finding
        source = f.cause.source if f.cause else None
        where = f"{source.file}:{source.line}" if source else (f.cause.op or "" if f.cause else "")
        zoom = json.dumps({k: [round(v, 4) for v in vals] for k, vals in m.zoom().items()})
        rows.append(
            f"<tr class='finding' id='finding-row-{m.index + 1}' "
            f"data-zoom='{html.escape(zoom, quote=True)}' data-note='{m.note}'>"
            f"<td>{m.index + 1}</td><td class='sev-{f.severity}'>{f.severity}</td>"
            f"<td>{html.escape(f.kind)}</td><td>{f.rank}</td>"
            f"<td>{'' if f.step is None else f.step}</td>"
            f"<td class='num'>{ms_or_us(f.cost_us)}</td><td class='num'>{f.count}</td>"
            f"<td>{html.escape(f.title)}</td><td><code>{html.escape(where)}</code></td></tr>")
    head = ("<tr><th>#</th><th>severity</th><th>kind</th><th>rank</th><th>step</th>"
            "<th>cost</th><th>count</th><th>what</th><th>where</th></tr>")
    return f"<table class='findings'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def json_for_script(value: object) -> str:
    """JSON safe inside a <script> element (no "</script>" can end it early)."""
    return json.dumps(value, ensure_ascii=False).replace("</", "<\\/")


def lod_data(hover: HoverTable) -> str:
    """The level-of-detail bars as a JSON script element ("" on pages without LOD)."""
    if not hover.detail:
        return ""
    data = {"traces": hover.detail, "detail_max": LOD_DETAIL_MAX,
            "merge_divisor": LOD_MERGE_DIVISOR}
    return f"<script type='application/json' id='tracekit-lod'>{json_for_script(data)}</script>"


def lod_script(hover: HoverTable) -> str:
    return f"<script>{LOD_SCRIPT % {'div': json.dumps(PLOT_DIV)}}</script>" if hover.detail else ""


def page_html(fig: go.Figure, marks: list[FindingMark], title: str, hover: HoverTable) -> str:
    """The whole page as one string (plotly.js inlined: works offline)."""
    plot = fig.to_html(full_html=False, include_plotlyjs=True, div_id=PLOT_DIV,
                       config={"scrollZoom": True, "displaylogo": False, "responsive": True,
                               "toImageButtonOptions": {"format": "png", "scale": 2}})
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"{plot}<div id='tracekit-tip'></div>"
        "<script type='application/json' id='tracekit-hover'>"
        f"{json_for_script(hover.texts)}</script>"
        f"{lod_data(hover)}"
        "<h2>Findings <button id='reset-view' type='button'>reset view</button></h2>"
        "<p class='help'>Click a row to zoom onto it. On the plot, the yellow band is the "
        "finding's time window, a solid black outline marks the culprit kernel(s) and a dotted "
        "pink outline the kernel(s) it slows down. Hover a bar for kernel name, duration, grid, "
        "blocks/SM, launching op and source line.</p>"
        f"{findings_table(marks)}"
        f"<script>{SCRIPT % {'div': json.dumps(PLOT_DIV)}}</script>"
        f"{lod_script(hover)}"
        "</body></html>\n")


def write_page(text: str, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
