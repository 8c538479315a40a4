"""strided_elementwise: an elementwise op whose operands have the same shape but different
memory layouts, run by PyTorch's generic GPU loop at a fraction of the memory bandwidth.

The pathology, in plain words: TensorIterator runs an elementwise op (add, copy, mul) with its
vectorized kernel (`vectorized_elementwise_kernel<...>`) only when every operand is laid out
alike. Adding a tensor to the transpose of another one of the same shape (a tied embedding and
LM head accumulating each other's gradient, `w.copy_(v.T)`) takes the generic kernel
(`elementwise_kernel<128, 4, ...>`), where every thread strides through one operand. A matmul
hides such a layout; an elementwise op reads each element once and cannot. modded-nanogpt #200
("Transposed LM Head") removed exactly this: in #199 the LM-head gradient accumulation
`add_` of two [50304, 768] bf16 tensors, strides (768, 1) and (1, 50304), takes 292.6 us, while
the vectorized add of the same 38.6 M elements runs in 53.4 us in the same step (2x H200;
found at the `.backward()` line, where AccumulateGrad runs it).

How it is measured, from what the trace itself holds: kernels of the generic loop whose op
recorded its shapes (record_shapes) with at least two tensor operands of one shape whose
strides order the dimensions differently (a transposed or permuted view; broadcasting, where
shapes differ, is not this). Bytes moved: elements x the element sizes of the operands read,
plus the one written. What the same bytes cost contiguous: the trace's own rate, the
`reference_quantile` of bytes per microsecond over its vectorized elementwise kernels of at
least `min_reference_elements` elements (their op's shapes give their bytes); without
`min_reference_kernels` of them no finding is made, since a device's rate is not guessed.
A kernel's cost is its time minus the bytes at that rate.

What is reported: one finding per rank, op, source line and shapes; cost = the time lost over
the profiled steps (GPU time on the compute stream: the step loses it when the GPU is the
bottleneck, as in the traces below).

Thresholds, from measured traces:
- min_slowdown = 2.0, against the reference below: modded-nanogpt #199's accumulation `add_`
  3.7x and its transposing `copy_` 5.0x (the reference is conservative there: 79 us expected
  for the add, where the vectorized add of the same elements took 53 us); the trainer's
  `--tie-copy eager` add and copy of [512, 50304] fp32 (traces/pathologies-2gpu, H200) 2.6x
  and 3.6x; Qwen1.5-0.5B inference on H100 (TraceLens): its attention's transposing copies of
  [16, 16, 559, 64] bf16 2.3-2.4x (reported), and the rotary-embedding add of a permuted and a
  contiguous operand 1.9x (not: making one side contiguous would itself cost a copy; below 2x
  the layout is not clearly the thing to change).
- min_cost_us = 50 per step: a few kernels' worth; the cases above lose 0.2-1.2 ms per step.
- min_reference_elements = 1 M: large enough for a vectorized elementwise kernel to be
  bandwidth-bound (launch and tail effects are < 10% of its time), so its rate is the device's
  streaming rate. reference_quantile = 0.5, the median over them: their upper tail runs
  partly from L2 (the trainer's Adam `addcmul_` on 52 MB tensors that the previous op just
  wrote reaches 5.5 TB/s on a 4.8 TB/s H200), so a high quantile would overstate what a
  contiguous kernel sustains. min_reference_kernels = 3.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tracekit.detectors import register
from tracekit.detectors.tensors import DTYPE_BYTES, parse_json_field
from tracekit.durations import format_us
from tracekit.finding import Cause, Culprit, Finding, severity_from_cost
from tracekit.link import op_stack, source_of_op
from tracekit.link.steptime import run_step_us
from tracekit.names import name_matches
from tracekit.trace import Run, Trace

KIND = "strided_elementwise"
GENERIC = re.compile(r"^void at::native::(?:\(anonymous namespace\)::)?elementwise_kernel<")
VECTORIZED = re.compile(
    r"^void at::native::(?:\(anonymous namespace\)::)?vectorized_elementwise_kernel<")
SUGGESTION = (
    "give the operands one layout: keep the tensor in the layout it is combined in (e.g. store "
    "the transposed weight as its own tensor and keep the two in sync), or make the strided one "
    "contiguous once where it is reused; an elementwise kernel cannot hide a transposed read"
)
COPY_SUGGESTION = (
    "a transposing copy: keep the tensor in the layout it is read in (or a second copy in the "
    "other layout, kept in sync), or copy with a tiled transpose kernel (a Triton transpose "
    "reads and writes at the contiguous rate)"
)


@dataclass(frozen=True)
class Params:
    """Thresholds of the detector; see the module docstring for why each default."""

    min_slowdown: float = 2.0
    min_cost_us: float = 50.0
    min_reference_elements: int = 1_000_000
    reference_quantile: float = 0.5
    min_reference_kernels: int = 3


@dataclass(frozen=True)
class Operands:
    """What an op's recorded arguments say about its elementwise work."""

    shape: list[int]
    strides: list[list[int]]
    dtypes: list[str]
    elements: int
    bytes: int
    mismatched: bool


