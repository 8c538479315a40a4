"""Parsed trace document -> the per-category frames of `tracekit.trace.Trace`.

The events are walked once in Python, only to bucket them by category; every column after that
is one comprehension plus one numpy conversion per category. The event dicts are dropped as
soon as the frames exist.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tracekit.load import columns as col
from tracekit.load.intervals import nest
from tracekit.trace import Trace

KERNEL_CATS = ("kernel", "Kernel")
MEMCPY_CATS = ("gpu_memcpy", "Memcpy")
MEMSET_CATS = ("gpu_memset", "Memset")
OP_CATS = ("cpu_op", "Operator")
LAUNCH_CATS = ("cuda_runtime", "cuda_driver", "Runtime", "Driver")
PYTHON_CATS = ("python_function",)
CPU_ANNOTATION_CATS = ("user_annotation",)
GPU_ANNOTATION_CATS = ("gpu_user_annotation",)
FLOW_CATS = ("fwdbwd",)

STEP_NAME = re.compile(r"^ProfilerStep#(\d+)$")
KERNEL_LAUNCH_NAME = re.compile(
    r"^(?:cuda|cu|hip)(?:Ext)?(?:Module)?Launch(?:Cooperative)?Kernel"
    r"|^(?:cuda|cu|hip)GraphLaunch"
)
"""CUDA runtime/driver and HIP calls that start kernels (cudaLaunchKernel, cuLaunchKernelEx,
hipExtModuleLaunchKernel, cudaGraphLaunch, ...). Memcpy/memset calls are launches too, but not
kernel launches."""

NCCL_NAME = re.compile(r"nccl|rccl", re.IGNORECASE)
KERNEL_CATEGORY_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("memory", re.compile(r"^(memcpy|memset)|\bmem(cpy|set)", re.IGNORECASE)),
    ("attention", re.compile(r"flash|fmha|attention|attn|sdpa", re.IGNORECASE)),
    (
        "gemm",
        re.compile(
            r"gemm|cutlass|cublas|xmma|nvjet|matmul|^Cijk_|_tem_fused_(add|b)?mm|sgemm|hgemm",
            re.IGNORECASE,
        ),
    ),
    ("triton", re.compile(r"^triton_")),
    ("reduction", re.compile(r"reduce|norm|softmax|sum_|_sum|\bsum\b|moments", re.IGNORECASE)),
    (
        "elementwise",
        re.compile(r"elementwise|vectorized|Functor|copy|fill|_apply_kernel", re.IGNORECASE),
    ),
)
"""First match wins: NCCL is decided before these (by name or collective args); attention
before gemm because fused attention kernels often say gemm too."""

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
STEP_COLUMNS = ["step", "cpu_ts", "cpu_end", "gpu_ts", "gpu_end"]


def bucket_by_category(events: list[Any]) -> dict[Any, list[dict[str, Any]]]:
    """The only per-event Python loop: group complete events (and flows) by category."""
    buckets: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        if type(event) is dict:
            buckets[event.get("cat")].append(event)
    return buckets


def _take(buckets: dict[Any, list[dict[str, Any]]], cats: tuple[str, ...]
          ) -> list[dict[str, Any]]:
    """Events of the given categories, without those lacking a name or a start time."""
    out: list[dict[str, Any]] = []
    for cat in cats:
        out.extend(buckets.get(cat, ()))
    # Kineto writes every event of these categories complete; a malformed one (hand-edited or
    # cut-off trace) is dropped here rather than poisoning a whole column.
    if not all([type(e.get("ts")) in (int, float) and type(e.get("name")) is str for e in out]):
        out = [e for e in out
               if type(e.get("ts")) in (int, float) and type(e.get("name")) is str]
    return out


def _times(events: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ts = col.floats([e["ts"] for e in events])
    dur = col.floats([e.get("dur", 0.0) for e in events])
    if np.isnan(dur).any() or (dur < 0).any():
        dur = np.maximum(np.nan_to_num(dur, nan=0.0), 0.0)
    return ts, dur, ts + dur


def _matches(names: pd.Series, pattern: re.Pattern[str]) -> np.ndarray:
    """pattern.search per row, evaluated once per distinct name (names repeat a lot)."""
    if len(names) == 0:
        return np.zeros(0, dtype=bool)
    codes, uniques = pd.factorize(names)
    hits = np.array([pattern.search(u) is not None for u in uniques], dtype=bool)
    return hits[codes]


def kernel_category(name: str, is_nccl: bool) -> str:
    """Kernel family from its name (see KERNEL_CATEGORY_RULES)."""
    if is_nccl:
        return "nccl"
    for category, pattern in KERNEL_CATEGORY_RULES:
        if pattern.search(name):
            return category
    return "other"


def _categories(names: pd.Series, is_nccl: np.ndarray) -> np.ndarray:
    """Category per kernel, computed once per distinct (name, is_nccl)."""
    if len(names) == 0:
        return np.array([], dtype=object)
    codes, uniques = pd.factorize(names.astype(object) + np.where(is_nccl, "\x00n", "\x00"))
    labels = np.array(
        [kernel_category(u.rsplit("\x00", 1)[0], u.endswith("\x00n")) for u in uniques],
        dtype=object,
    )
    return labels[codes]


def build_kernels(events: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per GPU kernel, with launch geometry and NCCL collective metadata."""
    args = col.args_of(events)
    ts, dur, end = _times(events)
    names = pd.Series(col.strings([e["name"] for e in events]), dtype=object)
    device = col.arg_ints(args, "device")
    pids = col.ints([e.get("pid") for e in events])
    device = np.where(device >= 0, device, pids)
    stream = col.arg_ints(args, "stream")
    tids = col.ints([e.get("tid") for e in events])
    stream = np.where(stream >= 0, stream, tids)
    grid = col.triples([a.get("grid") for a in args])
    block = col.triples([a.get("block") for a in args])
    collective = col.strings([a.get("Collective name") for a in args], missing=None)
    is_nccl = _matches(names, NCCL_NAME) | np.array([c is not None for c in collective], dtype=bool)
    columns: dict[str, Any] = {
        "name": names,
        "ts": ts,
        "dur": dur,
        "end": end,
        "device": device,
        "stream": stream,
        "correlation": col.arg_ints(args, "correlation"),
        "external_id": col.arg_ints(args, "External id"),
        "grid_x": grid[:, 0], "grid_y": grid[:, 1], "grid_z": grid[:, 2],
        "block_x": block[:, 0], "block_y": block[:, 1], "block_z": block[:, 2],
        "blocks_per_sm": col.arg_floats(args, "blocks per SM"),
        "warps_per_sm": col.arg_floats(args, "warps per SM"),
        "registers": col.arg_ints(args, "registers per thread"),
        "shared_mem": col.arg_ints(args, "shared memory"),
        "occupancy": col.arg_floats(args, "est. achieved occupancy %"),
        "is_nccl": is_nccl,
        "collective": pd.Series(collective, dtype=object),
        "in_nelems": col.arg_ints(args, "In msg nelems"),
        "out_nelems": col.arg_ints(args, "Out msg nelems"),
        "group_size": col.arg_ints(args, "Group size"),
        "dtype": pd.Series(col.strings([a.get("dtype") for a in args], missing=None), dtype=object),
        "pg_name": pd.Series(
            col.strings([a.get("Process Group Name") for a in args], missing=None), dtype=object
        ),
        "category": _categories(names, is_nccl),
    }
    return col.frame(columns, KERNEL_COLUMNS)


