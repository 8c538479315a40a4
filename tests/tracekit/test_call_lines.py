"""Ops are placed on the statement by what their frame called: the builtin or torch function
the trace shows around them (counted per call, not per op), a special method by the syntax
that calls it, and a resumed generator within the code that runs after its `yield`."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

from tests.tracekit.test_link import by_name, write, x
from tracekit.link import link_trace
from tracekit.pipeline import load_trace
from tracekit.source import SourceIndex
from tracekit.source.implicit import protocol_matcher

LOADER_PY = textwrap.dedent('''\
    def batches(tokens, starts, ends):
        first = torch.ones(3).sum()
        while True:
            lo, hi = torch.tensor(starts), torch.tensor(ends)
            buf = torch.cat([tokens[i:j] for i, j in zip(lo, hi)])
            inputs = buf.to(torch.int32)
            targets = buf.to(torch.int64)
            yield inputs, targets
''')


def call(frame: str, at: float, dur: float, *ops: tuple[str, float, float]) -> list[dict]:
    """A Python frame at `at` and the ops it ran, each (name, offset from `at`, duration)."""
    return [x("python_function", frame, at, dur),
            *(x("cpu_op", name, at + offset, d) for name, offset, d in ops)]


TENSOR = "<built-in method tensor of type object at 0x1>"
MADE = (("aten::empty", 1, 2), ("aten::to", 4, 2), ("aten::lift_fresh", 7, 2))
"""What torch.tensor(...) runs."""
ITER = "torch/_tensor.py(1141): __iter__"
COPIED = (("aten::to", 1, 38), ("aten::_to_copy", 2, 30))
"""What a `.to(device)` copy runs."""


def resumed_generator_events() -> list[dict]:
    """`batches` resumed at its `yield` (line 8, as the tracer names a resumed generator):
    two torch.tensor calls, zip iterating two tensors (Tensor.__iter__ -> unbind), cat, and two
    `.to` calls, each call's frame around its ops. A call returns before it (the generator
    was resumed while profiling, not running when the profiler started)."""
    return [
        x("python_function", "<built-in function len>", 0, 2),
        x("python_function", "loader.py(8): batches", 5, 995),
        *call(TENSOR, 10, 20, *MADE),
        *call(TENSOR, 40, 20, *MADE),
        *call(ITER, 70, 20),
        *call("<built-in method unbind of Tensor object at 0x2>", 71, 18, ("aten::unbind", 1, 15)),
        *call(ITER, 100, 20),
        *call("<built-in method unbind of Tensor object at 0x3>", 101, 18,
              ("aten::unbind", 1, 15)),
        x("cpu_op", "aten::item", 130, 2), x("cpu_op", "aten::item", 133, 2),
        x("cpu_op", "aten::slice", 136, 3),
        *call("<built-in method cat of type object at 0x1>", 200, 40, ("aten::cat", 1, 38)),
        x("cpu_op", "aten::is_nonzero", 250, 5),
        *call("<built-in method to of Tensor object at 0x4>", 300, 40, *COPIED),
        *call("<built-in method to of Tensor object at 0x5>", 400, 40, *COPIED),
    ]


def linked_loader(tmp_path: Path):
    (tmp_path / "loader.py").write_text(LOADER_PY)
    trace = load_trace(write(tmp_path / "rank0.pt.trace.json.gz", resumed_generator_events()),
                       link=False)
    return link_trace(trace, source_roots=[tmp_path])


def lines_of(trace, name: str) -> list[tuple[int, bool]]:
    ops = trace.ops.sort_values("ts")
    rows = ops[ops["name"] == name]
    return list(zip(rows["src_line"].tolist(), rows["src_line_exact"].tolist(), strict=True))


def test_a_resumed_generator_is_matched_within_the_code_after_its_yield(tmp_path: Path) -> None:
    """`torch.ones(3).sum()` before the loop never runs again after a `yield`; the frame's
    calls are the loop body's, from the top of `while True:`."""
    trace = linked_loader(tmp_path)
    assert lines_of(trace, "aten::cat") == [(5, True)]
    assert lines_of(trace, "aten::lift_fresh") == [(4, True), (4, True)]


def test_ops_of_one_call_share_its_line_and_calls_are_counted_not_ops(tmp_path: Path) -> None:
    """Each `<built-in method to>` frame holds an aten::to and its _to_copy; the torch.tensor
    frames hold aten::to as well. The two `.to(` calls are lines 6 and 7 in order, and the
    aten::to inside torch.tensor belongs to line 4, not to a `.to(` line."""
    trace = linked_loader(tmp_path)
    assert lines_of(trace, "aten::to") == [(4, True), (4, True), (6, True), (7, True)]
    assert lines_of(trace, "aten::_to_copy") == [(6, True), (7, True)]


