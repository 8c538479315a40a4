"""comm_gap: the communication stream sits idle between two collectives of one step.

The pathology, in plain words: a communication-bound step is only as fast as its comm stream is
busy. When the next collective does not follow the previous one immediately, the network idles
and the step's critical path grows by that gap. Three causes account for nearly every gap, and
each needs a different fix, so every gap is classified:

- late launch: the CPU issued the next collective only after the previous one had finished (its
  launch call, cuLaunchKernelEx/cudaLaunchKernel, returned after the previous collective ended).
  The GPU had nothing queued; the thread was busy with something else (optimizer math, a
  `.item()`, Python overhead, a sleep). The finding names what that thread did during the gap:
  the most specific CPU op, record_function label or Python frame covering at least half of it,
  with its user source line. Fix: issue communication earlier / move the CPU work.
- waiting on compute: the collective was launched in time but started only when a kernel on
  another stream, launched before it, ended (the NCCL stream waits on an event recorded after
  that kernel: the collective's input was produced by it). The finding names the longest
  kernel on that stream during the wait (what the GPU did instead) and the kernel that ended
  right before the collective started. Fix: produce the communicated tensors first, launch the
  unrelated compute after the collective is issued.
- SM starvation: launched in time, no dependency, but an SM-filling non-GEMM kernel on another
  stream ran during the wait (see sm_contention: NCCL's blocks could not be scheduled).
- compute saturation: the same, but the kernel holding every SM was a GEMM or attention kernel
  (overlap one usually wants, so sm_contention does not blame it; the gap is still real: a
  persistent cuBLAS kernel with one block per SM keeps NCCL's blocks off the GPU).
- unexplained: none of the above is visible in the trace (a peer rank's delay surfaces as a long
  collective, not as a gap; a gap with no cause is still reported, with what is known).

A gap is the time between the end of one NCCL kernel and the start of the next on the same
stream, within one GPU-side step, minus any other work that ran on that stream meanwhile. It is
reported when it reaches `min_gap_us` (50 us: a collective issued back to back starts 2-20 us
after its predecessor on an H200, so 50 us is unmistakably idle) and `min_gap_step_frac` of the
rank's median step (0.5%: below that a gap cannot matter to the step time; above it a few of
them already show up as low-severity findings).

Findings are merged per (rank, classification, cause line or name) with the count and total cost
(the summed idle time); start/dur/step point at the largest gap; `cause.ordering` says what came
before the next collective, e.g. "all_reduce(bucket1) issued 2.37 ms after all_reduce(bucket0)
finished; CPU in cpu:busy (scripts/train.py:167)".
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tracekit.detectors import register
from tracekit.detectors.sm_contention import (
    INTERNAL_LABEL,
    culprit_of,
    dependency_rows,
    kernel_source,
    kernel_steps,
    launch_columns,
    num_sms_of,
    ready_after_input,
    sm_filling,
    source_key,
    source_of_op,
    suspect_mask,
    user_label,
    window_pairs,
)
from tracekit.detectors.steptime import run_step_us
from tracekit.finding import Cause, Culprit, Finding, SourceLine, severity_from_cost
from tracekit.names import kernel_label
from tracekit.overlap import Coverage
from tracekit.trace import Run, Trace

LATE_LAUNCH = "late_launch"
WAITING_ON_COMPUTE = "waiting_on_compute"
SM_STARVATION = "sm_starvation"
COMPUTE_SATURATION = "compute_saturation"
UNEXPLAINED = "unexplained"

SUGGESTIONS = {
    LATE_LAUNCH: "Issue the collective before the CPU work that delays it (or move that work "
                 "off the launching thread), so the comm stream always has the next collective "
                 "queued.",
    WAITING_ON_COMPUTE: "Produce the tensors this collective sends first, and launch unrelated "
                        "compute after the collective is issued, so communication overlaps it.",
    SM_STARVATION: "Bound the grid of the SM-filling kernel (a persistent kernel on a few SMs) "
                   "or move it away from the collective; see the sm_contention finding.",
    COMPUTE_SATURATION: "A GEMM/attention kernel held every SM while the collective waited; "
                        "if communication is on the critical path, leave SMs to NCCL (an SM "
                        "carve-out for the GEMM) or issue the collective before that kernel.",
    UNEXPLAINED: "Inspect the gap on the timeline; the trace shows no CPU delay, dependency or "
                 "SM-filling kernel behind it.",
}


@dataclass
class GapParams:
    """Thresholds of the detector; see the module docstring for why each default."""

    min_gap_us: float = 50.0
    min_gap_step_frac: float = 0.005
    min_waves: float = 1.0
    dominant_frac: float = 0.5
    """A CPU activity explains a late launch when it covers this share of the gap."""


# ---- gaps ------------------------------------------------------------------------------------

def comm_gaps(trace: Trace, params: GapParams) -> pd.DataFrame:
    """Idle gaps between consecutive NCCL kernels of one step on each comm stream."""
    k = trace.kernels
    cols = ["prev_row", "row", "stream", "step", "prev_end", "ts", "gap", "idle"]
    nccl_rows = np.flatnonzero(k["is_nccl"].to_numpy(dtype=bool))
    if len(nccl_rows) < 2:
        return pd.DataFrame(columns=cols)
    steps = kernel_steps(trace)
    n = pd.DataFrame({"row": nccl_rows, "stream": k["stream"].to_numpy()[nccl_rows],
                      "ts": k["ts"].to_numpy(dtype=np.float64)[nccl_rows],
                      "end": k["end"].to_numpy(dtype=np.float64)[nccl_rows],
                      "step": steps[nccl_rows]}).sort_values(["stream", "ts"], kind="stable")
    by_stream = n.groupby("stream", sort=False)
    n["prev_row"] = by_stream["row"].shift(1)
    n["prev_end"] = by_stream["end"].cummax().groupby(n["stream"], sort=False).shift(1)
    n["prev_step"] = by_stream["step"].shift(1)
    gaps = n[n["prev_row"].notna() & (n["prev_step"] == n["step"])].copy()
    gaps["prev_row"] = gaps["prev_row"].astype(np.int64)
    gaps["gap"] = gaps["ts"] - gaps["prev_end"]
    gaps = gaps[gaps["gap"] > 0]
    # Other work on the same stream inside the gap (a stream shared with compute) is not idle.
    gaps["idle"] = gaps["gap"] - other_work_on_stream(trace, gaps)
    return gaps[cols].reset_index(drop=True)


def other_work_on_stream(trace: Trace, gaps: pd.DataFrame) -> np.ndarray:
    """Time covered by non-NCCL kernels and memcpy/memset on the gap's own stream."""
    out = np.zeros(len(gaps))
    k, mem = trace.kernels, trace.gpu_mem
    for stream in gaps["stream"].unique():
        rows = (gaps["stream"] == stream).to_numpy()
        kk = k[(k["stream"] == stream) & ~k["is_nccl"].astype(bool)]
        mm = mem[mem["stream"] == stream] if len(mem) else mem
        cov = Coverage.of(np.concatenate([kk["ts"].to_numpy(float), mm["ts"].to_numpy(float)]),
                          np.concatenate([kk["end"].to_numpy(float), mm["end"].to_numpy(float)]))
        out[rows] = cov.overlap(gaps["prev_end"].to_numpy()[rows], gaps["ts"].to_numpy()[rows])
    return out