def build_gpu_mem(memcpy: list[dict[str, Any]], memset: list[dict[str, Any]]) -> pd.DataFrame:
    """Memcpy and memset activities on GPU streams."""
    events = memcpy + memset
    args = col.args_of(events)
    ts, dur, end = _times(events)
    device = col.arg_ints(args, "device")
    device = np.where(device >= 0, device, col.ints([e.get("pid") for e in events]))
    stream = col.arg_ints(args, "stream")
    stream = np.where(stream >= 0, stream, col.ints([e.get("tid") for e in events]))
    columns: dict[str, Any] = {
        "name": pd.Series(col.strings([e["name"] for e in events]), dtype=object),
        "kind": np.array(["memcpy"] * len(memcpy) + ["memset"] * len(memset), dtype=object),
        "ts": ts, "dur": dur, "end": end, "device": device, "stream": stream,
        "correlation": col.arg_ints(args, "correlation"),
        "external_id": col.arg_ints(args, "External id"),
        "bytes": col.arg_ints(args, "bytes"),
    }
    return col.frame(columns, GPU_MEM_COLUMNS)


def build_ops(events: list[dict[str, Any]]) -> pd.DataFrame:
    """CPU ops with their nesting (depth, parent) by time on each thread."""
    args = col.args_of(events)
    ts, dur, end = _times(events)
    tid = col.numeric_ids([e.get("tid") for e in events])
    depth, parent = nest(tid, ts, end)
    columns: dict[str, Any] = {
        "name": pd.Series(col.strings([e["name"] for e in events]), dtype=object),
        "pid": col.numeric_ids([e.get("pid") for e in events]),
        "tid": tid,
        "ts": ts, "dur": dur, "end": end, "depth": depth, "parent": parent,
        "external_id": col.arg_ints(args, "External id"),
        "seq": col.arg_ints(args, "Sequence number"),
        "fwd_tid": col.arg_ints(args, "Fwd thread id"),
        "input_dims": col.json_texts([a.get("Input Dims") for a in args]),
        "input_strides": col.json_texts([a.get("Input Strides") for a in args]),
        "input_types": col.json_texts([a.get("Input type") for a in args]),
        "kernel_file": col.strings([a.get("kernel_file") for a in args]),
        "kernel_name": col.strings([a.get("kernel_name") for a in args]),
    }
    return col.frame(columns, OP_COLUMNS)


