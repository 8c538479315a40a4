"""The line of a call inside a function: the profiler gives a Python frame's def line only, so
the statement that made a call (what a detector blames) is found by parsing the function."""

from __future__ import annotations

import ast

from tracekit.source.files import SourceFiles, SourcePath
from tracekit.source.parse import ParsedFile, called_name, scope_around, walk_scope


def function_at(parsed: ParsedFile, function: str, def_line: int
                ) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The function named `function` that a frame "file(def_line): function" ran: defined at
    `def_line`, or decorated there (the profiler names a frame by its code's first line, which
    for a decorated function is its first decorator's line)."""
    for node in parsed.functions.get(def_line, ()):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == function:
            return node
    return None


def frame_function(path: SourcePath | None, line: int, function: str,
                   files: SourceFiles | None = None, running: bool = False
                   ) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    """The function a frame "file(line): function" ran: the one defined (or decorated) at
    `line`; with `running` (the frame was on the stack when profiling began), else the one of
    that name whose body holds `line`, the line the profiler names such a frame by. None when
    the file is unreadable or no such function is in it (the file changed since recording)."""
    parsed = (files or SourceFiles()).parsed(path) if path is not None else None
    if parsed is None:
        return None
    node = function_at(parsed, function, line)
    if node is None and running:
        node = scope_around(parsed, line, function)
    return node


def function_found(path: SourcePath | None, line: int, function: str,
                   files: SourceFiles | None = None, running: bool = False) -> bool:
    return frame_function(path, line, function, files, running) is not None


def call_line(path: SourcePath | None, def_line: int, function: str, callee: str,
              files: SourceFiles | None = None, running: bool = False) -> int | None:
    """Line of the one statement that calls `callee` in the function a frame named
    "file(def_line): function" ran (`frame_function`; parsed through `files` when given, so
    once per file).

    None when that function is not found (the file changed since the trace was recorded), or
    it calls `callee` nowhere or on more than one line (then which one ran is not known: the
    caller keeps the def line).
    """
    node = frame_function(path, def_line, function, files, running)
    if node is None:
        return None
    lines = {call.lineno for call in walk_scope(node) if called_name(call) == callee}
    return lines.pop() if len(lines) == 1 else None


def def_line_of(path: SourcePath | None, line: int, function: str,
                files: SourceFiles | None = None) -> int:
    """The line that names the function a frame already running when profiling began ran (the
    profiler names it by the line it was executing): its def line, or `line` itself when that
    already names the function (or nothing is known)."""
    if frame_function(path, line, function, files) is not None:
        return line
    node = frame_function(path, line, function, files, running=True)
    return node.lineno if node is not None else line


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
