"""Independent step accounting for the external trace corpus (tests/data/external).

Reads a Kineto trace with gzip + json + numpy only (never tracekit), so its numbers are an
independent check of tracekit's. Definitions (also in tests/data/external/EXPECTATIONS.md):

- GPU activity: every complete event of category kernel, gpu_memcpy or gpu_memset (the 2021
  format's Kernel, Memcpy, Memset too), on any stream.
- communication: GPU activity whose name is a collective library's kernel (nccl, rccl, DeepEP,
  symmetric-memory multimem all-reduce); the rest is compute (memcpy and memset included).
- a step's GPU work: activity launched (runtime/driver call, joined by correlation) inside the
  CPU span of ProfilerStep#N on any thread.
- step window: from the end of the previous step's GPU work to the end of this step's GPU work
  (the first step starts at its CPU span's start). wall = window length.
- busy = union of all GPU activity inside the window; compute, comm likewise; hidden comm =
  comm inside compute; exposed comm = comm outside compute; idle = wall - busy.

Usage:
    python scripts/handcheck_external.py FILE [FILE...]     per-step tables and idle split
    python scripts/handcheck_external.py --write            tests/data/external/expectations.json
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OLD_CATEGORIES = {"Operator": "cpu_op", "Runtime": "cuda_runtime", "Kernel": "kernel",
                  "Memcpy": "gpu_memcpy", "Memset": "gpu_memset"}
GPU_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}
LAUNCH_CATEGORIES = {"cuda_runtime", "cuda_driver"}
COMM = re.compile(r"nccl|rccl|multimem_all_reduce|dpsk::ep|deep_ep|hccl", re.IGNORECASE)
STEP = re.compile(r"^ProfilerStep#(\d+)$")


def read_events(path: Path) -> list[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as f:
        doc = json.load(f)
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    out = []
    for e in events:
        if e.get("ph") != "X":
            continue
        e = dict(e)
        e["cat"] = OLD_CATEGORIES.get(e.get("cat"), e.get("cat"))
        e["ts"] = float(e["ts"])
        e["dur"] = float(e.get("dur", 0))
        out.append(e)
    return out


def union(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(starts) == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    reach = np.maximum.accumulate(e)
    new = np.ones(len(s), dtype=bool)
    new[1:] = s[1:] > reach[:-1]
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, len(s) - 1)
    return s[first], reach[last]


def length(iv: tuple[np.ndarray, np.ndarray], lo: float = -np.inf, hi: float = np.inf) -> float:
    s, e = np.maximum(iv[0], lo), np.minimum(iv[1], hi)
    return float(np.clip(e - s, 0, None).sum())


def intersect(a, b):
    """Intersection of two unions (small sizes: a merge by brute force is enough here)."""
    out_s, out_e = [], []
    j = 0
    for s, e in zip(*a, strict=True):
        while j < len(b[0]) and b[1][j] <= s:
            j += 1
        k = j
        while k < len(b[0]) and b[0][k] < e:
            lo, hi = max(s, b[0][k]), min(e, b[1][k])
            if hi > lo:
                out_s.append(lo)
                out_e.append(hi)
            k += 1
    return np.array(out_s), np.array(out_e)


def subtract(a, b):
    """a minus b for two unions."""
    if len(b[0]) == 0:
        return a
    lo = min(a[0].min(initial=np.inf), b[0].min())
    hi = max(a[1].max(initial=-np.inf), b[1].max())
    gaps = (np.concatenate([[lo], b[1]]), np.concatenate([b[0], [hi]]))
    keep = gaps[1] > gaps[0]
    return intersect(a, (gaps[0][keep], gaps[1][keep]))


@dataclass
class Trace:
    events: list[dict]

    @classmethod
    def read(cls, path: Path) -> Trace:
        return cls(read_events(path))

    def gpu(self) -> list[dict]:
        return [e for e in self.events if e["cat"] in GPU_CATEGORIES]

    def steps(self) -> list[tuple[int, float, float]]:
        """(N, cpu start, cpu end) of each CPU-side ProfilerStep#N, by N."""
        seen = {}
        for e in self.events:
            m = STEP.match(str(e.get("name", "")))
            if m and e["cat"] != "gpu_user_annotation":
                seen[int(m.group(1))] = (e["ts"], e["ts"] + e["dur"])
        return [(n, *seen[n]) for n in sorted(seen)]

    def step_windows(self) -> list[dict]:
        steps = self.steps()
        launches = {}
        for e in self.events:
            if e["cat"] in LAUNCH_CATEGORIES and "correlation" in e.get("args", {}):
                launches[e["args"]["correlation"]] = e["ts"]
        gpu = self.gpu()
        ends = {n: -np.inf for n, _, _ in steps}
        for g in gpu:
            t = launches.get(g.get("args", {}).get("correlation"))
            if t is None:
                continue
            for n, c0, c1 in steps:
                if c0 <= t < c1:
                    ends[n] = max(ends[n], g["ts"] + g["dur"])
                    break
        out, previous = [], None
        for n, c0, c1 in steps:
            start = c0 if previous is None else previous
            end = ends[n] if np.isfinite(ends[n]) else c1  # no GPU work: the CPU span
            out.append({"step": n, "cpu_start": c0, "cpu_end": c1, "start": start, "end": end})
            previous = end
        return out

    def accounting(self) -> list[dict]:
        gpu = self.gpu()
        is_comm = np.array([bool(COMM.search(g["name"])) for g in gpu], dtype=bool)
        ts = np.array([g["ts"] for g in gpu])
        te = ts + np.array([g["dur"] for g in gpu])
        busy = union(ts, te)
        comm = union(ts[is_comm], te[is_comm])
        compute = union(ts[~is_comm], te[~is_comm])
        hidden = intersect(comm, compute)
        exposed = subtract(comm, compute)
        rows = []
        for w in self.step_windows():
            lo, hi = w["start"], w["end"]
            wall = hi - lo
            b = length(busy, lo, hi)
            rows.append({
                "step": w["step"], "window_us": [round(lo, 1), round(hi, 1)],
                "cpu_step_us": round(w["cpu_end"] - w["cpu_start"], 1),
                "wall_us": round(wall, 1), "gpu_busy_us": round(b, 1),
                "compute_us": round(length(compute, lo, hi), 1),
                "comm_us": round(length(comm, lo, hi), 1),
                "comm_hidden_us": round(length(hidden, lo, hi), 1),
                "comm_exposed_us": round(length(exposed, lo, hi), 1),
                "gpu_idle_us": round(wall - b, 1),
                "idle_pct": round(100 * (wall - b) / wall, 1) if wall > 0 else None,
            })
        return rows

    def idle_under(self, name: str, lo: float, hi: float, cat: str = "cpu_op") -> float:
        """GPU idle time inside [lo, hi) while an event called `name` runs (any thread)."""
        gpu = self.gpu()
        ts = np.array([g["ts"] for g in gpu])
        te = ts + np.array([g["dur"] for g in gpu])
        busy = union(ts, te)
        ops = [e for e in self.events if e["cat"] == cat and e.get("name") == name
               and e["ts"] < hi and e["ts"] + e["dur"] > lo]
        if not ops:
            return 0.0
        held = union(np.array([max(e["ts"], lo) for e in ops]),
                     np.array([min(e["ts"] + e["dur"], hi) for e in ops]))
        return length(held) - length(intersect(held, busy))


