"""select_backward: indexing a parameter bank `bank[i]` zero-fills the whole bank in backward.

The pathology, in plain words: when a model keeps several layers' weights in one tensor (a
"bank", shape [L, ...]) and each layer takes its weight with `bank[i]`, autograd records an
`aten::select` per layer. Its backward, `aten::select_backward`, allocates a zero tensor the size
of the WHOLE bank, fills it (a FillFunctor kernel over L x the slice; on an H200 a 4x1024x1024
fp32 bank gives grid 4096x128, 31 blocks per SM, every SM busy) and copies the one slice's
gradient in; autograd then adds these full-size tensors together. Per layer, per step, that is
L times more memory traffic than the slice needs, and the fills occupy every SM (so they also
slow any NCCL kernel beside them). `bank.unbind(0)` (or views made once per step) gives per-slice
gradients that autograd accumulates without the zero-fill. Under torch.compile the same work is
fused into Inductor kernels whose names contain `select_backward`
(`triton_poi_fused_add_select_backward_2`).

What is reported: one finding per rank and per cause line. For eager code the cause is the
FORWARD line that indexes the bank (the select_backward op's forward op, linked through the
fwdbwd flow, and that op's user source line). Inductor kernels are grouped by their user line
too (the linker's line for the kernel: the compiled function narrowed to its one tensor
subscript with a variable index (`SourceIndex.narrow_for_op`), else its def line with
line_exact false), so the several kernels Inductor fuses one indexing line into are one
finding; a kernel without any line is grouped by its name. There is no threshold: every
select_backward costs at least the zero-fill, which is pure waste, so every occurrence is
reported; severity (from the cost per step relative to the median step) says whether it
matters.

- cost_us: eager, the GPU time of every kernel and memset/memcpy launched under the
  select_backward ops (all of it is avoidable: with unbind the slice gradient needs no extra
  kernel at all). Compiled, per kernel: a kernel whose name fuses nothing but the
  select_backward and its fill/copy (`triton_poi_fused_select_backward_zeros_0`) is a real
  whole-bank zero-fill, cost = the kernel; a kernel where it is one op among others
  (`..._fused__to_copy_add_select_backward_stack_14`) costs its time x the share of the
  kernel's argument bytes that the fill writes (the largest argument, the bank-sized
  gradient), from record_shapes, else the whole kernel stated as an upper bound
  (evidence.cost_basis, evidence.kernels). On a trace without GPU activity, the
  select_backward ops' CPU time instead, so CPU runs show it too.
- step: the step of the first occurrence (the one start_us points at); the same lines run
  every step, so evidence.per_step and evidence.count_per_step give every step's cost and count.
- start_us/dur_us: the first occurrence (first kernel start to last kernel end of its first
  select_backward op, on the GPU clock; the op's CPU span on CPU-only traces).
- evidence.bytes_zero_filled: the bank's bytes (forward select input dims x dtype size) x count,
  when record_shapes gave the shapes; null otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tracekit.detectors import register
from tracekit.detectors.tensors import DTYPE_BYTES, parse_json_field
from tracekit.finding import Cause, Culprit, Finding, SourceLine, severity_from_cost
from tracekit.link import op_stack, source_of_op
from tracekit.link.ancestry import ancestor_matching
from tracekit.link.steps import gpu_step_at
from tracekit.link.steptime import run_step_us
from tracekit.names import name_matches
from tracekit.trace import Run, Trace

SELECT_BACKWARD_OP = "aten::select_backward"
SUGGESTION = (
    "index the stacked tensor through .unbind(0) / views created once per step, so autograd "
    "accumulates per slice without zero-filling the whole tensor"
)
TRAINER_SUGGESTION = (
    "index the bank through bank.unbind(0) / views created once per step, so autograd "
    "accumulates per-slice without zero-filling the whole bank"
)
"""The same advice in the trainer's words (its parameter banks), for traces it recorded."""
# An Inductor-generated kernel (or its cpu_op) that fuses a select_backward.
COMPILED_PATTERN = re.compile(r"select_backward", re.IGNORECASE)


