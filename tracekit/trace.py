"""The in-memory form of a loaded trace: one `Trace` per rank, grouped in a `Run`.

Every frame is a pandas DataFrame with a RangeIndex; times are float64 microseconds on the
trace's own clock (Kineto `ts`), `end = ts + dur`. Columns marked (link) are added by
`tracekit.link.link_trace`; everything else is filled by `tracekit.load`. A frame whose events
are absent from the trace is empty but keeps its columns, so detectors never test for columns.

kernels     one row per GPU kernel (cat kernel/Kernel)
    name, ts, dur, end, device, stream, correlation, external_id,
    grid_x, grid_y, grid_z, block_x, block_y, block_z, blocks_per_sm, warps_per_sm,
    registers, shared_mem, occupancy,
    is_nccl (bool), collective (str|None, "Collective name"), in_nelems, out_nelems,
    group_size, dtype, pg_name,
    category (gemm | attention | nccl | triton | elementwise | reduction | memory | other),
    (link) launch_idx (row in `launches` or -1), op_idx (innermost enclosing row in `ops` or -1),
    (link) step (GPU-side ProfilerStep number or -1), is_comm_stream (bool),
    (link) src_file, src_line, src_function, src_line_exact, src_from_fwd, src_path: the source
    columns of the kernel's op (so for kernels launched in backward, the forward op's user
    line; for a kernel launched from Python outside any op, e.g. Triton, the user frame
    around its launch)
gpu_mem     memcpy/memset rows: name, kind (memcpy|memset), ts, dur, end, device, stream,
            correlation, external_id, bytes (-1 when not recorded),
            (link) launch_idx, op_idx, step, src_file, src_line, src_function, src_line_exact,
            src_from_fwd, src_path (as for kernels)
ops         CPU ops (cat cpu_op/Operator): name, pid, tid, ts, dur, end, depth (0 = outermost on
            its thread), parent (row in `ops` or -1), external_id, seq (Sequence number or -1),
            fwd_tid, input_dims, input_strides, input_types (str, JSON text as recorded, or ""),
            kernel_file, kernel_name (Inductor provenance, or ""),
            (link) step (CPU ProfilerStep number or -1), fwd_op_idx (forward op of a backward op,
            or -1; ops nested in a backward op inherit it), src_file, src_line, src_function
            (innermost user-code frame, or ""/-1; for backward ops the forward op's),
            src_line_exact (bool: src_line is the statement, narrowed from the def line),
            src_from_fwd (bool: src_* were taken from the forward op), src_path (the readable
            file behind src_file, relative to the current directory when below it, or "")
launches    cuda_runtime/cuda_driver (and HIP) calls: name, pid, tid, ts, dur, end, correlation,
            external_id, is_kernel_launch (bool),
            (link) op_idx (innermost op containing the call, or -1), step (CPU step or -1)
python      python_function frames: name, pid, tid, ts, dur, end, depth, parent (row or -1),
            file, line, function (parsed from "file(N): function"), is_user (bool)
flows       fwdbwd flows: id, src_tid, src_ts, dst_tid, dst_ts
annotations user_annotation (side "cpu", tid) and gpu_user_annotation (side "gpu", stream):
            name, side, pid, tid, stream, ts, dur, end, external_id (tid -1 on the gpu side,
            stream -1 on the cpu side), (link) step (CPU step for cpu rows, GPU step for gpu rows)
steps       one row per ProfilerStep#N: step, cpu_ts, cpu_end, gpu_ts, gpu_end (gpu_* NaN when
            the trace has no GPU-side step annotation and no kernels of that step)

Missing integers are -1 (ids, stream, grid/block, registers, in/out_nelems, group_size, bytes),
missing floats NaN (blocks_per_sm, warps_per_sm, occupancy); missing strings "" (or None for
collective, dtype, pg_name). String columns have object dtype, and equal strings in them are
one shared str object (names, shapes and source columns repeat every step; one str per row
would make a rank's frames bigger than its JSON). A rank's linked frames then take 0.1-0.5x its
JSON text (0.30-0.37x on the committed traces); it matters because the process that runs the
detectors holds every rank's frames at once. For the same reason, integer columns that are small
by nature are int32 (`tracekit.load.frames.INT32_COLUMNS`: parent, depth, launch_idx, op_idx,
fwd_op_idx, step, line, src_line, grid_*, block_*, registers, shared_mem, group_size); ids
(pid, tid, device, stream, correlation, external_id, seq, fwd_tid, flow id) and counts
(in/out_nelems, bytes) are int64. Convert before arithmetic that could leave int32 (products of
grid dimensions, packed keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pandas as pd

from tracekit.errors import UserError

TRAINER_LABEL = r"^(train|optim|tie):"
"""record_function labels only this project's trainer writes (train:forward, optim:adam:...,
tie:lm_head->embed)."""


@dataclass
class Trace:
    """One rank's trace."""

    path: Path
    rank: int
    world_size: int
    kernels: pd.DataFrame
    gpu_mem: pd.DataFrame
    ops: pd.DataFrame
    launches: pd.DataFrame
    python: pd.DataFrame
    flows: pd.DataFrame
    annotations: pd.DataFrame
    steps: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    """Top-level trace keys other than traceEvents (deviceProperties, distributedInfo, ...)."""
    num_sms: int | None = None
    warnings: list[str] = field(default_factory=list)
    """What the trace lacks and which analyses that disables, one sentence each."""
    linked: bool = False
    source_roots: tuple[Path, ...] = ()
    """Where link resolved the frames' source files, in order (the run's code snapshot first);
    detectors that read source use the same roots."""
    gpu_activity: bool | None = None
    """Set on `thin` copies, whose frames are empty: whether the full trace had GPU events."""
    device: str = "cpu"
    """The accelerator the trace was recorded on: cuda, hip, xpu, mtia or cpu
    (tracekit.load.device)."""
    compiled_lines: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Inductor kernel name -> every user line it fused (file, line, function, code), from the
    run's compiled_kernels.json (set by link; tracekit.link.compiled)."""

    @property
    def has_gpu(self) -> bool:
        if self.gpu_activity is not None:
            return self.gpu_activity
        return len(self.kernels) > 0 or len(self.gpu_mem) > 0

    def thin(self) -> Trace:
        """This trace without its events (steps, metadata and warnings kept): what a report
        header needs, a few KB instead of the rank's frames."""
        emptied = {name: getattr(self, name).iloc[:0] for name in FRAME_NAMES if name != "steps"}
        return replace(self, **emptied, gpu_activity=self.has_gpu)


