"""Backward ops -> the forward op that recorded them.

Kineto writes a `fwdbwd` flow from the forward op (ph "s", at the op's ts and thread) to the
backward node's op (ph "f"). Without flows, the autograd `Sequence number` ties the two: the
backward op carries the number of the forward op that created its node. Every op nested inside
a backward op (aten::select_backward, its fill and copy kernels' ops) inherits the forward op.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from tracekit.intervals import group_time_order, innermost_containing, propagate_down
from tracekit.names import name_matches

BACKWARD_ROOT = re.compile(r"^autograd::engine::evaluate_function:")
BACKWARD_NODE = re.compile(r"Backward\d*$")


def _op_at(ops: pd.DataFrame, tid: np.ndarray, ts: np.ndarray, prefer_deep: bool) -> np.ndarray:
    """Op starting exactly at (tid, ts), else the innermost op containing it (-1 if none)."""
    out = np.full(len(ts), -1, dtype=np.int64)
    if len(ops) == 0 or len(ts) == 0:
        return out
    op_tid, op_ts = ops["tid"].to_numpy(), ops["ts"].to_numpy()
    depth = ops["depth"].to_numpy()
    # By thread, start, then depth (deepest or outermost first; ties in row order): the first
    # op of each (thread, start) is the one wanted.
    order = group_time_order(op_tid, op_ts, -depth if prefer_deep else depth)
    sorted_tid, sorted_ts = op_tid[order], op_ts[order]
    bounds = np.flatnonzero(np.r_[True, sorted_tid[1:] != sorted_tid[:-1], True])
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):  # one step per thread
        queries = np.flatnonzero(tid == sorted_tid[lo])
        if queries.size == 0:
            continue
        pos = lo + np.searchsorted(sorted_ts[lo:hi], ts[queries], side="left")
        hit = pos < hi
        hit[hit] = sorted_ts[pos[hit]] == ts[queries[hit]]
        out[queries[hit]] = order[pos[hit]]
    missing = out < 0
    if missing.any():
        out[missing] = innermost_containing(
            ops["tid"].to_numpy(), ops["ts"].to_numpy(), ops["end"].to_numpy(),
            ops["parent"].to_numpy(), tid[missing], ts[missing],
        )
    return out


def is_backward_root(ops: pd.DataFrame) -> np.ndarray:
    """Ops run by the autograd engine for one node (they name the node, carry Fwd thread id)."""
    return name_matches(ops["name"], BACKWARD_ROOT) | (ops["fwd_tid"].to_numpy() > 0)


def forward_ops(ops: pd.DataFrame, flows: pd.DataFrame) -> np.ndarray:
    """fwd_op_idx per op: its forward op for backward ops and their children, else -1."""
    n = len(ops)
    fwd = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return fwd
    if len(flows):
        src = _op_at(ops, flows["src_tid"].to_numpy(), flows["src_ts"].to_numpy(), True)
        dst = _op_at(ops, flows["dst_tid"].to_numpy(), flows["dst_ts"].to_numpy(), False)
        ok = (src >= 0) & (dst >= 0) & (src != dst)
        fwd[dst[ok]] = src[ok]
    backward = is_backward_root(ops)
    unlinked = backward & (fwd < 0) & (ops["seq"].to_numpy() >= 0)
    if unlinked.any():
        fwd[unlinked] = _by_sequence_number(ops, backward, np.flatnonzero(unlinked))
    return propagate_down(ops["parent"].to_numpy(), ops["depth"].to_numpy(), fwd)


def _by_sequence_number(ops: pd.DataFrame, backward: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Latest forward op (started before the backward op) with the same Sequence number.

    Several nested forward ops can share a number (aten::matmul around aten::mm); the latest
    started is the innermost, the one that created the autograd node.
    """
    is_forward = (
        (ops["seq"].to_numpy() >= 0) & ~backward & ~name_matches(ops["name"], BACKWARD_NODE)
    )
    fwd = ops.loc[is_forward, ["seq", "ts"]].assign(_row=np.flatnonzero(is_forward))
    if fwd.empty:
        return np.full(len(rows), -1, dtype=np.int64)
    bwd = pd.DataFrame({"seq": ops["seq"].to_numpy()[rows], "ts": ops["ts"].to_numpy()[rows],
                        "_q": np.arange(len(rows))})
    matched = pd.merge_asof(
        bwd.sort_values("ts"), fwd.sort_values("ts"), on="ts", by="seq", direction="backward"
    ).sort_values("_q")
    return matched["_row"].fillna(-1).to_numpy(dtype=np.int64)
