"""A rank's events as timeline bars with their hover text: kernels (name, grid, blocks/SM,
launching op chain, source line), memcpy/memset, outermost CPU ops and record_function labels.
Pandas/numpy only, vectorised; `tracekit.timeline.lanes` places them on lanes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracekit.accounting.causes import idle_split
from tracekit.accounting.events import CAUSE_LABELS
from tracekit.accounting.sets import gpu_sets
from tracekit.link.ancestry import ancestor_levels
from tracekit.names import kernel_labels
from tracekit.trace import Trace

STEP_PREFIX = "ProfilerStep#"
# Kernel names are often 300-character C++ templates: hover shows the start, enough to know it.
MAX_NAME_CHARS = 90
# Hover texts hold this token where the duration goes: without it, repeated launches (the same
# kernel, grid and line every step) share one text, which the HTML page stores once.
DUR = "{dur}"
BAR_COLUMNS = ["rank", "y", "x0", "x1", "category", "hover", "name", "stream", "ts", "end",
               "is_nccl", "kind"]


def fmt(values: pd.Series, spec: str) -> pd.Series:
    """Vectorised number formatting ("" for missing), for hover text."""
    arr = values.to_numpy(dtype=float, na_value=np.nan)
    out = pd.Series(np.char.mod(spec, np.nan_to_num(arr)), index=values.index, dtype=object)
    return out.where(~np.isnan(arr), "")


def short_names(names: pd.Series) -> pd.Series:
    """Kernel/op names cut to MAX_NAME_CHARS, HTML-safe for hover text."""
    s = names.astype(str)
    cut = s.str.slice(0, MAX_NAME_CHARS)
    return escape_html(cut.where(s.str.len() <= MAX_NAME_CHARS, cut + "…"))


def escape(text: str) -> str:
    """One text for a tooltip or label, as HTML (see escape_html)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escape_html(s: pd.Series) -> pd.Series:
    """Trace text goes into tooltips as HTML: kernel names are full of < and >."""
    return s.str.replace("&", "&amp;").str.replace("<", "&lt;").str.replace(">", "&gt;")


def file_line(files: pd.Series, lines: pd.Series) -> pd.Series:
    """"file:line" per row, "" where either is missing (vectorised)."""
    f = escape_html(files.fillna("").astype(str))
    n = pd.to_numeric(lines, errors="coerce").fillna(-1).astype(np.int64)
    text = f + ":" + n.astype(str)
    return text.where((f != "") & (n >= 0), "")


def op_chain(ops: pd.DataFrame, op_idx: np.ndarray, depth: int = 4) -> pd.Series:
    """The launching op and up to depth-1 of its parents, innermost first ("a ← b ← c").

    The innermost op alone is often generic (aten::fill_); its parents say why it ran
    (aten::zeros ← aten::select_backward).
    """
    idx = np.asarray(op_idx, dtype=np.int64)
    chain = np.full(len(idx), "", dtype=object)
    if ops.empty or len(idx) == 0:
        return pd.Series(chain, dtype=object)
    names = short_names(ops["name"]).to_numpy(dtype=object)
    levels = ancestor_levels(ops["parent"].to_numpy(dtype=np.int64), idx)
    for level, (rows, current) in zip(range(depth), levels, strict=False):
        chain[rows] = names[current] if level == 0 else chain[rows] + " ← " + names[current]
    return pd.Series(chain, dtype=object)


def op_source_text(ops: pd.DataFrame, op_idx: np.ndarray) -> tuple[pd.Series, pd.Series]:
    """Launching op chain and its user source line ("file:line") for rows pointing into ops."""
    idx = np.asarray(op_idx, dtype=np.int64)
    n = len(idx)
    chain = op_chain(ops, idx)
    if ops.empty or "src_file" not in ops or "src_line" not in ops:
        return chain, pd.Series([""] * n, dtype=object)
    valid = (idx >= 0) & (idx < len(ops))
    safe = np.where(valid, idx, 0)
    src = file_line(ops["src_file"].iloc[safe].reset_index(drop=True),
                    ops["src_line"].iloc[safe].reset_index(drop=True))
    return chain, src.where(pd.Series(valid), "")


