"""How much of the findings' cost sits on exact source lines (issue 11's criterion).

    python3 scripts/exact_lines.py RUN [RUN ...] [--list]

RUN is a run directory (analysed afresh with the current code) or a findings.json (read as
written). Each finding falls in one class:
- exact: `cause.source` is the statement (`line_exact` true);
- inexact: `cause.source` is a def line (`line_exact` false: the report's `~`);
- no line: no `cause.source`, though the finding is about the program (e.g. a slow step that
  was not profiled);
- no code location: the finding's nature has none (`evidence.no_code_location` says why: a
  warm-up step paid once per process, the profiler's own time).
A finding that stands for several lines (`evidence.line_costs`: gpu_idle "at N lines") is split
over them, in proportion to each line's own time.
The share is exact cost / (exact + inexact + no line) cost; findings without a code location
by nature are counted apart. `--list` names every finding that is not exact.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

CLASSES = ("exact", "inexact", "no line", "no code location")


def findings_of(path: Path) -> list[dict[str, Any]]:
    """The Finding dicts of a findings.json, or of a run directory analysed afresh."""
    if path.is_file():
        return json.loads(path.read_text())
    from tracekit.pipeline import analyze_run

    _, findings = analyze_run(path, progress=False)
    return [f.to_dict() for f in findings]


def class_of(finding: dict[str, Any]) -> str:
    if (finding.get("evidence") or {}).get("no_code_location"):
        return "no code location"
    source = (finding.get("cause") or {}).get("source")
    if not source:
        return "no line"
    return "exact" if source.get("line_exact") else "inexact"


def where(finding: dict[str, Any]) -> str:
    source = (finding.get("cause") or {}).get("source")
    if source:
        return f"{source['file']}:{source['line']}" + ("" if source.get("line_exact") else "~")
    return (finding.get("evidence") or {}).get("no_code_location") or "-"


def split_by_line(finding: dict[str, Any]) -> dict[str, float] | None:
    """A finding that stands for several lines (`evidence.line_costs`, e.g. gpu_idle "at N
    lines") split over its lines: its cost in proportion to each line's own time, exact or
    inexact by that line; the time of pieces without a line is "no line"."""
    lines = (finding.get("evidence") or {}).get("line_costs")
    if not lines:
        return None
    cost = float(finding.get("cost_us") or 0.0)
    # line_costs hold the group's whole idle time (evidence.idle_us); the budget may have given
    # the finding less: scale to its cost.
    whole = float(finding["evidence"].get("idle_us") or sum(float(x["us"]) for x in lines))
    scale = cost / whole if whole > 0 else 0.0
    exact = sum(float(x["us"]) for x in lines if x.get("exact")) * scale
    inexact = sum(float(x["us"]) for x in lines if not x.get("exact")) * scale
    return {"exact": exact, "inexact": inexact, "no line": max(cost - exact - inexact, 0.0)}


def summary(findings: list[dict[str, Any]]) -> dict[str, Any]:
    cost = {c: 0.0 for c in CLASSES}
    count = {c: 0 for c in CLASSES}
    for finding in findings:
        c = class_of(finding)
        parts = split_by_line(finding) if c == "no line" else None
        if parts:
            for part, us in parts.items():
                cost[part] += us
            c = max(parts, key=lambda k: parts[k])
        else:
            cost[c] += float(finding.get("cost_us") or 0.0)
        count[c] += 1
    located = cost["exact"] + cost["inexact"] + cost["no line"]
    return {"cost_us": cost, "count": count,
            "exact_share": cost["exact"] / located if located else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--list", action="store_true", help="name every finding not exact")
    args = parser.parse_args(argv)
    for path in args.runs:
        if not path.exists():
            print(f"error: {path}: no such file or directory", file=sys.stderr)
            return 2
        findings = findings_of(path)
        s = summary(findings)
        share = "n/a" if s["exact_share"] is None else f"{100 * s['exact_share']:.1f}%"
        parts = ", ".join(f"{c} {s['count'][c]} ({s['cost_us'][c] / 1000:,.1f} ms)"
                          for c in CLASSES)
        print(f"{path}: {share} of the findings' cost on exact lines; {parts}")
        if args.list:
            for f in sorted(findings, key=lambda f: -float(f.get("cost_us") or 0)):
                c = class_of(f)
                if c != "exact":
                    print(f"  {c:<16} {f['kind']:<19} rank {f['rank']} step {f.get('step')} "
                          f"{float(f.get('cost_us') or 0) / 1000:9.3f} ms  {where(f)}  "
                          f"{f['title'][:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
