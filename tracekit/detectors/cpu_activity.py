"""What a CPU thread did during a window: the most specific op, record_function label or Python
frame covering most of it, with the user's source line (comm_gap's late launches)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tracekit.detectors.cpu_lines import python_source
from tracekit.detectors.labels import INTERNAL_LABEL
from tracekit.finding import SourceLine
from tracekit.link import source_of_op
from tracekit.load.frames import already_running
from tracekit.source import SourceFiles, call_name
from tracekit.trace import Trace


@dataclass
class CpuActivity:
    """The CPU activity that covers most of a late launch's gap on the launching thread."""

    name: str
    kind: str
    """op | annotation | python"""
    ts: float
    end: float
    source: SourceLine | None
    issuing: bool
    """The activity contains the next collective's own launch: the CPU was busy issuing it."""
    chain: list[str] = field(default_factory=list)
    """From Python frames: the function holding the statement, down to the deepest call that
    holds the window (`tracekit.detectors.cpu_lines`); empty otherwise."""


def display_name(name: str) -> str:
    """Readable names: `<built-in method allreduce of ... at 0x7f..>` -> `allreduce (built-in)`,
    `record_planted_traces.py(144): busy_cpu` -> `busy_cpu()`."""
    text = str(name)
    if text.startswith("<built-in"):
        return f"{call_name(text)} (built-in)"
    if "): " in text and text.split("): ", 1)[0].rsplit("(", 1)[-1].isdigit():
        return text.split("): ", 1)[1] + "()"
    return text


def activity_name(activity: CpuActivity) -> str:
    """How a report names the activity: the Python call chain down to the work that held the
    window (`_normuon_update -> polar_express`) when there is one, else its readable name."""
    if activity.kind == "python" and len(activity.chain) > 1:
        return " -> ".join(activity.chain)
    return display_name(activity.name)


def activity_evidence(activity: CpuActivity) -> dict[str, object]:
    """evidence.cpu_activity: the span picked, its kind and length, and the call chain."""
    out: dict[str, object] = {"name": activity.name, "kind": activity.kind,
                              "dur_us": round(activity.end - activity.ts, 3)}
    if len(activity.chain) > 1:
        out["call_chain"] = list(activity.chain)
    return out


SPAN_KINDS = ("op", "annotation", "python")
"""CpuSpans.kind codes, in the order the frames are stacked."""


@dataclass
class CpuSpans:
    """Every op, user label and Python frame of a trace as flat arrays (built once per trace),
    so that "what covered [lo, hi) on thread T" is a few numpy comparisons per gap.

    Python frames run to hundreds of thousands, so each thread's spans are also kept sorted by
    start (`by_tid`): a window query then touches only the spans starting shortly before it,
    plus the few long ones (see `ThreadSpans`), instead of scanning every span per gap.
    """

    kind: np.ndarray
    """Index into SPAN_KINDS (small ints: comparing 10^5 strings per query would dominate)."""
    row: np.ndarray
    name: np.ndarray
    tid: np.ndarray
    ts: np.ndarray
    end: np.ndarray
    is_python: np.ndarray
    is_annotation: np.ndarray
    by_tid: dict[int, ThreadSpans]
    running_python: np.ndarray
    """Per row of `trace.python`: on the stack when the tracer started (`already_running`)."""

    @classmethod
    def of(cls, trace: Trace) -> CpuSpans:
        kinds, rows, names, tids, starts, ends = [], [], [], [], [], []
        for kind, frame in enumerate((trace.ops, trace.annotations, trace.python)):
            if not len(frame):
                continue
            # Names repeat (a few hundred distinct among 10^5 Python frames): torch's own labels
            # are recognised among the distinct names, then broadcast back.
            codes, uniques = pd.factorize(frame["name"], use_na_sentinel=False)
            distinct = pd.Series(np.asarray(uniques, dtype=object), dtype=object).astype(str)
            keep = ~distinct.str.match(INTERNAL_LABEL).to_numpy(bool)[codes]
            if SPAN_KINDS[kind] == "annotation":
                keep &= (frame["side"] == "cpu").to_numpy()
            kinds.append(np.full(int(keep.sum()), kind, dtype=np.int8))
            rows.append(frame.index.to_numpy()[keep])
            names.append(distinct.to_numpy()[codes[keep]])
            tids.append(frame["tid"].to_numpy(dtype=np.int64)[keep])
            starts.append(frame["ts"].to_numpy(dtype=np.float64)[keep])
            ends.append(frame["end"].to_numpy(dtype=np.float64)[keep])
        if not kinds:
            kinds, rows, names = [np.zeros(0, np.int8)], [np.zeros(0, np.int64)], \
                [np.zeros(0, object)]
            tids, starts, ends = [np.zeros(0, np.int64)], [np.zeros(0)], [np.zeros(0)]
        kind_all = np.concatenate(kinds)
        tid_all, ts_all, end_all = np.concatenate(tids), np.concatenate(starts), \
            np.concatenate(ends)
        by_tid = {int(t): ThreadSpans.of(np.flatnonzero(tid_all == t), ts_all, end_all)
                  for t in np.unique(tid_all)}
        return cls(kind=kind_all, row=np.concatenate(rows), name=np.concatenate(names),
                   tid=tid_all, ts=ts_all, end=end_all,
                   is_python=kind_all == SPAN_KINDS.index("python"),
                   is_annotation=kind_all == SPAN_KINDS.index("annotation"), by_tid=by_tid,
                   running_python=already_running(trace.python))

    def overlapping(self, tid: int, lo: float, hi: float) -> np.ndarray:
        """Indices (ascending) of the spans on thread `tid` with ts < hi and end > lo."""
        thread = self.by_tid.get(int(tid))
        if thread is None:
            return np.zeros(0, dtype=np.int64)
        candidates = thread.candidates(lo, hi)
        return candidates[(self.ts[candidates] < hi) & (self.end[candidates] > lo)]


