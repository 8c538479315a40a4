"""Raw columns -> the per-category frames of `tracekit.trace.Trace` (vectorised throughout).

`tracekit.load.extract` turns event dicts into plain columns; everything here works on whole
columns: derived fields, kernel categories, nesting of ops and Python frames, flow pairing and
ProfilerStep spans.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tracekit.errors import UserError
from tracekit.intervals import nest
from tracekit.load import columns as col
from tracekit.load import device, extract, kernel_kinds
from tracekit.load.events import Event, events_from_dicts
from tracekit.load.extract import Columns
from tracekit.load.steps import build_steps
from tracekit.load.userframes import is_user_file
from tracekit.names import name_matches
from tracekit.trace import FRAME_NAMES, Trace

KERNEL_LAUNCH_NAME = re.compile(
    r"^(?:cuda|cu|hip)(?:Ext)?(?:Module)?Launch(?:Cooperative)?Kernel"
    r"|^(?:cuda|cu|hip)GraphLaunch"
    r"|^(?:ur|pi)EnqueueKernelLaunch|^zeCommandListAppendLaunch(?:Cooperative)?Kernel"
    r"|^runFunction\b"
)
"""CUDA runtime/driver, HIP, Intel XPU (Unified Runtime, PI, Level Zero) and MTIA (runFunction)
calls that start kernels (cudaLaunchKernel, cuLaunchKernelEx, hipExtModuleLaunchKernel,
cudaGraphLaunch, urEnqueueKernelLaunch, ...). Memcpy/memset calls are launches too, but not
kernel launches."""

KERNEL_COLUMNS = [
    "name", "ts", "dur", "end", "device", "stream", "correlation", "external_id",
    "grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "blocks_per_sm",
    "warps_per_sm", "registers", "shared_mem", "occupancy", "is_nccl", "collective",
    "in_nelems", "out_nelems", "group_size", "dtype", "pg_name", "category",
]
GPU_MEM_COLUMNS = [
    "name", "kind", "ts", "dur", "end", "device", "stream", "correlation", "external_id", "bytes",
]
OP_COLUMNS = [
    "name", "pid", "tid", "ts", "dur", "end", "depth", "parent", "external_id", "seq", "fwd_tid",
    "input_dims", "input_strides", "input_types", "kernel_file", "kernel_name",
]
LAUNCH_COLUMNS = [
    "name", "pid", "tid", "ts", "dur", "end", "correlation", "external_id", "is_kernel_launch",
]
PYTHON_COLUMNS = [
    "name", "pid", "tid", "ts", "dur", "end", "depth", "parent", "file", "line", "function",
    "is_user",
]
FLOW_COLUMNS = ["id", "src_tid", "src_ts", "dst_tid", "dst_ts"]
ANNOTATION_COLUMNS = ["name", "side", "pid", "tid", "stream", "ts", "dur", "end", "external_id"]

INT32_COLUMNS: dict[str, tuple[str, ...]] = {
    "kernels": ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "registers",
                "shared_mem", "group_size", "launch_idx", "op_idx", "step", "src_line"),
    "gpu_mem": ("launch_idx", "op_idx", "step", "src_line"),
    "ops": ("depth", "parent", "fwd_op_idx", "step", "src_line"),
    "launches": ("op_idx", "step"),
    "python": ("depth", "parent", "line"),
    "annotations": ("step",),
}
"""Integer columns kept as int32 once a trace is loaded and linked (see `compact_trace`):
small by nature (row numbers, depths, step and line numbers, CUDA launch geometry and
resources, which CUDA itself bounds by 2^31 - 1), and never combined into wider keys. Ids
(pid, tid, device, stream, correlation, external_id, seq, flow id) and element counts stay
int64: they are join keys, are packed into wider keys (device << 32 | stream), or can be
large."""




def _times(cols: Columns) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ts, dur (NaN, infinite or negative -> 0) and end."""
    ts, dur = cols["ts"], cols["dur"]
    usable = np.isfinite(dur) & (dur >= 0)
    if not usable.all():
        dur = np.where(usable, dur, 0.0)
    return ts, dur, ts + dur


def _names(cols: Columns) -> pd.Series:
    return pd.Series(cols["name"], dtype=object)


