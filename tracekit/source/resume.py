"""Frames that start inside their function, and what they can run from there.

The profiler's Python tracer names a frame by the line its code object is at when the frame
starts: the def line for a call, but the `yield` (or `await`) line for a generator or
coroutine resumed by `next()`/`.send()`, and the line being executed for a frame already on the
stack when the tracer started. Such a frame can only run what follows that line: the rest of
the function, and the statements of the loops around the line again (a generator's `while
True:` body wraps around to the next `yield`). Statements before the line and outside those
loops never run in it, so they are not candidates for its ops.
"""

from __future__ import annotations

import ast

from tracekit.source.parse import ParsedFile, scope_around, walk_scope

LOOPS = (ast.For, ast.AsyncFor, ast.While)
RESUMES = (ast.Yield, ast.YieldFrom, ast.Await)


def resumed_scope(parsed: ParsedFile, line: int, function: str) -> ast.AST | None:
    """The generator or coroutine named `function` with a `yield`/`await` on `line`: the
    scope of a frame resumed there. None otherwise (a frame of a plain function is named by
    its def line; another line then means the file changed since recording)."""
    scope = scope_around(parsed, line, function)
    if scope is None:
        return None
    resumes_here = any(isinstance(node, RESUMES)
                       and node.lineno <= line <= (node.end_lineno or node.lineno)
                       for node in walk_scope(scope))
    return scope if resumes_here else None


def loop_holds(node: ast.AST, line: int) -> bool:
    """Whether `node` is a loop whose body holds `line` (a pass comes round to it again)."""
    return isinstance(node, LOOPS) and node.lineno < line <= (node.end_lineno or node.lineno)


def statement_at(scope: ast.AST, line: int) -> ast.stmt | None:
    """The innermost statement of `scope` whose lines hold `line`."""
    best: ast.stmt | None = None
    for node in walk_scope(scope):
        if not isinstance(node, ast.stmt) or node is scope:
            continue
        end = node.end_lineno or node.lineno
        inside_best = best is None or (node.lineno >= best.lineno
                                       and end <= (best.end_lineno or best.lineno))
        if node.lineno <= line <= end and inside_best:
            best = node
    return best


def activation_order(scope: ast.AST, line: int, nodes: list[ast.AST],
                     resumed: bool) -> list[ast.AST]:
    """`nodes` (in source order) that a frame of `scope` starting at `line` can run, in the
    order it runs them: the statements after the one at `line`, then those of the loops
    around it from the loop's top. The statement at `line` itself: first for a frame that was
    executing it (its call returns into the rest of it), last for one resumed at a `yield`
    (the yield's own operands are evaluated just before the next suspension)."""
    here = statement_at(scope, line)
    if here is None:
        return nodes
    start, end = here.lineno, here.end_lineno or here.lineno
    loops = [(loop.lineno, loop.end_lineno or loop.lineno) for loop in walk_scope(scope)
             if isinstance(loop, LOOPS) and loop.lineno < start
             and end <= (loop.end_lineno or loop.lineno)]
    nodes = [n for n in nodes if hasattr(n, "lineno")]  # not contexts, operators
    own = [n for n in nodes if start <= n.lineno <= end]
    after = [n for n in nodes if n.lineno > end]
    wrap = [n for n in nodes
            if n.lineno < start and any(a <= n.lineno <= b for a, b in loops)]
    return after + wrap + own if resumed else own + after + wrap


def runs_once_per_pass(scope: ast.AST, line: int, nodes: list[ast.AST]) -> bool:
    """Whether each of `nodes` runs exactly once each time a frame resumed at `line` passes
    through the code (no branch, inner loop, comprehension or short-circuit around it, up to
    the loops that hold `line`): then the frame's k-th such call is the k-th candidate in run
    order."""
    parents = {id(child): parent for parent in walk_scope(scope)
               for child in ast.iter_child_nodes(parent)}
    here = statement_at(scope, line)
    return all(_once(scope, here, parents, node) for node in nodes)


def _once(scope: ast.AST, here: ast.stmt | None, parents: dict[int, ast.AST],
          node: ast.AST) -> bool:
    child, parent = node, parents.get(id(node))
    while parent is not None and parent is not scope:
        holds_line = here is not None and loop_holds(parent, here.lineno)
        if not holds_line and not _always_runs(parent, child):
            return False
        child, parent = parent, parents.get(id(parent))
    return True


def _always_runs(parent: ast.AST, child: ast.AST) -> bool:
    """Whether `child` runs whenever `parent` does, exactly once."""
    if isinstance(parent, ast.If | ast.IfExp | ast.While):
        return child is parent.test and not isinstance(parent, ast.While)
    if isinstance(parent, ast.For | ast.AsyncFor):
        return child is parent.iter
    if isinstance(parent, ast.BoolOp):
        return child is parent.values[0]
    repeats_or_branches = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp,
                           ast.comprehension, ast.Try, ast.Match)
    return not isinstance(parent, repeats_or_branches) and type(parent).__name__ != "TryStar"


def pass_positions(scope: ast.AST, line: int, nodes: list[ast.AST]
                   ) -> tuple[dict[int, int], set[int]]:
    """For a frame resumed at `line`: each line's place in the order its pass runs the code
    (`activation_order`; `nodes` in that order), and the lines inside loops that the pass can
    go round (any loop of the function but those holding `line`)."""
    positions: dict[int, int] = {}
    for place, node in enumerate(nodes):
        positions.setdefault(node.lineno, place)
    here = statement_at(scope, line)
    start = here.lineno if here is not None else line
    inner: set[int] = set()
    for loop in walk_scope(scope):
        if isinstance(loop, LOOPS) and not loop_holds(loop, start):
            inner.update(range(loop.lineno, (loop.end_lineno or loop.lineno) + 1))
    return positions, inner