@dataclass
class ThreadSpans:
    """One thread's spans split by duration, for window queries without a full scan.

    Short spans (at most `short_max` long) that overlap [lo, hi) start in [lo - short_max, hi),
    one searchsorted range of the start-sorted short spans; the long ones (the top 1%: outer
    Python frames, the training loop) are few and checked directly. The answer is exact.
    """

    short_rows: np.ndarray
    short_ts: np.ndarray
    short_max: float
    long_rows: np.ndarray

    @classmethod
    def of(cls, rows: np.ndarray, ts: np.ndarray, end: np.ndarray) -> ThreadSpans:
        dur = end[rows] - ts[rows]
        finite = dur[np.isfinite(dur)]
        short_max = float(np.quantile(finite, 0.99)) if len(finite) else 0.0
        is_long = dur > short_max
        short = rows[~is_long]
        order = np.argsort(ts[short], kind="stable")
        return cls(short_rows=short[order], short_ts=ts[short][order], short_max=short_max,
                   long_rows=rows[is_long])

    def candidates(self, lo: float, hi: float) -> np.ndarray:
        """Sorted span indices that may overlap [lo, hi) (a superset; callers filter)."""
        first = np.searchsorted(self.short_ts, lo - self.short_max, side="left")
        last = np.searchsorted(self.short_ts, hi, side="left")
        return np.sort(np.concatenate([self.short_rows[first:last], self.long_rows]))


def cpu_activity(trace: Trace, spans: CpuSpans, tid: int, lo: float, hi: float,
                 launch_ts: float, dominant_frac: float, files: SourceFiles) -> CpuActivity | None:
    """The most specific op/label/frame on thread `tid` covering >= dominant_frac of [lo, hi).

    Most specific = the shortest such span (a loop inside `step()` rather than `step()`); a
    record_function label about as short (within 10%) wins, being the user's own name for it.
    Without one, the span overlapping the window most. The source line comes from the op's
    linked source, else from the Python frames (`tracekit.detectors.cpu_lines`).
    """
    width = max(hi - lo, 1e-9)
    hit = spans.overlapping(tid, lo, hi)
    if not len(hit):
        return None
    ov = np.minimum(spans.end[hit], hi) - np.maximum(spans.ts[hit], lo)
    dur = spans.end[hit] - spans.ts[hit]
    dominant = np.flatnonzero(ov >= dominant_frac * width)
    if len(dominant):
        shortest = dominant[np.argmin(dur[dominant])]
        labels = dominant[spans.is_annotation[hit[dominant]]
                          & (dur[dominant] <= 1.1 * dur[shortest])]
        pick = labels[np.argmin(dur[labels])] if len(labels) else shortest
    else:
        pick = np.lexsort((dur, -ov))[0]
    i = hit[pick]
    kind, row = SPAN_KINDS[spans.kind[i]], int(spans.row[i])
    source = source_of_op(trace.ops, row, or_ancestor=True) if kind == "op" else None
    chain: list[str] = []
    if source is None:
        python = hit[spans.is_python[hit]]
        source, chain = python_source(trace.python, spans.row[python].astype(np.int64),
                                      ov[spans.is_python[hit]], width, dominant_frac,
                                      spans.running_python, files)
    issuing = bool(spans.ts[i] <= launch_ts <= spans.end[i])
    return CpuActivity(name=str(spans.name[i]), kind=kind, ts=float(spans.ts[i]),
                       end=float(spans.end[i]), source=source, issuing=issuing, chain=chain)
