"""The line of a call inside a function: the profiler gives a Python frame's def line only, so
the statement that made a call (what a detector blames) is found by parsing the function."""

from __future__ import annotations

import ast

from tracekit.source.files import SourceFiles, SourcePath
from tracekit.source.parse import ParsedFile, called_name


def function_at(parsed: ParsedFile, function: str, def_line: int
                ) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The (first, in ast.walk order) function named `function` defined at `def_line`."""
    for node in parsed.functions.get(def_line, ()):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) \
                and node.name == function and node.lineno == def_line:
            return node
    return None


def call_line(path: SourcePath | None, def_line: int, function: str, callee: str,
              files: SourceFiles | None = None) -> int | None:
    """Line of the first call to `callee` in the function defined at `def_line` of the file
    at `path` (parsed through `files` when given, so once per file).

    None when the file is unreadable or no function `function` is defined at that line (the file
    changed since the trace was recorded), or the function calls `callee` nowhere.
    """
    parsed = (files or SourceFiles()).parsed(path) if path is not None else None
    node = function_at(parsed, function, def_line) if parsed is not None else None
    if node is None:
        return None
    first: int | None = None
    for call in ast.walk(node):
        if called_name(call) == callee and (first is None or call.lineno < first):
            first = call.lineno
    return first


def with_blocks(func: ast.AST, literal: str) -> list[ast.With]:
    """`with` statements in `func` whose items mention the string `literal`."""
    return [node for node in ast.walk(func) if isinstance(node, ast.With)
            and any(isinstance(c, ast.Constant) and c.value == literal
                    for item in node.items for c in ast.walk(item.context_expr))]


def call_in_with(files: SourceFiles, file: str, def_line: int, function: str, called: str,
                 literal: str) -> int | None:
    """Statement line of a call to `called` inside `with ...("literal")` in the function.

    The function is the one defined at def_line or, if the file changed since recording, the
    one function of that name holding such a `with`. Falls back to the `with` line itself;
    None when the source is unreadable or nothing matches.
    """
    path = files.resolve(file)
    parsed = files.parsed(path) if path is not None else None
    if parsed is None:
        return None
    defs = [n for n in ast.walk(parsed.tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    funcs = [n for n in defs if n.lineno == def_line] or \
        [n for n in defs if n.name == function and with_blocks(n, literal)]
    if len(funcs) != 1:
        return None
    blocks = with_blocks(funcs[0], literal)
    if not blocks:
        return None
    for inner in ast.walk(ast.Module(body=blocks[0].body, type_ignores=[])):
        if isinstance(inner, ast.Call) and called and called in (
                getattr(inner.func, "attr", None), getattr(inner.func, "id", None)):
            return inner.lineno
    return blocks[0].lineno
