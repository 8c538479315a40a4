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
from tracekit.timeline.bars import LOD_DETAIL_MAX, LOD_MERGE_PX, LOD_PAD, HoverTable
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
"""
TIP_STYLE = """
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

# Level of detail (figure.py explains when). Each bar trace starts as the overview. After any
# relayout, every rank's bars near its panel's visible window (`pad` window widths either side
# in x, half a height in y, so a short pan shows bars at once) are redrawn, rank by rank: a
# rank draws its bars one by one when its count fits its share of detail_max (an equal share
# per rank shown, so one busy rank does not decide for the others), else merged
# where under merge_px pixels apart, or its overview segments when that is no finer than the
# overview. Ranks outside the visible lanes draw nothing. A rank's bars come in
# chunks sorted by start, decoded the first time a window reaches them; bars of a chunk are
# found by binary search, back to max_len before the window for those reaching into it.
# gd._tracekitLod.pending is the promise of the redraw in flight, build_ms the time spent
# choosing its bars (for tests and measurements).
LOD_SCRIPT = """
(function () {
  var gd = document.getElementById(%(div)s);
  var lod = JSON.parse(document.getElementById("tracekit-lod").textContent);
  function decode(text, Type) {
    var raw = atob(text), bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) { bytes[i] = raw.charCodeAt(i); }
    return new Type(bytes.buffer);
  }
  function axisKey(name) { return name.charAt(0) + "axis" + name.slice(1); }
  var traces = lod.traces.map(function (t) {
    var ov = t.overview;
    return {index: t.index, X: t.x_bytes === 8 ? Float64Array : Float32Array,
            xaxis: axisKey(t.axes[0]), yaxis: axisKey(t.axes[1]), mergedCode: t.merged_code,
            mixedCode: t.mixed_code,
            blocks: t.blocks,
            ov: {x0: decode(ov.x0, Float64Array), x1: decode(ov.x1, Float64Array),
                 y: decode(ov.y, Float32Array), dur: decode(ov.dur, Float32Array),
                 n: decode(ov.n, Float32Array), code: decode(ov.code, Float32Array)}};
  });
  // A chunk's bars, decoded (and its text dropped) the first time a window reaches it.
  function bars(t, c) {
    if (!c.bars) {
      c.bars = {x0: decode(c.x0, t.X), x1: decode(c.x1, t.X), y: decode(c.y, Float32Array),
                dur: decode(c.dur, Float32Array), code: decode(c.code, Int32Array)};
      c.x0 = c.x1 = c.y = c.dur = c.code = null;
    }
    return c.bars;
  }
  // Index of the first start above v (after: true) or at or above v.
  function search(starts, v, after) {
    var lo = 0, hi = starts.length;
    while (lo < hi) {
      var mid = (lo + hi) >> 1;
      if (starts[mid] < v || (after && starts[mid] === v)) { lo = mid + 1; } else { hi = mid; }
    }
    return lo;
  }
  function reaching(block, lo, hi) {
    return block.chunks.filter(function (c) { return c.hi >= lo && c.lo <= hi; });
  }
  // Bars of a rank reaching into [lo, hi] (chunks wholly inside are not decoded).
  function count(t, block, lo, hi) {
    var n = 0;
    reaching(block, lo, hi).forEach(function (c) {
      if (c.lo >= lo && c.hi <= hi) { n += c.n; return; }
      var b = bars(t, c);
      n += search(b.x0, hi, true) - search(b.x0, lo - block.max_len, false);
    });
    return n;
  }
  // Segments of a trace: [x0, x1] on lane y, customdata [text number, us, bar count] on
  // both vertices, a NaN vertex after.
  function push(out, x0, x1, y, c) {
    out.x.push(x0, x1, NaN); out.y.push(y, y, NaN); out.cd.push(c, c, [-1, 0, 0]);
  }
  // A rank's bars of one trace in [lo, hi], each lane's bars under `gap` apart merged (gap
  // -Infinity: none); sink(x0, x1, y, us, bars, text number) gets each segment.
  function drawBars(t, block, lo, hi, gap, sink) {
    var open = new Map();
    function flush(s, y) { sink(s[0], s[1], y, s[2], s[3], s[3] === 1 ? s[4] : t.mergedCode); }
    reaching(block, lo, hi).forEach(function (c) {
      var b = bars(t, c);
      var last = search(b.x0, hi, true);
      for (var i = search(b.x0, lo - block.max_len, false); i < last; i++) {
        var a = b.x0[i], e = b.x1[i], y = b.y[i];
        if (e < lo) { continue; }
        var s = open.get(y);
        if (s && a - s[1] <= gap) {
          s[1] = Math.max(s[1], e); s[2] += b.dur[i]; s[3] += 1;
        } else {
          if (s) { flush(s, y); }
          open.set(y, [a, e, b.dur[i], 1, b.code[i]]);
        }
      }
    });
    open.forEach(flush);
  }
  // A rank's lanes merged across categories (as the overview is): each category's bars
  // merged first, then each lane's segments under `gap` apart, coloured by the category
  // with most time in them.
  function drawMerged(unit, lo, hi, gap, outs) {
    var lanes = new Map();
    unit.forEach(function (m) {
      drawBars(m.t, m.block, lo, hi, gap, function (a, e, y, us, n, code) {
        if (!lanes.has(y)) { lanes.set(y, []); }
        lanes.get(y).push([a, e, us, n, code, m.k]);
      });
    });
    lanes.forEach(function (segs, y) {
      segs.sort(function (p, q) { return p[0] - q[0]; });
      var cur = null;
      function emit() {
        var best = -1, most = -1, kinds = 0;
        cur.by.forEach(function (us, k) { kinds += 1; if (us > most) { most = us; best = k; } });
        var t = traces[best];
        var code = cur.n === 1 ? cur.code : (kinds === 1 ? t.mergedCode : t.mixedCode);
        push(outs[best], cur.a, cur.e, y, [code, cur.us, cur.n]);
      }
      segs.forEach(function (s) {
        if (cur && s[0] - cur.e <= gap) {
          cur.e = Math.max(cur.e, s[1]); cur.us += s[2]; cur.n += s[3];
        } else {
          if (cur) { emit(); }
          cur = {a: s[0], e: s[1], us: s[2], n: s[3], code: s[4], by: new Map()};
        }
        cur.by.set(s[5], (cur.by.get(s[5]) || 0) + s[2]);
      });
      if (cur) { emit(); }
    });
  }
  function drawOverview(t, block, lo, hi, out) {
    var ov = t.ov;
    for (var k = block.overview[0]; k < block.overview[1]; k++) {
      if (ov.x1[k] < lo || ov.x0[k] > hi) { continue; }
      push(out, ov.x0[k], ov.x1[k], ov.y[k], [ov.code[k], ov.dur[k], ov.n[k]]);
    }
  }
  function viewOf(t) {
    var fl = gd._fullLayout, xr = fl[t.xaxis].range, yr = fl[t.yaxis].range;
    var lo = Math.min(xr[0], xr[1]), hi = Math.max(xr[0], xr[1]), w = hi - lo;
    var ylo = Math.min(yr[0], yr[1]), yhi = Math.max(yr[0], yr[1]), h = yhi - ylo;
    var pad = w * lod.pad;
    return {key: t.xaxis + t.yaxis, lo: lo, hi: hi, w: w, plo: lo - pad, phi: hi + pad,
            ylo: ylo - h / 2, yhi: yhi + h / 2, yin: [ylo, yhi],
            gap: w / Math.max(fl[t.xaxis]._length || 1000, 1) * lod.merge_px};
  }
  // The units of detail: one rank of one panel, with its block in each category's trace.
  var units = {};
  traces.forEach(function (t, k) {
    t.blocks.forEach(function (block) {
      var key = t.xaxis + t.yaxis + ":" + block.rank;
      (units[key] = units[key] || []).push({t: t, block: block, k: k});
    });
  });
  var state = {pending: null, drawn: {}};
  gd._tracekitLod = state;
  traces.forEach(function (t) {
    var v = viewOf(t);
    state.drawn[v.key] = {plo: v.lo, phi: v.hi, ylo: v.yin[0], yhi: v.yin[1], w: v.w,
                          merged: true};
  });
  function update() {
    var views = {}, stale = false;
    traces.forEach(function (t) {
      var v = viewOf(t), d = state.drawn[v.key];
      views[v.key] = v;
      var same = !d.merged || Math.abs(v.w - d.w) <= 1e-9 * v.w;
      if (!(same && v.lo >= d.plo && v.hi <= d.phi && v.yin[0] >= d.ylo && v.yin[1] <= d.yhi)) {
        stale = true;
      }
    });
    if (!stale) { return; }
    var t0 = performance.now();
    // Each visible rank of each panel: its bars near the window, over all categories.
    var counts = {};
    Object.keys(units).forEach(function (key) {
      var unit = units[key], v = views[unit[0].t.xaxis + unit[0].t.yaxis];
      var shown = unit.filter(function (m) { return m.block.y1 >= v.ylo && m.block.y0 <= v.yhi; });
      if (!shown.length) { return; }
      counts[key] = 0;
      shown.forEach(function (m) { counts[key] += count(m.t, m.block, v.plo, v.phi); });
    });
    // Each rank shown gets an equal share of detail_max.
    var keys = Object.keys(counts), detail = {};
    keys.forEach(function (key) { detail[key] = counts[key] <= lod.detail_max / keys.length; });
    var outs = traces.map(function () { return {x: [], y: [], cd: []}; }), merged = {};
    keys.forEach(function (key) {
      var unit = units[key], v = views[unit[0].t.xaxis + unit[0].t.yaxis];
      if (detail[key]) {
        unit.forEach(function (m) {
          drawBars(m.t, m.block, v.plo, v.phi, -Infinity, function (a, e, y, us, n, code) {
            push(outs[m.k], a, e, y, [code, us, n]);
          });
        });
        return;
      }
      merged[v.key] = true;
      if (v.gap >= lod.overview_gap * (1 - 1e-9)) {
        unit.forEach(function (m) { drawOverview(m.t, m.block, v.plo, v.phi, outs[m.k]); });
      } else {
        drawMerged(unit, v.plo, v.phi, v.gap, outs);
      }
    });
    var change = {x: [], y: [], customdata: []};
    traces.forEach(function (t, k) {
      change.x.push(new t.X(outs[k].x)); change.y.push(new Float32Array(outs[k].y));
      change.customdata.push(outs[k].cd);
    });
    Object.keys(views).forEach(function (key) {
      var v = views[key];
      state.drawn[key] = {plo: v.plo, phi: v.phi, ylo: v.ylo, yhi: v.yhi, w: v.w,
                          merged: !!merged[key]};
    });
    state.build_ms = performance.now() - t0;
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
    data = {"traces": hover.detail, "detail_max": LOD_DETAIL_MAX, "merge_px": LOD_MERGE_PX,
            "pad": LOD_PAD, "overview_gap": hover.overview_gap}
    return f"<script type='application/json' id='tracekit-lod'>{json_for_script(data)}</script>"


def lod_script(hover: HoverTable) -> str:
    return f"<script>{LOD_SCRIPT % {'div': json.dumps(PLOT_DIV)}}</script>" if hover.detail else ""


def plot_parts(fig: go.Figure, hover: HoverTable) -> tuple[str, str]:
    """A page's plot (plotly.js inlined: works offline) with its hover texts and bars, and
    the scripts that go after the rest of the page (tooltip, table rows, level of detail)."""
    plot = fig.to_html(full_html=False, include_plotlyjs=True, div_id=PLOT_DIV,
                       config={"scrollZoom": True, "displaylogo": False, "responsive": True,
                               "toImageButtonOptions": {"format": "png", "scale": 2}})
    head = (f"{plot}<div id='tracekit-tip'></div>"
            "<script type='application/json' id='tracekit-hover'>"
            f"{json_for_script(hover.texts)}</script>{lod_data(hover)}")
    tail = f"<script>{SCRIPT % {'div': json.dumps(PLOT_DIV)}}</script>{lod_script(hover)}"
    return head, tail


def page_html(fig: go.Figure, marks: list[FindingMark], title: str, hover: HoverTable) -> str:
    """The whole page as one string (plotly.js inlined: works offline)."""
    plot, scripts = plot_parts(fig, hover)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{STYLE}{TIP_STYLE}</style></head><body>"
        f"{plot}"
        "<h2>Findings <button id='reset-view' type='button'>reset view</button></h2>"
        "<p class='help'>Click a row to zoom onto it. On the plot, the yellow band is the "
        "finding's time window, a solid black outline marks the culprit kernel(s) and a dotted "
        "pink outline the kernel(s) it slows down. Hover a bar for kernel name, duration, grid, "
        "blocks/SM, launching op and source line.</p>"
        f"{findings_table(marks)}{scripts}"
        "</body></html>\n")


def write_page(text: str, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
