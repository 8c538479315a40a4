"""Ops -> the user's source line that ran them.

For every op: the innermost Python frame of user code (see `tracekit.load.userframes`) that
encloses it on the same thread. The frame gives file, function and def line; `tracekit.source`
narrows the def line to the statement when the file is readable. Backward ops have no user frame of
their own (the autograd engine runs them), so they take their forward op's line.

Compiled code: an Inductor kernel's cpu_op (`triton_poi_fused_add_select_backward_2`) runs in
backward and takes the line of its forward op, the compiled graph's call, which names only the
def line of the compiled function. When the kernel's name says it fuses a select_backward, the
forward statement behind it is a tensor indexed by a variable (`bank[i]`): narrowed with
`SourceIndex.narrow_for_op(..., "aten::select")`. Ops run from Inductor's generated code
itself (the graph's `call` calling an extern op such as a custom op or cuBLAS) keep a line
only when it is a statement: that code is not the user's
(`tracekit.load.userframes.is_generated_file`), and the def line of the compiled function
around it is not the statement. Ops the autograd engine runs with
neither a forward op nor a user frame (a parameter's gradient accumulation) take the
`.backward(` statement that started the pass (`_engine_sources`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tracekit.intervals import innermost_containing, propagate_down, sort_order
from tracekit.load.columns import strings_column
from tracekit.load.frames import already_running
from tracekit.load.userframes import is_generated_file
from tracekit.names import distinct_rows, name_matches
from tracekit.source import CALL_PREFIX, KERNEL_PREFIX, SourceIndex, call_name
from tracekit.source.backward_call import backward_statement
from tracekit.trace import Trace

SRC_COLUMNS = ["src_file", "src_line", "src_function", "src_line_exact"]
COMPILED_OP_PATTERNS: dict[str, str] = {"select_backward": "aten::select"}
NOT_AN_IDENTIFIER = re.compile(r"::|\s")
"""A fused-kernel name part -> the forward aten op that leads to it (whose statement we seek).
A bare `select` in a forward kernel's name is left alone: Inductor decomposes `unbind` into
selects too, so it does not point at a subscript."""


def user_frames(trace: Trace, tid: np.ndarray | None = None,
                t: np.ndarray | None = None, order: np.ndarray | None = None) -> np.ndarray:
    """Row in `python` of the innermost user frame enclosing each (tid, t), by default each
    op's start (-1 if none); `order`: `frame_order(trace.python)`, if already known."""
    python = trace.python
    if tid is None or t is None:
        tid, t = trace.ops["tid"].to_numpy(), trace.ops["ts"].to_numpy()
    if len(python) == 0 or len(t) == 0:
        return np.full(len(t), -1, dtype=np.int64)
    return innermost_containing(
        python["tid"].to_numpy(), python["ts"].to_numpy(), python["end"].to_numpy(),
        python["parent"].to_numpy(), tid, t,
        eligible=python["is_user"].to_numpy(dtype=bool), order=order,
    )


def frame_order(python: pd.DataFrame) -> np.ndarray:
    """The Python frames' `sort_order` (by thread, start, longest first), which every look-up
    of the frames around some times starts from: worked out once for several look-ups."""
    return sort_order(python["tid"].to_numpy(), python["ts"].to_numpy(),
                      python["end"].to_numpy())


def in_generated_code(trace: Trace, tid: np.ndarray | None = None,
                      t: np.ndarray | None = None, order: np.ndarray | None = None
                      ) -> np.ndarray:
    """Whether the innermost frame of user or generated code around each (tid, t), by default
    each op's start, is Inductor's generated code (a compiled graph's `call` running an extern
    op or a kernel); `order`: as for `user_frames`."""
    python = trace.python
    if tid is None or t is None:
        tid, t = trace.ops["tid"].to_numpy(), trace.ops["ts"].to_numpy()
    if len(python) == 0 or len(t) == 0:
        return np.zeros(len(t), dtype=bool)
    generated = generated_frames(python)
    found = innermost_containing(
        python["tid"].to_numpy(), python["ts"].to_numpy(), python["end"].to_numpy(),
        python["parent"].to_numpy(), tid, t,
        eligible=python["is_user"].to_numpy(dtype=bool) | generated, order=order,
    )
    inside = found >= 0
    inside[inside] = generated[found[inside]]
    return inside


