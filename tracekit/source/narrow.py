"""Narrow a Python frame's def line to the statement that ran an op.

The profiler's Python tracer names a frame "file(N): function" with N the function's def line
(for frames entered while profiling), so the trace alone says *which function* issued an op,
not which line. When the source file is readable we parse the function with `ast` and look for
the syntax that produces the op: a subscript for aten::select, `.copy_(` for aten::copy_, `@` for
aten::mm/matmul, a call of the same name for most others, the label string for a
record_function range. When that leaves one line (or as many candidates as the frame ran such
ops, matched in order), the line is exact; otherwise we keep the def line and say so.

Compiled code (torch.compile) runs a whole graph from one frame and records no per-op events, so
op counts cannot match candidates in order: `SourceIndex.narrow_for_op` instead asks for the one
statement that can have produced the op, ruling out syntax that cannot (indexing a Python list
or tuple is not an aten::select), and looking into the module's functions the frame calls (the
compiler inlines them into the same graph).

Everything is cached per file, and callers ask once per distinct (frame, op, ordinal) tuple,
never per event.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MatchFn = Callable[[ast.AST], bool]

KERNEL_PREFIX = "kernel:"
"""`narrow(op_name="kernel:NAME")` narrows a launch without a CPU op (a Triton kernel launched
straight from Python) to the statement that names the kernel."""
MAX_SEARCH_DEPTH = 4
MAX_SEARCH_FILES = 20000
SKIP_DIRS = frozenset({"__pycache__", "node_modules", "site-packages", "venv", "build", "dist"})

SUBSCRIPT_OPS = frozenset({"select", "index", "slice", "__getitem__", "narrow", "unbind"})
STORE_OPS = frozenset({"copy_", "fill_", "index_put_", "masked_fill_", "__setitem__"})
MATMUL_OPS = frozenset({"mm", "matmul", "bmm", "addmm", "baddbmm", "dot", "mv", "_scaled_mm"})
MATMUL_CALLS = frozenset({"mm", "matmul", "bmm", "addmm", "baddbmm", "einsum", "dot", "mv"})
BINOPS: dict[str, type[ast.operator]] = {
    "add": ast.Add, "sub": ast.Sub, "rsub": ast.Sub, "mul": ast.Mult, "div": ast.Div,
    "true_divide": ast.Div, "floor_divide": ast.FloorDiv, "remainder": ast.Mod, "pow": ast.Pow,
    "bitwise_and": ast.BitAnd, "bitwise_or": ast.BitOr, "bitwise_xor": ast.BitXor,
}
CALL_ALIASES: dict[str, tuple[str, ...]] = {
    "allreduce_": ("all_reduce",),
    "_allgather_base_": ("all_gather_into_tensor", "_all_gather_base"),
    "allgather_into_tensor_coalesced_": ("all_gather_into_tensor",),
    "_reduce_scatter_base_": ("reduce_scatter_tensor", "_reduce_scatter_base"),
    "reduce_scatter_tensor_coalesced_": ("reduce_scatter_tensor",),
    "broadcast_": ("broadcast",),
    "to": ("to", "cuda", "cpu", "float", "half", "bfloat16", "type_as"),
    "_to_copy": ("to", "cuda", "cpu", "float", "half", "bfloat16", "type_as"),
    "linear": ("linear",),
    "embedding": ("embedding",),
    "cross_entropy_loss": ("cross_entropy",),
    "scaled_dot_product_attention": ("scaled_dot_product_attention",),
}
"""aten/c10d op names whose Python spelling differs from the op's name."""


@dataclass
class Narrowed:
    line: int
    exact: bool


