"""Compiled kernels -> the user's source lines, from what torch.compile records.

With Inductor's provenance tracking on (`INDUCTOR_PROVENANCE=1`, i.e.
`torch._inductor.config.trace.provenance_tracking_level = 1`) and structured logging
(`TORCH_TRACE=DIR`), every compiled graph writes two artifacts to DIR's logs:
- `inductor_output_code`: the generated module; each kernel is defined there as
  `NAME = async_compile.triton('NAME', ...)` (after a `# kernel path: FILE` comment: the file the
  profiler records as the kernel's `kernel_file`) or `NAME = async_compile.cpp_pybinding(...)`;
- `inductor_provenance_tracking_kernel_stack_traces`: `{"NAME:N": [stack trace, ...]}`, the
  user stack of every FX node fused into each launch of kernel NAME (backward nodes carry the
  stack of the forward statement they differentiate).
The innermost frame of each stack is the statement the node came from, so a kernel maps to
every user line it fused, each exact. `profile` (the trainer on GPUs, and `--script`) records
them and saves the map as `<run>/compiled_kernels.json`; the linker reads it
(`tracekit.link.sources.compiled_sources`).

Kernel names are unique within one generated module only (a forward and a backward graph can
both have `triton_poi_fused_mul_0`), so entries keep the kernel's file when the output code
gives it, and the linker matches on it when the trace records `kernel_file`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tracekit.load.userframes import is_user_file

COMPILED_KERNELS_FILE = "compiled_kernels.json"
FORMAT_VERSION = 1
LOG_HEADER = re.compile(r"^\S+ \S+ \d+ \S+\] (\{.*\})\s*$")
FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<function>\S+)\s*$')
KERNEL_DEF = re.compile(r"^(?P<name>\w+) = async_compile\.(?:triton|cpp_pybinding|cpp|cuda)\(")
KERNEL_PATH = re.compile(r"^# kernel path: (?P<path>\S+)\s*$")


def log_artifacts(path: Path) -> list[tuple[dict[str, Any], str]]:
    """(header, payload) of every structured-log entry in one TORCH_TRACE log file."""
    out: list[tuple[dict[str, Any], str]] = []
    header: dict[str, Any] | None = None
    payload: list[str] = []
    with path.open(errors="replace") as f:
        for line in f:
            if line.startswith("\t"):
                payload.append(line[1:].rstrip("\n"))
                continue
            if header is not None:
                out.append((header, "\n".join(payload)))
            header, payload = None, []
            match = LOG_HEADER.match(line)
            if match:
                try:
                    header = json.loads(match.group(1))
                except ValueError:
                    header = None
    if header is not None:
        out.append((header, "\n".join(payload)))
    return out


def kernel_files(output_code: str) -> dict[str, str | None]:
    """Kernel name -> its `# kernel path` file (None for kernels without one) in a module."""
    files: dict[str, str | None] = {}
    last_path: str | None = None
    for line in output_code.splitlines():
        path = KERNEL_PATH.match(line)
        if path:
            last_path = path.group("path")
            continue
        kernel = KERNEL_DEF.match(line)
        if kernel:
            files[kernel.group("name")] = last_path
            last_path = None
    return files


def innermost_frame(stack: str) -> dict[str, Any] | None:
    """file, line, function and code of a stack trace's innermost frame of user code (a
    statement calling F.rms_norm is the user's line, not torch's), else its last frame."""
    lines = stack.splitlines()
    frames = []
    for i, text in enumerate(lines):
        match = FRAME.match(text)
        if match:
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            frames.append({"file": match.group("file"), "line": int(match.group("line")),
                           "function": match.group("function"), "code": code})
    users = [f for f in frames if is_user_file(f["file"])]
    return (users or frames or [None])[-1]


def kernels_from_log(path: Path, rank: int | None = None) -> list[dict[str, Any]]:
    """Every compiled kernel's user lines in one TORCH_TRACE log (one process)."""
    entries: dict[tuple[str, str | None], dict[str, Any]] = {}
    files: dict[str, str | None] = {}
    module: str | None = None
    for header, payload in log_artifacts(path):
        if "inductor_output_code" in header:
            module = header["inductor_output_code"].get("filename")
            files = kernel_files(payload)
            continue
        artifact = header.get("artifact") or {}
        if artifact.get("name") != "inductor_provenance_tracking_kernel_stack_traces":
            continue
        try:
            traces = json.loads(payload) if payload.strip() else {}
        except ValueError:
            continue
        for launch, stacks in traces.items():
            name = launch.rsplit(":", 1)[0]
            if "." in name:  # extern_kernels.mm: a library call, not a generated kernel
                continue
            key = (name, files.get(name))
            entry = entries.setdefault(key, {"name": name, "kernel_file": files.get(name),
                                             "output_code": module, "rank": rank,
                                             "lines": []})
            for stack in stacks:
                frame = innermost_frame(stack)
                if frame is not None and frame not in entry["lines"]:
                    entry["lines"].append(frame)
    return [e for e in entries.values() if e["lines"]]


def rank_of_log(path: Path) -> int | None:
    match = re.search(r"rank_(\d+)", path.name)
    return int(match.group(1)) if match else None


def compiled_kernels(trace_dir: Path) -> list[dict[str, Any]]:
    """Every kernel of every TORCH_TRACE log in a directory."""
    out: list[dict[str, Any]] = []
    for log in sorted(trace_dir.glob("*.log")):
        out.extend(kernels_from_log(log, rank_of_log(log)))
    return out


def save_compiled_kernels(trace_dir: Path, run_dir: Path) -> Path | None:
    """Write `<run>/compiled_kernels.json` from the run's TORCH_TRACE logs (None when no
    compiled kernel was recorded)."""
    kernels = compiled_kernels(trace_dir) if trace_dir.is_dir() else []
    if not kernels:
        return None
    out = run_dir / COMPILED_KERNELS_FILE
    out.write_text(json.dumps({"version": FORMAT_VERSION, "kernels": kernels}, indent=1) + "\n")
    return out


def read_compiled_kernels(run_dir: Path) -> list[dict[str, Any]]:
    """The run's compiled kernels (empty when the file is absent or unreadable)."""
    path = run_dir / COMPILED_KERNELS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    kernels = data.get("kernels") if isinstance(data, dict) else None
    return [k for k in kernels or [] if isinstance(k, dict) and k.get("lines")]
