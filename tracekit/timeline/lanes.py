"""Turn a Run's frames into timeline rows: lanes (one per CPU thread / GPU stream) and bars.

Everything here is pandas/numpy (no plotly), so it is cheap to test and reuse. Times come out
in milliseconds on the timeline's axis: every rank is shifted by one offset (see `clock_offsets`)
so several ranks line up on a common clock.

Why these lanes: a person reading a training trace asks "what was each CPU thread doing, and what
ran on each GPU stream, and which stream is NCCL". So a rank gets, top to bottom, its CPU threads
(main thread first: the one that holds the ProfilerStep spans; then autograd threads), a lane of
record_function labels when the program has any, then its GPU streams, compute before NCCL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tracekit.errors import UserError
from tracekit.timeline.rows import (
    BAR_COLUMNS,
    STEP_PREFIX,
    annotation_bars,
    cpu_bars,
    idle_bars,
    kernel_bars,
    memory_bars,
)
from tracekit.trace import Run, Trace, select_traces

# Space between two ranks' blocks of lanes, in lane units.
RANK_GAP = 0.8

LANE_COLUMNS = ["rank", "y", "label", "kind", "tid", "stream"]


@dataclass
class Timeline:
    """What the figure is drawn from; all x values in ms on the aligned axis."""

    bars: pd.DataFrame
    """One row per drawn span: rank, y (lane), x0, x1 (ms), category, hover (HTML text), name,
    stream (-1 on CPU lanes), ts/end (trace clock, us), is_nccl, kind (kernel|memory|cpu_op|
    annotation)."""
    lanes: pd.DataFrame
    """rank, y, label, kind (cpu|annotation|gpu|idle), tid, stream."""
    steps: pd.DataFrame
    """rank, step, side (cpu|gpu), x0, x1 (ms), y0, y1 (the rank's lanes of that side)."""
    offsets_us: dict[int, float]
    """Per rank: add to a trace-clock time (us) to get the aligned axis (us)."""
    align: str
    origin_text: str
    """What x = 0 is, in words, for the axis title."""
    window_ms: tuple[float, float] | None = None

    def to_ms(self, rank: int, ts_us: float | np.ndarray) -> float | np.ndarray:
        return (ts_us + self.offsets_us[rank]) / 1000.0

    def rank_span(self, rank: int) -> tuple[float, float]:
        """The y range of a rank's lanes (top, bottom), with a little room."""
        ys = self.lanes.loc[self.lanes["rank"] == rank, "y"]
        return float(ys.min()) - 0.5, float(ys.max()) + 0.5


def parse_rank(rank: int | str | None) -> int | str:
    """`--rank 1` -> 1, `--rank all` (or None) -> "all"; anything else is a clear error."""
    if rank is None or str(rank).strip().lower() == "all":
        return "all"
    try:
        return int(rank)
    except (TypeError, ValueError):
        raise UserError(f"--rank must be a rank number or 'all', not {rank!r}") from None


def timeline_traces(run: Run, rank: int | str | None) -> list[Trace]:
    """The traces to draw: all, or one rank (a clear error when the rank is not in the run)."""
    wanted = parse_rank(rank)
    return select_traces(run, None if wanted == "all" else int(wanted))


def first_step_start(trace: Trace, step: int | None = None) -> float | None:
    """CPU start of `step` (or of the first ProfilerStep) on the trace clock, in us."""
    steps = trace.steps
    if steps.empty:
        return None
    if step is not None:
        steps = steps[steps["step"] == step]
        if steps.empty:
            return None
    starts = steps[["cpu_ts", "gpu_ts"]].min(axis=1)
    return float(starts.min())


def earliest_event(trace: Trace) -> float:
    """First timestamp of anything drawn (for traces without ProfilerStep spans)."""
    starts = [frame["ts"].min() for frame in (trace.kernels, trace.gpu_mem, trace.ops)
              if len(frame)]
    return float(min(starts)) if starts else 0.0


def base_time_us(trace: Trace) -> float:
    """Kineto's baseTimeNanoseconds (the trace clock's epoch), in us; 0 when absent."""
    value = trace.meta.get("baseTimeNanoseconds") if trace.meta else None
    try:
        return float(value) / 1000.0 if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


def clock_offsets(traces: list[Trace], align: str) -> tuple[dict[int, float], str]:
    """Per-rank offsets (us) that put the ranks on one axis, and what x = 0 means.

    align="clock" (the default) keeps the ranks' real relative timing: Kineto times are
    `baseTimeNanoseconds + ts`, the host clock, which is shared by ranks of one machine (and
    NTP-close across machines). That is what shows a rank waiting for a slower peer, the usual
    reason a collective looks long. x = 0 is the earliest first-ProfilerStep start of all ranks.
    align="step" shifts each rank so its own first ProfilerStep starts at 0: use it when ranks
    ran on hosts whose clocks disagree.
    """
    if align not in ("clock", "step"):
        raise UserError(f"--align must be 'clock' or 'step', not {align!r}")
    starts = {t.rank: first_step_start(t) for t in traces}
    anchors = {r: s if s is not None else earliest_event(t)
               for (r, s), t in zip(starts.items(), traces, strict=True)}
    has_steps = all(s is not None for s in starts.values())
    anchor_name = "first ProfilerStep start" if has_steps else "first event"
    if align == "step":
        return {r: -a for r, a in anchors.items()}, f"each rank's own {anchor_name}"
    bases = {t.rank: base_time_us(t) for t in traces}
    min_base = min(bases.values())
    shifted = {r: anchors[r] + bases[r] - min_base for r in anchors}
    origin = min(shifted.values())
    offsets = {r: bases[r] - min_base - origin for r in anchors}
    return offsets, f"the earliest {anchor_name} of the ranks (shared clock)"


def thread_roles(trace: Trace) -> pd.DataFrame:
    """One row per CPU thread that ran ops: pid, tid, role (main|autograd|thread), op count.

    Main thread: the one holding the CPU ProfilerStep annotations (else the busiest thread).
    Autograd thread: one running the autograd engine's `evaluate_function` ops, i.e. backward.
    """
    ops = trace.ops
    if ops.empty:
        return pd.DataFrame(columns=["pid", "tid", "role", "n"])
    threads = ops.groupby(["pid", "tid"], sort=True).size().rename("n").reset_index()
    ann = trace.annotations
    step_ann = ann[(ann["side"] == "cpu") & ann["name"].astype(str).str.startswith(STEP_PREFIX)]
    main_tids = set(step_ann["tid"].tolist())
    if not main_tids:
        main_tids = {threads.sort_values("n", ascending=False)["tid"].iloc[0]}
    engine = ops["name"].astype(str).str.startswith("autograd::engine::evaluate_function")
    autograd_tids = set(ops.loc[engine, "tid"].tolist()) - main_tids
    threads["role"] = np.where(threads["tid"].isin(main_tids), "main",
                               np.where(threads["tid"].isin(autograd_tids), "autograd",
                                        "thread"))
    order = threads["role"].map({"main": 0, "autograd": 1, "thread": 2})
    return threads.assign(_o=order).sort_values(["_o", "tid"]).drop(columns="_o")


def stream_roles(trace: Trace) -> pd.DataFrame:
    """One row per GPU stream: stream, role text, and whether it is mainly NCCL.

    A stream whose kernels are all NCCL is "(NCCL)"; one with no NCCL kernel "(compute)";
    mixed streams say both, majority first (NCCL often shares the default stream for a few
    setup collectives, which does not make it a comm stream).
    """
    k = trace.kernels
    parts = [k[["stream"]].assign(nccl=k["is_nccl"].astype(bool))] if len(k) else []
    if len(trace.gpu_mem):
        parts.append(trace.gpu_mem[["stream"]].assign(nccl=False, mem=True))
    if not parts:
        return pd.DataFrame(columns=["stream", "role", "is_comm"])
    work = pd.concat(parts, ignore_index=True)
    work["mem"] = work.get("mem", pd.Series(False, index=work.index)).fillna(False).astype(bool)
    g = work.groupby("stream").agg(n=("nccl", "size"), nccl=("nccl", "sum"), mem=("mem", "sum"))
    g = g.reset_index()
    compute = g["n"] - g["nccl"] - g["mem"]
    role = np.select(
        [g["nccl"] == g["n"], g["nccl"] == 0, g["nccl"] * 2 >= g["n"]],
        ["NCCL", "compute", "NCCL + compute"], default="compute + NCCL")
    role = np.where((g["mem"] == g["n"]), "memcpy/memset", role)
    role = np.where((compute == 0) & (g["nccl"] == 0) & (g["mem"] < g["n"]), "compute", role)
    g["role"] = role
    g["is_comm"] = g["nccl"] * 2 >= g["n"]
    return g.sort_values(["is_comm", "stream"])[["stream", "role", "is_comm"]]


def rank_lanes(trace: Trace, y_start: float) -> pd.DataFrame:
    """The lanes of one rank from y_start down: CPU threads, annotations, GPU streams."""
    r = trace.rank
    rows: list[dict[str, object]] = []
    threads = thread_roles(trace)
    autograd_seen = 0
    for pid, tid, role in threads[["pid", "tid", "role"]].itertuples(index=False):
        if role == "main":
            label = f"rank {r} · CPU main thread"
        elif role == "autograd":
            autograd_seen += 1
            label = f"rank {r} · CPU autograd thread (tid {tid})"
        else:
            label = f"rank {r} · CPU thread {tid}"
        rows.append({"label": label, "kind": "cpu", "tid": tid, "pid": pid, "stream": -1})
    ann = trace.annotations
    if ((ann["side"] == "cpu") & ~ann["name"].astype(str).str.startswith(STEP_PREFIX)).any():
        rows.append({"label": f"rank {r} · record_function labels", "kind": "annotation",
                     "tid": -1, "pid": -1, "stream": -1})
    for stream, role in stream_roles(trace)[["stream", "role"]].itertuples(index=False):
        rows.append({"label": f"rank {r} · stream {int(stream)} ({role})", "kind": "gpu",
                     "tid": -1, "pid": -1, "stream": int(stream)})
    if trace.has_gpu and all("launch_idx" in f for f in (trace.kernels, trace.gpu_mem)):
        rows.append({"label": f"rank {r} · GPU idle (by CPU cause) / exposed comm",
                     "kind": "idle", "tid": -1, "pid": -1, "stream": -1})
    lanes = pd.DataFrame(rows, columns=["label", "kind", "tid", "pid", "stream"])
    lanes.insert(0, "rank", r)
    lanes.insert(1, "y", y_start + np.arange(len(lanes), dtype=float))
    return lanes


def step_spans(trace: Trace, lanes: pd.DataFrame, offset_us: float) -> pd.DataFrame:
    """Each ProfilerStep's CPU span over the CPU lanes and GPU span over the GPU lanes."""
    steps = trace.steps
    rows: list[pd.DataFrame] = []
    for side, lane_kinds in (("cpu", ("cpu", "annotation")), ("gpu", ("gpu", "idle"))):
        ys = lanes.loc[lanes["kind"].isin(lane_kinds), "y"]
        spans = steps.dropna(subset=[f"{side}_ts"]) if len(steps) else steps
        if ys.empty or spans.empty:
            continue
        rows.append(pd.DataFrame({
            "rank": trace.rank, "step": spans["step"].astype(int), "side": side,
            "x0": (spans[f"{side}_ts"] + offset_us) / 1000.0,
            "x1": (spans[f"{side}_end"] + offset_us) / 1000.0,
            "y0": float(ys.min()) - 0.5, "y1": float(ys.max()) + 0.5}))
    cols = ["rank", "step", "side", "x0", "x1", "y0", "y1"]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=cols)