NON_TENSOR_TYPES = frozenset({
    "list", "tuple", "dict", "set", "frozenset", "int", "float", "str", "bool", "bytes", "range",
    "List", "Tuple", "Dict", "Set", "FrozenSet", "Sequence", "MutableSequence", "Mapping",
    "MutableMapping", "Iterable", "Iterator", "ModuleList", "ModuleDict", "ParameterList",
    "ParameterDict", "Sequential",
})
"""Annotated or constructed types whose `x[i]` is Python indexing, not an aten op."""
NON_TENSOR_CALLS = NON_TENSOR_TYPES | {
    "unbind", "split", "chunk", "tensor_split", "hsplit", "vsplit", "dsplit", "tolist", "zip",
    "enumerate", "sorted", "reversed", "len", "items", "keys", "values",
}
"""Calls that return Python containers or scalars (`t.unbind(0)` returns a tuple)."""
NON_TENSOR_NODES = (ast.List, ast.ListComp, ast.Tuple, ast.Dict, ast.DictComp, ast.Set,
                    ast.SetComp, ast.GeneratorExp, ast.JoinedStr, ast.Constant)
MAX_CALLEES = 64


@dataclass
class _ParsedFile:
    tree: ast.Module
    functions: dict[int, list[ast.AST]]
    """Function/lambda nodes by every line that can name them (def line, decorator lines)."""
    module_functions: dict[str, ast.AST] = field(default_factory=dict)
    """Top-level functions by name (callees that a compiled graph inlines)."""
    owner: dict[ast.AST, ast.ClassDef] = field(default_factory=dict)
    """Method -> the class whose body defines it."""