def build_launches(events: list[dict[str, Any]]) -> pd.DataFrame:
    """CUDA runtime/driver (and HIP) API calls; kernel launches flagged."""
    args = col.args_of(events)
    ts, dur, end = _times(events)
    names = pd.Series(col.strings([e["name"] for e in events]), dtype=object)
    is_launch = _matches(names, KERNEL_LAUNCH_NAME)
    columns: dict[str, Any] = {
        "name": names,
        "pid": col.numeric_ids([e.get("pid") for e in events]),
        "tid": col.numeric_ids([e.get("tid") for e in events]),
        "ts": ts, "dur": dur, "end": end,
        "correlation": col.arg_ints(args, "correlation"),
        "external_id": col.arg_ints(args, "External id"),
        "is_kernel_launch": is_launch,
    }
    return col.frame(columns, LAUNCH_COLUMNS)


FRAME_NAME = re.compile(r"^(?P<file>.*)\((?P<line>\d+)\): (?P<function>.*)$")


def build_python(events: list[dict[str, Any]]) -> pd.DataFrame:
    """Python frames (with_stack=True), parsed from "file(N): function" and nested by time."""
    from tracekit.load.userframes import is_user_file

    ts, dur, end = _times(events)
    tid = col.numeric_ids([e.get("tid") for e in events])
    depth, parent = nest(tid, ts, end)
    names = pd.Series(col.strings([e["name"] for e in events]), dtype=object)
    codes, uniques = pd.factorize(names)
    parsed = [_parse_frame_name(u) for u in uniques]
    files = np.array([p[0] for p in parsed], dtype=object)
    lines = np.array([p[1] for p in parsed], dtype=np.int64)
    functions = np.array([p[2] for p in parsed], dtype=object)
    users = np.array([is_user_file(p[0]) for p in parsed], dtype=bool)
    columns: dict[str, Any] = {
        "name": names,
        "pid": col.numeric_ids([e.get("pid") for e in events]),
        "tid": tid,
        "ts": ts, "dur": dur, "end": end, "depth": depth, "parent": parent,
        "file": files[codes] if len(codes) else np.array([], dtype=object),
        "line": lines[codes] if len(codes) else np.array([], dtype=np.int64),
        "function": functions[codes] if len(codes) else np.array([], dtype=object),
        "is_user": users[codes] if len(codes) else np.array([], dtype=bool),
    }
    return col.frame(columns, PYTHON_COLUMNS)


def _parse_frame_name(name: str) -> tuple[str, int, str]:
    """("file", def line, "function"); builtins -> ("", -1, the whole name)."""
    match = FRAME_NAME.match(name)
    if match is None:
        return "", -1, name
    return match["file"], int(match["line"]), match["function"]


