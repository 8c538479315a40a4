"""The pipeline: the one place that loads runs, links them, runs the detectors and compares
runs. Commands (and notebooks) call it; nothing below it calls load, link, detectors and compare
together.

- `analysis`: one process holds the whole run (`load`, `analyze_run`, `analyze_run_and_print`);
  what `analyze --html`, `timeline` and `profile` need (a timeline draws every rank's events).
- `rankwise`: one process per rank file, the parent holding only small summaries
  (`analyze_rankwise`); what `analyze` and `diff` use. A single file goes to `analysis`.
- `diff`: both runs of a comparison analysed rankwise, then `tracekit.compare` (`diff_paths`);
  for a side-by-side page, each run's timeline, one run in memory at a time (`diff_timelines`).
"""

from tracekit.load.compiled import save_compiled_kernels
from tracekit.pipeline.analysis import (
    analyze_run,
    analyze_run_and_print,
    load,
    load_trace,
    select_findings,
    write_accounting,
    write_findings,
)
from tracekit.pipeline.diff import diff_paths, diff_timelines
from tracekit.pipeline.rankwise import analyze_rankwise, analyze_rankwise_totals

__all__ = ["analyze_rankwise", "analyze_rankwise_totals", "analyze_run", "analyze_run_and_print",
           "diff_paths", "diff_timelines", "load", "load_trace", "save_compiled_kernels",
           "select_findings", "write_accounting", "write_findings"]
