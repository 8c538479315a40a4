"""Join a loaded trace's frames: every kernel learns its launch, CPU op, op stack, step and
source line; every backward op learns its forward op. Adds the (link) columns of
`tracekit.trace` in place and returns the same Trace.

    from tracekit.link import link_trace, op_stack, kernel_source
    link_trace(trace)
    trace.kernels[["name", "launch_idx", "op_idx", "step", "src_file", "src_line"]]
    op_stack(trace, trace.kernels.op_idx[0])  # ["ProfilerStep#8", "optimizer.step", ...]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tracekit.link.backward import forward_ops
from tracekit.link.launches import link_launches
from tracekit.link.source import SourceIndex
from tracekit.link.sources import SRC_COLUMNS, launch_sources, op_sources
from tracekit.link.steps import assign_steps, comm_streams
from tracekit.load.columns import as_column
from tracekit.trace import Trace

__all__ = ["link_trace", "op_stack", "kernel_source"]

KERNEL_SRC_COLUMNS = [*SRC_COLUMNS, "src_from_fwd"]
DRIVER_MODULE_LAUNCHES = frozenset({"cuLaunchKernel", "cuLaunchKernelEx", "hipModuleLaunchKernel"})
"""How Triton launches its compiled kernels (CUDA driver / HIP module API)."""
REFINABLE = frozenset({"other", "elementwise", "reduction"})
"""Name-based categories that a Triton launch overrides (never gemm, attention, nccl)."""
PLAIN_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_STACK_DEPTH = 256


def link_trace(trace: Trace, *, source_roots: Sequence[Path] | None = None) -> Trace:
    """Add the (link) columns to `trace`'s frames (in place) and return it.

    `source_roots`: directories to resolve relative source paths against (for narrowing def
    lines to statements); defaults to the trace's directory, its parents and the cwd.
    """
    if source_roots is None:
        from tracekit.load.run import source_roots as default_roots

        source_roots = default_roots(trace.path.parent, None)
    link_launches(trace)
    trace.ops["fwd_op_idx"] = forward_ops(trace.ops, trace.flows)
    assign_steps(trace)
    trace.kernels["is_comm_stream"] = comm_streams(trace.kernels)
    _refine_triton(trace)
    index = SourceIndex(roots=tuple(source_roots))
    sources = op_sources(trace, index)
    for column in sources.columns:
        trace.ops[column] = as_column(sources[column].to_numpy())
    _kernel_sources(trace, index)
    for frame in (trace.ops, trace.kernels, trace.gpu_mem):
        frame["src_path"] = as_column(display_paths(frame["src_file"], index))
    trace.warnings.extend(w for w in link_warnings(trace) if w not in trace.warnings)
    trace.source_roots = tuple(source_roots)
    trace.linked = True
    return trace


def _kernel_sources(trace: Trace, index: SourceIndex) -> None:
    """Copy each kernel's (and memcpy/memset's) op source columns onto it; GPU work launched
    outside any op takes the user frame around its launch."""
    for gpu in (trace.kernels, trace.gpu_mem):
        op = gpu["op_idx"].to_numpy()
        has = op >= 0
        for column, empty in zip(KERNEL_SRC_COLUMNS, ("", -1, "", False, False), strict=True):
            values = trace.ops[column].to_numpy()
            filled = np.full(len(gpu), empty, dtype=values.dtype if len(values) else object)
            if has.any():
                filled[has] = values[op[has]]
            gpu[column] = as_column(filled)
        launch = gpu["launch_idx"].to_numpy()
        bare = np.flatnonzero(~has & (launch >= 0))
        if bare.size and len(trace.python):
            found = launch_sources(trace, launch[bare], gpu["name"].to_numpy(dtype=object)[bare],
                                   index)
            for column in KERNEL_SRC_COLUMNS:
                gpu.loc[bare, column] = found[column].to_numpy()


def display_paths(files: pd.Series, index: SourceIndex) -> np.ndarray:
    """The readable file behind each recorded source file, relative to the current directory
    when it lies below it ("" when the file was not found). Resolved once per distinct file."""
    if len(files) == 0:
        return np.array([], dtype=object)
    codes, uniques = pd.factorize(files.astype(object))
    cwd = Path.cwd()
    shown = []
    for file in uniques:
        path = index.resolve(str(file)) if file else None
        if path is None:
            shown.append("")
            continue
        absolute = path.resolve()
        shown.append(str(absolute.relative_to(cwd)) if absolute.is_relative_to(cwd)
                     else str(absolute))
    return np.array(shown, dtype=object)[codes]


def _refine_triton(trace: Trace) -> None:
    """Kernels named like plain identifiers and launched the way Triton launches are Triton
    kernels even without the Inductor `triton_` prefix (user @triton.jit kernels)."""
    kernels, launches = trace.kernels, trace.launches
    launch = kernels["launch_idx"].to_numpy()
    if len(kernels) == 0 or not (launch >= 0).any():
        return
    launch_name = np.full(len(kernels), "", dtype=object)
    launch_name[launch >= 0] = launches["name"].to_numpy(dtype=object)[launch[launch >= 0]]
    candidate = np.isin(kernels["category"].to_numpy(), list(REFINABLE)) & np.isin(
        launch_name, list(DRIVER_MODULE_LAUNCHES)
    )
    if candidate.any():
        names = kernels["name"].to_numpy(dtype=object)[candidate]
        plain = np.array([PLAIN_IDENTIFIER.match(n) is not None for n in names], dtype=bool)
        rows = np.flatnonzero(candidate)[plain]
        kernels.loc[rows, "category"] = "triton"


def link_warnings(trace: Trace) -> list[str]:
    """What linking could not do, one sentence each."""
    out: list[str] = []
    kernels = trace.kernels
    if len(kernels) and len(trace.launches):
        unmatched = float((kernels["launch_idx"] < 0).mean())
        if unmatched > 0.05:
            out.append(
                f"{unmatched:.0%} of kernels have no launch in the trace (matched by "
                "correlation id): their CPU op and source line are unknown"
            )
    elif len(kernels):
        out.append("no CUDA/HIP runtime events: kernels cannot be tied to their CPU ops")
    if len(trace.python) and len(trace.ops) and (trace.ops["src_line"] < 0).all():
        out.append("no op runs inside a user-code Python frame: source lines are unknown")
    return out


def op_stack(trace: Trace, op_idx: int) -> list[str]:
    """Names of the op's enclosing ops and CPU annotations, outermost first, ending with it:
    ["ProfilerStep#8", "optimizer.step", "tie:lm_head->embed", "aten::copy_"].

    Ops nest through `parent`; CPU user annotations (record_function labels, ProfilerStep#N)
    are a separate frame, so they are merged in by time: those on the op's thread whose span
    holds the op's span. At equal start and duration an annotation counts as the outer one
    (record_function opens before the ops it wraps), and ops keep their parent order.
    """
    if op_idx is None or op_idx < 0 or op_idx >= len(trace.ops):
        return []
    ops = trace.ops
    parent = ops["parent"].to_numpy()
    chain: list[int] = []
    row = int(op_idx)
    while row >= 0 and len(chain) < MAX_STACK_DEPTH:
        chain.append(row)
        row = int(parent[row])
    chain.reverse()
    ts, dur = ops["ts"].to_numpy(dtype=float), ops["dur"].to_numpy(dtype=float)
    names = ops["name"].to_numpy(dtype=object)
    entries = [(ts[r], -dur[r], 1, depth, str(names[r])) for depth, r in enumerate(chain)]
    ann = trace.annotations
    if len(ann):
        start, end = ts[op_idx], float(ops["end"].iat[op_idx])
        around = ann[(ann["side"] == "cpu") & (ann["tid"] == ops["tid"].iat[op_idx])
                     & (ann["ts"] <= start) & (ann["end"] >= end)]
        entries += [(float(a_ts), -float(a_dur), 0, 0, str(a_name)) for a_ts, a_dur, a_name
                    in zip(around["ts"], around["dur"], around["name"], strict=True)]
    entries.sort(key=lambda entry: entry[:4])
    return [entry[4] for entry in entries]


def kernel_source(trace: Trace) -> pd.DataFrame:
    """Per kernel: src_file, src_line, src_function, src_line_exact, src_from_fwd, src_path
    (from its op, or the forward op for kernels launched in backward). Index aligned with
    trace.kernels."""
    return trace.kernels[[*KERNEL_SRC_COLUMNS, "src_path"]].copy()