@dataclass
class SourceIndex:
    """Resolves frame files against candidate roots and narrows lines, caching per file."""

    roots: Sequence[Path] = ()
    search_roots: Sequence[Path] | None = None
    """Project directories searched (shallowly) for a frame file not found under `roots`:
    a script run as `python scripts/x.py` is named "x.py" in frames. Default: those of `roots`
    that look like a project (have .git, pyproject.toml or setup.py)."""
    _paths: dict[str, Path | None] = field(default_factory=dict)
    _listing: dict[Path, list[Path]] = field(default_factory=dict)
    _parsed: dict[Path, _ParsedFile | None] = field(default_factory=dict)
    _answers: dict[tuple[str, int, str, str, int, int], Narrowed] = field(default_factory=dict)

    def resolve(self, file: str) -> Path | None:
        """The readable file a frame's (usually sys.path-relative) file name refers to."""
        if file in self._paths:
            return self._paths[file]
        found: Path | None = None
        if file and not file.startswith("<"):
            candidate = Path(file)
            options = [candidate] if candidate.is_absolute() else [r / file for r in self.roots]
            for option in options:
                try:
                    if option.is_file():
                        found = option
                        break
                except OSError:
                    continue
            if found is None and not candidate.is_absolute():
                found = self._search(file)
        self._paths[file] = found
        return found

    def _search(self, file: str) -> Path | None:
        """The shortest path under a project root that ends with `file`, if any."""
        suffix = "/" + file.lstrip("./")
        matches: list[Path] = []
        for root in self._project_roots():
            matches.extend(p for p in self._list(root) if str(p).endswith(suffix))
        return min(matches, key=lambda p: (len(p.parts), str(p))) if matches else None

    def _project_roots(self) -> list[Path]:
        if self.search_roots is not None:
            return list(self.search_roots)
        markers = (".git", "pyproject.toml", "setup.py")
        out: list[Path] = []
        for root in self.roots:
            try:
                if any((root / m).exists() for m in markers) and root not in out:
                    out.append(root)
            except OSError:
                continue
        return out

    def _list(self, root: Path) -> list[Path]:
        """Python files under root, at most MAX_SEARCH_DEPTH deep and MAX_SEARCH_FILES many,
        skipping hidden directories, virtualenvs and caches (cached per root)."""
        if root in self._listing:
            return self._listing[root]
        found: list[Path] = []
        frontier = [(root, 0)]
        while frontier and len(found) < MAX_SEARCH_FILES:
            directory, depth = frontier.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                name = entry.name
                if entry.is_dir(follow_symlinks=False):
                    if depth < MAX_SEARCH_DEPTH and not name.startswith(".") \
                            and name not in SKIP_DIRS:
                        frontier.append((Path(entry.path), depth + 1))
                elif name.endswith(".py"):
                    found.append(Path(entry.path))
        self._listing[root] = found
        return found

    def narrow(self, file: str, def_line: int, function: str, op_name: str, ordinal: int,
               count: int) -> Narrowed:
        """Statement line of the `ordinal`-th of `count` ops named `op_name` run by the frame
        "file(def_line): function"; the def line (exact=False) when that cannot be told."""
        key = (file, def_line, function, op_name, ordinal, count)
        answer = self._answers.get(key)
        if answer is None:
            answer = self._narrow(file, def_line, function, op_name, ordinal, count)
            self._answers[key] = answer
        return answer

    def _narrow(self, file: str, def_line: int, function: str, op_name: str, ordinal: int,
                count: int) -> Narrowed:
        fallback = Narrowed(def_line, False)
        path = self.resolve(file)
        if path is None or def_line < 0:
            return fallback
        parsed = self._parse(path)
        if parsed is None:
            return fallback
        scope = _scope(parsed, def_line, function)
        if scope is None:
            return fallback
        nodes = list(_walk_scope(scope))
        for matcher in matchers_for(op_name):
            lines = [node.lineno for node in nodes if matcher(node)]
            if lines:
                return choose_line(lines, def_line, ordinal, count)
        return fallback

    def _parse(self, path: Path) -> _ParsedFile | None:
        if path in self._parsed:
            return self._parsed[path]
        parsed: _ParsedFile | None = None
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (OSError, SyntaxError, ValueError):
            tree = None
        if tree is not None:
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
            parsed = _ParsedFile(tree, functions, module_functions, owner)
        self._parsed[path] = parsed
        return parsed

    def narrow_for_op(self, file: str, def_line: int, function: str, op_name: str) -> Narrowed:
        """The one statement of the frame "file(def_line): function" that can run `op_name`,
        for compiled code, where the trace gives no per-op events to match in order.

        aten::select: a tensor indexed by a variable (`bank[i]`, `self.attn[i]`), not a Python
        container (a local list, `t.unbind(0)`'s tuple, an attribute set to a list). Exact only
        when exactly one statement qualifies and no module function the frame calls (inlined
        into the same graph) has one too; otherwise the def line, line_exact false. Other ops:
        their usual matchers, exact only when one line matches.
        """
        key = (file, def_line, function, "compiled:" + op_name, 0, 0)
        answer = self._answers.get(key)
        if answer is None:
            answer = self._narrow_for_op(file, def_line, function, op_name)
            self._answers[key] = answer
        return answer

    def _narrow_for_op(self, file: str, def_line: int, function: str,
                       op_name: str) -> Narrowed:
        fallback = Narrowed(def_line, False)
        path = self.resolve(file)
        parsed = self._parse(path) if path is not None and def_line >= 0 else None
        scope = _scope(parsed, def_line, function) if parsed is not None else None
        if parsed is None or scope is None:
            return fallback
        if _op_base(op_name) != "select":
            lines = sorted({node.lineno for node in _walk_scope(scope)
                            if any(m(node) for m in matchers_for(op_name))})
            return Narrowed(lines[0], True) if len(lines) == 1 else fallback
        own = variable_index_statements(parsed, scope)
        inlined = sum(len(variable_index_statements(parsed, callee))
                      for callee in _callees(parsed, scope))
        if len(own) == 1 and inlined == 0:
            return Narrowed(own[0], True)
        return fallback


def choose_line(lines: list[int], def_line: int, ordinal: int, count: int) -> Narrowed:
    """Pick among candidate lines (in source order) for the ordinal-th of count ops.

    One distinct line: that line. As many candidates as ops (or the ops a whole multiple of
    them, as in a loop over the same statements): match them in order. Otherwise ambiguous.
    """
    if not lines:
        return Narrowed(def_line, False)
    if len(set(lines)) == 1:
        return Narrowed(lines[0], True)
    if count > 0 and count % len(lines) == 0 and 0 <= ordinal < count:
        return Narrowed(lines[ordinal % len(lines)], True)
    return Narrowed(def_line, False)


