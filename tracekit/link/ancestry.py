"""An op's ancestry: the ops that enclose it (`ops.parent`, innermost first), the op stack a
finding shows (with the CPU annotations around it), and the user source line of an op row.

Every walk up `parent` goes through `op_chain` (one op) or `ancestor_levels` (many ops at once,
one vectorised step per level), both capped at MAX_OP_DEPTH: real CPU op stacks are tens deep,
so the cap only guards against a malformed parent column.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd

from tracekit.finding import SourceLine
from tracekit.trace import Trace

MAX_OP_DEPTH = 256
"""Guard for every walk up `ops.parent`."""


def op_chain(parent: np.ndarray, row: int) -> list[int]:
    """`row` and its ancestors, innermost first (empty for row -1)."""
    chain: list[int] = []
    row = int(row)
    while 0 <= row < len(parent) and len(chain) < MAX_OP_DEPTH:
        chain.append(row)
        row = int(parent[row])
    return chain


def ancestor_levels(parent: np.ndarray, rows: np.ndarray) -> Iterator[tuple[np.ndarray,
                                                                          np.ndarray]]:
    """For many start rows at once, one level per step: (positions in `rows` still climbing,
    the op they are at), starting at the rows themselves (level 0)."""
    current = np.asarray(rows, dtype=np.int64).copy()
    positions = np.arange(len(current), dtype=np.int64)
    for _ in range(MAX_OP_DEPTH):
        alive = (current >= 0) & (current < len(parent))
        if not alive.any():
            return
        positions, current = positions[alive], current[alive]
        yield positions, current
        current = parent[current].astype(np.int64)


def ancestor_matching(ops: pd.DataFrame, mask: np.ndarray | Callable[[np.ndarray], np.ndarray],
                      rows: np.ndarray | None = None) -> np.ndarray:
    """For each op row in `rows` (default: every op; -1: none), the row of its nearest
    ancestor-or-self where `mask` holds, else -1. `mask` is a bool per op, or a function of
    op rows that answers only for the ops the climb meets (cheaper than asking of every op
    when few rows climb)."""
    parent = ops["parent"].to_numpy(dtype=np.int64)
    start = np.arange(len(ops)) if rows is None else np.asarray(rows, dtype=np.int64)
    found = np.full(len(start), -1, dtype=np.int64)
    for positions, current in ancestor_levels(parent, start):
        holds = mask(current) if callable(mask) else mask[current]
        hit = holds & (found[positions] < 0)
        found[positions[hit]] = current[hit]
    return found


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
    chain = op_chain(ops["parent"].to_numpy(), op_idx)
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


def source_of_op(ops: pd.DataFrame, row: int, *, or_ancestor: bool = False) -> SourceLine | None:
    """The linker's user source line of op `row` (None when it has none); with `or_ancestor`,
    of its nearest ancestor that has one."""
    if row < 0:
        return None
    chain = op_chain(ops["parent"].to_numpy(), row) if or_ancestor else [int(row)]
    for r in chain:
        file, line = ops.at[r, "src_file"], ops.at[r, "src_line"]
        if isinstance(file, str) and file and not pd.isna(line) and int(line) >= 0:
            return SourceLine(file=file, line=int(line), function=str(ops.at[r, "src_function"]
                                                                      or ""),
                              line_exact=bool(ops.at[r, "src_line_exact"]))
    return None


def kernel_source(trace: Trace, row: int) -> tuple[str | None, list[str], SourceLine | None]:
    """(op name, op stack, user source line of the op or its nearest ancestor) behind kernel
    row `row`."""
    op_row = int(trace.kernels.at[row, "op_idx"])
    if op_row < 0 or op_row >= len(trace.ops):
        return None, [], None
    # The op stack interleaves the record_function labels (ProfilerStep#N, optimizer.step,
    # tie:...) that say where in the step it ran.
    return (str(trace.ops.at[op_row, "name"]), op_stack(trace, op_row),
            source_of_op(trace.ops, op_row, or_ancestor=True))


def launching_op_pairs(trace: Trace) -> pd.DataFrame:
    """(kernel row, op name) for every distinct op name on each kernel's launch stack (its op
    and the op's ancestors), all kernels walked up together."""
    kernels, ops = trace.kernels, trace.ops
    empty = pd.DataFrame({"kernel": pd.Series(dtype=np.int64), "op": pd.Series(dtype=object)})
    if kernels.empty or ops.empty:
        return empty
    parent = ops["parent"].to_numpy(dtype=np.int64)
    op_names = ops["name"].astype(str).to_numpy(dtype=object)
    levels = list(ancestor_levels(parent, kernels["op_idx"].to_numpy(dtype=np.int64)))
    if not levels:
        return empty
    pairs = pd.DataFrame({"kernel": np.concatenate([rows for rows, _ in levels]),
                          "op": op_names[np.concatenate([ops_at for _, ops_at in levels])]})
    return pairs.drop_duplicates()