def gpu_work_by_op(trace: Trace) -> pd.DataFrame:
    """Kernels and memsets/memcpys with the row in `ops` that launched them.

    Uses the linker's op_idx for kernels; memcpy/memset rows (and kernels the linker did not
    place) join on External id, which Kineto copies from the launching cpu_op.
    """
    cols = ["name", "ts", "dur", "end", "stream", "grid_x", "grid_y", "grid_z",
            "blocks_per_sm", "step", "op_idx", "kind"]
    ext_to_op = pd.Series(np.arange(len(trace.ops)), index=trace.ops["external_id"])
    ext_to_op = ext_to_op[(ext_to_op.index >= 0) & ~ext_to_op.index.duplicated(keep="last")]
    kernels = trace.kernels.assign(kind="kernel")
    mem = trace.gpu_mem.assign(op_idx=-1, grid_x=np.nan, grid_y=np.nan, grid_z=np.nan,
                               blocks_per_sm=np.nan, kind="memory")
    # memcpy/memset rows carry no step from the linker: place them by the GPU step spans.
    mem["step"] = gpu_step_at(trace, mem["ts"].to_numpy(dtype=float))
    work = pd.concat([frame.reindex(columns=cols + ["external_id"]) for frame in (kernels, mem)
                      if len(frame)], ignore_index=True) if len(kernels) + len(mem) else \
        pd.DataFrame(columns=cols + ["external_id"])
    by_ext = work["external_id"].map(ext_to_op).fillna(-1).astype(np.int64)
    op_idx = work["op_idx"].fillna(-1).astype(np.int64)
    work["op_idx"] = np.where(op_idx >= 0, op_idx, by_ext).astype(np.int64)
    work["step"] = work["step"].fillna(-1).astype(np.int64)
    return work


def bank_bytes(ops: pd.DataFrame, fwd_row: int, bwd_row: int) -> int | None:
    """Bytes of the whole bank: the forward select's input 0 dims x the gradient's dtype size."""
    dims = parse_json_field(ops.at[fwd_row, "input_dims"]) if fwd_row >= 0 else None
    types = parse_json_field(ops.at[bwd_row, "input_types"])
    if not dims or not isinstance(dims[0], list) or not dims[0]:
        return None
    dtype = str(types[0]).lower() if types else "float"
    return int(np.prod(dims[0])) * DTYPE_BYTES.get(dtype, 4)


