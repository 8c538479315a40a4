"""Interactive Plotly timelines of a Run, with findings overlaid.

    from tracekit.timeline import timeline_figure, write_timeline_html
    fig = timeline_figure(run, findings, step=8)          # a plotly Figure (notebooks)
    write_timeline_html(run, findings, "out.html")        # one offline HTML file

Lanes: per rank, CPU threads (main, autograd), record_function labels, then each GPU stream
labelled compute or NCCL. Ranks are stacked on a shared clock (see `lanes.clock_offsets`).
Needs plotly (not installed on the GPU machines; the rest of tracekit does not import this).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tracekit.errors import UserError
from tracekit.finding import Finding
from tracekit.timeline.lanes import Timeline, build_timeline
from tracekit.trace import Run

__all__ = ["Timeline", "build_timeline", "compare_figure", "timeline_figure",
           "write_timeline_html"]

TRACE_SUFFIXES = (".json", ".gz", ".jsonl", ".pt")


def timeline_figure(run: Run, findings: Sequence[Finding] = (), rank: int | str | None = None,
                    step: int | None = None, window: str | tuple[float, float] | None = None,
                    align: str = "clock", title: str | None = None,
                    focus: Finding | None = None):  # -> go.Figure
    """The timeline as a Plotly figure (for notebooks: `fig.show()`).

    `focus`: one of `findings` to zoom onto (its title box shown), the rest still drawn.
    """
    from tracekit.timeline.figure import focus_on, make_figure  # plotly, when drawn only

    tl = build_timeline(run, rank=rank, step=step, window=window, align=align)
    fig, marks = make_figure(run, tl, list(findings), step=step, title=title)
    if focus is not None:
        focus_on(fig, marks, focus)
    return fig


def compare_figure(before, after, titles: tuple[str, str] = ("before", "after")):
    """Two timeline figures stacked in one (before above after), each keeping its own axes."""
    from tracekit.timeline.figure import stack_figures

    return stack_figures([before, after], list(titles))


def check_output_path(out: Path) -> Path:
    """Refuse outputs that could clobber a trace or a directory; want an .html name."""
    if out.is_dir():
        raise UserError(f"{out} is a directory; give an .html file name (-o timeline.html)")
    if out.name.endswith(TRACE_SUFFIXES) or out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"refusing to write the timeline to {out}: the name must end in .html")
    return out


def write_timeline_html(run: Run, findings: Sequence[Finding], out: str | Path,
                        rank: int | str | None = None, step: int | None = None,
                        window: str | tuple[float, float] | None = None, align: str = "clock",
                        title: str | None = None) -> Path:
    """Write the self-contained interactive timeline page (plotly.js inlined); returns path."""
    from tracekit.timeline.bars import HoverTable
    from tracekit.timeline.figure import figure_title, make_figure
    from tracekit.timeline.page import page_html, write_page

    out = check_output_path(Path(out))
    tl = build_timeline(run, rank=rank, step=step, window=window, align=align)
    hover = HoverTable()
    fig, marks = make_figure(run, tl, list(findings), step=step, title=title, hover=hover)
    plain = title or figure_title(run, tl, step).split("<br>")[0]
    plain = plain.replace("<b>", "").replace("</b>", "")
    return write_page(page_html(fig, marks, plain, hover), out)