def _op_base(op_name: str) -> str:
    """"aten::select.int" -> "select"."""
    return op_name.split("::", 1)[-1].split(".", 1)[0]


def variable_index_statements(parsed: _ParsedFile, scope: ast.AST) -> list[int]:
    """Lines of the statements in `scope` that index a tensor with a variable: `x[i]` (x a
    name or attribute, the index neither a constant nor a slice) where x is not known to be a
    Python container."""
    containers = _ContainerNames.of(parsed, scope)
    statements: list[ast.stmt] = []
    hits: set[int] = set()
    for node in _walk_scope(scope):
        if isinstance(node, ast.stmt):
            statements.append(node)
        elif _is_variable_tensor_index(node) and not containers.holds(node.value):
            hits.add(_statement_line(statements, node))
    return sorted(hits)


def _is_variable_tensor_index(node: ast.AST) -> bool:
    if not (_is_tensor_subscript(node) and isinstance(node.ctx, ast.Load)):
        return False
    return isinstance(node.value, ast.Name | ast.Attribute) and _variable_index(node.slice)


def _variable_index(index: ast.AST) -> bool:
    """`i`, `i + 1`, `(i, slice)`: some index that is neither a constant nor a slice."""
    if isinstance(index, ast.Tuple):
        return any(_variable_index(element) for element in index.elts)
    return not isinstance(index, ast.Constant | ast.Slice)


def _statement_line(statements: list[ast.stmt], node: ast.AST) -> int:
    """First line of the innermost statement (seen so far, in source order) holding `node`."""
    end = getattr(node, "end_lineno", None) or node.lineno
    for statement in reversed(statements):
        if statement.lineno <= node.lineno and (statement.end_lineno or statement.lineno) >= end:
            return statement.lineno
    return node.lineno


def _callees(parsed: _ParsedFile, scope: ast.AST) -> list[ast.AST]:
    """Functions of the same file that `scope` calls, directly or not (`f(...)` of a
    module-level function, `self.m(...)` of a method of its class); what torch.compile
    inlines into the frame's graph."""
    seen: dict[int, ast.AST] = {}
    frontier = [scope]
    while frontier and len(seen) < MAX_CALLEES:
        current = frontier.pop()
        cls = parsed.owner.get(current)
        methods = {m.name: m for m in cls.body
                   if isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef)} if cls else {}
        for node in _walk_scope(current):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            callee = None
            if isinstance(func, ast.Name):
                callee = parsed.module_functions.get(func.id)
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
                    and func.value.id == "self":
                callee = methods.get(func.attr)
            if callee is not None and callee is not scope and id(callee) not in seen:
                seen[id(callee)] = callee
                frontier.append(callee)
    return list(seen.values())