def build_flows(events: list[dict[str, Any]]) -> pd.DataFrame:
    """fwdbwd flows: start (forward op) and finish (backward op) joined by flow id."""
    starts = [e for e in events if e.get("ph") == "s"]
    finishes = [e for e in events if e.get("ph") == "f"]
    src = pd.DataFrame({
        "id": col.ints([e.get("id") for e in starts]),
        "src_tid": col.numeric_ids([e.get("tid") for e in starts]),
        "src_ts": col.floats([e.get("ts") for e in starts]),
    }).drop_duplicates("id")
    dst = pd.DataFrame({
        "id": col.ints([e.get("id") for e in finishes]),
        "dst_tid": col.numeric_ids([e.get("tid") for e in finishes]),
        "dst_ts": col.floats([e.get("ts") for e in finishes]),
    }).drop_duplicates("id")
    flows = src.merge(dst, on="id", how="inner", sort=True)
    return flows[FLOW_COLUMNS].reset_index(drop=True)


def build_annotations(cpu: list[dict[str, Any]], gpu: list[dict[str, Any]]) -> pd.DataFrame:
    """User annotations: record_function ranges on CPU threads, their GPU-side spans on streams."""
    events = cpu + gpu
    args = col.args_of(events)
    ts, dur, end = _times(events)
    n_cpu = len(cpu)
    tids = col.numeric_ids([e.get("tid") for e in events])
    stream = col.arg_ints(args, "stream")
    is_gpu = np.arange(len(events)) >= n_cpu
    columns: dict[str, Any] = {
        "name": pd.Series(col.strings([e["name"] for e in events]), dtype=object),
        "side": np.where(is_gpu, "gpu", "cpu").astype(object),
        "pid": col.numeric_ids([e.get("pid") for e in events]),
        "tid": np.where(is_gpu, -1, tids),
        "stream": np.where(is_gpu, np.where(stream >= 0, stream, tids), -1),
        "ts": ts, "dur": dur, "end": end,
        "external_id": col.arg_ints(args, "External id"),
    }
    return col.frame(columns, ANNOTATION_COLUMNS)


def build_steps(ops: pd.DataFrame, annotations: pd.DataFrame, kernels: pd.DataFrame,
                gpu_mem: pd.DataFrame, launches: pd.DataFrame) -> pd.DataFrame:
    """One row per ProfilerStep#N: CPU span, and GPU span.

    The GPU span is the GPU-side ProfilerStep annotation when the trace has one; otherwise the
    first..last kernel (or memcpy/memset) whose launch lies inside the CPU span. Kernel times are
    never compared with CPU spans: the GPU runs behind the CPU.
    """
    cpu_rows = [
        ops.loc[:, ["name", "ts", "end"]],
        annotations.loc[annotations["side"] == "cpu", ["name", "ts", "end"]],
    ]
    cpu = pd.concat(cpu_rows, ignore_index=True)
    cpu_steps = _step_spans(cpu)
    if cpu_steps.empty:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == "step" else "float64")
                             for c in STEP_COLUMNS})
    gpu_steps = _step_spans(annotations.loc[annotations["side"] == "gpu", ["name", "ts", "end"]])
    steps = cpu_steps.rename(columns={"ts": "cpu_ts", "end": "cpu_end"}).merge(
        gpu_steps.rename(columns={"ts": "gpu_ts", "end": "gpu_end"}), on="step", how="left"
    )
    missing = steps["gpu_ts"].isna().to_numpy()
    if missing.any():
        fallback = gpu_spans_from_launches(steps, kernels, gpu_mem, launches)
        steps.loc[missing, "gpu_ts"] = fallback["gpu_ts"].to_numpy()[missing]
        steps.loc[missing, "gpu_end"] = fallback["gpu_end"].to_numpy()[missing]
    steps["step"] = steps["step"].astype(np.int64)
    return steps[STEP_COLUMNS].reset_index(drop=True)