def classify_gaps(trace: Trace, gaps: pd.DataFrame, params: GapParams) -> pd.DataFrame:
    """Add launch times, classification and culprit kernel rows (vectorised over gaps)."""
    k = trace.kernels
    launch = launch_columns(trace)
    rows = gaps["row"].to_numpy()
    g = gaps.assign(launch_ts=launch["launch_ts"].to_numpy()[rows],
                    launch_end=launch["launch_end"].to_numpy()[rows],
                    launch_tid=launch["launch_tid"].to_numpy()[rows])
    launched_after = np.clip(g["launch_end"] - g["prev_end"], 0.0, g["gap"]).fillna(0.0)
    g["late_part"] = launched_after
    is_late = (g["late_part"] >= g["gap"] - g["late_part"]) & g["launch_ts"].notna()
    g["ready"] = np.fmax(g["prev_end"].to_numpy(), g["launch_end"].to_numpy())
    g["ready"] = np.minimum(g["ready"].fillna(g["prev_end"]), g["ts"])
    g["dependency_row"] = dependency_rows(trace, g)
    # The wait splits in two: for the input (until the dependency kernel ended), then for SMs.
    g["input_ready"] = ready_after_input(k, g["dependency_row"].to_numpy(),
                                         g["ready"].to_numpy(dtype=np.float64),
                                         g["ts"].to_numpy(dtype=np.float64))
    input_wait = (g["input_ready"] - g["ready"]).to_numpy()
    after_input = (g["ts"] - g["input_ready"]).to_numpy()
    # The longest overlap with the input wait by a kernel on the dependency's stream (what the
    # GPU did instead), and with the rest by an SM-filling non-GEMM kernel on another stream.
    g["compute_row"], _ = top_overlap(trace, g, lambda s: k["stream"].to_numpy() == s,
                                      g["dependency_row"].to_numpy(), "ready", "input_ready")
    suspects = suspect_mask(k, num_sms_of(trace), params.min_waves)
    fillers = sm_filling(k, num_sms_of(trace), params.min_waves) & ~k["is_nccl"].to_numpy(bool)
    g["suspect_row"], suspect_ov = top_overlap(
        trace, g, lambda s: suspects & (k["stream"].to_numpy() != s), None, "input_ready", "ts")
    g["filler_row"], filler_ov = top_overlap(
        trace, g, lambda s: fillers & (k["stream"].to_numpy() != s), None, "input_ready", "ts")
    # A kernel explains a delayed start only if it ran through most of the wait.
    starved = (g["suspect_row"] >= 0) & (suspect_ov >= params.dominant_frac * after_input)
    saturated = (g["filler_row"] >= 0) & (filler_ov >= params.dominant_frac * after_input)
    has_input = g["dependency_row"].to_numpy() >= 0
    kind = np.select(
        [is_late, has_input & (input_wait >= after_input), starved, saturated, has_input],
        [LATE_LAUNCH, WAITING_ON_COMPUTE, SM_STARVATION, COMPUTE_SATURATION, WAITING_ON_COMPUTE],
        UNEXPLAINED)
    return g.assign(kind=kind, input_wait=input_wait, after_input=after_input,
                    starved_by_row=np.where(starved, g["suspect_row"], -1))