@dataclass
class _ContainerNames:
    """Names and `self.` attributes that the code only ever binds to Python containers or
    scalars (so indexing them runs no aten op); anything bound otherwise, or not bound where
    we can see it, may be a tensor."""

    names: dict[str, bool]
    attributes: dict[str, bool]
    functions: dict[str, ast.AST]

    @classmethod
    def of(cls, parsed: _ParsedFile, scope: ast.AST) -> _ContainerNames:
        out = cls({}, {}, parsed.module_functions)
        if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = scope.args
            for arg in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]:
                out._bind(out.names, arg.arg, _non_tensor_annotation(arg.annotation))
        for node in _walk_scope(scope):
            out._record(node, out.names, None)
        owner = parsed.owner.get(scope)
        if owner is not None:
            for node in owner.body:
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    out._bind(out.attributes, node.target.id,
                              _non_tensor_annotation(node.annotation))
            for method in owner.body:
                if isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef) and \
                        method.args.args:
                    self_name = method.args.args[0].arg
                    for node in _walk_scope(method):
                        out._record(node, out.attributes, self_name)
        return out

    def holds(self, value: ast.AST) -> bool:
        """Whether `value` (a Name or `self.x`) is known to be a Python container."""
        if isinstance(value, ast.Name):
            return self.names.get(value.id, False)
        if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name) \
                and value.value.id == "self":
            return self.attributes.get(value.attr, False)
        return False

    @staticmethod
    def _bind(table: dict[str, bool], name: str, container: bool) -> None:
        table[name] = table.get(name, True) and container

    def _record(self, node: ast.AST, table: dict[str, bool], self_name: str | None) -> None:
        """Note the bindings one statement or expression makes (of plain names when
        self_name is None, else of `self_name.<attr>`)."""
        if isinstance(node, ast.Assign):
            for target in node.targets:
                self._assign(table, self_name, target, node.value)
        elif isinstance(node, ast.AnnAssign):
            container = _non_tensor_annotation(node.annotation) or (
                node.value is not None and self._container_value(node.value))
            self._assign(table, self_name, node.target, None, container)
        elif isinstance(node, ast.AugAssign):
            self._assign(table, self_name, node.target, node.value)
        elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension):
            self._assign(table, self_name, node.target, None)
        elif isinstance(node, ast.withitem) and node.optional_vars is not None:
            self._assign(table, self_name, node.optional_vars, None)
        elif isinstance(node, ast.NamedExpr):
            self._assign(table, self_name, node.target, node.value)

    def _assign(self, table: dict[str, bool], self_name: str | None, target: ast.AST,
                value: ast.AST | None, container: bool | None = None) -> None:
        if isinstance(target, ast.Tuple | ast.List):
            values: list[ast.AST | None] = [None] * len(target.elts)
            if isinstance(value, ast.Tuple | ast.List) and len(value.elts) == len(target.elts) \
                    and not any(isinstance(e, ast.Starred) for e in value.elts):
                values = list(value.elts)
            for element, element_value in zip(target.elts, values, strict=True):
                self._assign(table, self_name, element, element_value)
            return
        if container is None:
            container = value is not None and self._container_value(value)
        if self_name is None and isinstance(target, ast.Name):
            self._bind(table, target.id, container)
        elif self_name is not None and isinstance(target, ast.Attribute) \
                and isinstance(target.value, ast.Name) and target.value.id == self_name:
            self._bind(table, target.attr, container)

    def _container_value(self, value: ast.AST) -> bool:
        """An expression that evaluates to a Python container or scalar, never a tensor."""
        if isinstance(value, NON_TENSOR_NODES):
            return True
        if isinstance(value, ast.IfExp):
            return self._container_value(value.body) and self._container_value(value.orelse)
        if isinstance(value, ast.Name):
            return self.names.get(value.id, False)
        if isinstance(value, ast.Call):
            if _called_name(value) in NON_TENSOR_CALLS:
                return True
            if isinstance(value.func, ast.Name):
                function = self.functions.get(value.func.id)
                return function is not None and _non_tensor_annotation(function.returns)
        return False


def _non_tensor_annotation(annotation: ast.AST | None) -> bool:
    """`list[int]`, `tuple[Tensor, Tensor]`, `dict | None`: a container or scalar type."""
    if annotation is None:
        return False
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        try:
            annotation = ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return False
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        sides = [annotation.left, annotation.right]
        typed = [s for s in sides if not (isinstance(s, ast.Constant) and s.value is None)]
        return bool(typed) and all(_non_tensor_annotation(s) for s in typed)
    if isinstance(annotation, ast.Subscript):
        annotation = annotation.value
    name = annotation.attr if isinstance(annotation, ast.Attribute) else \
        getattr(annotation, "id", None)
    return name in NON_TENSOR_TYPES


def _scope(parsed: _ParsedFile, def_line: int, function: str) -> ast.AST | None:
    """The function (or module) whose code the frame ran."""
    if function == "<module>":
        return parsed.tree
    for node in parsed.functions.get(def_line, ()):
        if getattr(node, "name", None) == function:
            return node
    return None


def _walk_scope(scope: ast.AST) -> Iterator[ast.AST]:
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


