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
from dataclasses import dataclass, field

from tracekit.source.containers import callees, variable_index_statements
from tracekit.source.files import SourceFiles
from tracekit.source.implicit import protocol_matcher
from tracekit.source.parse import (
    MatchFn,
    called_name,
    calls_named,
    function_scope,
    is_tensor_subscript,
    scope_around,
    walk_scope,
)
from tracekit.source.resume import (
    activation_order,
    pass_positions,
    resumed_scope,
    runs_once_per_pass,
)

CALL_PREFIX = "call:"
"""`narrow(op_name="call:NAME")` narrows the call the frame made of NAME (the function or
builtin the trace shows it calling), a special method by the syntax that calls it
(`call:__iter__`: a `for`, a `zip(...)`; tracekit.source.implicit)."""
KERNEL_PREFIX = "kernel:"
"""`narrow(op_name="kernel:NAME")` narrows a launch without a CPU op (a Triton kernel launched
straight from Python) to the statement that names the kernel."""

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
    "_scaled_dot_product_cudnn_attention": ("scaled_dot_product_attention",),
    "_scaled_dot_product_flash_attention": ("scaled_dot_product_attention",),
    "_scaled_dot_product_efficient_attention": ("scaled_dot_product_attention",),
}
"""aten/c10d op names whose Python spelling differs from the op's name."""
PROPERTY_OPS: dict[str, str] = {"mT": "mT", "mH": "mH", "numpy_T": "T"}
"""aten ops that a tensor property runs (`x.mT`, `x.T`): an attribute read, not a call."""


@dataclass
class Narrowed:
    line: int
    exact: bool