def test_an_implicit_iteration_is_placed_on_the_statement_that_iterates(tmp_path: Path) -> None:
    """aten::unbind runs inside Tensor.__iter__, called by `zip(lo, hi)`: no `.unbind(` in the
    source, but one statement iterates what can be a tensor (`lo, hi = torch.tensor(...), ...`
    unpacks a tuple built by a call: not a tensor's __iter__)."""
    trace = linked_loader(tmp_path)
    assert lines_of(trace, "aten::unbind") == [(5, True), (5, True)]


def test_a_call_between_two_calls_of_one_statement_is_that_statements(tmp_path: Path) -> None:
    """aten::item from a tensor used as a slice bound (`tokens[i:j]`): no statement spells
    it, but it runs between the unbind and the slice of line 5 in the same pass, and one
    statement's evaluation is not interleaved with another's in its frame."""
    trace = linked_loader(tmp_path)
    assert set(lines_of(trace, "aten::item")) == {(5, True)}
    assert by_name(trace, "ops", "aten::item")["src_function"] == "batches"


def test_a_call_between_two_statements_that_no_syntax_names_keeps_the_def_line(
        tmp_path: Path) -> None:
    """An aten::is_nonzero between the cat of line 5 and the `.to` of line 6: neither line
    spells a truth test, and it could be either's: the def line, inexact."""
    trace = linked_loader(tmp_path)
    assert lines_of(trace, "aten::is_nonzero") == [(1, False)]


def test_neighbours_inside_a_loop_the_pass_goes_round_do_not_bound_a_call(
        tmp_path: Path) -> None:
    """In a pass through `for x in xs:`, a call between two ops of line 4 may come from line 5
    of the previous turn: no placement from neighbours there."""
    (tmp_path / "gen.py").write_text(textwrap.dedent('''\
        def gen(xs):
            while True:
                for x in xs:
                    a = x[0:1].sum()
                    b = x[1:2]
                yield a, b
    '''))
    index = SourceIndex(roots=[tmp_path])
    assert index.is_resumed("gen.py", 6, "gen")
    inside = index.narrow_between("gen.py", 6, "gen", "aten::item", 4, 4)
    assert (inside.line, inside.exact) == (1, False)
    # Named by a line without a yield: not a resumed frame (the file changed since recording).
    assert not index.is_resumed("gen.py", 4, "gen")
    assert not index.narrow_frame("gen.py", 4, "gen", "aten::slice").exact


def test_a_conditional_expression_is_one_call_on_its_line(tmp_path: Path) -> None:
    """`f(a) if c else f(b)` runs one f: a loop over `B = baddbmm(...)` and that line makes
    two calls per iteration, matched in turn; `@` is aten::matmul's, never baddbmm's."""
    (tmp_path / "pe.py").write_text(textwrap.dedent('''\
        def polar(X, tall):
            for a, b, c in COEFFS:
                A = X.mT @ X if tall else X @ X.mT
                B = torch.baddbmm(A, A, A, beta=b, alpha=c)
                X = torch.baddbmm(X, X, B, beta=a) if tall else torch.baddbmm(X, B, X, beta=a)
            return X
    '''))
    index = SourceIndex(roots=[tmp_path])
    calls = [index.narrow("pe.py", 1, "polar", "call:baddbmm", k, 10) for k in range(10)]
    assert [(c.line, c.exact) for c in calls[:4]] == [(4, True), (5, True), (4, True), (5, True)]
    matmul = index.narrow("pe.py", 1, "polar", "aten::matmul", 3, 5)
    assert (matmul.line, matmul.exact) == (3, True)
    assert index.narrow("pe.py", 1, "polar", "aten::mT", 0, 5).line == 3


def test_iteration_candidates_leave_out_what_cannot_be_a_tensor() -> None:
    iterates = protocol_matcher("__iter__")
    assert iterates is not None

    def lines(code: str) -> list[int]:
        return [n.lineno for n in ast.walk(ast.parse(code)) if iterates(n)]

    assert lines("for i in range(3):\n    pass\nfor row in t:\n    pass") == [3]
    assert lines("a, b = f(x)\nc, d = t\n") == [2]
    assert lines("for k, v in d.items():\n    pass\nys = [y for y in zip(p, q)]") == [3]
    assert protocol_matcher("__len__") is not None and protocol_matcher("forward") is None