def _called_name(node: ast.AST) -> str | None:
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def _is_tensor_subscript(node: ast.AST) -> bool:
    """A subscript that can be a tensor index: not `x.shape[0]`, not `d["key"]`."""
    if not isinstance(node, ast.Subscript):
        return False
    if isinstance(node.value, ast.Attribute) and node.value.attr in ("shape", "stride"):
        return False
    index = node.slice
    return not (isinstance(index, ast.Constant) and isinstance(index.value, str))


def _has_slice(index: ast.AST) -> bool:
    if isinstance(index, ast.Slice):
        return True
    return isinstance(index, ast.Tuple) and any(isinstance(e, ast.Slice) for e in index.elts)


def _only_slices(index: ast.AST) -> bool:
    """`x[1:3]`, `x[:, ::2]`, `x[...]`: slicing only (aten::slice), no integer index."""
    if isinstance(index, ast.Slice):
        return True
    if isinstance(index, ast.Tuple):
        return all(
            isinstance(e, ast.Slice) or (isinstance(e, ast.Constant) and e.value is Ellipsis)
            for e in index.elts
        )
    return False


def matchers_for(op_name: str) -> list[MatchFn]:
    """Predicates on AST nodes that could have produced an op with this name, the most
    specific first (the first that matches anything decides)."""
    if op_name.startswith(KERNEL_PREFIX):
        return [_kernel_matcher(op_name[len(KERNEL_PREFIX):])]
    if "::" not in op_name:
        return _label_matchers(op_name)
    return [_op_matcher(op_name)]


def _kernel_matcher(kernel: str) -> MatchFn:
    """`kernel[grid](...)` or `kernel(...)` for a kernel launched from Python (Triton)."""
    base = kernel.split("(", 1)[0].split("<", 1)[0].strip()

    def named(node: ast.AST) -> bool:
        if not isinstance(node, ast.Call):
            return False
        func = node.func.value if isinstance(node.func, ast.Subscript) else node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        return name == base

    return named


def _op_matcher(op_name: str) -> MatchFn:
    base = op_name.split("::", 1)[1].split(".", 1)[0]
    stem = base[:-1] if base.endswith("_") and not base.endswith("__") else base
    calls = set(CALL_ALIASES.get(base, ())) | {base}

    if base in SUBSCRIPT_OPS and base not in ("narrow", "unbind"):
        def subscript(node: ast.AST) -> bool:
            if not _is_tensor_subscript(node) or not isinstance(node.ctx, ast.Load):
                return False
            index = node.slice
            if base == "select":
                return not _only_slices(index)
            if base == "slice":
                return _has_slice(index)
            return True

        return subscript
    if base in STORE_OPS:
        def store(node: ast.AST) -> bool:
            if _called_name(node) in calls:
                return True
            return isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store)

        return store
    if base in MATMUL_OPS:
        def matmul(node: ast.AST) -> bool:
            if isinstance(node, ast.BinOp | ast.AugAssign) and isinstance(node.op, ast.MatMult):
                return True
            return _called_name(node) in MATMUL_CALLS | calls

        return matmul
    if stem in BINOPS:
        operator = BINOPS[stem]
        in_place = base.endswith("_")

        def binop(node: ast.AST) -> bool:
            if _called_name(node) in calls:
                return True
            if in_place:
                return isinstance(node, ast.AugAssign) and isinstance(node.op, operator)
            return isinstance(node, ast.BinOp) and isinstance(node.op, operator)

        return binop

    def call(node: ast.AST) -> bool:
        return _called_name(node) in calls

    return call


def _label_matchers(label: str) -> list[MatchFn]:
    """record_function labels: the label's string literal (`record_function("fwd")`), else a
    call of the label's last word ("Optimizer.step#AdamW.step" -> `.step(`)."""
    last = label.replace("#", ".").split(".")[-1].strip()

    def literal(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and node.value == label

    def call(node: ast.AST) -> bool:
        return bool(last) and _called_name(node) == last

    return [literal, call]
