"""Source lines for a trace recorded without stacks, from a window of the same run with them.

`profile --record split` records steps START..END without Python stacks (their timings are
close to unprofiled ones) and, two steps later, as many steps with stacks (their timings are the
tracer's, their source lines are right). A training step runs the same ops in the same order
every step, so an op of the timing window is "the same op" as the op of the stack window with
the same name, on the same thread, at the same ordinal among that name's ops in its step. The
timing trace's ops take those ops' source columns (the most common answer over the stack
window's steps), and its kernels are re-derived from them as the linker does. The stack window
also records shapes (`--record split` records it with stacks and shapes): ops recorded without
them take the same op's shapes, strides and dtypes the same way.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracekit.link.op_source import SRC_COLUMNS
from tracekit.trace import Trace

KEY = ["tid", "name", "ordinal"]
COLUMNS = [*SRC_COLUMNS, "src_from_fwd"]
SHAPE_COLUMNS = ["input_dims", "input_strides", "input_types"]


def op_ordinals(ops: pd.DataFrame) -> pd.DataFrame:
    """tid, name, ordinal (the k-th op of that name on that thread within its step), step."""
    frame = pd.DataFrame({"tid": ops["tid"].to_numpy(), "name": ops["name"].to_numpy(),
                          "step": ops["step"].to_numpy(), "ts": ops["ts"].to_numpy()})
    frame = frame.sort_values(["step", "ts"], kind="stable")
    frame["ordinal"] = frame.groupby(["step", "tid", "name"], sort=False).cumcount()
    return frame.sort_index()


def borrow_columns(timing: Trace, stacked: Trace, columns: list[str], known: np.ndarray,
                   need: np.ndarray) -> int:
    """Fill `columns` of the timing trace's ops where `need` holds (in place) from the same op
    of the stack trace where `known` holds (the most common answer over its steps); returns
    how many ops took one."""
    donor_ops = stacked.ops
    known = known & (donor_ops["step"].to_numpy() >= 0)
    need = need & (timing.ops["step"].to_numpy() >= 0)
    if not known.any() or not need.any():
        return 0
    donor = op_ordinals(donor_ops)[known]
    rows = np.flatnonzero(known)
    # Each distinct answer (the columns' values together) as one code, then the most common
    # code per key: counted per (key, code), first seen first among equal counts.
    codes = [pd.factorize(donor_ops[c].to_numpy()[known], use_na_sentinel=False)[0]
             for c in columns]
    donor["answer"] = pd.DataFrame(dict(enumerate(codes))).groupby(
        list(range(len(codes))), sort=False).ngroup().to_numpy()
    donor["row"] = rows
    counted = donor.groupby([*KEY, "answer"], sort=False).agg(n=("row", "size"),
                                                             row=("row", "first"))
    best = counted.reset_index().sort_values("n", ascending=False, kind="stable") \
        .drop_duplicates(KEY).set_index(KEY)["row"]
    mine = op_ordinals(timing.ops)
    keys = pd.MultiIndex.from_frame(mine.loc[need, KEY])
    found = best.reindex(keys)
    hit = found.notna().to_numpy()
    targets = np.flatnonzero(need)[hit]
    if targets.size == 0:
        return 0
    sources = found.to_numpy()[hit].astype(np.int64)
    for column in columns:
        values = timing.ops[column].to_numpy().copy()
        values[targets] = donor_ops[column].to_numpy()[sources]
        timing.ops[column] = values
    return int(targets.size)


def borrow_op_sources(timing: Trace, stacked: Trace) -> int:
    """Fill the timing trace's op (and GPU work) source columns from the stack trace, in
    place, for ops that have none; returns how many ops took a line."""
    from tracekit.link import refresh_gpu_sources

    if timing.ops.empty:
        return 0
    n = borrow_columns(timing, stacked, COLUMNS, stacked.ops["src_line"].to_numpy() >= 0,
                       timing.ops["src_line"].to_numpy() < 0)
    if n:
        refresh_gpu_sources(timing)
    return n


def borrow_op_shapes(timing: Trace, stacked: Trace) -> int:
    """Fill the shapes, strides and dtypes of the timing trace's ops recorded without them from
    the stack trace (in place); returns how many ops took them."""
    if timing.ops.empty or any(c not in timing.ops or c not in stacked.ops
                               for c in SHAPE_COLUMNS):
        return 0
    has = [ops["input_dims"].astype(bool).to_numpy() for ops in (stacked.ops, timing.ops)]
    return borrow_columns(timing, stacked, SHAPE_COLUMNS, has[0], ~has[1])