def top_overlap(trace: Trace, g: pd.DataFrame, mask_for_stream: Any,
                dependency: np.ndarray | None, lo_col: str, hi_col: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per gap, the kernel overlapping [g[lo_col], g[hi_col]) the most (row, overlap), among a
    mask chosen per stream.

    With `dependency`, the mask is built from the dependency kernel's stream (and gaps without a
    dependency get -1); otherwise from the gap's own comm stream.
    """
    k = trace.kernels
    out = np.full(len(g), -1, dtype=np.int64)
    out_ov = np.zeros(len(g))
    streams = (k["stream"].to_numpy()[np.clip(dependency, 0, None)] if dependency is not None
               else g["stream"].to_numpy())
    valid = dependency >= 0 if dependency is not None else np.ones(len(g), dtype=bool)
    ts, end = k["ts"].to_numpy(dtype=np.float64), k["end"].to_numpy(dtype=np.float64)
    for stream in np.unique(streams[valid]):
        sel = np.flatnonzero(valid & (streams == stream))
        rows = np.flatnonzero(mask_for_stream(stream))
        lo, hi = g[lo_col].to_numpy()[sel], g[hi_col].to_numpy()[sel]
        wi, kj, ov = window_pairs(lo, hi, ts[rows], end[rows])
        if not len(wi):
            continue
        best = pd.DataFrame({"w": wi, "row": rows[kj], "ov": ov}).sort_values("ov")
        best = best.groupby("w").last()
        out[sel[best.index.to_numpy()]] = best["row"].to_numpy()
        out_ov[sel[best.index.to_numpy()]] = best["ov"].to_numpy()
    return out, out_ov


# ---- what the CPU did during a late launch ----------------------------------------------------

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


def display_name(name: str) -> str:
    """Readable names: `<built-in method allreduce of ... at 0x7f..>` -> `allreduce (built-in)`,
    `record_planted_traces.py(144): busy_cpu` -> `busy_cpu()`."""
    text = str(name)
    if text.startswith("<built-in"):
        return f"{builtin_name(text)} (built-in)"
    if "): " in text and text.split("): ", 1)[0].rsplit("(", 1)[-1].isdigit():
        return text.split("): ", 1)[1] + "()"
    return text


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
                   is_annotation=kind_all == SPAN_KINDS.index("annotation"), by_tid=by_tid)

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
                 launch_ts: float, params: GapParams, files: SourceFiles) -> CpuActivity | None:
    """The most specific op/label/frame on thread `tid` covering >= dominant_frac of [lo, hi).

    Most specific = the shortest such span (a loop inside `step()` rather than `step()`); a
    record_function label about as short (within 10%) wins, being the user's own name for it.
    Without one, the span overlapping the window most. The source line comes from the op's
    linked source, else from the innermost Python frames (see `python_source`).
    """
    width = max(hi - lo, 1e-9)
    hit = spans.overlapping(tid, lo, hi)
    if not len(hit):
        return None
    ov = np.minimum(spans.end[hit], hi) - np.maximum(spans.ts[hit], lo)
    dur = spans.end[hit] - spans.ts[hit]
    dominant = np.flatnonzero(ov >= params.dominant_frac * width)
    if len(dominant):
        shortest = dominant[np.argmin(dur[dominant])]
        labels = dominant[spans.is_annotation[hit[dominant]]
                          & (dur[dominant] <= 1.1 * dur[shortest])]
        pick = labels[np.argmin(dur[labels])] if len(labels) else shortest
    else:
        pick = np.lexsort((dur, -ov))[0]
    i = hit[pick]
    kind, row = SPAN_KINDS[spans.kind[i]], int(spans.row[i])
    source = source_of_op(trace.ops, row) if kind == "op" else None
    if source is None:
        source = python_source(trace, spans, tid, lo, hi, params.dominant_frac, files)
    issuing = bool(spans.ts[i] <= launch_ts <= spans.end[i])
    return CpuActivity(name=str(spans.name[i]), kind=kind, ts=float(spans.ts[i]),
                       end=float(spans.end[i]), source=source, issuing=issuing)


def python_source(trace: Trace, spans: CpuSpans, tid: int, lo: float, hi: float,
                  dominant_frac: float, files: SourceFiles) -> SourceLine | None:
    """The user's line the thread spent the window in, from with_stack Python frames.

    Take the innermost frame covering >= dominant_frac of the window and the nearest user frame
    at or above it. If that is the innermost frame itself (the user's own function took the
    time), the line is its call site in the calling user function when there is one. Otherwise
    it is the call, in the user frame, of the first frame below it (dist.all_reduce ->
    c10d's wrapper -> ...: the frames' function names are tried in turn). Call sites are found
    by parsing the user function (the profiler gives def lines only); when the file cannot be
    read or has changed since recording, the def line is given (line_exact false).
    """
    py = trace.python
    if not len(py):
        return None
    width = max(hi - lo, 1e-9)
    hit = spans.overlapping(tid, lo, hi)
    hit = hit[spans.is_python[hit]]
    ov = np.minimum(spans.end[hit], hi) - np.maximum(spans.ts[hit], lo)
    rows = spans.row[hit[ov >= dominant_frac * width]].astype(np.int64)
    if not len(rows):
        return None
    parents = py["parent"].to_numpy()
    is_user = py["is_user"].to_numpy(dtype=bool)
    depth = py["depth"].to_numpy()[rows]
    chain = [int(rows[np.lexsort((py["dur"].to_numpy()[rows], -depth))[0]])]
    while parents[chain[-1]] >= 0 and len(chain) < 256:
        chain.append(int(parents[chain[-1]]))
    user_pos = [i for i, row in enumerate(chain) if is_user[row]]
    if not user_pos:
        return None
    pos = user_pos[0]
    if pos == 0 and len(user_pos) > 1 and user_pos[1] == 1:
        pos = 1  # the user's function itself is the hot frame: give its call site
    if pos == 0:
        row = chain[0]
        return SourceLine(file=str(py.at[row, "file"]), line=int(py.at[row, "line"]),
                          function=str(py.at[row, "function"]), line_exact=False)
    caller = chain[pos]
    file, def_line = str(py.at[caller, "file"]), int(py.at[caller, "line"])
    function = str(py.at[caller, "function"])
    callees = [builtin_name(str(py.at[row, "function"])) for row in reversed(chain[:pos])]
    path = files.resolve(file)
    line = next((found for callee in callees
                 if (found := call_line(path, def_line, function, callee)) is not None), None)
    return SourceLine(file=file, line=line or def_line, function=function,
                      line_exact=line is not None)


def builtin_name(function: str) -> str:
    """`<built-in function sleep>` -> `sleep`; `<built-in method item of ...>` -> `item`."""
    text = function.strip()
    if text.startswith("<built-in"):
        parts = text.strip("<>").split()
        return parts[2] if len(parts) > 2 else text
    return text


def resolve_file(file: str, roots: tuple[Path, ...]) -> Path | None:
    """The source file on disk: absolute, or relative to a root or to a root's subdirectory.

    The profiler strips the sys.path entry from frame files; for `python scripts/x.py` that
    entry is scripts/, so the frame says `x.py`: one level of subdirectories is also searched,
    and the file is used only when exactly one match exists.
    """
    path = Path(file)
    if path.is_absolute():
        return path if path.is_file() else None
    for root in roots:
        if (root / path).is_file():
            return root / path
    for root in roots:
        try:
            matches = [p for p in root.glob(f"*/{file}") if p.is_file()]
        except (OSError, ValueError):
            continue
        if len(matches) == 1:
            return matches[0]
    return None


@dataclass
class SourceFiles:
    """Where relative source paths are looked for, each file's lookup done once per detect call.

    Resolving globs a directory level per root; per gap that cost more than the analysis itself.
    Not cached across calls: files may appear or change between analyses in one process.
    """

    roots: tuple[Path, ...]
    found: dict[str, Path | None] = field(default_factory=dict)

    def resolve(self, file: str) -> Path | None:
        if file not in self.found:
            self.found[file] = resolve_file(file, self.roots)
        return self.found[file]


@lru_cache(maxsize=256)
def _parsed(path: Path) -> ast.Module | None:
    try:
        return ast.parse(path.read_text())
    except (OSError, SyntaxError, ValueError):
        return None


def call_line(path: Path | None, def_line: int, function: str, callee: str) -> int | None:
    """Line of the (first) call to `callee` in the function defined at `def_line`.

    None when the file is unreadable or no function `function` is defined at that line (the file
    changed since the trace was recorded), or the function calls `callee` nowhere.
    """
    tree = _parsed(path) if path else None
    if tree is None or path is None:
        return None
    calls = _calls_in_function(path, function, def_line)
    return None if calls is None else calls.get(callee)


@lru_cache(maxsize=256)
def _functions(path: Path) -> dict[tuple[str, int], ast.FunctionDef | ast.AsyncFunctionDef]:
    """(name, def line) -> the first such function of the parsed file, in ast.walk order.

    Indexed once per file: walking the whole tree for every gap dominated the detector.
    """
    tree = _parsed(path)
    found: dict[tuple[str, int], ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.setdefault((node.name, node.lineno), node)
    return found


@lru_cache(maxsize=1024)
def _calls_in_function(path: Path, function: str, def_line: int) -> dict[str, int] | None:
    """Called name -> first line it is called on, in the function; None if no such function."""
    node = _functions(path).get((function, def_line))
    if node is None:
        return None
    first: dict[str, int] = {}
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            name = _called_name(call.func)
            if name is not None and call.lineno < first.get(name, call.lineno + 1):
                first[name] = call.lineno
    return first


def _called_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


# ---- findings --------------------------------------------------------------------------------

def collective_label(trace: Trace, row: int, launch: pd.DataFrame) -> str:
    """`allreduce(comm:all_reduce:bucket1)`: collective name and the user's label at issue."""
    k = trace.kernels
    coll = k.at[row, "collective"]
    coll = str(coll) if isinstance(coll, str) and coll else kernel_label(k.at[row, "name"])
    label = user_label(trace, int(launch.at[row, "launch_tid"]),
                       float(launch.at[row, "launch_ts"]))
    return f"{coll}({label})" if label else coll


