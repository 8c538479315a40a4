"""Which subscripts in a function index a tensor (an aten::select) rather than a Python
container: what `SourceIndex.narrow_for_op` needs for compiled code, where the trace gives no
per-op events to match statements in order."""

from __future__ import annotations

import ast
from dataclasses import dataclass

from tracekit.source.parse import ParsedFile, called_name, is_tensor_subscript, walk_scope

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


def variable_index_statements(parsed: ParsedFile, scope: ast.AST) -> list[int]:
    """Lines of the statements in `scope` that index a tensor with a variable: `x[i]` (x a
    name or attribute, the index neither a constant nor a slice) where x is not known to be a
    Python container."""
    containers = _ContainerNames.of(parsed, scope)
    statements: list[ast.stmt] = []
    hits: set[int] = set()
    for node in walk_scope(scope):
        if isinstance(node, ast.stmt):
            statements.append(node)
        elif _is_variable_tensor_index(node) and not containers.holds(node.value):
            hits.add(_statement_line(statements, node))
    return sorted(hits)


def _is_variable_tensor_index(node: ast.AST) -> bool:
    if not (is_tensor_subscript(node) and isinstance(node.ctx, ast.Load)):
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


def callees(parsed: ParsedFile, scope: ast.AST) -> list[ast.AST]:
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
        for node in walk_scope(current):
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
    def of(cls, parsed: ParsedFile, scope: ast.AST) -> _ContainerNames:
        out = cls({}, {}, parsed.module_functions)
        if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = scope.args
            for arg in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]:
                out._bind(out.names, arg.arg, _non_tensor_annotation(arg.annotation))
        for node in walk_scope(scope):
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
                    for node in walk_scope(method):
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
            if called_name(value) in NON_TENSOR_CALLS:
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
