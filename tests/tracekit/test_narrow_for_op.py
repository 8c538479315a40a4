"""SourceIndex.narrow_for_op: the statement behind an op of compiled code, where the trace
names only the compiled function's def line and gives no per-op events to count."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tracekit.source import SourceIndex

MODEL_PY = textwrap.dedent('''\
    import torch


    def layer_ids(n: int) -> list[int]:
        return list(range(n))


    def helper(x, bank, j):
        return x @ bank[j]


    class Net(torch.nn.Module):
        def __init__(self, n):
            super().__init__()
            self.bank = torch.nn.Parameter(torch.zeros(n, 4, 4))
            self.ids = layer_ids(n)
            self.names = ["a", "b"]

        def forward(self, x, tables: list[torch.Tensor]):
            parts = self.bank.unbind(0)
            extra = [t * 2 for t in tables]
            for i in range(len(self.ids)):
                k = self.ids[i]
                name = self.names[i]
                t, e = tables[k], extra[k]
                w = self.bank[i]
                x = x @ w + parts[i].sum() + t.sum() + e.sum()
            return x[0] + x[:, 1].sum()

        def two(self, x):
            for i in range(2):
                a = self.bank[i]
                b = self.bank[i + 1]
                x = x @ a @ b
            return x

        def calls(self, x):
            y = self.bank[0]
            for i in range(2):
                x = helper(x, self.bank, i)
            return x @ y

        def ranges(self, x, i):
            cos = self.bank[:i]
            return x @ cos[None, :, 0]


    def free(bank, x):
        for i in range(bank.size(0)):
            w = bank[i]
            x = x @ w
        return x
''')


@pytest.fixture()
def index(tmp_path: Path) -> SourceIndex:
    (tmp_path / "model.py").write_text(MODEL_PY)
    return SourceIndex(roots=(tmp_path,))


def line(text: str) -> int:
    hits = [n for n, t in enumerate(MODEL_PY.splitlines(), start=1) if text in t]
    assert len(hits) == 1, text
    return hits[0]


def test_containers_are_not_selects(index: SourceIndex) -> None:
    """Locals bound to lists/unbind tuples, parameters annotated list[...], attributes set to
    lists or to a function's list-annotated result: indexing them runs no aten::select."""
    got = index.narrow_for_op("model.py", line("def forward"), "forward", "aten::select")
    assert (got.line, got.exact) == (line("w = self.bank[i]"), True)


def test_free_variable_bank(index: SourceIndex) -> None:
    got = index.narrow_for_op("model.py", line("def free"), "free", "aten::select")
    assert (got.line, got.exact) == (line("w = bank[i]"), True)


def test_several_statements_keep_the_def_line(index: SourceIndex) -> None:
    got = index.narrow_for_op("model.py", line("def two"), "two", "aten::select")
    assert (got.line, got.exact) == (line("def two"), False)


def test_an_inlined_callee_that_indexes_makes_it_ambiguous(index: SourceIndex) -> None:
    """`helper` is compiled into the same graph; its bank[j] could be the select too (and the
    constant bank[0] is not counted as a variable index)."""
    got = index.narrow_for_op("model.py", line("def calls"), "calls", "aten::select")
    assert (got.line, got.exact) == (line("def calls"), False)


def test_slices_and_constants_are_not_variable_indexes(index: SourceIndex) -> None:
    got = index.narrow_for_op("model.py", line("def ranges"), "ranges", "aten::select")
    assert (got.line, got.exact) == (line("def ranges"), False)


def test_unreadable_or_unknown_frames_fall_back(index: SourceIndex) -> None:
    assert not index.narrow_for_op("missing.py", 3, "forward", "aten::select").exact
    got = index.narrow_for_op("model.py", line("def free"), "not_free", "aten::select")
    assert (got.line, got.exact) == (line("def free"), False)