def generated_frames(python: pd.DataFrame) -> np.ndarray:
    """Whether each Python frame runs code Inductor generated (`is_generated_file`)."""
    codes, files = pd.factorize(python["file"].astype(object))
    flags = np.array([is_generated_file(str(f)) for f in files] or [False], dtype=bool)
    return flags[codes] if len(files) else np.zeros(len(python), dtype=bool)


def launch_sources(trace: Trace, launch_rows: np.ndarray, kernel_names: np.ndarray,
                   index: SourceIndex) -> pd.DataFrame:
    """Source columns for GPU work whose launch has no enclosing CPU op (a Triton kernel
    launched straight from Python): the user frame around the launch, narrowed to the
    statement naming the kernel."""
    launches, python = trace.launches, trace.python
    frame = user_frames(trace, launches["tid"].to_numpy()[launch_rows],
                        launches["ts"].to_numpy()[launch_rows])
    m = len(launch_rows)
    out = pd.DataFrame({
        "src_file": strings_column(np.full(m, "", dtype=object)),
        "src_line": np.full(m, -1, dtype=np.int64),
        "src_function": strings_column(np.full(m, "", dtype=object)),
        "src_line_exact": np.zeros(m, dtype=bool), "src_from_fwd": np.zeros(m, dtype=bool),
    })
    has = frame >= 0
    if not has.any():
        return out
    files = python["file"].to_numpy()[frame[has]]
    lines = python["line"].to_numpy()[frame[has]]
    functions = python["function"].to_numpy()[frame[has]]
    answers = [index.narrow(str(f), int(dl), str(fn), KERNEL_PREFIX + str(k), 0, 1)
               for f, dl, fn, k in zip(files, lines, functions, kernel_names[has], strict=True)]
    out.loc[has, "src_file"] = files
    out.loc[has, "src_function"] = functions
    out.loc[has, "src_line"] = np.array([a.line for a in answers], dtype=np.int64)
    out.loc[has, "src_line_exact"] = np.array([a.exact for a in answers], dtype=bool)
    return out


def call_ops(ops: pd.DataFrame, frame: np.ndarray) -> np.ndarray:
    """For each op, the outermost op of its chain still inside the same frame: the op the
    frame's code called directly (aten::matmul rather than the aten::mm inside it)."""
    parent = ops["parent"].to_numpy()
    has_parent = parent >= 0
    parent_frame = np.full(len(ops), -2, dtype=np.int64)
    parent_frame[has_parent] = frame[parent[has_parent]]
    is_call = ~has_parent | (parent_frame != frame)
    start = np.where(is_call, np.arange(len(ops)), -1)
    return propagate_down(parent, ops["depth"].to_numpy(), start)


