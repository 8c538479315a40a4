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
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from tracekit.load.compiled import read_compiled_kernels
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
    path = index.resolve(name)
    out = dict(line, file=name)
    code = str(line.get("code", "")).strip()
    if path is None or not code:
        return out
    try:
        text = [t.strip() for t in path.read_text(errors="replace").splitlines()]
    except OSError:
        return out
    number = int(line["line"])
    if 0 < number <= len(text) and text[number - 1] == code:
        return out
    hits = [n for n, t in enumerate(text, start=1) if t == code]
    return dict(out, line=hits[0]) if len(hits) == 1 else None


def primary_line(name: str, lines: list[dict[str, Any]]) -> dict[str, Any]:
    if "select_backward" in name:
        for line in lines:
            if INDEXED.search(str(line.get("code", ""))):
                return line
    return lines[0]


def apply_compiled_sources(trace: Trace, run_dir: Path, index: SourceIndex) -> int:
    """Give Inductor kernel ops their recorded user lines (in place); returns the ops set."""
    kernels = read_compiled_kernels(run_dir)
    if not kernels or trace.ops.empty:
        return 0
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
    set_rows = 0
    for row in np.flatnonzero(hit):
        name = str(label.iat[row])
        candidates = by_name[name]
        matching = [k for k in candidates
                    if k.get("kernel_file") and k["kernel_file"] == files[row]]
        chosen = matching or candidates
        lines = [relocate(line, roots, index) for k in chosen for line in k["lines"]]
        lines = [line for line in lines if line is not None]
        unique = [line for i, line in enumerate(lines) if line not in lines[:i]]
        if not unique:
            continue
        best = primary_line(name, unique)
        columns["src_file"][row] = best["file"]
        columns["src_line"][row] = int(best["line"])
        columns["src_function"][row] = str(best.get("function", ""))
        # Several generated kernels of this name and no kernel_file to tell them apart: the
        # line is one of theirs, not necessarily this one's.
        columns["src_line_exact"][row] = len(chosen) == 1 or bool(matching)
        columns["src_from_fwd"][row] = False
        trace.compiled_lines[name] = unique
        set_rows += 1
    for column, values in columns.items():
        ops[column] = values
    return set_rows