INPUT = re.compile(r"^enumerate\(DataLoader\)")
SYNC = re.compile(
    r"^(cuda|hip)(Stream|Device|Event)Synchronize$|^aten::(item|_local_scalar_dense|nonzero)$"
)
MEMCPY = re.compile(r"^(cuda|hip)Memcpy(Async)?$")
CPU_CATEGORIES = {"cpu_op", "user_annotation", "cuda_runtime", "cuda_driver"}


def idle_split(trace: Trace, sample_us: float = 5.0) -> dict[int, dict[str, float]]:
    """Per step, GPU idle split by what held the CPU before the GPU's next piece of work.

    For each idle gap [a, b) of the GPU (no activity on any stream), take the next activity
    and its launch call at time L on thread T. If L <= a the work was queued before the GPU
    went idle: `gpu_waiting` (a stream wait, a lost event). Otherwise the CPU issued it late:
    [a, min(L, b)) goes to what thread T was inside (sampled every `sample_us`):
    input_pipeline (enumerate(DataLoader)), host_sync (a synchronize call, aten::item,
    _local_scalar_dense, nonzero), memcpy (a cudaMemcpy call), else cpu_work (other ops or
    Python between ops); and [max(a, L), b) is launch_latency. Gaps with no next launch
    (after the step's last work, or untraced launches) are `unattributed`.
    """
    gpu = sorted(trace.gpu(), key=lambda g: g["ts"])
    ts = np.array([g["ts"] for g in gpu])
    te = ts + np.array([g["dur"] for g in gpu])
    bs, be = union(ts, te)
    launches = {e["args"]["correlation"]: e for e in trace.events
                if e["cat"] in LAUNCH_CATEGORIES and "correlation" in e.get("args", {})}
    by_thread: dict = {}
    for e in trace.events:
        if e["cat"] not in CPU_CATEGORIES or STEP.match(str(e.get("name", ""))):
            continue
        name = str(e.get("name", ""))
        kind = ("input_pipeline" if INPUT.match(name) else "host_sync" if SYNC.match(name)
                else "memcpy" if MEMCPY.match(name) else "cpu_op")
        by_thread.setdefault(e.get("tid"), {}).setdefault(kind, []).append(
            (e["ts"], e["ts"] + e["dur"]))
    unions = {tid: {k: union(np.array([a for a, _ in v]), np.array([b for _, b in v]))
                    for k, v in kinds.items()} for tid, kinds in by_thread.items()}
    out = {}
    for w in trace.step_windows():
        lo, hi = w["start"], w["end"]
        gs = np.maximum(np.concatenate([[lo], be]), lo)
        ge = np.minimum(np.concatenate([bs, [hi]]), hi)
        split = dict.fromkeys(("input_pipeline", "host_sync", "memcpy", "cpu_work",
                               "launch_latency", "gpu_waiting", "unattributed"), 0.0)
        for a, b in zip(gs[ge > gs], ge[ge > gs], strict=True):
            i = int(np.searchsorted(ts, b - 1e-6))
            launch = launches.get(gpu[i]["args"].get("correlation")) if i < len(gpu) else None
            if launch is None:
                split["unattributed"] += b - a
                continue
            if launch["ts"] <= a:
                split["gpu_waiting"] += b - a
                continue
            late_end = min(launch["ts"], b)
            split["launch_latency"] += b - late_end
            points = np.arange(a, late_end, sample_us) + sample_us / 2
            points = points[points < late_end]
            if len(points) == 0:
                continue
            weight = (late_end - a) / len(points)
            free = np.ones(len(points), dtype=bool)
            thread = unions.get(launch.get("tid"), {})
            for kind in ("input_pipeline", "host_sync", "memcpy"):
                if kind in thread:
                    s_, e_ = thread[kind]
                    k = np.searchsorted(s_, points, side="right") - 1
                    inside = free & (k >= 0) & (e_[np.clip(k, 0, None)] > points)
                    split[kind] += inside.sum() * weight
                    free &= ~inside
            split["cpu_work"] += free.sum() * weight
        out[w["step"]] = {k: round(v, 1) for k, v in split.items()}
    return out


