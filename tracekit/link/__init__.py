"""Join a loaded trace's frames: every kernel learns its launch, CPU op, op stack, step and
source line; every backward op learns its forward op. Adds the (link) columns of
`tracekit.trace` in place and returns the same Trace.

    from tracekit.link import link_trace, op_stack
    link_trace(trace)
    trace.kernels[["name", "launch_idx", "op_idx", "step", "src_file", "src_line"]]
    op_stack(trace, trace.kernels.op_idx[0])  # ["ProfilerStep#8", "optimizer.step", ...]

Also here: an op's ancestry and source line (`ancestry`), and the run's step time, the one
definition every detector, comparison and report uses (`steptime`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from tracekit.link.ancestry import ancestor_matching, kernel_source, op_stack, source_of_op
from tracekit.link.backward import forward_ops
from tracekit.link.compiled import apply_compiled_sources
from tracekit.link.launches import link_launches
from tracekit.link.op_source import SRC_COLUMNS, launch_sources, op_sources
from tracekit.link.steps import assign_steps, comm_streams
from tracekit.load.columns import as_column
from tracekit.load.compiled import COMPILED_KERNELS_FILE
from tracekit.load.kernel_kinds import COMM_OP, comm_by_context
from tracekit.names import factorize_text, name_matches
from tracekit.source import SourceIndex, on_disk
from tracekit.source import source_roots as default_roots
from tracekit.trace import Trace

__all__ = ["kernel_source", "link_trace", "op_stack", "source_of_op"]

KERNEL_SRC_COLUMNS = [*SRC_COLUMNS, "src_from_fwd"]
DRIVER_MODULE_LAUNCHES = frozenset({"cuLaunchKernel", "cuLaunchKernelEx", "hipModuleLaunchKernel"})
"""How Triton launches its compiled kernels (CUDA driver / HIP module API)."""
REFINABLE = frozenset({"other", "elementwise", "reduction"})
"""Name-based categories that a Triton launch overrides (never gemm, attention, nccl)."""
PLAIN_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def link_trace(trace: Trace, *, source_roots: Sequence[Path] | None = None) -> Trace:
    """Add the (link) columns to `trace`'s frames (in place) and return it.

    `source_roots`: directories to resolve relative source paths against (for narrowing def
    lines to statements); defaults to the trace's directory, its parents and the cwd.
    """
    if source_roots is None:
        source_roots = default_roots(trace.path.parent, None)
    link_launches(trace)
    trace.ops["fwd_op_idx"] = forward_ops(trace.ops, trace.flows)
    assign_steps(trace)
    _widen_comm(trace)
    trace.kernels["is_comm_stream"] = comm_streams(trace.kernels)
    _refine_triton(trace)
    index = SourceIndex(roots=tuple(source_roots))
    sources = op_sources(trace, index)
    for column in sources.columns:
        trace.ops[column] = as_column(sources[column])
    trace.source_roots = tuple(source_roots)
    for run_dir in (trace.path.parent, trace.path.parent.parent):
        if (run_dir / COMPILED_KERNELS_FILE).is_file():
            apply_compiled_sources(trace, run_dir, index)
            break
    _kernel_sources(trace, index)
    for frame in (trace.ops, trace.kernels, trace.gpu_mem):
        frame["src_path"] = as_column(display_paths(frame["src_file"], index))
    trace.warnings.extend(w for w in link_warnings(trace) if w not in trace.warnings)
    trace.source_roots = tuple(source_roots)
    trace.linked = True
    return trace


def _widen_comm(trace: Trace) -> None:
    """Communication kernels that only their launching op or stream reveals (see
    `tracekit.load.kernel_kinds.comm_by_context`)."""
    kernels = trace.kernels
    if not len(kernels):
        return
    # Asked only of the kernels' ops (it or an enclosing op is a communication op).
    op = kernels["op_idx"].to_numpy(np.int64)
    launching = np.unique(op[(op >= 0) & (op < len(trace.ops))])
    under = np.zeros(len(trace.ops), dtype=bool)
    under[launching] = ancestor_matching(
        trace.ops, name_matches(trace.ops["name"], COMM_OP), launching) >= 0
    widened = comm_by_context(kernels, under)
    added = widened & ~kernels["is_nccl"].to_numpy(dtype=bool)
    if added.any():
        kernels["is_nccl"] = widened
        kernels.loc[added, "category"] = "nccl"


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


def refresh_gpu_sources(trace: Trace) -> None:
    """Re-derive kernels' and memcpys' source columns (and every src_path) after the ops'
    source columns changed (tracekit.link.borrow)."""
    index = SourceIndex(roots=tuple(trace.source_roots))
    _kernel_sources(trace, index)
    for frame in (trace.ops, trace.kernels, trace.gpu_mem):
        frame["src_path"] = as_column(display_paths(frame["src_file"], index))


def display_paths(files: pd.Series, index: SourceIndex) -> np.ndarray:
    """The readable file behind each recorded source file, relative to the current directory
    when it lies below it ("" when the file was not found). Resolved once per distinct file."""
    if len(files) == 0:
        return np.array([], dtype=object)
    codes, uniques = factorize_text(files)
    cwd = Path.cwd()
    shown = []
    for file in uniques:
        path = index.resolve(str(file)) if file else None
        if path is None:
            shown.append("")
            continue
        absolute = on_disk(path)
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