def launch_text(trace: Trace, gpu: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Op chain and source line of GPU rows (kernels, memcpy/memset), from the link columns.

    The row's own src_file/src_line (the linker's answer, the forward line for backward work)
    wins over its op's.
    """
    op_idx = gpu["op_idx"].fillna(-1).to_numpy() if "op_idx" in gpu else np.full(len(gpu), -1)
    op_name, src = op_source_text(trace.ops, op_idx)
    op_name.index = src.index = gpu.index
    if "src_file" in gpu and "src_line" in gpu:
        own = file_line(gpu["src_file"], gpu["src_line"])
        if "src_from_fwd" in gpu:
            fwd = gpu["src_from_fwd"].fillna(False).astype(bool)
            own = own.where(~fwd | (own == ""), own + " (forward)")
        src = own.where(own != "", src)
    return op_name, src


def kernel_bars(trace: Trace) -> pd.DataFrame:
    """Kernels with hover text: name, duration, grid, blocks/SM, launching op, source line."""
    k = trace.kernels
    if k.empty:
        return pd.DataFrame(columns=BAR_COLUMNS)
    op_name, src = launch_text(trace, k)
    grid = (fmt(k["grid_x"], "%d") + "×" + fmt(k["grid_y"], "%d") + "×" + fmt(k["grid_z"], "%d"))
    grid = grid.where(k["grid_x"].notna(), "?")
    coll = k["collective"].fillna("").astype(str) if "collective" in k else ""
    hover = ("<b>" + escape_html(kernel_labels(k["name"])) + "</b><br>"
             + k["category"].astype(str) + " · " + DUR + " · stream "
             + k["stream"].astype(str)
             + "<br>grid " + grid + " · " + fmt(k["blocks_per_sm"], "%.1f") + " blocks/SM")
    if isinstance(coll, pd.Series):
        hover = hover + np.where(coll != "", "<br>collective " + coll + " · "
                                 + fmt(k["in_nelems"], "%d") + " elems", "")
    hover = (hover + np.where(op_name != "", "<br>op " + op_name, "")
             + np.where(src != "", "<br>line " + src, ""))
    return pd.DataFrame({
        "rank": trace.rank, "stream": k["stream"].astype(int), "ts": k["ts"], "end": k["end"],
        "category": k["category"].fillna("other").astype(str), "hover": hover,
        "name": k["name"].astype(str), "is_nccl": k["is_nccl"].astype(bool), "kind": "kernel"})


def memory_bars(trace: Trace) -> pd.DataFrame:
    """memcpy/memset rows, drawn on their stream in the "memory" colour."""
    m = trace.gpu_mem
    if m.empty:
        return pd.DataFrame(columns=BAR_COLUMNS)
    hover = ("<b>" + short_names(m["name"]) + "</b><br>" + m["kind"].astype(str) + " · "
             + DUR + " · " + fmt(m["bytes"] / 1e6, "%.2f") + " MB · stream "
             + m["stream"].astype(str))
    op_name, src = launch_text(trace, m)
    hover = (hover + np.where(op_name != "", "<br>op " + op_name, "")
             + np.where(src != "", "<br>line " + src, ""))
    return pd.DataFrame({
        "rank": trace.rank, "stream": m["stream"].astype(int), "ts": m["ts"], "end": m["end"],
        "category": "memory", "hover": hover, "name": m["name"].astype(str), "is_nccl": False,
        "kind": "memory"})


def cpu_bars(trace: Trace, lanes: pd.DataFrame) -> pd.DataFrame:
    """Outermost ops of each thread (depth 0): the CPU's own timeline, one level deep.

    Deeper ops would overdraw their parents on one lane; the op that launched a kernel is in
    the kernel's hover instead.
    """
    ops = trace.ops
    cpu_lanes = lanes[lanes["kind"] == "cpu"]
    if ops.empty or cpu_lanes.empty:
        return pd.DataFrame(columns=BAR_COLUMNS)
    top = ops[ops["depth"] == 0]
    y = top["tid"].map(dict(zip(cpu_lanes["tid"], cpu_lanes["y"], strict=True)))
    _, src = op_source_text(ops, top.index.to_numpy())
    src.index = top.index
    hover = ("<b>" + short_names(top["name"]) + "</b><br>CPU op · " + DUR
             + np.where(src != "", "<br>line " + src, ""))
    return pd.DataFrame({
        "rank": trace.rank, "y": y, "stream": -1, "ts": top["ts"], "end": top["end"],
        "category": "cpu op", "hover": hover, "name": top["name"].astype(str), "is_nccl": False,
        "kind": "cpu_op"})


def annotation_bars(trace: Trace, lanes: pd.DataFrame) -> pd.DataFrame:
    """CPU record_function spans other than ProfilerStep (data:wait_shard, optimizer.step...)."""
    ann = trace.annotations
    lane = lanes[lanes["kind"] == "annotation"]
    if lane.empty:
        return pd.DataFrame(columns=BAR_COLUMNS)
    a = ann[(ann["side"] == "cpu") & ~ann["name"].astype(str).str.startswith(STEP_PREFIX)]
    hover = "<b>" + short_names(a["name"]) + "</b><br>record_function · " + DUR
    return pd.DataFrame({
        "rank": trace.rank, "y": float(lane["y"].iloc[0]), "stream": -1, "ts": a["ts"],
        "end": a["end"], "category": "annotation", "hover": hover,
        "name": a["name"].astype(str), "is_nccl": False, "kind": "annotation"})


def idle_bars(trace: Trace, lanes: pd.DataFrame) -> pd.DataFrame:
    """The step accounting on the timeline: every piece of GPU idle time inside a step,
    coloured by what the CPU was doing (with its event and line), and communication that no
    compute hides, on one lane under the rank's streams."""
    lane = lanes[lanes["kind"] == "idle"]
    if lane.empty:
        return pd.DataFrame(columns=BAR_COLUMNS)
    pieces = idle_split(trace).pieces
    src = file_line(pieces["src_file"].astype(str), pieces["src_line"])
    name = pieces["name"].astype(str)
    hover = ("<b>GPU idle: " + pieces["cause"].map(CAUSE_LABELS) + "</b><br>" + DUR
             + np.where(name != "", "<br>CPU in " + escape_html(short_names(name)), "")
             + np.where(src != "", "<br>line " + src, ""))
    idle = pd.DataFrame({
        "rank": trace.rank, "y": float(lane["y"].iloc[0]), "stream": -1,
        "ts": pieces["start"], "end": pieces["end"],
        "category": "idle:" + pieces["cause"].astype(str), "hover": hover, "name": name,
        "is_nccl": False, "kind": "idle"})
    exposed = gpu_sets(trace).exposed_comm
    comm = pd.DataFrame({
        "rank": trace.rank, "y": float(lane["y"].iloc[0]), "stream": -1, "ts": exposed[0],
        "end": exposed[1], "category": "exposed comm",
        "hover": "<b>exposed communication</b><br>" + DUR + "<br>no compute beside it",
        "name": "exposed communication", "is_nccl": True, "kind": "idle"})
    return pd.concat([f for f in (idle, comm) if len(f)] or [idle], ignore_index=True)