def op_hold(trace: Trace, pattern: str, lo: float, hi: float) -> float:
    """CPU time inside [lo, hi) covered by ops whose name matches `pattern` (any thread)."""
    rx = re.compile(pattern)
    spans = [(max(e["ts"], lo), min(e["ts"] + e["dur"], hi)) for e in trace.events
             if e["cat"] in CPU_CATEGORIES and rx.search(str(e.get("name", "")))
             and e["ts"] < hi and e["ts"] + e["dur"] > lo]
    if not spans:
        return 0.0
    return length(union(np.array([a for a, _ in spans]), np.array([b for _, b in spans])))


def gpu_activity_count(trace: Trace, lo: float, hi: float) -> int:
    return sum(1 for g in trace.gpu() if lo <= g["ts"] < hi)


def main(paths: list[str]) -> None:
    for p in paths:
        t = Trace.read(Path(p))
        print(f"== {Path(p).name}")
        split = idle_split(t)
        for r in t.accounting():
            print("  " + json.dumps(r))
            print("    idle split: " + json.dumps(split[r["step"]]))




# ---- the corpus: where each file came from, and what was checked in it --------------------

HTA = ("facebookresearch/HolisticTraceAnalysis", "f4d0062c382f42bd8a74838bcdad1916c7d5d2da", "MIT")
KINETO = ("pytorch/kineto", "041e7ce99f1562dd81232ee58b7c454ef16bfae2", "BSD-3-Clause")
TRACELENS = ("AMD-AGI/TraceLens", "171dd74721ca1ec45709e5805b68ae1f65e27811", "MIT")

