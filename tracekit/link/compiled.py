"""Inductor kernels -> every user line they fused, from the run's compiled_kernels.json.

The profiler names an Inductor kernel's cpu_op after the kernel (`triton_poi_fused_add_
select_backward_2`, `cpp_fused_add_select_backward_4`) and, for Triton kernels, records its
generated file (`kernel_file`). `tracekit.load.compiled` turned torch's provenance artifacts into
the user lines of every kernel; here each kernel op takes them: its source columns become the
kernel's primary line (line_exact true: the statement is recorded, not guessed), and
`Trace.compiled_lines` keeps every line per kernel name for findings' evidence. Kernels GPU-side
inherit the op's columns as usual (`tracekit.link._kernel_sources`).

The primary line: for a kernel that fuses a select_backward, the first of its lines that
indexes with a single index (`w = self.bank[i]`, `q[0]`: a select, the cause of the fill);
otherwise the first line Inductor lists (its first fused node). A recorded line is checked
against the run's copy of the file (`relocate`).

Extern ops (cuBLAS `aten::mm`, attention, custom ops) run from a generated module's `call`
function, whose frame the profiler names by its def line only. That body is straight-line code,
so under one `call` frame the k-th op of a name that `call` runs directly is the module's k-th
extern call of that op (`tracekit.load.compiled.call_handles`), and takes its recorded line
(`apply_extern_sources`); the ops inside it inherit it. When the frame's count of that op
differs from the module's (an op missing or extra), none of them gets a line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tracekit.intervals import innermost_containing
from tracekit.link.op_source import call_ops, generated_frames
from tracekit.load.compiled import read_compiled_kernels, read_extern_calls
from tracekit.source import SourceIndex
from tracekit.trace import Trace

GRAPH_PREFIX = r"^graph_\d+_"
INDEXED = re.compile(r"[\w)\]]\s*\[\s*(?:-?\d+|[A-Za-z_][\w.]*)\s*\]")
"""`bank[i]`, `q[0]`, `self.attn[i]`: an index (not a slice) that autograd records as a select."""


def profiler_name(file: str, roots: tuple[Path, ...]) -> str:
    """A stack trace's absolute file as the profiler names frames: relative to the longest
    root (sys.path entry, working directory) that holds it, else unchanged."""
    best = ""
    for root in roots:
        prefix = str(root).rstrip("/") + "/"
        if file.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return file[len(best):] if best else file


def relocate(line: dict[str, Any], roots: tuple[Path, ...],
             index: SourceIndex) -> dict[str, Any] | None:
    """A recorded line named as the profiler names frames, and checked against the code that
    ran: the run's file must hold the recorded statement at that line, else at exactly one
    other line (a graph compiled by an earlier run of other code and taken from Inductor's
    cache records that run's file and lines); None when the statement is not there."""
    file = str(line["file"])
    name = profiler_name(file, roots)
    if Path(name).is_absolute() and index.resolve(Path(file).name) is not None:
        name = Path(file).name  # another checkout's copy of a file beside the script
    out = dict(line, file=name)
    code = str(line.get("code", "")).strip()
    source = index.lines(name) if code else None
    if source is None:
        return out
    text = [t.strip() for t in source]
    number = int(line["line"])
    if 0 < number <= len(text) and text[number - 1] == code:
        return out
    hits = [n for n, t in enumerate(text, start=1) if t == code]
    return dict(out, line=hits[0]) if len(hits) == 1 else None


def primary_line(name: str, lines: list[dict[str, Any]], index: SourceIndex) -> dict[str, Any]:
    """The line a kernel is reported at: for a fused select_backward, the first statement that
    indexes a tensor (`q[0]`, `bank[i]`; not `x.shape[-1]`, not `w[None, :]`), read in the run's
    copy of the file (the recorded text when the file cannot be read)."""
    if "select_backward" in name:
        for line in lines:
            file, number = str(line["file"]), int(line["line"])
            if index.lines(file) is not None:
                if index.statement_runs(file, number, "aten::select"):
                    return line
            elif INDEXED.search(str(line.get("code", ""))):
                return line
    return lines[0]


def kernel_lines(name: str, candidates: list[dict[str, Any]], kernel_file: Any,
                 roots: tuple[Path, ...], index: SourceIndex
                 ) -> tuple[list[dict[str, Any]], dict[str, Any], bool] | None:
    """A kernel's recorded lines (relocated in the run's files), the one it is reported at, and
    whether that line is surely this kernel's (None when no line is left)."""
    matching = [k for k in candidates if k.get("kernel_file") and k["kernel_file"] == kernel_file]
    chosen = matching or candidates
    each = [[x for x in (relocate(line, roots, index) for line in k["lines"]) if x is not None]
            for k in chosen]
    lines = [line for own in each for line in own]
    unique = [line for i, line in enumerate(lines) if line not in lines[:i]]
    if not unique:
        return None
    best = primary_line(name, unique, index)
    if len(chosen) == 1 or matching:
        return unique, best, True
    # Several generated kernels of this name and no kernel_file to tell them apart (a trace
    # recorded without shapes has none): the line is surely this one's only when each of them
    # would be reported there.
    return unique, best, all(own and primary_line(name, own, index) == best for own in each)


def apply_compiled_sources(trace: Trace, run_dir: Path, index: SourceIndex) -> int:
    """Give Inductor kernel ops their recorded user lines (in place); returns the ops set."""
    set_rows = apply_extern_sources(trace, run_dir, index)
    kernels = read_compiled_kernels(run_dir)
    if not kernels or trace.ops.empty:
        return set_rows
    rank_kernels = [k for k in kernels if k.get("rank") in (None, trace.rank)] or kernels
    roots = tuple(trace.source_roots)  # as recorded: the program's sys.path, even if gone
    by_name: dict[str, list[dict[str, Any]]] = {}
    for kernel in rank_kernels:
        by_name.setdefault(str(kernel["name"]), []).append(kernel)
    ops = trace.ops
    label = ops["kernel_name"].where(ops["kernel_name"].astype(bool), ops["name"]) \
        if "kernel_name" in ops else ops["name"]
    # C++ kernels with kernel profiling on are recorded as graph_<N>_<kernel>.
    label = label.astype(str).str.replace(GRAPH_PREFIX, "", regex=True)
    files = ops["kernel_file"].to_numpy(dtype=object) if "kernel_file" in ops else \
        np.full(len(ops), "", dtype=object)
    hit = label.isin(list(by_name)).to_numpy()
    columns = {c: ops[c].to_numpy().copy() for c in
               ("src_file", "src_line", "src_function", "src_line_exact", "src_from_fwd")}
    # Every launch of one kernel (name, file) gets the same answer: work it out once.
    answers: dict[tuple[str, Any], tuple[list[dict[str, Any]], dict[str, Any], bool] | None] = {}
    for row in np.flatnonzero(hit):
        name = str(label.iat[row])
        key = (name, files[row])
        if key not in answers:
            answers[key] = kernel_lines(name, by_name[name], files[row], roots, index)
        if answers[key] is None:
            continue
        unique, best, matched = answers[key]
        columns["src_file"][row] = best["file"]
        columns["src_line"][row] = int(best["line"])
        columns["src_function"][row] = str(best.get("function", ""))
        columns["src_line_exact"][row] = matched
        columns["src_from_fwd"][row] = False
        trace.compiled_lines[name] = unique
        set_rows += 1
    for column, values in columns.items():
        ops[column] = values
    return set_rows


def apply_extern_sources(trace: Trace, run_dir: Path, index: SourceIndex) -> int:
    """Give the extern ops a generated `call` runs (and the ops inside them) the user line of
    their extern call (in place); returns the ops set."""
    modules = read_extern_calls(run_dir)
    ops, python = trace.ops, trace.python
    if not modules or ops.empty or python.empty:
        return 0
    rank_modules = [m for m in modules if m.get("rank") in (None, trace.rank)] or modules
    by_file = {Path(str(m["output_code"])).name: m for m in rank_modules}
    names = python["file"].astype(str).map(lambda f: Path(f).name)
    is_call = (generated_frames(python) & (python["function"].astype(str) == "call").to_numpy()
               & names.isin(list(by_file)).to_numpy())
    if not is_call.any():
        return 0
    tid, ts = ops["tid"].to_numpy(), ops["ts"].to_numpy()
    frame = innermost_containing(
        python["tid"].to_numpy(), python["ts"].to_numpy(), python["end"].to_numpy(),
        python["parent"].to_numpy(), tid, ts, eligible=is_call)
    top = call_ops(ops, frame)
    direct = (frame >= 0) & (top == np.arange(len(ops)))
    rows = np.flatnonzero(direct)
    calls = pd.DataFrame({"row": rows, "frame": frame[rows], "op": ops["name"].to_numpy()[rows],
                          "ts": ts[rows]}).sort_values(["frame", "ts"], kind="stable")
    calls["k"] = calls.groupby(["frame", "op"]).cumcount()
    calls["count"] = calls.groupby(["frame", "op"])["op"].transform("size")
    calls["module"] = names.to_numpy()[calls["frame"].to_numpy()]
    roots = tuple(trace.source_roots)
    recorded = []
    for module, m in by_file.items():
        extern = pd.DataFrame([{"op": c.get("op"), "lines": c.get("lines") or []}
                               for c in m["calls"]], columns=["op", "lines"])
        extern["k"] = extern.groupby("op").cumcount()
        extern["expected"] = extern.groupby("op")["op"].transform("size")
        extern["module"] = module
        recorded.append(extern)
    matched = calls.merge(pd.concat(recorded), on=["module", "op", "k"], how="inner")
    matched = matched[matched["count"] == matched["expected"]]
    lines = {}
    for key, group in matched.groupby(["module", "op", "k"], sort=False):
        found = [relocate(line, roots, index) for line in group["lines"].iat[0]]
        found = [line for line in found if line is not None]
        unique = [line for i, line in enumerate(found) if line not in found[:i]]
        if len(unique) > 1:  # one of them runs the op: that statement, exact
            runs = [line for line in unique
                    if index.statement_runs(str(line["file"]), int(line["line"]), key[1])]
            unique = runs if len(runs) == 1 else unique
        if unique:
            lines[key] = unique
    if not lines:
        return 0
    keys = list(zip(matched["module"], matched["op"], matched["k"], strict=True))
    has = np.array([k in lines for k in keys], dtype=bool)
    matched = matched[has]
    chosen = [lines[k] for k, h in zip(keys, has, strict=True) if h]
    n = len(ops)
    source = np.full(n, -1, dtype=np.int64)
    source[matched["row"].to_numpy()] = np.arange(len(matched))
    inherits = (top >= 0) & (frame >= 0)
    pick = np.full(n, -1, dtype=np.int64)
    pick[inherits] = source[top[inherits]]
    # An op inside keeps a statement of its own (a custom op's Python body in user code).
    own = ops["src_line_exact"].to_numpy(dtype=bool) & (top != np.arange(n))
    targets = np.flatnonzero((pick >= 0) & ~own)
    files = np.array([c[0]["file"] for c in chosen], dtype=object)
    numbers = np.array([int(c[0]["line"]) for c in chosen], dtype=np.int64)
    functions = np.array([str(c[0].get("function", "")) for c in chosen], dtype=object)
    exact = np.array([len(c) == 1 for c in chosen], dtype=bool)
    columns = {c: ops[c].to_numpy().copy() for c in
               ("src_file", "src_line", "src_function", "src_line_exact", "src_from_fwd")}
    at = pick[targets]
    columns["src_file"][targets] = files[at]
    columns["src_line"][targets] = numbers[at]
    columns["src_function"][targets] = functions[at]
    columns["src_line_exact"][targets] = exact[at]
    columns["src_from_fwd"][targets] = False
    for column, values in columns.items():
        ops[column] = values
    return len(targets)