def op_sources(trace: Trace, index: SourceIndex) -> pd.DataFrame:
    """src_file, src_line, src_function, src_line_exact, src_from_fwd per op."""
    ops, python = trace.ops, trace.python
    n = len(ops)
    order = frame_order(python) if len(python) else None
    frame = user_frames(trace, order=order)
    # Object columns: pandas would store these strings in arrow arrays, which every
    # assignment below rebuilds.
    out = pd.DataFrame({
        "src_file": strings_column(np.full(n, "", dtype=object)),
        "src_line": np.full(n, -1, dtype=np.int64),
        "src_function": strings_column(np.full(n, "", dtype=object)),
        "src_line_exact": np.zeros(n, dtype=bool),
    })
    has = frame >= 0
    if has.any():
        out.loc[has, "src_file"] = python["file"].to_numpy()[frame[has]]
        out.loc[has, "src_function"] = python["function"].to_numpy()[frame[has]]
        out.loc[has, "src_line"] = python["line"].to_numpy()[frame[has]]
        line, exact = _narrowed_lines(trace, frame, index, order)
        out.loc[has, "src_line"] = line[has]
        out.loc[has, "src_line_exact"] = exact[has]
    # Backward ops take their forward op's line even when a user frame encloses them (on CPU
    # the engine runs inside the user's `loss.backward()` frame): the forward line is the cause.
    fwd = ops["fwd_op_idx"].to_numpy() if "fwd_op_idx" in ops else np.full(n, -1)
    from_fwd = fwd >= 0
    from_fwd[from_fwd] = out["src_line"].to_numpy()[fwd[from_fwd]] >= 0
    if from_fwd.any():
        source_rows = fwd[from_fwd]
        for column in SRC_COLUMNS:
            out.loc[from_fwd, column] = out[column].to_numpy()[source_rows]
    out["src_from_fwd"] = from_fwd
    out["src_line"] = out["src_line"].astype(np.int64)
    out["src_line_exact"] = out["src_line_exact"].astype(bool)
    _narrow_compiled(ops, out, index)
    _compiled_code_lines(trace, out, order)
    _engine_sources(trace, out, index, order)
    return out


COMPILED_REGION = re.compile(r"CompiledFunction|Torch-Compiled Region|CompiledFxGraph")
"""The ops that run a compiled graph (AOTAutograd's forward and backward functions, dynamo's
region, Inductor's graph call): what they ran is the graph, not one statement."""


def _compiled_code_lines(trace: Trace, out: pd.DataFrame, order: np.ndarray | None) -> None:
    """Work run from Inductor's generated code, and the ops that run a compiled graph, keep a
    line only when it is the statement (narrowed in the compiled function, or given by
    provenance later): the compiled function's def line, or a generated module's own line, is
    not the user's line, so they get none (nor do the ops inside them inherit it)."""
    region = np.asarray(name_matches(trace.ops["name"], COMPILED_REGION), dtype=bool)
    vague = (in_generated_code(trace, order=order) | region) \
        & ~out["src_line_exact"].to_numpy(dtype=bool)
    if vague.any():
        rows = out.index[vague]
        out.loc[rows, "src_file"] = ""
        out.loc[rows, "src_function"] = ""
        out.loc[rows, "src_line"] = -1
        out.loc[rows, "src_from_fwd"] = False


ENGINE_OP = re.compile(r"^autograd::engine::evaluate_function: torch::autograd::AccumulateGrad")
"""A parameter's gradient accumulation, which the engine runs natively (the one kind of
engine work taken here: the others run a graph or a hook whose own code is the answer)."""
RUN_BACKWARD = re.compile(r"run_backward")
"""torch's `Variable._execution_engine.run_backward(...)`: the caller waits in it while the
engine's threads run the backward pass."""