def build_kernels(cols: Columns) -> pd.DataFrame:
    """One row per GPU kernel, with launch geometry and NCCL collective metadata."""
    ts, dur, end = _times(cols)
    names = _names(cols)
    grid, block = cols["grid"], cols["block"]
    has_collective = np.array([c is not None for c in cols["collective"]], dtype=bool)
    is_nccl, category = kernel_kinds.kinds(names, has_collective)
    columns: dict[str, Any] = {
        "name": names, "ts": ts, "dur": dur, "end": end,
        # CUPTI puts device and stream in args; the pid/tid of the event say the same.
        "device": np.where(cols["device"] >= 0, cols["device"], cols["pid"]),
        "stream": np.where(cols["stream"] >= 0, cols["stream"], cols["tid"]),
        "correlation": cols["correlation"], "external_id": cols["external_id"],
        "grid_x": grid[:, 0], "grid_y": grid[:, 1], "grid_z": grid[:, 2],
        "block_x": block[:, 0], "block_y": block[:, 1], "block_z": block[:, 2],
        "blocks_per_sm": cols["blocks_per_sm"], "warps_per_sm": cols["warps_per_sm"],
        "registers": cols["registers"], "shared_mem": cols["shared_mem"],
        "occupancy": cols["occupancy"], "is_nccl": is_nccl,
        "collective": pd.Series(cols["collective"], dtype=object),
        "in_nelems": cols["in_nelems"], "out_nelems": cols["out_nelems"],
        "group_size": cols["group_size"],
        "dtype": pd.Series(cols["dtype"], dtype=object),
        "pg_name": pd.Series(cols["pg_name"], dtype=object),
        "category": category,
    }
    return col.frame(columns, KERNEL_COLUMNS)


def build_gpu_mem(cols: Columns) -> pd.DataFrame:
    """Memcpy and memset activities on GPU streams."""
    ts, dur, end = _times(cols)
    columns: dict[str, Any] = {
        "name": _names(cols), "kind": np.array(cols["kind"], dtype=object),
        "ts": ts, "dur": dur, "end": end,
        "device": np.where(cols["device"] >= 0, cols["device"], cols["pid"]),
        "stream": np.where(cols["stream"] >= 0, cols["stream"], cols["tid"]),
        "correlation": cols["correlation"], "external_id": cols["external_id"],
        "bytes": cols["bytes"],
    }
    return col.frame(columns, GPU_MEM_COLUMNS)


def build_ops(cols: Columns) -> pd.DataFrame:
    """CPU ops with their nesting (depth, parent) by time on each thread."""
    ts, dur, end = _times(cols)
    depth, parent = nest(cols["tid"], ts, end)
    columns: dict[str, Any] = {
        "name": _names(cols), "pid": cols["pid"], "tid": cols["tid"],
        "ts": ts, "dur": dur, "end": end, "depth": depth, "parent": parent,
        "external_id": cols["external_id"], "seq": cols["seq"], "fwd_tid": cols["fwd_tid"],
        "input_dims": np.array(cols["input_dims"], dtype=object),
        "input_strides": np.array(cols["input_strides"], dtype=object),
        "input_types": np.array(cols["input_types"], dtype=object),
        "kernel_file": np.array(cols["kernel_file"], dtype=object),
        "kernel_name": np.array(cols["kernel_name"], dtype=object),
    }
    return col.frame(columns, OP_COLUMNS)


def build_launches(cols: Columns) -> pd.DataFrame:
    """CUDA runtime/driver (and HIP) API calls; kernel launches flagged."""
    ts, dur, end = _times(cols)
    names = _names(cols)
    columns: dict[str, Any] = {
        "name": names, "pid": cols["pid"], "tid": cols["tid"],
        "ts": ts, "dur": dur, "end": end,
        "correlation": cols["correlation"], "external_id": cols["external_id"],
        "is_kernel_launch": name_matches(names, KERNEL_LAUNCH_NAME),
    }
    return col.frame(columns, LAUNCH_COLUMNS)


NO_STACKS = "no python_function events"
"""How the note on a trace recorded without Python stacks begins."""

FRAME_NAME = re.compile(r"^(?P<file>.*)\((?P<line>\d+)\): (?P<function>.*)$")


def build_python(cols: Columns) -> pd.DataFrame:
    """Python frames (with_stack=True), parsed from "file(N): function" and nested by time."""
    ts, dur, end = _times(cols)
    depth, parent = nest(cols["tid"], ts, end)
    names = _names(cols)
    codes, uniques = pd.factorize(names)
    parsed = [_parse_frame_name(str(u)) for u in uniques]
    # Many frame names share a file (and some a function): one str object per distinct value.
    files = np.array(col.shared([p[0] for p in parsed] or [""]), dtype=object)
    lines = np.array([p[1] for p in parsed] or [-1], dtype=np.int64)
    functions = np.array(col.shared([p[2] for p in parsed] or [""]), dtype=object)
    users = np.array([is_user_file(p[0]) for p in parsed] or [False], dtype=bool)
    columns: dict[str, Any] = {
        "name": names, "pid": cols["pid"], "tid": cols["tid"],
        "ts": ts, "dur": dur, "end": end, "depth": depth, "parent": parent,
        "file": files[codes], "line": lines[codes], "function": functions[codes],
        "is_user": users[codes],
    }
    return col.frame(columns, PYTHON_COLUMNS)