SOURCES = {
    "resnet50_v100_workers0.pt.trace.json.gz": (
        KINETO, "tb_plugin/samples/resnet50_num_workers_0/worker0.1623143089861.pt.trace.json.gz",
        "torchvision ResNet-50 training, DataLoader num_workers=0, one Tesla V100-DGXS-32GB, "
        "recorded June 2021 (PyTorch 1.8/1.9: 'Operator/Runtime/Kernel' categories)"),
    "resnet50_v100_workers4.pt.trace.json.gz": (
        KINETO, "tb_plugin/samples/resnet50_num_workers_4/worker0.1623212756351.pt.trace.json.gz",
        "the same ResNet-50 program with num_workers=4 (the fix), same V100"),
    "recsys_a100_rank3of8.json.gz": (
        HTA, "tests/data/trace_diff/control/control.json.gz",
        "recommendation model (fbgemm embeddings, NCCL all-reduce and send/recv), rank 3 of 8, "
        "A100-PG509-200"),
    "recsys_v100_rank1of2.json.gz": (
        HTA, "tests/data/trace_diff/test/test.json.gz",
        "recommendation model, rank 1 of 2, Tesla V100-SXM2-16GB; .item() syncs every step"),
    "compiled_v100_rank1of2.json.gz": (
        HTA, "tests/data/df_index_resolver/df_index_resolver.json.gz",
        "torch.compile'd model (CompiledFunction), DDP rank 1 of 2, Tesla V100-SXM2-32GB, "
        "about 4,400 GPU activities per step"),
    "convnet_v100_single.pt.trace.json.gz": (
        HTA, "tests/data/ns_resolution_trace/rank-0.Apr_03_18_51_38.1102.pt.trace.json.gz",
        "cuDNN convolutional network training, world size 1, Tesla V100-SXM2-32GB (GPU-bound)"),
    "recsys_a100_rank0of16_lost_events.json.gz": (
        HTA, "tests/data/negative_queue_length_values_check/rank0.json.gz",
        "TorchRec-style recommendation model with CUDA graphs, rank 0 of 16, A100-SXM4-80GB; "
        "GPU events are missing (HTA keeps it as a negative-queue-length case)"),
    "a100_nccl_2ranks_rank0.json.gz": (
        HTA, "tests/data/nccl_parser_config/nccl_data.json.gz",
        "DDP convolutional network (batch norm), rank 0 of 2, A100-PG509-200"),
    "sampled_128ranks_rank0.json.gz": (
        HTA, "tests/data/timeline_analysis/sampled_rank-0.json.gz",
        "recommendation model, rank 0 of 128, events sampled (not every event kept), "
        "no deviceProperties"),
    "vllm_b200_rank0of8.json.gz": (
        TRACELENS, "tests/traces/b200/eager_trace.json.gz",
        "vLLM eager inference, rank 0 of 8 (tensor parallel), NVIDIA B200, with_stack; "
        "all-reduce by the symmetric-memory multimem_all_reduce_kernel, not NCCL"),
    "resnet_mi300x_rank0of8.json.gz": (
        TRACELENS, "tests/traces/mi300/resnet_act_checkpoint.json.gz",
        "ResNet training with activation checkpointing, rank 0 of 8, AMD Instinct MI300X "
        "(ROCm, RCCL), with_stack"),
    "bert_small_h100_inference.json.gz": (
        TRACELENS, "tests/traces/h100/gaunernst_bert-small-uncased__1016001.json.gz",
        "HF bert-small inference, one step, H100 80GB HBM3, with_stack"),
    "qwen05b_h100_inference.json.gz": (
        TRACELENS, "tests/traces/h100/Qwen_Qwen1.5-0.5B-Chat__1016005.json.gz",
        "HF Qwen1.5-0.5B-Chat inference, one step, H100 80GB HBM3, with_stack"),
    "amd_mi250_single.json.gz": (
        HTA, "tests/data/amd_trace/mi250_minitoy_train_ROCm6_2_kineto.json.gz",
        "toy training on AMD MI250 (ROCm 6.2): HIP names"),
    "a100_alexnet_single.json.gz": (
        HTA, "tests/data/critical_path/alexnet/benchmark_result_2869224_1695835535_trace.json.gz",
        "AlexNet benchmark, A100, no ProfilerStep spans, pageable host-to-device copies"),
    "a100_triton_single.json.gz": (
        HTA, "tests/data/triton_example/triton_example.json.gz", "one Triton kernel, A100"),
    "a100_event_sync_multistream.json.gz": (
        HTA, "tests/data/critical_path/cuda_event_sync_multi_stream/event_sync_trace.json.gz",
        "CUDA events synchronising two streams, A100"),
    "cpu_only_rank34.pt.trace.json.gz": (
        HTA, "tests/data/cpu_only/rank-34.Jul_15_10_52_41.1074.pt.trace.json.gz",
        "CPU-only trace, rank 34 of 300: no GPU events"),
}