def source_keys(ops: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """`file:line` of the user-code line (as source_of finds it) of the ops at `rows`, else
    "unknown" (the few rows asked about: a big rank holds millions of ops)."""
    rows = np.asarray(rows, dtype=np.int64)
    keys = np.full(len(rows), "unknown", dtype=object)
    if len(rows) == 0 or ops.empty:
        return keys
    files = ops["src_file"].iloc[rows]
    lines = pd.to_numeric(ops["src_line"].iloc[rows], errors="coerce")
    known = (files.fillna("").astype(str).ne("").to_numpy()
             & (lines.fillna(-1).to_numpy() >= 0))
    if known.any():
        keys[known] = (files[known].astype(str) + ":"
                       + lines[known].astype(np.int64).astype(str)).to_numpy(dtype=object)
    return keys


@dataclass
class Occurrences:
    """The select_backward ops (and their GPU work) behind one cause, on one rank."""

    key: str
    op_rows: np.ndarray
    work: pd.DataFrame
    """GPU rows launched under them; column `occurrence` says which select_backward each is."""
    forward_row: int
    compiled: bool


def step_choice(steps: pd.Series) -> int | None:
    """The step holding a strict majority of occurrences, else None (spread over steps)."""
    steps = steps[steps >= 0]
    if steps.empty:
        return None
    counts = steps.value_counts()
    return int(counts.index[0]) if counts.iloc[0] * 2 > len(steps) else None


def eager_occurrences(trace: Trace, work: pd.DataFrame) -> list[Occurrences]:
    """select_backward ops grouped by the forward line that indexed the bank."""
    ops = trace.ops
    is_sb = (ops["name"] == SELECT_BACKWARD_OP).to_numpy()
    if not is_sb.any():
        return []
    sb_rows = np.nonzero(is_sb)[0]
    # The fwdbwd flow lands on the autograd wrapper op (evaluate_function: SelectBackward0);
    # take the nearest op at or above the select_backward that knows its forward op.
    fwd_idx = ops["fwd_op_idx"].to_numpy(dtype=np.int64)
    with_fwd = ancestor_matching(ops, fwd_idx >= 0, sb_rows)
    forward_rows = np.where(with_fwd >= 0, fwd_idx[np.maximum(with_fwd, 0)], -1)
    keys = np.where(forward_rows >= 0, source_keys(ops, np.maximum(forward_rows, 0)), "unknown")
    keys = np.where(keys == "unknown", source_keys(ops, sb_rows), keys)
    work_sb = work.assign(occurrence=ancestor_matching(ops, is_sb, work["op_idx"].to_numpy()))
    groups = pd.DataFrame({"sb_row": sb_rows, "fwd_row": forward_rows, "key": keys})
    out = []
    for key, group in groups.groupby("key", sort=False):
        rows = group["sb_row"].to_numpy()
        fwd = group["fwd_row"].to_numpy()
        out.append(Occurrences(key=str(key), op_rows=rows,
                               work=work_sb[work_sb["occurrence"].isin(rows)],
                               forward_row=int(fwd[fwd >= 0][0]) if (fwd >= 0).any() else -1,
                               compiled=False))
    return out


def compiled_occurrences(trace: Trace, work: pd.DataFrame,
                         eager_work_index: pd.Index) -> list[Occurrences]:
    """Inductor kernels (or CPU kernels of compiled code) whose name says select_backward,
    grouped by their cause line (the kernel's user source line; the kernel's name when it has
    none), so one line that Inductor fused into several kernels is one finding."""
    out = []
    ops = trace.ops
    gpu = work[(work["kind"] == "kernel").to_numpy() & name_matches(work["name"], COMPILED_PATTERN)]
    gpu = gpu.drop(index=gpu.index.intersection(eager_work_index))
    if len(gpu):
        op_rows = gpu["op_idx"].to_numpy()
        line = pd.Series(np.where(op_rows >= 0, source_keys(ops, np.maximum(op_rows, 0)),
                                  "unknown"), index=gpu.index)
        # A kernel without a line (launched before the profiled steps' ops were recorded)
        # takes the line of the same kernel elsewhere, else is known by its name.
        known = line != "unknown"
        by_name = line[known].groupby(gpu["name"][known]).agg(lambda v: v.value_counts().index[0])
        borrowed = gpu["name"].map(by_name)
        cause = line.where(known, borrowed.where(borrowed.notna(), gpu["name"])).to_numpy()
        for key, group in gpu.groupby(cause, sort=False):
            rows = group["op_idx"].to_numpy()
            out.append(Occurrences(key=str(key), op_rows=rows[rows >= 0],
                                   work=group.assign(occurrence=group.index),
                                   forward_row=-1, compiled=True))
    if not trace.has_gpu:
        label = ops["kernel_name"].where(ops["kernel_name"].astype(bool), ops["name"]) \
            if "kernel_name" in ops else ops["name"]
        hit = name_matches(label, COMPILED_PATTERN) & (ops["name"] != SELECT_BACKWARD_OP).to_numpy()
        keys = source_keys(ops, np.flatnonzero(hit))
        cause = np.where(keys == "unknown", label[hit].to_numpy(dtype=object), keys)
        for key, group in ops[hit].groupby(cause, sort=False):
            out.append(Occurrences(key=str(key), op_rows=group.index.to_numpy(),
                                   work=work.iloc[0:0], forward_row=-1, compiled=True))
    return out


FUSED_NAME = re.compile(r"^(?:graph_\d+_)?(?:triton_[a-z]+|cpp)_fused_(?P<ops>.+?)(?:_\d+)*$")
GRAPH_PREFIX = re.compile(r"^graph_\d+_")
FILL_ONLY = re.compile(r"select_backward|new_zeros|zeros|zero|fill|full|_to_copy|clone|copy")


def fused_ops(kernel: str) -> str | None:
    """The ops an Inductor kernel's name says it fuses besides the select_backward and the
    zero-fill/copy it implies ("add_stack"), "" for a kernel that is only the fill, None for a
    name that is not an Inductor kernel name."""
    match = FUSED_NAME.match(kernel)
    if match is None:
        return None
    rest = FILL_ONLY.sub("", match.group("ops"))
    return "_".join(part for part in rest.split("_") if part)


def argument_bytes(ops: pd.DataFrame, row: int) -> tuple[int, int] | None:
    """(largest argument's bytes, all arguments' bytes) of a kernel's cpu_op, from the shapes
    record_shapes gave it; None without shapes."""
    if row < 0:
        return None
    dims = parse_json_field(ops.at[row, "input_dims"])
    types = parse_json_field(ops.at[row, "input_types"]) or []
    if not dims:
        return None
    sizes = [int(np.prod(d)) * DTYPE_BYTES.get(str(t).lower(), 0)
             for d, t in zip(dims, types, strict=False) if isinstance(d, list) and d]
    sizes = [x for x in sizes if x > 0]
    return (max(sizes), sum(sizes)) if sizes else None


def compiled_costs(ops: pd.DataFrame, work: pd.DataFrame) -> tuple[float, list[dict[str, Any]],
                                                                   str]:
    """The select_backward's cost within compiled kernels, per kernel name, and its basis.

    A kernel that is only the fill (its name fuses nothing else): the kernel's time. A kernel
    where select_backward is one of several fused ops: its time x the share of the kernel's
    bytes that the fill writes (the largest argument, the bank-sized gradient, over all the
    arguments' bytes); without recorded shapes, the kernel's whole time as an upper bound."""
    total, rows, bases = 0.0, [], set()
    for name, group in work.groupby("name", sort=False):
        time_us = float(group["dur"].sum())
        others = fused_ops(str(name))
        if not others:
            estimate, share, basis = time_us, 1.0, "own kernel"
        else:
            op_rows = group["op_idx"].to_numpy()
            sized = argument_bytes(ops, int(op_rows[op_rows >= 0][0])) \
                if (op_rows >= 0).any() else None
            if sized is None:
                estimate, share, basis = time_us, None, "upper bound"
            else:
                share = sized[0] / sized[1]
                estimate, basis = time_us * share, "bytes estimate"
        bases.add(basis)
        total += estimate
        rows.append({"kernel": str(name), "fused_with": others or None, "count": len(group),
                     "kernel_time_us": round(time_us, 3), "cost_us": round(estimate, 3),
                     "fill_share_of_bytes": None if share is None else round(share, 4),
                     "basis": basis})
    basis = "own kernel" if bases == {"own kernel"} else \
        "upper bound" if "upper bound" in bases else "bytes estimate"
    return total, rows, basis


def first_step(steps: pd.Series) -> int | None:
    """The step of the first occurrence that has one (start_us points at that occurrence)."""
    known = steps[steps >= 0]
    return int(known.iloc[0]) if len(known) else None


def finding_for(trace: Trace, occ: Occurrences, step_us: float | None,
                trainer: bool = True) -> Finding:
    """One finding from a cause's occurrences: GPU cost when there is GPU work, else CPU."""
    ops = trace.ops
    sb_ops = ops.iloc[occ.op_rows] if len(occ.op_rows) else ops.iloc[0:0]
    work = occ.work.sort_values("ts")
    on_gpu = not work.empty
    kernels: list[dict[str, Any]] = []
    basis = "own kernel"
    if on_gpu:
        kernel_time = float(work["dur"].sum())
        cost = kernel_time
        if occ.compiled:
            cost, kernels, basis = compiled_costs(ops, work)
        first = work[work["occurrence"] == work["occurrence"].iloc[0]]
        start, end = float(first["ts"].min()), float(first["end"].max())
        step = first_step(work.drop_duplicates("occurrence")["step"])
        per_step = work.groupby("step")["dur"].sum() * (cost / kernel_time if kernel_time else 1)
        by_name = work.groupby("name")["dur"].sum().sort_values(ascending=False)
        worst = work[work["name"] == by_name.index[0]].sort_values("dur").iloc[-1]
        culprit = Culprit(
            kernel=str(worst["name"]), stream=int(worst["stream"]),
            grid=None if pd.isna(worst["grid_x"]) else
            [int(worst["grid_x"]), int(worst["grid_y"]), int(worst["grid_z"])],
            blocks_per_sm=None if pd.isna(worst["blocks_per_sm"]) else
            round(float(worst["blocks_per_sm"]), 2))
        count = len(sb_ops) if not occ.compiled else len(work)
        per_step_count = work.drop_duplicates("occurrence").groupby("step").size()
    else:
        kernel_time = cost = float(sb_ops["dur"].sum())
        if occ.compiled:  # compiled CPU kernels: the kernel ops themselves
            cpu_work = pd.DataFrame({"name": sb_ops["name"].to_numpy(),
                                     "dur": sb_ops["dur"].to_numpy(dtype=float),
                                     "op_idx": occ.op_rows})
            cost, kernels, basis = compiled_costs(ops, cpu_work)
        first_row = sb_ops["ts"].idxmin()
        start, end = float(sb_ops.at[first_row, "ts"]), float(sb_ops.at[first_row, "end"])
        op_steps = sb_ops["step"] if "step" in sb_ops else pd.Series(-1, index=sb_ops.index)
        step = first_step(op_steps.loc[sb_ops.sort_values("ts").index])
        per_step = sb_ops.assign(step=op_steps).groupby("step")["dur"].sum()
        per_step_count = op_steps.value_counts()
        culprit = Culprit()
        count = len(sb_ops)
    n_steps = max(1, int((per_step.index >= 0).sum()))
    cost_per_step = cost / n_steps
    bytes_each = bank_bytes(ops, occ.forward_row, int(occ.op_rows[0])) \
        if len(occ.op_rows) and not occ.compiled else None
    source = source_of_op(ops, occ.forward_row) if occ.forward_row >= 0 else None
    if source is None and len(occ.op_rows):
        source = source_of_op(ops, int(occ.op_rows[0]))
    stack = op_stack(trace, int(occ.op_rows[0])) if len(occ.op_rows) else []
    unit = "GPU" if on_gpu else "CPU"
    names = sorted({k["kernel"] for k in kernels})
    if not occ.compiled or basis == "own kernel":
        amount = f"{cost / 1000:.2f} ms {unit}"
    elif basis == "upper bound":
        amount = f"at most {cost / 1000:.2f} ms {unit}, the whole kernels"
    else:
        amount = (f"~{cost / 1000:.2f} ms {unit} estimated from the bytes the fill writes, "
                  f"of {kernel_time / 1000:.2f} ms")
    title = select_backward_title(occ, source, count, amount, trainer, basis, kernels)
    evidence: dict[str, Any] = {
        "gpu_time_us" if on_gpu else "cpu_time_us": round(cost, 3),
        "cost_per_step_us": round(cost_per_step, 3),
        "per_step": {str(int(k)): round(float(v), 3) for k, v in per_step.items() if k >= 0},
        "count_per_step": {str(int(k)): int(v) for k, v in per_step_count.items() if k >= 0},
        "bank_bytes": bytes_each,
        "bytes_zero_filled": bytes_each * count if bytes_each else None,
        "compiled": occ.compiled,
        "median_step_us": round(step_us, 3) if step_us else None,
    }
    if occ.compiled:
        evidence["cost_basis"] = basis
        evidence["kernel_time_us"] = round(kernel_time, 3)
        if kernels:
            evidence["kernels"] = kernels
        fused_lines = {k: [f"{line['file']}:{line['line']}" for line in lines]
                       for k, lines in trace.compiled_lines.items()
                       if any(k == re.sub(GRAPH_PREFIX, "", n) for n in names)}
        if fused_lines:  # every user line each kernel fused (torch's provenance tracking)
            evidence["fused_lines"] = fused_lines
    if occ.compiled and "kernel_file" in ops and len(occ.op_rows):
        files = sorted({str(f) for f in ops["kernel_file"].to_numpy()[occ.op_rows] if f})
        evidence["kernel_file"] = files[0] if len(files) == 1 else (files or None)
    return Finding(
        kind="select_backward", severity=severity_from_cost(cost_per_step, step_us),
        rank=trace.rank, step=step, start_us=start, dur_us=max(0.0, end - start),
        cost_us=round(cost, 3), count=int(count), title=title, culprit=culprit,
        cause=Cause(op=SELECT_BACKWARD_OP, op_stack=stack, source=source,
                    ordering=None),
        evidence=evidence, suggestion=TRAINER_SUGGESTION if trainer else SUGGESTION)


def select_backward_title(occ: Occurrences, source: SourceLine | None, count: int, amount: str,
                          trainer: bool, basis: str = "own kernel",
                          kernels: list[dict[str, Any]] | None = None) -> str:
    """In the trainer's words for its own traces ("bank indexing at train.py:12"); for any
    other trace "indexing at file:line", or no place at all when the trace has no stacks.
    Compiled code says how the fill ran: in its own Inductor kernel, or fused with other ops."""
    if source is not None:
        where = f"indexing at {source.file}:{source.line}"
    elif trainer or occ.compiled:
        where = f"indexing at {occ.key}"
    else:
        where = "indexing (no source line: record with with_stack=True)"
    what = f"bank {where}" if trainer else where
    noun = "bank" if trainer else "tensor"
    if not occ.compiled:
        return f"select_backward: {what} zero-fills the whole {noun} {count}x ({amount})"
    if basis == "own kernel":
        return (f"select_backward: {what} zero-fills the whole {noun} in its own Inductor "
                f"kernel {count}x ({amount})")
    names = sorted({k["kernel"] for k in kernels or []})
    fused = sorted({k["fused_with"] for k in kernels or [] if k["fused_with"]})
    return (f"select_backward: {what} fused into {len(names)} Inductor "
            f"kernel{'s' if len(names) > 1 else ''} with {', '.join(fused)} {count}x ({amount})")


@dataclass(frozen=True)
class Params:
    """select_backward has no thresholds: every occurrence is reported (see above)."""


@register("select_backward", Params)
def detect(run: Run, params: Params) -> list[Finding]:
    """One finding per rank and per cause line (the forward indexing line; for Inductor
    kernels the kernel's user line, else its name)."""
    findings: list[Finding] = []
    run_step = run_step_us(run)
    for trace in run.traces:
        work = gpu_work_by_op(trace)
        eager = eager_occurrences(trace, work)
        eager_index = pd.Index([]) if not eager else \
            pd.Index(np.concatenate([o.work.index.to_numpy() for o in eager]))
        for occ in eager + compiled_occurrences(trace, work, eager_index):
            findings.append(finding_for(trace, occ, run_step, run.from_trainer))
    return findings
