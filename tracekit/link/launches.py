"""GPU work -> the CPU call that launched it -> the op that made that call.

A kernel (or memcpy/memset) and its launch share a CUPTI `correlation` id; kernels launched
through the driver (NCCL's cuLaunchKernelEx, Triton's cuLaunchKernel) carry it just the same.
The op is the innermost cpu_op on the launching thread whose span contains the launch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracekit.intervals import innermost_containing
from tracekit.trace import Trace


def launch_index(launches: pd.DataFrame, correlation: pd.Series) -> np.ndarray:
    """Row in `launches` with each correlation id (-1 if none).

    When runtime and driver calls share a correlation id, the kernel-launching call wins.
    """
    if len(launches) == 0 or len(correlation) == 0:
        return np.full(len(correlation), -1, dtype=np.int64)
    valid = launches[launches["correlation"] >= 0]
    ranked = valid.assign(_row=valid.index.to_numpy()).sort_values(
        ["correlation", "is_kernel_launch"], ascending=[True, False], kind="stable"
    )
    first = ranked.drop_duplicates("correlation")
    if first.empty:  # no launch carries a correlation id
        return np.full(len(correlation), -1, dtype=np.int64)
    by_corr = pd.Index(first["correlation"].to_numpy())
    pos = by_corr.get_indexer(correlation.to_numpy())
    rows = first["_row"].to_numpy()
    out = np.where(pos >= 0, rows[np.maximum(pos, 0)], -1)
    out[correlation.to_numpy() < 0] = -1
    return out.astype(np.int64)


def enclosing_ops(ops: pd.DataFrame, tid: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Innermost op on thread `tid` whose [ts, end] contains time `t` (-1 if none)."""
    return innermost_containing(
        ops["tid"].to_numpy(), ops["ts"].to_numpy(), ops["end"].to_numpy(),
        ops["parent"].to_numpy(), tid, t,
    )


def op_by_external_id(ops: pd.DataFrame, external_id: np.ndarray) -> np.ndarray:
    """The op with each External id (-1 if none): the fallback when a launch is missing."""
    if len(ops) == 0 or len(external_id) == 0:
        return np.full(len(external_id), -1, dtype=np.int64)
    known = ops.loc[ops["external_id"] >= 0, "external_id"]
    # The innermost op carries the id that Kineto copies to the kernel; keep the deepest.
    deepest = (
        ops.loc[known.index, ["external_id", "depth"]]
        .assign(_row=known.index.to_numpy())
        .sort_values(["external_id", "depth"], ascending=[True, False], kind="stable")
        .drop_duplicates("external_id")
    )
    if deepest.empty:  # no op carries an External id
        return np.full(len(external_id), -1, dtype=np.int64)
    pos = pd.Index(deepest["external_id"].to_numpy()).get_indexer(external_id)
    out = np.where(pos >= 0, deepest["_row"].to_numpy()[np.maximum(pos, 0)], -1)
    out[external_id < 0] = -1
    return out.astype(np.int64)


def link_launches(trace: Trace) -> None:
    """Fill launch_idx/op_idx on kernels and gpu_mem, and op_idx on launches."""
    launches = trace.launches
    launches["op_idx"] = enclosing_ops(
        trace.ops, launches["tid"].to_numpy(), launches["ts"].to_numpy()
    )
    for gpu in (trace.kernels, trace.gpu_mem):
        launch = launch_index(launches, gpu["correlation"])
        gpu["launch_idx"] = launch
        op = np.full(len(gpu), -1, dtype=np.int64)
        has_launch = launch >= 0
        op[has_launch] = launches["op_idx"].to_numpy()[launch[has_launch]]
        missing = ~has_launch
        if missing.any():
            op[missing] = op_by_external_id(trace.ops, gpu["external_id"].to_numpy()[missing])
        gpu["op_idx"] = op