def already_running(python: pd.DataFrame) -> np.ndarray:
    """Per Python frame, True when it was on its thread's stack when the tracer started.

    The tracer first records the stack it finds, outermost first, naming each of those frames
    by the line it was executing (`PyFrame_GetLineNumber`), where frames entered later are
    named by their code's first line (the def line, or the first decorator's). Those frames
    all start before any frame of their thread returns; so does at most a short chain of
    calls made right after the start (the profiler's own code, not the user's)."""
    if not len(python):
        return np.zeros(0, dtype=bool)
    ends = pd.Series(python["end"].to_numpy(np.float64))
    first_end = ends.groupby(python["tid"].to_numpy()).transform("min").to_numpy()
    return python["ts"].to_numpy(np.float64) < first_end


def _parse_frame_name(name: str) -> tuple[str, int, str]:
    """("file", def line, "function"); builtins -> ("", -1, the whole name)."""
    match = FRAME_NAME.match(name)
    if match is None:
        return "", -1, name
    return match["file"], int(match["line"]), match["function"]


def build_flows(cols: Columns) -> pd.DataFrame:
    """fwdbwd flows: start (forward op) and finish (backward op) joined by flow id."""
    ph = np.array(cols["ph"], dtype=object)
    ends = pd.DataFrame({"id": cols["id"], "tid": cols["tid"], "ts": cols["ts"]})
    src = ends[ph == "s"].drop_duplicates("id").rename(columns={"tid": "src_tid", "ts": "src_ts"})
    dst = ends[ph == "f"].drop_duplicates("id").rename(columns={"tid": "dst_tid", "ts": "dst_ts"})
    flows = src.merge(dst, on="id", how="inner", sort=True)
    return flows[FLOW_COLUMNS].reset_index(drop=True)


SIDES = np.array(["cpu", "gpu"], dtype=object)
"""An annotation's `side` by its is_gpu flag (one str object each, not one per row)."""


def build_annotations(cols: Columns) -> pd.DataFrame:
    """User annotations: record_function ranges on CPU threads, their GPU-side spans on streams."""
    ts, dur, end = _times(cols)
    is_gpu = cols["is_gpu"]
    tids = cols["tid"]
    stream = cols["stream"]
    columns: dict[str, Any] = {
        "name": _names(cols),
        "side": SIDES[is_gpu.astype(np.intp)],
        "pid": cols["pid"],
        "tid": np.where(is_gpu, -1, tids),
        "stream": np.where(is_gpu, np.where(stream >= 0, stream, tids), -1),
        "ts": ts, "dur": dur, "end": end,
        "external_id": cols["external_id"],
    }
    return col.frame(columns, ANNOTATION_COLUMNS)


def num_sms_of(meta: dict[str, Any], kernels: pd.DataFrame) -> int | None:
    """SM count of the device this rank's kernels ran on (deviceProperties[].numSms)."""
    props = meta.get("deviceProperties")
    if not isinstance(props, list) or not props:
        return None
    by_id = {
        p.get("id"): p.get("numSms") for p in props
        if isinstance(p, dict) and isinstance(p.get("numSms"), int)
    }
    if not by_id:
        return None
    if len(kernels):
        device = int(kernels["device"].mode().iloc[0])
        if device in by_id:
            return int(by_id[device])
    values = set(by_id.values())
    return int(values.pop()) if len(values) == 1 else None


def rank_info(meta: dict[str, Any]) -> tuple[int | None, int | None]:
    """(rank, world_size) from distributedInfo, None where absent."""
    info = meta.get("distributedInfo")
    if not isinstance(info, dict):
        return None, None
    rank = info.get("rank")
    world = info.get("world_size")
    return (
        int(rank) if isinstance(rank, int) else None,
        int(world) if isinstance(world, int) else None,
    )


def build_frames(raw: dict[str, Columns]) -> dict[str, pd.DataFrame]:
    """Frames of one trace from its raw columns (see `tracekit.load.extract`). Each frame's
    raw columns are dropped from `raw` once it is built, so a trace's raw columns and its
    frames are never all held at once; only `census` stays."""
    builders = {"kernels": build_kernels, "gpu_mem": build_gpu_mem, "ops": build_ops,
                "launches": build_launches, "python": build_python, "flows": build_flows,
                "annotations": build_annotations}
    frames = {name: build(raw.pop(name)) for name, build in builders.items()}
    frames["steps"] = build_steps(frames["ops"], frames["annotations"], frames["kernels"],
                                  frames["gpu_mem"], frames["launches"])
    return frames