def _ms(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} us"


def late_activity(trace: Trace, gap: pd.Series, spans: CpuSpans | None, params: GapParams,
                  files: SourceFiles) -> CpuActivity | None:
    """What the launching thread did between the previous collective's end and the launch
    (late launches only; None otherwise)."""
    if gap["kind"] != LATE_LAUNCH or spans is None:
        return None
    return cpu_activity(trace, spans, int(gap["launch_tid"]), float(gap["prev_end"]),
                        float(gap["launch_ts"]), float(gap["launch_ts"]), params, files)


def culprit_row(gap: pd.Series) -> int:
    """The kernel row a non-late gap is blamed on (-1 when none)."""
    return int({WAITING_ON_COMPUTE: gap["compute_row"], SM_STARVATION: gap["suspect_row"],
                COMPUTE_SATURATION: gap["filler_row"]}.get(gap["kind"], -1))


def gap_key(trace: Trace, gap: pd.Series, spans: CpuSpans | None,
            activity: CpuActivity | None, launch: pd.DataFrame | None = None) -> str:
    """What gaps are merged by: the source line (or name) of the CPU work, or the culprit
    kernel's record_function label, else its source line, else its name.

    The same key as `describe_gap` gives, without building the wording, op stacks and labels
    that only the reported (worst) gap of each group needs.
    """
    if gap["kind"] == LATE_LAUNCH and spans is not None:
        source = activity.source if activity else None
        return (source_key(source) or (activity.name if activity else "")) + \
            ("|issuing" if activity and activity.issuing else "")
    row = culprit_row(gap)
    if row < 0:
        return ""
    k = trace.kernels
    if launch is not None:
        # The step's phase (optim:normuon:attn) is what recurs each step; the longest kernel
        # in it (one of polar express's matmuls) may come from a different line each time.
        label = user_label(trace, int(launch.at[row, "launch_tid"]),
                           float(launch.at[row, "launch_ts"]))
        if label:
            return "label:" + label
    op_row = int(k.at[row, "op_idx"]) if "op_idx" in k else -1
    # kernel_source's source line: the linker's line of the kernel's op (or an ancestor's).
    source = source_of_op(trace.ops, op_row) if 0 <= op_row < len(trace.ops) else None
    return source_key(source) or str(k.at[row, "name"])