def step_window_us(trace: Trace, step: int) -> tuple[float, float] | None:
    """The trace-clock span covering step N's CPU and GPU sides, or None when absent."""
    s = trace.steps[trace.steps["step"] == step] if len(trace.steps) else trace.steps
    if s.empty:
        return None
    lo = np.nanmin(s[["cpu_ts", "gpu_ts"]].to_numpy(dtype=float))
    hi = np.nanmax(s[["cpu_end", "gpu_end"]].to_numpy(dtype=float))
    return float(lo), float(hi)


def parse_window(text: str | None) -> tuple[float, float] | None:
    """"START:END" in ms on the timeline axis (either side may be empty)."""
    if text is None or text == "":
        return None
    parts = text.split(":")
    if len(parts) != 2:
        raise UserError(f"--window must look like START:END in ms (e.g. 10:25.5), not {text!r}")
    try:
        lo = float(parts[0]) if parts[0].strip() else -np.inf
        hi = float(parts[1]) if parts[1].strip() else np.inf
    except ValueError:
        raise UserError(f"--window must look like START:END in ms, not {text!r}") from None
    if hi <= lo:
        raise UserError(f"--window END must be after START, got {text!r}")
    return lo, hi


def build_timeline(run: Run, rank: int | str | None = None, step: int | None = None,
                   window: str | tuple[float, float] | None = None,
                   align: str = "clock") -> Timeline:
    """Lanes, bars and step spans of the chosen ranks, aligned and cut to step/window."""
    traces = timeline_traces(run, rank)
    if not traces:
        raise UserError("the run has no rank traces to draw")
    offsets, origin_text = clock_offsets(traces, align)
    lane_frames, bar_frames, step_frames = [], [], []
    y = 0.0
    for trace in traces:
        lanes = rank_lanes(trace, y)
        y = float(lanes["y"].max()) + 1 + RANK_GAP if len(lanes) else y
        lane_frames.append(lanes)
        gpu_lane = dict(zip(lanes.loc[lanes["kind"] == "gpu", "stream"],
                            lanes.loc[lanes["kind"] == "gpu", "y"], strict=True))
        gpu = pd.concat([f for f in (kernel_bars(trace), memory_bars(trace)) if len(f)],
                        ignore_index=True) if trace.has_gpu else pd.DataFrame()
        if len(gpu):
            gpu["y"] = gpu["stream"].map(gpu_lane)
        parts = [f for f in (cpu_bars(trace, lanes), annotation_bars(trace, lanes), gpu,
                             idle_bars(trace, lanes)) if len(f)]
        if step is not None:
            span = step_window_us(trace, step)
            if span is None:
                continue
            parts = [p[(p["end"] >= span[0]) & (p["ts"] <= span[1])] for p in parts]
        for p in parts:
            bar_frames.append(p.assign(x0=(p["ts"] + offsets[trace.rank]) / 1000.0,
                                       x1=(p["end"] + offsets[trace.rank]) / 1000.0))
        spans = step_spans(trace, lanes, offsets[trace.rank])
        if step is not None and len(spans):
            spans = spans[spans["step"] == step]
        step_frames.append(spans)
    if step is not None and not any(step_window_us(t, step) for t in traces):
        known = sorted({int(s) for t in traces for s in t.steps["step"]})
        raise UserError(f"step {step} is not in the trace (profiled steps: "
                        f"{', '.join(map(str, known)) or 'none'})")
    bars = pd.concat(bar_frames, ignore_index=True) if bar_frames else \
        pd.DataFrame(columns=BAR_COLUMNS + ["x0", "x1"])
    steps = pd.concat(step_frames, ignore_index=True)
    win = parse_window(window) if isinstance(window, str) or window is None else window
    if win is not None:
        bars = bars[(bars["x1"] >= win[0]) & (bars["x0"] <= win[1])]
        steps = steps[(steps["x1"] >= win[0]) & (steps["x0"] <= win[1])]
        if bars.empty:
            raise UserError(f"nothing runs in --window {win[0]}:{win[1]} ms")
    bars = bars.dropna(subset=["y"]).reset_index(drop=True)
    return Timeline(bars=bars, lanes=pd.concat(lane_frames, ignore_index=True),
                    steps=steps.reset_index(drop=True), offsets_us=offsets, align=align,
                    origin_text=origin_text, window_ms=win)