def _engine_sources(trace: Trace, out: pd.DataFrame, index: SourceIndex,
                    order: np.ndarray | None) -> None:
    """The autograd engine's gradient accumulation into `.grad` (AccumulateGrad's add_/copy_:
    no forward op, no Python frame of its own) takes the `.backward(` statement the calling
    thread was running meanwhile (tracekit.source.backward_call), in place."""
    ops, python = trace.ops, trace.python
    if ops.empty or python.empty:
        return
    engine = np.asarray(name_matches(ops["name"], ENGINE_OP), dtype=bool)
    under = propagate_down(ops["parent"].to_numpy(), ops["depth"].to_numpy(),
                           np.where(engine, np.arange(len(ops)), -1)) >= 0
    todo = np.flatnonzero(under & (out["src_line"].to_numpy() < 0))
    waits = python[np.asarray(name_matches(python["name"], RUN_BACKWARD), dtype=bool)]
    if todo.size == 0 or waits.empty:
        return
    # Only native engine work: an op under Python code of its own thread (a compiled backward
    # graph's generated code, a Python hook) is that code's, not the caller's. Built-in
    # frames (C++ functions bound to Python, named without a file) do not count.
    framed = innermost_containing(
        python["tid"].to_numpy(), python["ts"].to_numpy(), python["end"].to_numpy(),
        python["parent"].to_numpy(), ops["tid"].to_numpy()[todo], ops["ts"].to_numpy()[todo],
        eligible=python["line"].to_numpy() >= 0, order=order)
    todo = todo[framed < 0]
    if todo.size == 0:
        return
    waits = waits.sort_values("ts", kind="stable")
    starts, ends = waits["ts"].to_numpy(), waits["end"].to_numpy()
    t = ops["ts"].to_numpy()[todo]
    at = np.searchsorted(starts, t, side="right") - 1
    inside = at >= 0
    inside[inside] = ends[at[inside]] >= t[inside]
    todo, at = todo[inside], at[inside]
    if todo.size == 0:
        return
    frame = user_frames(trace, waits["tid"].to_numpy()[at], starts[at], order)
    has = frame >= 0
    todo, frame = todo[has], frame[has]
    files = python["file"].to_numpy(dtype=object)[frame]
    lines = python["line"].to_numpy()[frame]
    functions = python["function"].to_numpy(dtype=object)[frame]
    codes, distinct = distinct_rows(files, lines, functions)
    answers = [backward_statement(index, str(f), int(ln), str(fn)) for f, ln, fn in distinct]
    rows = out.index[todo]
    out.loc[rows, "src_file"] = files
    out.loc[rows, "src_function"] = functions
    out.loc[rows, "src_line"] = np.array([a.line for a in answers], dtype=np.int64)[codes]
    out.loc[rows, "src_line_exact"] = np.array([a.exact for a in answers], dtype=bool)[codes]


def _narrow_compiled(ops: pd.DataFrame, out: pd.DataFrame, index: SourceIndex) -> None:
    """Narrow the def line of Inductor kernel ops whose name names a fused op that a forward
    statement causes (see COMPILED_OP_PATTERNS), in place; once per distinct frame."""
    names = ops["name"]
    # Inductor kernels are plain identifiers; aten ops and autograd nodes have "::" or spaces.
    kernel_like = ~name_matches(names, NOT_AN_IDENTIFIER)
    unsure = (out["src_line"].to_numpy() >= 0) & ~out["src_line_exact"].to_numpy(dtype=bool)
    for part, op_name in COMPILED_OP_PATTERNS.items():
        hit = np.flatnonzero(kernel_like & unsure
                             & name_matches(names, re.compile(re.escape(part))))
        if hit.size == 0:
            continue
        keys = out.iloc[hit][["src_file", "src_line", "src_function"]]
        codes, uniques = pd.factorize(pd.MultiIndex.from_frame(keys))
        answers = [index.narrow_for_op(str(f), int(dl), str(fn), op_name)
                   for f, dl, fn in uniques]
        out.loc[out.index[hit], "src_line"] = np.array([a.line for a in answers],
                                                       dtype=np.int64)[codes]
        out.loc[out.index[hit], "src_line_exact"] = np.array([a.exact for a in answers],
                                                             dtype=bool)[codes]


