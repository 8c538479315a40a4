"""A source file parsed once: its syntax tree and its functions by every line that can name
them, the function a profiler frame ran, and the names of calls."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass
class ParsedFile:
    tree: ast.Module
    functions: dict[int, list[ast.AST]]
    """Function/lambda nodes by every line that can name them (def line, decorator lines)."""
    module_functions: dict[str, ast.AST] = field(default_factory=dict)
    """Top-level functions by name (callees that a compiled graph inlines)."""
    owner: dict[ast.AST, ast.ClassDef] = field(default_factory=dict)
    """Method -> the class whose body defines it."""


def function_scope(parsed: ParsedFile, def_line: int, function: str) -> ast.AST | None:
    """The function (or module) whose code the frame ran."""
    if function == "<module>":
        return parsed.tree
    for node in parsed.functions.get(def_line, ()):
        if getattr(node, "name", None) == function:
            return node
    return None


def scope_around(parsed: ParsedFile, line: int, function: str) -> ast.AST | None:
    """The one function named `function` whose body holds `line` (None if not exactly one):
    the scope of a frame that was already on the stack when profiling began, which the
    profiler names by the line it was executing, not by its def line."""
    around = {id(node): node for nodes in parsed.functions.values() for node in nodes
              if getattr(node, "name", None) == function
              and node.lineno < line <= (getattr(node, "end_lineno", None) or 0)}
    return next(iter(around.values())) if len(around) == 1 else None


def walk_scope(scope: ast.AST) -> Iterator[ast.AST]:
    """Nodes of a function body in source order, not descending into nested functions,
    classes or lambdas (their code runs in frames of their own)."""
    body = scope.body if isinstance(scope, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef) \
        else [scope]
    stack: list[ast.AST] = list(reversed(body))
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def called_name(node: ast.AST) -> str | None:
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


MatchFn = Callable[[ast.AST], bool]
"""A predicate on syntax nodes: does this node run the op (or call) asked about."""


def calls_named(name: str) -> MatchFn:
    """Matches a call of `name` (`name(...)`, `x.name(...)`)."""
    def call(node: ast.AST) -> bool:
        return called_name(node) == name

    return call


def parse_source(data: bytes, filename: str) -> ParsedFile | None:
    """A file's text parsed, its functions indexed (None when it is not valid Python)."""
    try:
        tree = ast.parse(data, filename=filename)
    except (SyntaxError, ValueError):
        return None
    functions: dict[int, list[ast.AST]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = {node.lineno, *(d.lineno for d in node.decorator_list)}
            for line in lines:
                functions.setdefault(line, []).append(node)
    module_functions = {node.name: node for node in tree.body
                        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    owner = {method: node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
             for method in node.body
             if isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef)}
    return ParsedFile(tree, functions, module_functions, owner)


def call_name(frame_name: str) -> str:
    """The called name of a python_function frame: "<built-in function sleep>" -> "sleep",
    "<built-in method item of ...>" -> "item", "train.py(12): step" -> "step"; "" otherwise."""
    match = re.match(r"<built-in (?:function|method) (\w+)", frame_name)
    if match:
        return match.group(1)
    match = re.match(r".*\(\d+\): (\w+)", frame_name)
    return match.group(1) if match else ""


def is_tensor_subscript(node: ast.AST) -> bool:
    """A subscript that can be a tensor index: not `x.shape[0]`, not `d["key"]`."""
    if not isinstance(node, ast.Subscript):
        return False
    if isinstance(node.value, ast.Attribute) and node.value.attr in ("shape", "stride"):
        return False
    index = node.slice
    return not (isinstance(index, ast.Constant) and isinstance(index.value, str))