def trace_from_frames(frames: dict[str, pd.DataFrame], meta: dict[str, Any], path: Path,
                      rank: int | None = None, census: Columns | None = None) -> Trace:
    """A Trace with rank, world size, SM count, device kind and load warnings filled in;
    a one-line error for a trace with nothing to read (see `check_readable`)."""
    counts = category_counts(census)
    if census is not None:
        check_readable(frames, counts, int(np.sum(census["entries"])), path)
    info_rank, world_size = rank_info(meta)
    has_activity = len(frames["kernels"]) > 0 or len(frames["gpu_mem"]) > 0
    trace = Trace(
        path=path,
        rank=rank if rank is not None else (info_rank if info_rank is not None else 0),
        world_size=world_size if world_size is not None else 1,
        meta=meta,
        num_sms=num_sms_of(meta, frames["kernels"]),
        device=device.detect(meta, set(counts), frames["launches"], has_activity),
        **frames,
    )
    trace.warnings.extend(load_warnings(trace))
    return trace


def category_counts(census: Columns | None) -> dict[str, int]:
    """Events per category from the census of every slice (see `extract.census`)."""
    if census is None:
        return {}
    counts: dict[str, int] = {}
    for cat, n in zip(census["cat"], census["count"], strict=True):
        counts[cat] = counts.get(cat, 0) + int(n)
    return counts


def check_readable(frames: dict[str, pd.DataFrame], counts: dict[str, int], entries: int,
                   path: Path) -> None:
    """One line for a trace in which nothing is read: an empty events array, an array whose
    entries are not event objects, or events of no category tracekit knows."""
    if any(len(frames[name]) for name in READ_FRAMES):
        return
    if entries == 0:
        raise UserError(f"{path}: empty trace (traceEvents holds no events)")
    objects = sum(counts.values())
    if objects == 0:
        raise UserError(f"{path}: not a profiler trace ({entries:,} entries in traceEvents, "
                        "none of them an event object)")
    shown = ", ".join(f"{cat} x{n:,}" for cat, n in
                      sorted(counts.items(), key=lambda item: -item[1])[:6])
    raise UserError(f"{path}: no profiler events tracekit reads ({objects:,} events, by "
                    f"category: {shown}; it reads cpu_op, kernel, cuda_runtime, "
                    "user_annotation, python_function and their kin)")


READ_FRAMES = ("kernels", "gpu_mem", "ops", "launches", "python", "annotations")
"""Frames that hold events: a trace with rows in none of them has nothing to analyse."""


def build_trace(doc: dict[str, Any], path: Path, rank: int | None = None) -> Trace:
    """All frames of one rank's trace; `doc["traceEvents"]` is consumed (emptied)."""
    dicts = doc.pop("traceEvents")
    events = events_from_dicts(dicts)
    entries = len(dicts)
    dicts.clear()  # the event dicts go now, before the frames are built
    del dicts
    return trace_from_events(events, doc, path, rank, entries=entries)


def trace_from_events(events: list[Event], meta: dict[str, Any], path: Path,
                      rank: int | None = None, entries: int | None = None) -> Trace:
    """All frames of one rank's trace from its events (`events` is consumed: emptied);
    `entries`: see `extract.extract_all`."""
    raw = extract.extract_all(events, entries)
    events.clear()  # the events go now, before the frames are built
    frames = build_frames(raw)
    return trace_from_frames(frames, meta, path, rank, census=raw["census"])


def load_warnings(trace: Trace) -> list[str]:
    """What the trace lacks, and which analyses that disables (one sentence each)."""
    out: list[str] = []
    if not trace.has_gpu:
        out.append(
            "no GPU kernels or memory copies (CPU-only run, or CUDA activity not recorded): "
            "GPU analyses are skipped"
        )
    if len(trace.ops) == 0:
        out.append("no CPU ops (cpu_op events): kernels cannot be tied to the code that ran them")
    if len(trace.python) == 0:
        out.append(f"{NO_STACKS} (record with with_stack=True): findings will not point at "
                   "source lines")
    if not isinstance(trace.meta.get("distributedInfo"), dict):
        out.append(
            "no distributedInfo: rank and world size are taken from the file name or order"
        )
    if trace.has_gpu and trace.num_sms is None:
        out.append(
            "no deviceProperties with numSms: full-GPU (SM saturation) checks rely on the "
            "kernels' own blocks-per-SM figures"
        )
    if len(trace.steps) == 0:
        out.append(
            "no ProfilerStep#N spans (use a profiler schedule and call prof.step()): "
            "per-step analyses treat the whole trace as one window"
        )
    return out


def compact_trace(trace: Trace) -> Trace:
    """Shrink a loaded (and linked) trace's frames in place, keeping every value.

    Equal strings become one shared object (`columns.share_strings`: linking and pandas
    operations make one str per row again) and the INT32_COLUMNS become int32. The process
    that runs the detectors holds every rank's frames at once, so this is what bounds its
    memory on many-rank runs.
    """
    for name in FRAME_NAMES:
        frame = getattr(trace, name)
        col.share_strings(frame)
        col.narrow_ints(frame, INT32_COLUMNS.get(name, ()))
    return trace
