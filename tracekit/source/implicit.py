"""Syntax that calls a special method without naming it.

With stacks, the tracer records the Python function a user frame called, and the op runs inside
it: `torch/_tensor.py(N): __iter__` around the `aten::unbind` of `for row in t` or `zip(a, b)`,
`__len__` around `len(t)`, `__format__` around an f-string of a tensor, a DataLoader's
`__iter__`/`__next__` around a `for batch in loader`. The user's statement never spells the
method's name; it spells the protocol. These predicates find that syntax.
"""

from __future__ import annotations

import ast

from tracekit.source.parse import MatchFn, called_name, calls_named

ITERATING_CALLS = frozenset({
    "zip", "enumerate", "list", "tuple", "set", "frozenset", "sorted", "sum", "min", "max",
    "any", "all", "map", "filter", "iter", "dict",
})
"""Builtins that iterate their arguments (`enumerate`, `map` and `filter` only some of them,
close enough for candidates: each argument is tried)."""
NEVER_A_TENSOR_CALLS = ITERATING_CALLS | frozenset({
    "range", "reversed", "items", "keys", "values", "parameters", "named_parameters",
    "buffers", "named_buffers", "children", "named_children", "modules", "named_modules",
    "glob", "listdir", "split", "splitlines",
})
"""Calls whose result is iterated without `Tensor.__iter__` (containers, iterators, paths,
strings)."""


def may_be_tensor(node: ast.AST) -> bool:
    """An expression that can evaluate to a tensor: not a literal, a comprehension, or a call
    known to return a container or iterator."""
    if isinstance(node, ast.Constant | ast.List | ast.Tuple | ast.Dict | ast.Set | ast.ListComp
                  | ast.SetComp | ast.DictComp | ast.GeneratorExp | ast.JoinedStr):
        return False
    return called_name(node) not in NEVER_A_TENSOR_CALLS


def iterated_expressions(node: ast.AST) -> list[ast.AST]:
    """The expressions `node` iterates, if it is syntax that iterates."""
    if isinstance(node, ast.For | ast.AsyncFor):
        return [node.iter]
    if isinstance(node, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
        return [g.iter for g in node.generators]
    if isinstance(node, ast.Call) and called_name(node) in ITERATING_CALLS \
            and isinstance(node.func, ast.Name):
        return list(node.args)
    if isinstance(node, ast.Starred):
        return [node.value]
    if isinstance(node, ast.Assign) and any(isinstance(t, ast.Tuple | ast.List)
                                            for t in node.targets):
        # `a, b = t` unpacks a tensor; `a, b = f(x)` most often unpacks a returned tuple.
        return [node.value] if isinstance(node.value, ast.Name | ast.Attribute
                                          | ast.Subscript) else []
    return []


def _iterates(node: ast.AST) -> bool:
    return any(may_be_tensor(e) for e in iterated_expressions(node))


def _tests_membership(node: ast.AST) -> bool:
    return isinstance(node, ast.Compare) and any(isinstance(op, ast.In | ast.NotIn)
                                                 for op in node.ops)


def _formats(node: ast.AST) -> bool:
    return isinstance(node, ast.FormattedValue) or called_name(node) == "format"


def _iterates_or_next(node: ast.AST) -> bool:
    return _iterates(node) or called_name(node) == "next"


PROTOCOLS: dict[str, MatchFn] = {
    "__iter__": _iterates,
    "__next__": _iterates_or_next,
    "__len__": calls_named("len"),
    "__reversed__": calls_named("reversed"),
    "__contains__": _tests_membership,
    "__format__": _formats,
}
"""Special method -> the syntax that calls it."""


def protocol_matcher(method: str) -> MatchFn | None:
    """The syntax that calls special method `method` implicitly (None if not one of them)."""
    return PROTOCOLS.get(method)