# Steps whose accounting is not trusted, and why (kept in the JSON, skipped by invariants).
UNRELIABLE = {
    "first": "first profiled step: the GPU may still run the unrecorded warm-up step's work, "
             "so its leading idle is unknown",
    "lost": "GPU events are missing: work queued on two streams does not run for tens of ms "
            "while no activity is recorded on any stream",
    "sampled": "the trace keeps a sample of the events, so gaps are not idle time",
    "no_gpu_work": "no GPU work was launched in this step",
}
TRACE_CAVEAT = {"recsys_a100_rank0of16_lost_events.json.gz": "lost",
                "sampled_128ranks_rank0.json.gz": "sampled"}
# Traces whose single step follows a synchronize (TraceLens: synchronize_each_step), so the
# first-step caveat does not apply.
SYNCED_FIRST_STEP = {"bert_small_h100_inference.json.gz", "qwen05b_h100_inference.json.gz"}


def _steps_of(acc: list[dict], first: int | None = None) -> list[int]:
    return [r["step"] for r in acc if r["reliable"] and (first is None or r["step"] >= first)]


def problems(name: str, t: Trace, acc: list[dict], split: dict) -> list[dict]:
    """The hand-checked problems of one trace (numbers from the functions above; each was
    also read event by event, see EXPECTATIONS.md)."""
    rows = {r["step"]: r for r in acc}
    win = {w["step"]: (w["start"], w["end"]) for w in t.step_windows()}
    out: list[dict] = []

    def per_step(steps, cost, **extra):
        return [{"step": n, "cost_us": round(cost(n), 1),
                 **{k: round(f(n), 1) for k, f in extra.items()}} for n in steps]

    if name == "resnet50_v100_workers0.pt.trace.json.gz":
        op = "enumerate(DataLoader)#_SingleProcessDataLoaderIter.__next__"
        out.append({
            "kind": "input_pipeline", "where": {"op": op},
            "steps": per_step(_steps_of(acc), lambda n: split[n]["input_pipeline"],
                              cpu_hold_us=lambda n: op_hold(t, r"^enumerate\(DataLoader\)",
                                                            *win[n])),
            "match_any": ["DataLoader"],
            "checked": "each step starts with the single-process DataLoader's __next__ on the "
                       "main thread (~69 ms); the GPU finishes the previous step's optimizer "
                       "kernels within its first ~10 ms, then nothing runs on stream 7 until "
                       "the batch's Memcpy HtoD after __next__ returns"})
    if name == "resnet50_v100_workers4.pt.trace.json.gz":
        out.append({
            "kind": "input_pipeline_absent", "where": {"op": "enumerate(DataLoader)"},
            "steps": per_step(_steps_of(acc), lambda n: split[n]["input_pipeline"],
                              cpu_hold_us=lambda n: op_hold(t, r"^enumerate\(DataLoader\)",
                                                            *win[n])),
            "match_any": ["DataLoader"],
            "checked": "with 4 workers __next__ takes 1-4 ms and the GPU is busy with the "
                       "previous step meanwhile: findings may name the DataLoader only with "
                       "the little idle it really causes"})
    if name in ("recsys_a100_rank3of8.json.gz", "recsys_v100_rank1of2.json.gz",
                "a100_nccl_2ranks_rank0.json.gz", "compiled_v100_rank1of2.json.gz",
                "resnet_mi300x_rank0of8.json.gz"):
        out.append({
            "kind": "exposed_comm", "where": {"kernels": "ncclKernel_* / ncclDevKernel_*"},
            "steps": per_step(_steps_of(acc), lambda n: rows[n]["comm_exposed_us"],
                              hidden_us=lambda n: rows[n]["comm_hidden_us"]),
            "match_any": ["nccl", "communication", "comm", "all_reduce", "allreduce"],
            "checked": "union of NCCL kernel time minus the union of compute kernels, memcpy "
                       "and memset on the other streams; read at the largest NCCL kernels "
                       "of each step in the timeline"})
    if name == "recsys_v100_rank1of2.json.gz":
        out.append({
            "kind": "host_sync_free", "where": {"op": "aten::item"},
            "steps": per_step(_steps_of(acc), lambda n: split[n]["host_sync"],
                              cpu_hold_us=lambda n: op_hold(t, r"^aten::item$", *win[n])),
            "match_any": ["aten::item", "_local_scalar_dense", ".item()"],
            "checked": "5 aten::item per step hold the CPU 7-42 ms in total, but the GPU is "
                       "busy with queued work the whole time (3-4% idle per step): the sync "
                       "costs the step nothing and must not be reported as a large cost"})
    if name in ("compiled_v100_rank1of2.json.gz", "a100_nccl_2ranks_rank0.json.gz",
                "bert_small_h100_inference.json.gz"):
        out.append({
            "kind": "cpu_bound", "where": {"op": "the CPU ops launching the step's kernels"},
            "steps": per_step(_steps_of(acc), lambda n: split[n]["cpu_work"],
                              gpu_activities=lambda n: gpu_activity_count(t, *win[n])),
            "match_any": ["launch", "cpu", "python", "overhead"],
            "checked": "GPU idle in gaps where the next kernel's launch call came after the "
                       "GPU went idle, while the launching thread ran ordinary ops (no "
                       "DataLoader, sync or memcpy): the GPU waits for the CPU"})
    if name == "recsys_a100_rank0of16_lost_events.json.gz":
        out.append({
            "kind": "host_sync", "where": {"op": "aten::to", "runtime": "cudaMemcpyAsync",
                                           "copy": "Memcpy DtoH (Device -> Pageable), 704 B"},
            # By CPU step: the GPU windows of this pipelined program reach into the next
            # CPU step, and a CPU-side hold belongs to the CPU step that ran it.
            "steps": [{"step": n, "cost_us": None,
                       "cpu_hold_us": round(op_hold(t, r"^aten::to$", c0, c1), 1)}
                      for n, c0, c1 in t.steps()],
            "match_any": ["aten::to", "cudaMemcpyAsync", "sync", "DtoH", "device-to-host"],
            "checked": "in ## sparse_data_dist ## an aten::to of 88 elements blocks the main "
                       "thread in cudaMemcpyAsync ~145 ms per step until its DtoH copy on "
                       "stream 27 runs; the GPU time it costs is unknown (events lost), so "
                       "only its presence and a cost within the step are expected"})
    return out


