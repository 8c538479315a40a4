"""The self-contained HTML page: the figure (plotly.js embedded) and a findings table.

Clicking a table row zooms the plot onto that finding through `Plotly.relayout`; the page needs
no network, so it can be mailed or attached to an issue.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import plotly.graph_objects as go

from tracekit.timeline.figure import FindingMark, HoverTable, cost_text

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
            f"<td class='num'>{cost_text(f.cost_us)}</td><td class='num'>{f.count}</td>"
            f"<td>{html.escape(f.title)}</td><td><code>{html.escape(where)}</code></td></tr>")
    head = ("<tr><th>#</th><th>severity</th><th>kind</th><th>rank</th><th>step</th>"
            "<th>cost</th><th>count</th><th>what</th><th>where</th></tr>")
    return f"<table class='findings'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def json_for_script(value: object) -> str:
    """JSON safe inside a <script> element (no "</script>" can end it early)."""
    return json.dumps(value, ensure_ascii=False).replace("</", "<\\/")


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
        "<h2>Findings <button id='reset-view' type='button'>reset view</button></h2>"
        "<p class='help'>Click a row to zoom onto it. On the plot, the yellow band is the "
        "finding's time window, a solid black outline marks the culprit kernel(s) and a dotted "
        "pink outline the kernel(s) it slows down. Hover a bar for kernel name, duration, grid, "
        "blocks/SM, launching op and source line.</p>"
        f"{findings_table(marks)}"
        f"<script>{SCRIPT % {'div': json.dumps(PLOT_DIV)}}</script>"
        "</body></html>\n")


def write_page(text: str, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out
