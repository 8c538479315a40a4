"""The `.backward(...)` statement behind work the autograd engine runs on its own.

The engine runs backward on its own threads, where no Python frame encloses its ops; ops that
follow a forward op take that op's line (tracekit.link.op_source), but some have none: a
parameter's gradient accumulation (`AccumulateGrad`: `.grad += g` on every micro-batch after
the first, a copy into `.grad` on the first), hooks, the engine's own sums. Their user line is
the statement that started the backward pass, which the calling thread is running meanwhile
(inside torch's `run_backward`): a `loss.backward()` or `torch.autograd.backward(...)` call in
the frame around it.

The frame may have been entered while profiling (named by its def line: the scope is that
function) or have been running already (named by the line it was executing, as a training loop
at a script's top level is: the scope is then the innermost loop holding that line, else the
function or module around it). Exact only when the scope holds one such call.
"""

from __future__ import annotations

import ast

from tracekit.source.narrow import Narrowed, SourceIndex
from tracekit.source.parse import called_name, function_scope, scope_around, walk_scope

BACKWARD_CALLS = frozenset({"backward"})
"""`loss.backward()`, `torch.autograd.backward(...)`, `tensor.backward(grad)`."""


def _backward_lines(scope: ast.AST) -> list[int]:
    return sorted({node.lineno for node in walk_scope(scope)
                   if called_name(node) in BACKWARD_CALLS})


def _loops_holding(scope: ast.AST, line: int) -> list[ast.AST]:
    """Loops of `scope` (not nested functions) whose lines hold `line`, outermost first."""
    return [node for node in walk_scope(scope)
            if isinstance(node, ast.For | ast.While | ast.AsyncFor)
            and node.lineno <= line <= (node.end_lineno or node.lineno)]


def backward_statement(index: SourceIndex, file: str, line: int, function: str) -> Narrowed:
    """The `.backward(` statement of the frame "file(line): function" (see the module doc);
    the frame's line, inexact, when it cannot be told."""
    fallback = Narrowed(line, False)
    path = index.resolve(file)
    parsed = index.parsed(path) if path is not None and line >= 0 else None
    if parsed is None:
        return fallback
    entered = function_scope(parsed, line, function)
    if entered is not None and function != "<module>":
        found = _backward_lines(entered)
        return Narrowed(found[0], True) if len(found) == 1 else fallback
    scope = parsed.tree if function == "<module>" else scope_around(parsed, line, function)
    if scope is None:
        return fallback
    for loop in reversed(_loops_holding(scope, line)):
        found = _backward_lines(loop)
        if found:
            return Narrowed(found[0], True) if len(found) == 1 else fallback
    found = _backward_lines(scope)
    return Narrowed(found[0], True) if len(found) == 1 else fallback
