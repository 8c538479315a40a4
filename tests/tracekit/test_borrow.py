"""A split recording's timing ops take columns from the same ops of the stack window: the most
common answer over its steps, the first seen among equal counts."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from tracekit.link.borrow import borrow_columns


def _ops(rows: list[tuple[int, str, float, int]]) -> pd.DataFrame:
    """(step, name, ts, line) per op, all on thread 1."""
    return pd.DataFrame({"tid": 1, "step": [r[0] for r in rows], "name": [r[1] for r in rows],
                         "ts": [r[2] for r in rows], "src_line": [r[3] for r in rows],
                         "src_file": ["m.py" if r[3] >= 0 else "" for r in rows]})


def test_each_timing_op_takes_the_most_common_answer_of_the_same_op() -> None:
    # Two mm ops per step; the first is at line 10 in two of three steps, the second at 20.
    stacked = _ops([(8, "aten::mm", 1, 10), (8, "aten::mm", 2, 20),
                    (9, "aten::mm", 11, 11), (9, "aten::mm", 12, 20),
                    (10, "aten::mm", 21, 10), (10, "aten::mm", 22, 21)])
    timing = _ops([(6, "aten::mm", 1, -1), (6, "aten::mm", 2, -1), (6, "aten::add", 3, -1),
                   (-1, "aten::mm", 0, -1)])
    known = stacked["src_line"].to_numpy() >= 0
    need = timing["src_line"].to_numpy() < 0
    n = borrow_columns(SimpleNamespace(ops=timing), SimpleNamespace(ops=stacked),
                       ["src_file", "src_line"], known, need)
    assert n == 2
    assert timing["src_line"].tolist() == [10, 20, -1, -1]  # no such op / outside every step
    assert timing["src_file"].tolist() == ["m.py", "m.py", "", ""]


def test_among_equal_counts_the_first_answer_seen_wins() -> None:
    stacked = _ops([(8, "aten::mm", 1, 30), (9, "aten::mm", 11, 31)])
    timing = _ops([(6, "aten::mm", 1, -1)])
    borrow_columns(SimpleNamespace(ops=timing), SimpleNamespace(ops=stacked), ["src_line"],
                   np.ones(2, dtype=bool), np.ones(1, dtype=bool))
    assert timing["src_line"].tolist() == [30]