def _step_spans(rows: pd.DataFrame) -> pd.DataFrame:
    """(step, ts, end) of rows named ProfilerStep#N, one row per N (widest span)."""
    is_step = _matches(rows["name"], STEP_NAME)
    found = rows.loc[is_step, ["ts", "end"]].copy()
    found["step"] = (
        rows.loc[is_step, "name"].astype(object).str.extract(STEP_NAME, expand=False)
        .astype(np.int64)
    )
    if found.empty:
        return pd.DataFrame({"step": pd.Series(dtype="int64"), "ts": pd.Series(dtype="float64"),
                             "end": pd.Series(dtype="float64")})
    spans = found.groupby("step", as_index=False).agg(ts=("ts", "min"), end=("end", "max"))
    return spans.sort_values("ts", ignore_index=True)


def step_of_times(steps_ts: np.ndarray, steps_end: np.ndarray, step_numbers: np.ndarray,
                  t: np.ndarray) -> np.ndarray:
    """Step number whose [ts, end] contains each time t (-1 if none). Steps do not overlap."""
    out = np.full(len(t), -1, dtype=np.int64)
    if len(steps_ts) == 0 or len(t) == 0:
        return out
    order = np.argsort(steps_ts, kind="stable")
    starts, ends, numbers = steps_ts[order], steps_end[order], step_numbers[order]
    pos = np.searchsorted(starts, t, side="right") - 1
    ok = pos >= 0
    ok[ok] = t[ok] <= ends[pos[ok]]
    out[ok] = numbers[pos[ok]]
    return out


def gpu_spans_from_launches(steps: pd.DataFrame, kernels: pd.DataFrame, gpu_mem: pd.DataFrame,
                            launches: pd.DataFrame) -> pd.DataFrame:
    """Per step, first start and last end of the GPU work launched inside its CPU span."""
    gpu = pd.concat([kernels[["ts", "end", "correlation"]], gpu_mem[["ts", "end", "correlation"]]],
                    ignore_index=True)
    by_corr = launches.drop_duplicates("correlation").set_index("correlation")["ts"]
    launch_ts = gpu["correlation"].map(by_corr).to_numpy(dtype=np.float64, na_value=np.nan)
    step = step_of_times(steps["cpu_ts"].to_numpy(), steps["cpu_end"].to_numpy(),
                         steps["step"].to_numpy(), np.nan_to_num(launch_ts, nan=-np.inf))
    gpu = gpu.assign(step=step)
    spans = gpu[gpu["step"] >= 0].groupby("step").agg(gpu_ts=("ts", "min"), gpu_end=("end", "max"))
    return steps[["step"]].join(spans, on="step")[["gpu_ts", "gpu_end"]]


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


def build_trace(doc: dict[str, Any], path: Path, rank: int | None = None) -> Trace:
    """All frames of one rank's trace; `doc["traceEvents"]` is consumed (emptied)."""
    events = doc.pop("traceEvents")
    meta = doc
    buckets = bucket_by_category(events)
    events.clear()
    del events
    kernels = build_kernels(_take(buckets, KERNEL_CATS))
    gpu_mem = build_gpu_mem(_take(buckets, MEMCPY_CATS), _take(buckets, MEMSET_CATS))
    ops = build_ops(_take(buckets, OP_CATS))
    launches = build_launches(_take(buckets, LAUNCH_CATS))
    python = build_python(_take(buckets, PYTHON_CATS))
    flows = build_flows([e for cat in FLOW_CATS for e in buckets.get(cat, ())])
    annotations = build_annotations(_take(buckets, CPU_ANNOTATION_CATS),
                                    _take(buckets, GPU_ANNOTATION_CATS))
    buckets.clear()
    steps = build_steps(ops, annotations, kernels, gpu_mem, launches)
    info_rank, world_size = rank_info(meta)
    trace = Trace(
        path=path,
        rank=rank if rank is not None else (info_rank if info_rank is not None else 0),
        world_size=world_size if world_size is not None else 1,
        kernels=kernels,
        gpu_mem=gpu_mem,
        ops=ops,
        launches=launches,
        python=python,
        flows=flows,
        annotations=annotations,
        steps=steps,
        meta=meta,
        num_sms=num_sms_of(meta, kernels),
    )
    trace.warnings.extend(load_warnings(trace))
    return trace


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
        out.append(
            "no python_function events (record with with_stack=True): "
            "findings will not point at source lines"
        )
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