def dim_order(shape: list[int], strides: list[int]) -> tuple[int, ...]:
    """The dimensions from outermost to innermost in memory (size-1 dimensions left out: their
    stride means nothing)."""
    dims = [d for d, size in enumerate(shape) if size != 1]
    return tuple(sorted(dims, key=lambda d: (-strides[d], d)))


def operands_of(op_name: str, dims: Any, strides: Any, types: Any) -> Operands | None:
    """The op's tensor operands, when it recorded them: the shape they share, their strides
    and dtypes, the elements, the bytes moved (each operand read, the first written; `copy_`
    does not read its destination), and whether two of them of that shape are laid out
    differently. None when the shapes differ (broadcasting) or were not recorded."""
    dims, strides, types = parse_json_field(dims), parse_json_field(strides), \
        parse_json_field(types)
    if not dims or not strides or not types or not len(dims) == len(strides) == len(types):
        return None
    tensors = [(list(d), list(s), str(t).lower()) for d, s, t in zip(dims, strides, types,
                                                                   strict=True)
               if isinstance(d, list) and d and isinstance(s, list) and len(s) == len(d)]
    if len(tensors) < 2 or any(t[0] != tensors[0][0] for t in tensors):
        return None
    shape = tensors[0][0]
    elements = int(np.prod(shape))
    sizes = [DTYPE_BYTES.get(t[2]) for t in tensors]
    if elements <= 0 or any(size is None for size in sizes):
        return None
    read = sum(sizes[1:]) if op_name == "aten::copy_" else sum(sizes)
    orders = {dim_order(shape, t[1]) for t in tensors}
    return Operands(shape=shape, strides=[t[1] for t in tensors], dtypes=[t[2] for t in tensors],
                    elements=elements, bytes=elements * (read + sizes[0]),
                    mismatched=len(orders) > 1)


def elementwise_kernels(trace: Trace, pattern: re.Pattern[str]) -> pd.DataFrame:
    """Kernels of one elementwise loop whose op recorded its operands, with what they say."""
    k = trace.kernels
    if k.empty or trace.ops.empty or "input_dims" not in trace.ops:
        return pd.DataFrame()
    k = k[name_matches(k["name"], pattern) & (k["op_idx"].to_numpy() >= 0)]
    if k.empty:
        return pd.DataFrame()
    ops = trace.ops
    rows = k["op_idx"].to_numpy(dtype=np.int64)
    strides = ops["input_strides"] if "input_strides" in ops else pd.Series("", index=ops.index)
    # Ops of one name and recorded arguments say the same: each distinct text parsed once.
    texts = list(zip(ops["name"].to_numpy(dtype=object)[rows],
                     ops["input_dims"].to_numpy(dtype=object)[rows],
                     strides.to_numpy(dtype=object)[rows],
                     ops["input_types"].to_numpy(dtype=object)[rows], strict=True))
    said = {text: operands_of(str(text[0]), *text[1:]) for text in set(texts)}
    operands = [said[text] for text in texts]
    keep = np.array([o is not None for o in operands], dtype=bool)
    return k[keep].assign(operands=[o for o in operands if o is not None])


def contiguous_rate(trace: Trace, params: Params) -> tuple[float, int] | None:
    """Bytes per microsecond of the trace's large vectorized elementwise kernels (the
    `reference_quantile`), and how many there were; None with too few."""
    vec = elementwise_kernels(trace, VECTORIZED)
    if vec.empty:
        return None
    elements = np.array([o.elements for o in vec["operands"]], dtype=np.float64)
    moved = np.array([o.bytes for o in vec["operands"]], dtype=np.float64)
    dur = vec["dur"].to_numpy(dtype=np.float64)
    big = (elements >= params.min_reference_elements) & (dur > 0)
    if big.sum() < params.min_reference_kernels:
        return None
    return float(np.quantile(moved[big] / dur[big], params.reference_quantile)), int(big.sum())