FRAME_NAMES: tuple[str, ...] = tuple(
    f.name for f in fields(Trace) if f.type in ("pd.DataFrame", pd.DataFrame)
)
"""The frame attributes of a Trace, in declaration order."""


@dataclass
class RankContext:
    """What detectors need from the ranks of a run that a Run object does not hold.

    `tracekit.pipeline.rankwise` analyses a big run one rank per process, so that no process
    holds every rank's frames; the few cross-rank quantities are computed from small per-rank
    summaries and given to each rank's Run here. A Run that holds all its ranks has no context.
    """

    step_us: float | None
    """The run's step time for severities (tracekit.link.steptime.run_step_us)."""
    profiled_steps: frozenset[int]
    """Steps profiled on any rank."""
    summaries: dict[str, dict[int, Any]] = field(default_factory=dict)
    """Per detector kind, each rank's summary (tracekit.detectors.SUMMARIES)."""


@dataclass
class Run:
    """A set of rank traces recorded together, plus the trainer's run files when present."""

    path: Path
    traces: list[Trace]
    manifest: dict[str, Any] | None = None
    steps_log: pd.DataFrame | None = None
    """steps.jsonl as a frame (step, wall_ms, tokens_per_s, loss, profiled), when present."""
    context: RankContext | None = None
    """Set when `traces` are only some of the run's ranks (see RankContext)."""
    accounting: Any = None
    """The step accounting (tracekit.accounting.table.RunAccounting) once computed: set by
    the per-rank analysis, whose Run keeps no events to compute it from."""

    @property
    def from_trainer(self) -> bool:
        """Recorded by this project's trainer (its manifest.json, or its own record_function
        labels): only then do findings use the trainer's words (bank, the transpose-copy
        kernel, its labels). `profile --script` writes a manifest too (kind "script"): that
        program is someone else's."""
        if self.manifest is not None and self.manifest.get("kind") != "script":
            return True
        return any(t.annotations["name"].astype(str).str.match(TRAINER_LABEL).any()
                   for t in self.traces if len(t.annotations))

    @property
    def ranks(self) -> list[int]:
        return [t.rank for t in self.traces]

    def rank(self, rank: int) -> Trace:
        for trace in self.traces:
            if trace.rank == rank:
                return trace
        raise KeyError(rank)


def check_rank(run: Run, rank: int | None) -> None:
    """A one-line error when `rank` is given and the run has no such rank."""
    if rank is not None and rank not in run.ranks:
        known = ", ".join(str(r) for r in run.ranks) or "none"
        raise UserError(f"rank {rank} is not in {run.path} (ranks: {known})")


def select_traces(run: Run, rank: int | None) -> list[Trace]:
    """The run's traces, or only those of `rank` (a one-line error when it has no such rank)."""
    if rank is None:
        return list(run.traces)
    check_rank(run, rank)
    return [run.rank(rank)]