FBGEMM_NOT_GEMM = re.compile(r"^(void )?(fbgemm_gpu::|split_embedding|bounds_check_indices)")
COMM_NOT_NAMED_NCCL = re.compile(r"multimem_all_reduce_kernel")


def kernel_name_checks(t: Trace) -> dict:
    names = sorted({g["name"] for g in t.gpu() if g["cat"] == "kernel"})
    return {
        "not_gemm": [n for n in names if FBGEMM_NOT_GEMM.search(n)],
        "communication": [n for n in names if COMM.search(n)],
    }


def write(root: Path) -> None:
    out = {"definitions": __doc__.split("Usage:")[0].strip(), "files": {}}
    for name, (repo, path, what) in SOURCES.items():
        t = Trace.read(root / name)
        acc = t.accounting()
        split = idle_split(t) if acc else {}
        caveat = TRACE_CAVEAT.get(name)
        first = min((r["step"] for r in acc), default=None)
        for r in acc:
            own = [w for w in t.step_windows() if w["step"] == r["step"]][0]
            why = caveat or ("first" if r["step"] == first and name not in SYNCED_FIRST_STEP
                             else "no_gpu_work" if own["end"] == own["cpu_end"] else None)
            r["reliable"] = why is None
            if why:
                r["unreliable_because"] = UNRELIABLE[why]
            r["idle_split_us"] = split[r["step"]]
        names = kernel_name_checks(t)
        out["files"][name] = {
            "source": {"repository": repo[0], "commit": repo[1], "path": path,
                       "licence": repo[2]},
            "what": what,
            "gpu_activities": len(t.gpu()),
            "steps": acc,
            "problems": problems(name, t, acc, split),
            "kernels_not_gemm": names["not_gemm"],
            "communication_kernels": names["communication"],
        }
        print(name, len(acc), "steps", len(out["files"][name]["problems"]), "problems")
    (root / "expectations.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write(Path(__file__).resolve().parents[1] / "tests" / "data" / "external")
    else:
        main(sys.argv[1:])
