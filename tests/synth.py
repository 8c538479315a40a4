"""A small builder of synthetic Kineto (torch.profiler chrome) traces for tests.

Events have the shapes torch 2.11 writes (cat, ph, args keys), so a synthetic trace goes through
the same loader as a real one. Times are microseconds; ids (External id, correlation, Python id)
are handed out by the builder so callers only say what happens and when.

    t = SynthTrace(rank=0, world_size=2)
    t.step(1, cpu_ts=0, cpu_dur=1000, gpu_ts=100, gpu_dur=1000)
    op = t.cpu_op("aten::mul", ts=10, dur=20)
    t.launch_kernel("elementwise_kernel", launch_ts=12, kernel_ts=150, kernel_dur=30,
                    external_id=op)
    t.write(tmp_path / "rank0.pt.trace.json.gz")
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NCCL_KERNEL_NAME = "ncclDevKernel_{coll}_Sum_f32_RING_LL(ncclDevKernelArgsStorage<4096ul>)"
COLLECTIVE_KERNEL_PART = {
    "allreduce": "AllReduce",
    "reduce_scatter": "ReduceScatter",
    "_reduce_scatter_base": "ReduceScatter",
    "all_gather": "AllGather",
    "_allgather_base": "AllGather",
    "broadcast": "Broadcast",
    "all_to_all": "SendRecv",
}


@dataclass
class SynthTrace:
    """One rank's trace under construction. `pid`/`tid` are the main CPU thread's ids."""

    rank: int = 0
    world_size: int = 1
    pid: int = 4242
    tid: int = 4242
    device: int = 0
    num_sms: int | None = 132
    events: list[dict[str, Any]] = field(default_factory=list)
    _next_id: int = 1

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _x(self, cat: str, name: str, ts: float, dur: float, pid: Any, tid: Any,
           args: dict[str, Any]) -> dict[str, Any]:
        event = {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": float(ts),
                 "dur": float(dur), "args": args}
        self.events.append(event)
        return event

    # ---- CPU side -------------------------------------------------------------------------

    def cpu_op(self, name: str, ts: float, dur: float, *, tid: int | None = None,
               input_dims: list[Any] | None = None, input_types: list[str] | None = None,
               concrete_inputs: list[str] | None = None, seq: int | None = None,
               fwd_tid: int | None = None, extra_args: dict[str, Any] | None = None) -> int:
        """Add a cpu_op; returns its External id (pass it to launches made under it)."""
        ext = self._new_id()
        args: dict[str, Any] = {"External id": ext, "Record function id": 0}
        if seq is not None:
            args["Sequence number"] = seq
            args["Fwd thread id"] = fwd_tid if fwd_tid is not None else 0
        if input_dims is not None:
            args["Input Dims"] = input_dims
            args["Input type"] = input_types or ["float"] * len(input_dims)
            args["Input Strides"] = [[] for _ in input_dims]
        if concrete_inputs is not None:
            args["Concrete Inputs"] = concrete_inputs
        args.update(extra_args or {})
        self._x("cpu_op", name, ts, dur, self.pid, tid or self.tid, args)
        return ext

    def annotation(self, name: str, ts: float, dur: float, *, tid: int | None = None) -> int:
        """A record_function span on the CPU (cat user_annotation); returns its External id."""
        ext = self._new_id()
        self._x("user_annotation", name, ts, dur, self.pid, tid or self.tid,
                {"External id": ext, "Record function id": 0})
        return ext

    def gpu_annotation(self, name: str, ts: float, dur: float, *, stream: int = 7) -> None:
        """The GPU-side copy of a record_function span (cat gpu_user_annotation)."""
        self._x("gpu_user_annotation", name, ts, dur, self.device, stream,
                {"External id": self._new_id(), "device": self.device, "stream": stream})

    def step(self, n: int, cpu_ts: float, cpu_dur: float, gpu_ts: float | None = None,
             gpu_dur: float | None = None, *, stream: int = 7) -> None:
        """A ProfilerStep#n span on the CPU, and on the GPU when gpu_ts is given."""
        self.annotation(f"ProfilerStep#{n}", cpu_ts, cpu_dur)
        if gpu_ts is not None:
            self.gpu_annotation(f"ProfilerStep#{n}", gpu_ts, gpu_dur or cpu_dur, stream=stream)

    def python_frame(self, file: str, line: int, function: str, ts: float, dur: float, *,
                     tid: int | None = None, parent: int | None = None) -> int:
        """A with_stack frame named like the profiler does, "file(line): function"."""
        pyid = self._new_id()
        self._x("python_function", f"{file}({line}): {function}", ts, dur, self.pid,
                tid or self.tid, {"Python parent id": parent, "Python id": pyid})
        return pyid

    def python_builtin(self, name: str, ts: float, dur: float, *, tid: int | None = None) -> int:
        """A C function's frame, named as the tracer does: "<built-in method matmul of Tensor
        object at 0x7f...>" for `name="method matmul of Tensor object"`."""
        pyid = self._new_id()
        self._x("python_function", f"<built-in {name} at 0x7f00deadbeef>", ts, dur, self.pid,
                tid or self.tid, {"Python parent id": None, "Python id": pyid})
        return pyid

    def fwdbwd(self, fwd_ts: float, bwd_ts: float, *, fwd_tid: int | None = None,
               bwd_tid: int | None = None) -> None:
        """Flow from a forward op (starting at fwd_ts) to its backward op (at bwd_ts)."""
        fid = self._new_id()
        common = {"cat": "fwdbwd", "name": "fwdbwd", "pid": self.pid, "id": fid}
        self.events.append({**common, "ph": "s", "tid": fwd_tid or self.tid,
                            "ts": float(fwd_ts)})
        self.events.append({**common, "ph": "f", "bp": "e", "tid": bwd_tid or self.tid,
                            "ts": float(bwd_ts)})

    # ---- GPU side -------------------------------------------------------------------------

    def launch(self, ts: float, dur: float = 4.0, *, name: str = "cudaLaunchKernel",
               tid: int | None = None, external_id: int | None = None) -> int:
        """A runtime (or, for cu* names, driver) launch call; returns its correlation id."""
        corr = self._new_id()
        cat = "cuda_driver" if name.startswith("cu") and not name.startswith("cuda") \
            else "cuda_runtime"
        self._x(cat, name, ts, dur, self.pid, tid or self.tid,
                {"External id": external_id or corr, "cbid": 211, "correlation": corr})
        return corr

    def kernel(self, name: str, ts: float, dur: float, *, correlation: int,
               stream: int = 7, grid: tuple[int, int, int] = (1, 1, 1),
               block: tuple[int, int, int] = (128, 1, 1), external_id: int | None = None,
               extra_args: dict[str, Any] | None = None) -> None:
        """A kernel; blocks/warps per SM are derived from grid/block and num_sms like CUPTI."""
        blocks = grid[0] * grid[1] * grid[2]
        sms = self.num_sms or 132
        warps = -(-block[0] * block[1] * block[2] // 32)
        args: dict[str, Any] = {
            "External id": external_id or correlation, "queued": 0, "device": self.device,
            "context": 1, "stream": stream, "correlation": correlation,
            "registers per thread": 32, "shared memory": 0,
            "blocks per SM": blocks / sms, "warps per SM": blocks * warps / sms,
            "grid": list(grid), "block": list(block), "est. achieved occupancy %": 50,
        }
        args.update(extra_args or {})
        self._x("kernel", name, ts, dur, self.device, stream, args)

    def launch_kernel(self, name: str, launch_ts: float, kernel_ts: float, kernel_dur: float,
                      *, external_id: int | None = None, launch_name: str = "cudaLaunchKernel",
                      tid: int | None = None, **kernel_kw: Any) -> int:
        """Launch + kernel + the ac2g flow joining them; returns the correlation id."""
        corr = self.launch(launch_ts, name=launch_name, tid=tid, external_id=external_id)
        self.kernel(name, kernel_ts, kernel_dur, correlation=corr, external_id=external_id,
                    **kernel_kw)
        flow = {"cat": "ac2g", "name": "ac2g", "id": corr}
        self.events.append({**flow, "ph": "s", "pid": self.pid, "tid": tid or self.tid,
                            "ts": float(launch_ts)})
        self.events.append({**flow, "ph": "f", "bp": "e", "pid": self.device,
                            "tid": kernel_kw.get("stream", 7), "ts": float(kernel_ts)})
        return corr

    def launch_mem(self, kind: str, launch_ts: float, ts: float, dur: float, *, nbytes: int,
                   external_id: int | None = None, stream: int = 7) -> int:
        """cudaMemcpyAsync/cudaMemsetAsync + its gpu_memcpy/gpu_memset row (kind: memcpy|memset)."""
        launch_name = "cudaMemcpyAsync" if kind == "memcpy" else "cudaMemsetAsync"
        corr = self.launch(launch_ts, name=launch_name, external_id=external_id)
        name = "Memcpy DtoD (Device -> Device)" if kind == "memcpy" else "Memset (Device)"
        self._x(f"gpu_{kind}", name, ts, dur, self.device, stream,
                {"External id": external_id or corr, "device": self.device, "context": 1,
                 "stream": stream, "correlation": corr, "bytes": nbytes})
        return corr

    def nccl_kernel(self, collective: str, launch_ts: float, kernel_ts: float,
                    kernel_dur: float, *, nelems: int | None, stream: int = 20,
                    dtype: str = "Float", external_id: int | None = None) -> int:
        """An NCCL kernel with the args torch writes, launched through the driver (nelems
        None: without message sizes, as older torch versions wrote it)."""
        part = COLLECTIVE_KERNEL_PART.get(collective, "AllReduce")
        sizes = {} if nelems is None else {"In msg nelems": nelems, "Out msg nelems": nelems}
        args = {
            "Collective name": collective, **sizes,
            "Group size": self.world_size, "dtype": dtype, "In split size": "[]",
            "Out split size": "[]", "Process Group Name": "0",
            "Process Group Description": "default_pg",
            "Process Group Ranks": str(list(range(self.world_size))),
        }
        return self.launch_kernel(NCCL_KERNEL_NAME.format(coll=part), launch_ts, kernel_ts,
                                  kernel_dur, external_id=external_id,
                                  launch_name="cuLaunchKernelEx", stream=stream, grid=(2, 1, 1),
                                  block=(640, 1, 1), extra_args=args)

    # ---- output -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"schemaVersion": 1, "displayTimeUnit": "ms"}
        if self.num_sms is not None:
            meta["deviceProperties"] = [{"id": self.device, "name": "Synthetic H200",
                                         "numSms": self.num_sms}]
        meta["distributedInfo"] = {"backend": "nccl", "rank": self.rank,
                                   "world_size": self.world_size}
        names = [{"name": "process_name", "ph": "M", "ts": 0, "pid": self.pid, "tid": 0,
                  "args": {"name": "python"}}]
        return {**meta, "traceEvents": names + self.events}

    def write(self, path: Path) -> Path:
        """Write as .json.gz (or plain .json when the name says so); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self.to_dict()).encode()
        if path.suffix == ".gz":
            with gzip.open(path, "wb") as fh:
                fh.write(data)
        else:
            path.write_bytes(data)
        return path


def write_run(run_dir: Path, traces: list[SynthTrace],
              steps_log: list[dict[str, Any]] | None = None) -> Path:
    """Write traces as run_dir/rank{R}.pt.trace.json.gz (+ steps.jsonl when given)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for trace in traces:
        trace.write(run_dir / f"rank{trace.rank}.pt.trace.json.gz")
    if steps_log is not None:
        lines = [json.dumps(row) for row in steps_log]
        (run_dir / "steps.jsonl").write_text("\n".join(lines) + "\n")
    return run_dir