@dataclass
class SourceIndex(SourceFiles):
    """Source files (see SourceFiles) and the statement lines narrowed in them, cached."""

    _answers: dict[tuple[str, int, str, str, int, int], Narrowed] = field(default_factory=dict)
    _starting: dict[str, dict[int, list[ast.AST]]] = field(default_factory=dict)

    def statement_runs(self, file: str, line: int, op_name: str) -> bool:
        """Whether code starting on `line` of `file` has the syntax that runs `op_name` (a
        backward op: its forward's). Tells apart the statements Inductor lists for an extern
        call whose node it could not name (it then gives the stacks of all the node's origins:
        the attention call and the views and norms feeding it)."""
        if file not in self._starting:
            parsed = self.parsed_at(file, 0)
            by_line: dict[int, list[ast.AST]] = {}
            for node in ast.walk(parsed.tree) if parsed is not None else ():
                if hasattr(node, "lineno"):
                    by_line.setdefault(node.lineno, []).append(node)
            self._starting[file] = by_line
        nodes = self._starting[file].get(line, [])
        names = [op_name]
        if op_name.endswith("_backward"):
            names.append(op_name[:-len("_backward")])
        return any(m(node) for name in names for m in matchers_for(name) for node in nodes)

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
        parsed = self.parsed_at(file, def_line)
        scope = function_scope(parsed, def_line, function) if parsed is not None else None
        if scope is None:
            return fallback
        nodes = list(walk_scope(scope))
        for matcher in matchers_for(op_name):
            lines = matching_lines(nodes, matcher)
            if lines:
                return choose_line(lines, def_line, ordinal, count)
        return fallback

    def narrow_frame(self, file: str, line: int, function: str, op_name: str,
                     ordinal: int = 0, count: int = 1, running: bool = False) -> Narrowed:
        """`narrow` for any frame, also one that started inside its function
        (tracekit.source.resume): a frame already on the stack when profiling began
        (`running`), or a generator or coroutine resumed at a `yield`/`await`. Both are named
        by that line, not the def line, and can only run what follows it: the candidates. A
        resumed frame ran from its `yield` to the next one, so its ops are matched in order
        (`choose_line`); a running frame's first pass was cut by the profiler's start, so it is
        exact only when one statement matches. Otherwise the function's def line, inexact."""
        mode = "running:" if running else "started:"
        key = (file, line, function, mode + op_name, ordinal, count)
        answer = self._answers.get(key)
        if answer is None:
            answer = self._narrow_frame(file, line, function, op_name, ordinal, count, running)
            self._answers[key] = answer
        return answer

    def _narrow_frame(self, file: str, line: int, function: str, op_name: str, ordinal: int,
                      count: int, running: bool) -> Narrowed:
        started = self._started_frame(file, line, function, running)
        if started is None:
            return self.narrow(file, line, function, op_name, ordinal, count)
        scope, nodes = started
        for matcher in matchers_for(op_name):
            matched = matching_nodes(nodes, matcher)
            if matched:
                lines = [node.lineno for node in matched]
                # A resumed frame makes one pass from its yield to the next: its calls follow
                # the candidates in order when each candidate runs once per pass.
                in_order = not running and runs_once_per_pass(scope, line, matched)
                return choose_line(lines, scope.lineno, ordinal, count) if in_order \
                    else choose_line(lines, scope.lineno, 0, 1)
        return Narrowed(scope.lineno, False)

    def _started_frame(self, file: str, line: int, function: str, running: bool
                       ) -> tuple[ast.AST, list[ast.AST]] | None:
        """For a frame named by a line inside its function: the function and the nodes it can
        run, in run order. None for a frame named by its def line, or one that cannot be
        placed (unreadable file; a plain function named by a body line: the file changed)."""
        parsed = self.parsed_at(file, line)
        if parsed is None or function_scope(parsed, line, function) is not None:
            return None
        scope = scope_around(parsed, line, function) if running \
            else resumed_scope(parsed, line, function)
        if scope is None:
            return None
        return scope, activation_order(scope, line, list(walk_scope(scope)), resumed=not running)

    def narrow_between(self, file: str, line: int, function: str, op_name: str,
                       after: int, before: int) -> Narrowed:
        """For a generator or coroutine frame resumed at `line`: the statement of `op_name`
        that runs between the statements at lines `after` and `before` of the same pass (lines
        where its neighbouring calls were placed exactly; -1: no bound on that side). A pass
        runs its code in order, so a candidate outside that stretch did not run the op. Exact
        only when one statement is left (or both neighbours are on one line: the op is that
        statement's), and only when neither bound lies in a loop the pass can go round (there a
        neighbour may be from another turn of it); else the def line."""
        key = (file, line, function, f"between:{after}:{before}:" + op_name, 0, 1)
        answer = self._answers.get(key)
        if answer is None:
            answer = self._narrow_between(file, line, function, op_name, after, before)
            self._answers[key] = answer
        return answer

    def _narrow_between(self, file: str, line: int, function: str, op_name: str,
                        after: int, before: int) -> Narrowed:
        started = self._started_frame(file, line, function, running=False)
        if started is None:
            return Narrowed(line, False)
        scope, nodes = started
        fallback = Narrowed(scope.lineno, False)
        positions, in_loops = pass_positions(scope, line, nodes)
        bounds = [b for b in (after, before) if b >= 0]
        if any(b not in positions or b in in_loops for b in bounds):
            return fallback
        if after >= 0 and after == before:
            # Both neighbours ran from one statement, and a statement's evaluation is not
            # interleaved with another's in the same frame: the op is that statement's, whether
            # or not its syntax is one we know (an `aten::item` from a tensor slice bound).
            return Narrowed(after, True)
        low = positions[after] if after >= 0 else -1
        high = positions[before] if before >= 0 else len(nodes)
        for matcher in matchers_for(op_name):
            matched = matching_nodes(nodes, matcher)
            if matched:
                inside = {n.lineno for n in matched if low <= positions[n.lineno] <= high}
                return Narrowed(inside.pop(), True) if len(inside) == 1 else fallback
        return fallback

    def is_resumed(self, file: str, line: int, function: str) -> bool:
        """Whether a frame (not running when profiling began) named "file(line): function" is
        a generator or coroutine resumed at that line of its body."""
        return self._started_frame(file, line, function, running=False) is not None

    def calls_in_frame(self, file: str, line: int, function: str, callee: str,
                       running: bool = False) -> bool:
        """Whether the code the frame can run (as `narrow_frame` scopes it) has syntax that
        calls `callee`: a call of that name, or the protocol of a special method."""
        key = (file, line, function, "calls:" + callee, int(running), 0)
        answer = self._answers.get(key)
        if answer is None:
            matchers = matchers_for(CALL_PREFIX + callee)
            started = self._started_frame(file, line, function, running)
            if started is not None:
                nodes = started[1]
            else:
                parsed = self.parsed_at(file, line)
                scope = function_scope(parsed, line, function) if parsed is not None else None
                nodes = list(walk_scope(scope)) if scope is not None else []
            found = any(m(node) for m in matchers for node in nodes)
            answer = Narrowed(int(found), found)
            self._answers[key] = answer
        return answer.exact

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
        parsed = self.parsed_at(file, def_line)
        scope = function_scope(parsed, def_line, function) if parsed is not None else None
        if parsed is None or scope is None:
            return fallback
        if _op_base(op_name) != "select":
            lines = sorted({node.lineno for node in walk_scope(scope)
                            if any(m(node) for m in matchers_for(op_name))})
            return Narrowed(lines[0], True) if len(lines) == 1 else fallback
        own = variable_index_statements(parsed, scope)
        inlined = sum(len(variable_index_statements(parsed, callee))
                      for callee in callees(parsed, scope))
        if len(own) == 1 and inlined == 0:
            return Narrowed(own[0], True)
        return fallback