def describe_gap(trace: Trace, gap: pd.Series, launch: pd.DataFrame, spans: CpuSpans | None,
                 activity: CpuActivity | None) -> dict[str, Any]:
    """Culprit, cause and wording for one gap (called only for the worst gap of each group;
    `gap_key` is what groups them)."""
    k = trace.kernels
    nxt = collective_label(trace, int(gap["row"]), launch)
    prev = collective_label(trace, int(gap["prev_row"]), launch)
    kind = gap["kind"]
    culprit, op, stack, source, what = Culprit(), None, [], None, ""
    extra: dict[str, Any] = {}
    if kind == LATE_LAUNCH and spans is not None:
        after = float(gap["launch_ts"]) - float(gap["prev_end"])
        if activity:
            where = f" ({activity.source.file}:{activity.source.line})" if activity.source else ""
            name = display_name(activity.name)
            what = (f"CPU still issuing it, in {name} for {_ms(activity.end - activity.ts)}"
                    f"{where}" if activity.issuing else f"CPU in {name}{where}")
            op, source = activity.name, activity.source
            extra["cpu_activity"] = {"name": activity.name, "kind": activity.kind,
                                     "dur_us": round(activity.end - activity.ts, 3),
                                     "issuing_the_collective": activity.issuing}
        else:
            what = "no CPU activity recorded on the launching thread"
        ordering = f"{nxt} issued {_ms(after)} after {prev} finished; {what}"
    else:
        row = culprit_row(gap)
        if row >= 0:
            culprit = culprit_of(trace, row)
            op, stack, source = kernel_source(trace, row)
            label = user_label(trace, int(launch.at[row, "launch_tid"]),
                               float(launch.at[row, "launch_ts"]))
            what = kernel_label(k.at[row, "name"]) + (f" ({label})" if label else "")
            extra["culprit_label"] = label
        dep = int(gap["dependency_row"])
        if dep >= 0:
            extra["waited_for_kernel"] = str(k.at[dep, "name"])
        if kind == WAITING_ON_COMPUTE:
            ordering = (f"{nxt} was ready but waited {_ms(float(gap['input_wait']))} for the "
                        f"compute stream (stream {int(k.at[dep, 'stream'])}: {what}, then "
                        f"{kernel_label(k.at[dep, 'name'])})"
                        f"{starved_after(trace, gap, launch)} after {prev} finished")
        elif kind in (SM_STARVATION, COMPUTE_SATURATION):
            input_part = (f"waited {_ms(float(gap['input_wait']))} for its input "
                          f"({kernel_label(k.at[dep, 'name'])}), then " if dep >= 0 else
                          "was ready but ")
            ordering = (f"{nxt} {input_part}started {_ms(float(gap['after_input']))} late "
                        f"while {what} held every SM, after {prev} finished")
        else:
            ordering = f"{nxt} started {_ms(float(gap['gap']))} after {prev} finished"
    return {"culprit": culprit, "cause": Cause(op=op, op_stack=stack, source=source,
                                               ordering=ordering),
            "next": nxt, "prev": prev, "what": what, "extra": extra}