def callee_frames(python: pd.DataFrame, frame: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Per op: the frame that its user frame `frame` called and that runs it (a torch
    function, a builtin such as `<built-in method to of Tensor object>`, `Tensor.__iter__`),
    climbing from its innermost frame `inner`; -1 when the op runs in the user frame's own
    code (a C slot: `x[i:j]`, `a + b`)."""
    parent = python["parent"].to_numpy()
    callee = np.full(len(frame), -1, dtype=np.int64)
    current = inner.astype(np.int64, copy=True)
    active = np.flatnonzero((inner >= 0) & (frame >= 0) & (inner != frame))
    while active.size:
        up = parent[current[active]]
        reached = up == frame[active]
        callee[active[reached]] = current[active[reached]]
        climbing = ~reached & (up >= 0)
        current[active[climbing]] = up[climbing]
        active = active[climbing]
    return callee


def _call_keys(trace: Trace, frame: np.ndarray, is_call: np.ndarray,
               running: np.ndarray, index: SourceIndex, order: np.ndarray | None
               ) -> tuple[np.ndarray, np.ndarray]:
    """What each call op is matched by in its user frame's source: `call:NAME` when the frame
    called NAME (a function or builtin the trace shows around the op) and its code calls that
    name (tracekit.source.narrow.CALL_PREFIX), else the op's own name; and the unit its
    ordinal counts: the callee frame (one call, however many ops it ran), else the op."""
    ops, python = trace.ops, trace.python
    n = len(ops)
    names = ops["name"].to_numpy(dtype=object)
    keys = names.copy()
    unit = np.arange(n, dtype=np.int64)
    rows = np.flatnonzero(is_call)
    inner = innermost_containing(
        python["tid"].to_numpy(), python["ts"].to_numpy(), python["end"].to_numpy(),
        python["parent"].to_numpy(), ops["tid"].to_numpy()[rows], ops["ts"].to_numpy()[rows],
        order=order)
    callee = callee_frames(python, frame[rows], inner)
    has = callee >= 0
    if not has.any():
        return keys, unit
    rows, callee = rows[has], callee[has]
    codes, frame_names = pd.factorize(python["name"].to_numpy(dtype=object)[callee])
    called = np.array([call_name(str(name)) for name in frame_names], dtype=object)[codes]
    user = frame[rows]
    asked = (python["file"].to_numpy(dtype=object)[user], python["line"].to_numpy()[user],
             python["function"].to_numpy(dtype=object)[user], called, running[user])
    pairs, distinct = distinct_rows(*asked)
    found = np.array([bool(c) and index.calls_in_frame(str(f), int(ln), str(fn), str(c),
                                                       running=bool(r))
                      for f, ln, fn, c, r in distinct], dtype=bool)[pairs]
    rows, callee, called = rows[found], callee[found], called[found]
    keys[rows] = np.array([CALL_PREFIX + str(c) for c in called], dtype=object)
    unit[rows] = n + callee
    return keys, unit


def _narrowed_lines(trace: Trace, frame: np.ndarray, index: SourceIndex,
                    order: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Statement line (and whether it is exact) of each op that has a user frame.

    Ops are matched to source by what their frame called (`_call_keys`: the function or
    builtin around the op, else the op's name); the k-th such call within one frame instance
    is matched to the k-th candidate statement. A frame named by a line inside its function
    (one already running when the tracer started, a resumed generator) is matched within the
    code that can run after that line (`SourceIndex.narrow_frame`). Each distinct (frame,
    key, k, count) is narrowed once.
    """
    ops, python = trace.ops, trace.python
    n = len(ops)
    line = np.full(n, -1, dtype=np.int64)
    exact = np.zeros(n, dtype=bool)
    call = call_ops(ops, frame)
    is_call = (np.arange(n) == call) & (frame >= 0)
    running = already_running(python)
    keys, unit = _call_keys(trace, frame, is_call, running, index, order)
    calls = pd.DataFrame({"frame": frame, "key": strings_column(keys), "unit": unit,
                          "ts": ops["ts"].to_numpy()})[is_call]
    # One row per call (a callee frame's ops count once), in time order.
    units = calls.sort_values("ts", kind="stable").drop_duplicates("unit")
    grouped = units.groupby(["frame", "key"], sort=False)
    per_unit = pd.DataFrame({"ordinal": grouped.cumcount().to_numpy(),
                             "count": grouped["ts"].transform("size").to_numpy()},
                            index=units["unit"].to_numpy())
    ordinal = np.zeros(n, dtype=np.int64)
    count = np.zeros(n, dtype=np.int64)
    call_rows = calls.index.to_numpy()
    ordinal[call_rows] = per_unit["ordinal"].reindex(unit[call_rows]).to_numpy()
    count[call_rows] = per_unit["count"].reindex(unit[call_rows]).to_numpy()
    rows = np.flatnonzero(frame >= 0)
    call_of = call[rows]
    at = frame[rows]
    table = (python["file"].to_numpy(dtype=object)[at], python["line"].to_numpy()[at],
             python["function"].to_numpy(dtype=object)[at], keys[call_of], ordinal[call_of],
             count[call_of], running[at])
    codes, uniques = distinct_rows(*table)
    answers = [index.narrow_frame(str(f), int(dl), str(fn), str(k), int(o), int(c),
                                  running=bool(r))
               for f, dl, fn, k, o, c, r in uniques]
    line[rows] = np.array([a.line for a in answers], dtype=np.int64)[codes]
    exact[rows] = np.array([a.exact for a in answers], dtype=bool)[codes]
    # Each call placed between exact neighbours can bound the next ones: a few rounds.
    resumed = _resumed_calls(python, frame, is_call & ~running[np.maximum(frame, 0)], index)
    for _ in range(NEIGHBOUR_ROUNDS):
        if not _place_between_neighbours(ops, frame, resumed, keys, line, exact, index):
            break
    line[rows], exact[rows] = line[call_of], exact[call_of]
    return line, exact


NEIGHBOUR_ROUNDS = 4
"""Rounds of placing a resumed generator's ambiguous calls between their exactly placed
neighbours; on modded-nanogpt's data generator the second round places the `aten::item`s of
slice bounds between the slices the first round placed, later rounds change nothing."""


@dataclass(frozen=True)
class ResumedCalls:
    """Call ops whose user frame is a resumed generator's: their rows, and per row the code of
    its frame's (file, line, function) in `sites`."""

    rows: np.ndarray
    site: np.ndarray
    sites: list[tuple[Any, ...]]


def _resumed_calls(python: pd.DataFrame, frame: np.ndarray, candidates: np.ndarray,
                   index: SourceIndex) -> ResumedCalls:
    """The `candidates` (call ops) whose frame is named by a yield line of its function."""
    rows = np.flatnonzero(candidates)
    sites = (python["file"].to_numpy(dtype=object)[frame[rows]],
             python["line"].to_numpy()[frame[rows]],
             python["function"].to_numpy(dtype=object)[frame[rows]])
    codes, distinct = distinct_rows(*sites)
    resumed = np.array([index.is_resumed(str(f), int(ln), str(fn)) for f, ln, fn in distinct],
                       dtype=bool)[codes]
    return ResumedCalls(rows[resumed], codes[resumed], distinct)


def _place_between_neighbours(ops: pd.DataFrame, frame: np.ndarray, resumed: ResumedCalls,
                              keys: np.ndarray, line: np.ndarray, exact: np.ndarray,
                              index: SourceIndex) -> bool:
    """In a resumed generator's pass, a call left ambiguous lies between the calls placed
    exactly just before and after it (`SourceIndex.narrow_between`); updates `line`/`exact` of
    the call ops in place, returns whether any changed."""
    rows, codes, distinct = resumed.rows, resumed.site, resumed.sites
    if rows.size == 0 or exact[rows].all():
        return False
    calls = pd.DataFrame({"row": rows, "site": codes, "frame": frame[rows],
                          "ts": ops["ts"].to_numpy()[rows]}).sort_values(["frame", "ts"],
                                                                        kind="stable")
    placed = pd.Series(np.where(exact[calls["row"]], line[calls["row"]], np.nan),
                       index=calls.index)
    by_frame = placed.groupby(calls["frame"].to_numpy())
    calls["after"] = by_frame.ffill().fillna(-1).astype(np.int64)
    calls["before"] = by_frame.bfill().fillna(-1).astype(np.int64)
    calls["key"] = keys[calls["row"]]
    todo = calls[~exact[calls["row"]]]
    pairs, questions = distinct_rows(*(todo[c].to_numpy() for c in ("site", "key", "after",
                                                                     "before")))
    answers = [index.narrow_between(str(distinct[site][0]), int(distinct[site][1]),
                                    str(distinct[site][2]), str(key), int(after), int(before))
               for site, key, after, before in questions]
    found = np.array([a.exact for a in answers], dtype=bool)[pairs]
    if not found.any():
        return False
    targets = todo["row"].to_numpy()[found]
    line[targets] = np.array([a.line for a in answers], dtype=np.int64)[pairs][found]
    exact[targets] = True
    return True