def finding_for(trace: Trace, group: pd.DataFrame, rate: float, samples: int,
                step_us: float | None) -> Finding:
    first = group.sort_values("ts").iloc[0]
    operands: Operands = first["operands"]
    row = int(first["op_idx"])
    op = str(trace.ops.at[row, "name"])
    steps = group["step"].to_numpy()
    n_steps = max(1, len(np.unique(steps[steps >= 0])))
    cost = float(group["lost"].sum())
    per_launch = float(group["dur"].mean())
    expected = operands.bytes / rate
    slowdown = per_launch / expected
    strides = " and ".join(str(tuple(s)) for s in dict.fromkeys(map(tuple, operands.strides)))
    dtype = "/".join(dict.fromkeys(t.replace("c10::", "") for t in operands.dtypes))
    title = (f"{op} on {list(operands.shape)} {dtype} tensors laid out differently (strides "
             f"{strides}) runs the generic elementwise kernel: {format_us(per_launch)} per "
             f"launch, {slowdown:.1f}x what the trace's contiguous elementwise kernels take for "
             f"the same bytes x{len(group)}")
    evidence = {
        "shape": list(operands.shape), "strides": [list(s) for s in operands.strides],
        "dtypes": operands.dtypes, "elements": operands.elements, "bytes": operands.bytes,
        "kernel_us_mean": round(per_launch, 3), "expected_us": round(expected, 3),
        "slowdown": round(slowdown, 2), "contiguous_gb_per_s": round(rate / 1e3, 1),
        "contiguous_reference_kernels": samples, "steps": n_steps,
        "cost_per_step_us": round(cost / n_steps, 3),
        "cost_pct_of_step": round(100.0 * cost / n_steps / step_us, 2) if step_us else None,
    }
    stream = first.get("stream")
    return Finding(
        kind=KIND, severity=severity_from_cost(cost / n_steps, step_us), rank=trace.rank,
        step=int(first["step"]) if first["step"] >= 0 else None,
        start_us=float(first["ts"]), dur_us=float(first["dur"]), cost_us=round(cost, 3),
        count=len(group), title=title,
        culprit=Culprit(kernel=str(first["name"]),
                        stream=None if pd.isna(stream) else int(stream)),
        cause=Cause(op=op, op_stack=op_stack(trace, row), source=source_of_op(trace.ops, row),
                    ordering=None),
        evidence=evidence, suggestion=COPY_SUGGESTION if op == "aten::copy_" else SUGGESTION)


@register(KIND, Params)
def detect(run: Run, params: Params) -> list[Finding]:
    """One finding per rank, op, source line and shapes whose layout mismatch costs at least
    `min_cost_us` per step at `min_slowdown` or more."""
    findings: list[Finding] = []
    step_us = run_step_us(run)
    for trace in run.traces:
        generic = elementwise_kernels(trace, GENERIC)
        if generic.empty:
            continue
        generic = generic[[o.mismatched for o in generic["operands"]]]
        reference = contiguous_rate(trace, params) if len(generic) else None
        if reference is None:
            continue
        rate, samples = reference
        moved = np.array([o.bytes for o in generic["operands"]], dtype=np.float64)
        expected = moved / rate
        dur = generic["dur"].to_numpy(dtype=np.float64)
        slow = dur >= params.min_slowdown * expected
        generic = generic[slow].assign(lost=(dur - expected)[slow])
        if generic.empty:
            continue
        ops = trace.ops
        rows = generic["op_idx"].to_numpy(dtype=np.int64)
        key = pd.Series([f"{ops.at[r, 'name']}|{ops.at[r, 'src_file']}:{ops.at[r, 'src_line']}|"
                         f"{ops.at[r, 'input_dims']}" for r in rows], index=generic.index)
        for _, group in generic.groupby(key, sort=False):
            steps = group["step"].to_numpy()
            n_steps = max(1, len(np.unique(steps[steps >= 0])))
            if group["lost"].sum() / n_steps >= params.min_cost_us:
                findings.append(finding_for(trace, group, rate, samples, step_us))
    return findings