def starved_after(trace: Trace, gap: pd.Series, launch: pd.DataFrame) -> str:
    """", then 186 us more while elementwise_kernel (tie:...) held every SM" when an SM-filling
    kernel held the collective back after its input was ready; "" otherwise."""
    row = int(gap["starved_by_row"])
    if row < 0:
        return ""
    label = user_label(trace, int(launch.at[row, "launch_tid"]),
                       float(launch.at[row, "launch_ts"]))
    name = kernel_label(trace.kernels.at[row, "name"]) + (f" ({label})" if label else "")
    return f", then {_ms(float(gap['after_input']))} more while {name} held every SM,"


TITLES = {
    LATE_LAUNCH: "issued late by the CPU",
    WAITING_ON_COMPUTE: "waiting on compute",
    SM_STARVATION: "starved of SMs",
    COMPUTE_SATURATION: "behind a GEMM holding every SM",
    UNEXPLAINED: "unexplained",
}


def findings_for_rank(trace: Trace, run: Run, params: GapParams,
                      step_us: float | None) -> list[Finding]:
    gaps = comm_gaps(trace, params)
    threshold = max(params.min_gap_us, params.min_gap_step_frac * (step_us or 0.0))
    gaps = gaps[gaps["idle"] >= threshold]
    if gaps.empty:
        return []
    gaps = classify_gaps(trace, gaps.reset_index(drop=True), params)
    launch = launch_columns(trace)
    files = SourceFiles(tuple(_roots(run, trace)))
    spans = CpuSpans.of(trace) if (gaps["kind"] == LATE_LAUNCH).any() else None
    rows = [gap for _, gap in gaps.iterrows()]
    activities = [late_activity(trace, gap, spans, params, files) for gap in rows]
    gaps = gaps.assign(key=[gap_key(trace, gap, spans, activity, launch)
                            for gap, activity in zip(rows, activities, strict=True)],
                       described=range(len(rows)))
    findings = []
    for (kind, _), group in gaps.groupby(["kind", "key"], sort=False):
        worst = group.sort_values("idle").iloc[-1]
        at = int(worst["described"])
        d = describe_gap(trace, rows[at], launch, spans, activities[at])
        total = float(group["idle"].sum())
        steps = sorted({int(s) for s in group["step"] if s >= 0})
        per_step = total / max(1, len(steps))
        what = f": {d['what']}" if d["what"] else ""
        title = (f"comm gap {TITLES[kind]} before {d['next']}{what}"
                 f"{f' x{len(group)}' if len(group) > 1 else ''}")
        evidence = {"classification": kind, "gap_us": round(float(worst["gap"]), 3),
                    "idle_us": round(float(worst["idle"]), 3),
                    "launch_after_prev_end_us": None if pd.isna(worst["launch_ts"]) else
                    round(float(worst["launch_ts"] - worst["prev_end"]), 3),
                    "wait_after_ready_us": round(float(worst["ts"] - worst["ready"]), 3),
                    "input_wait_us": round(float(worst["input_wait"]), 3),
                    "wait_after_input_us": round(float(worst["after_input"]), 3),
                    "threshold_us": round(threshold, 3), "steps": steps,
                    "cost_per_step_us": round(per_step, 3),
                    "previous_collective": d["prev"], "next_collective": d["next"],
                    "comm_stream": int(worst["stream"]), **d["extra"]}
        findings.append(Finding(
            kind="comm_gap", severity=severity_from_cost(per_step, step_us), rank=trace.rank,
            step=int(worst["step"]) if worst["step"] >= 0 else None,
            start_us=float(worst["prev_end"]), dur_us=float(worst["gap"]),
            cost_us=round(total, 3), count=len(group), title=title, culprit=d["culprit"],
            cause=d["cause"], evidence=evidence, suggestion=SUGGESTIONS[kind]))
    return findings


def _roots(run: Run, trace: Trace) -> list[Path]:
    """Where relative source paths are looked for: the linker's roots."""
    if trace.source_roots:
        return list(trace.source_roots)
    try:
        from tracekit.load.run import source_roots
    except ImportError:  # pragma: no cover
        return [Path.cwd()]
    base = run.path if run.path.is_dir() else trace.path.parent
    return list(source_roots(base, run.manifest))


@register("comm_gap")
def detect(run: Run, **params: Any) -> list[Finding]:
    """Idle gaps on comm streams between collectives of one step, classified by cause."""
    p = GapParams(**params)
    findings: list[Finding] = []
    step_us = run_step_us(run)
    for trace in run.traces:
        if len(trace.kernels):
            findings.extend(findings_for_rank(trace, run, p, step_us))
    return findings
