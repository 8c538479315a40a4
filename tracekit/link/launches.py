"""GPU work -> the CPU call that launched it -> the op that made that call.

A kernel (or memcpy/memset) and its launch share a CUPTI `correlation` id; kernels launched
through the driver (NCCL's cuLaunchKernelEx, Triton's cuLaunchKernel) carry it just the same.
The op is the innermost cpu_op on the launching thread whose span contains the launch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracekit.intervals import innermost_containing
from tracekit.load.keys import RowsByKey
from tracekit.trace import Trace


def launches_by_correlation(launches: pd.DataFrame) -> RowsByKey:
    """The launch with each correlation id: when runtime and driver calls share one, the
    kernel-launching call wins (then the first row)."""
    return RowsByKey.first(launches["correlation"].to_numpy(),
                           ~launches["is_kernel_launch"].to_numpy(dtype=bool))


def launch_index(launches: pd.DataFrame, correlation: pd.Series) -> np.ndarray:
    """Row in `launches` with each correlation id (-1 if none).

    When runtime and driver calls share a correlation id, the kernel-launching call wins.
    """
    return launches_by_correlation(launches).lookup(correlation.to_numpy())


def enclosing_ops(ops: pd.DataFrame, tid: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Innermost op on thread `tid` whose [ts, end] contains time `t` (-1 if none)."""
    return innermost_containing(
        ops["tid"].to_numpy(), ops["ts"].to_numpy(), ops["end"].to_numpy(),
        ops["parent"].to_numpy(), tid, t,
    )


def op_by_external_id(ops: pd.DataFrame, external_id: np.ndarray) -> np.ndarray:
    """The op with each External id (-1 if none): the fallback when a launch is missing.
    The innermost op carries the id that Kineto copies to the kernel: the deepest one wins
    (then the first row)."""
    if len(ops) == 0 or len(external_id) == 0:
        return np.full(len(external_id), -1, dtype=np.int64)
    return RowsByKey.first(ops["external_id"].to_numpy(),
                           -ops["depth"].to_numpy(np.int64)).lookup(external_id)


def link_launches(trace: Trace) -> None:
    """Fill launch_idx/op_idx on kernels and gpu_mem, and op_idx on launches."""
    launches = trace.launches
    launches["op_idx"] = enclosing_ops(
        trace.ops, launches["tid"].to_numpy(), launches["ts"].to_numpy()
    )
    by_correlation = launches_by_correlation(launches)
    for gpu in (trace.kernels, trace.gpu_mem):
        launch = by_correlation.lookup(gpu["correlation"].to_numpy())
        gpu["launch_idx"] = launch
        op = np.full(len(gpu), -1, dtype=np.int64)
        has_launch = launch >= 0
        op[has_launch] = launches["op_idx"].to_numpy()[launch[has_launch]]
        missing = ~has_launch
        if missing.any():
            op[missing] = op_by_external_id(trace.ops, gpu["external_id"].to_numpy()[missing])
        gpu["op_idx"] = op