def matching_nodes(nodes: list[ast.AST], matcher: MatchFn) -> list[ast.AST]:
    """The nodes that `matcher` takes, in the order of `nodes`, one per call that can run: of
    a conditional expression (`f(a) if c else f(b)`) whose two branches both match the same
    number of times, only the first branch counts (one of them runs, on that line)."""
    matched = [node for node in nodes if matcher(node)]
    if not matched:
        return []
    alternatives: set[int] = set()
    for node in nodes:
        if isinstance(node, ast.IfExp):
            body = [n for n in ast.walk(node.body) if matcher(n)]
            orelse = [n for n in ast.walk(node.orelse) if matcher(n)]
            if body and len(body) == len(orelse):
                alternatives.update(id(n) for n in orelse)
    return [node for node in matched if id(node) not in alternatives]


def matching_lines(nodes: list[ast.AST], matcher: MatchFn) -> list[int]:
    return [node.lineno for node in matching_nodes(nodes, matcher)]


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


def _has_slice(index: ast.AST) -> bool:
    if isinstance(index, ast.Slice):
        return True
    return isinstance(index, ast.Tuple) and any(isinstance(e, ast.Slice) for e in index.elts)


def _only_slices(index: ast.AST) -> bool:
    """`x[1:3]`, `x[:, ::2]`, `x[...]`, `x[None, :]`: slicing (aten::slice) and new axes
    (unsqueeze) only, no integer index."""
    if isinstance(index, ast.Slice):
        return True
    if isinstance(index, ast.Tuple):
        return all(
            isinstance(e, ast.Slice)
            or (isinstance(e, ast.Constant) and (e.value is Ellipsis or e.value is None))
            for e in index.elts
        )
    return False


def matchers_for(op_name: str) -> list[MatchFn]:
    """Predicates on AST nodes that could have produced an op with this name, the most
    specific first (the first that matches anything decides)."""
    if op_name.startswith(KERNEL_PREFIX):
        return [_kernel_matcher(op_name[len(KERNEL_PREFIX):])]
    if op_name.startswith(CALL_PREFIX):
        callee = op_name[len(CALL_PREFIX):]
        return [protocol_matcher(callee) or calls_named(callee)]
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
            if not is_tensor_subscript(node) or not isinstance(node.ctx, ast.Load):
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
            if called_name(node) in calls:
                return True
            return isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store)

        return store
    if base in PROPERTY_OPS:
        attribute = PROPERTY_OPS[base]

        def read(node: ast.AST) -> bool:
            return (isinstance(node, ast.Attribute) and node.attr == attribute
                    and isinstance(node.ctx, ast.Load)) or called_name(node) in calls

        return read
    if base in MATMUL_OPS:
        # aten::matmul is what `@` and `matmul(` record (other products record their own
        # name); the lower-level products can come from any of them (a compiled graph's mm).
        spellings = calls if base == "matmul" else MATMUL_CALLS | calls

        def matmul(node: ast.AST) -> bool:
            if isinstance(node, ast.BinOp | ast.AugAssign) and isinstance(node.op, ast.MatMult):
                return True
            return called_name(node) in spellings

        return matmul
    if stem in BINOPS:
        operator = BINOPS[stem]
        in_place = base.endswith("_")

        def binop(node: ast.AST) -> bool:
            if called_name(node) in calls:
                return True
            if in_place:
                return isinstance(node, ast.AugAssign) and isinstance(node.op, operator)
            return isinstance(node, ast.BinOp) and isinstance(node.op, operator)

        return binop

    def call(node: ast.AST) -> bool:
        return called_name(node) in calls

    return call


def _label_matchers(label: str) -> list[MatchFn]:
    """record_function labels: the label's string literal (`record_function("fwd")`), else a
    call of the label's last word ("Optimizer.step#AdamW.step" -> `.step(`)."""
    last = label.replace("#", ".").split(".")[-1].strip()

    def literal(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and node.value == label

    def call(node: ast.AST) -> bool:
        return bool(last) and called_name(node) == last

    if label.startswith("enumerate(DataLoader)"):
        # The DataLoader's iterator runs where the loop takes its next batch: a `for` over
        # something other than range(...), or an explicit next(...).
        def loop(node: ast.AST) -> bool:
            if isinstance(node, ast.Call) and called_name(node) == "next":
                return True
            return isinstance(node, ast.For) and called_name(node.iter) != "range"

        return [literal, loop]
    return [literal, call]
