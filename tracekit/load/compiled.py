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

Extern calls (cuBLAS through `extern_kernels.mm`, attention, custom ops such as
`torch.ops.nanogpt.mm_t.default`) run no generated kernel: the generated `call` function calls
them in straight-line code, each after a comment `# [Provenance debug handles] HANDLE`, and the
provenance artifact gives each HANDLE's user stack. `extern_calls` keeps, per generated module,
that ordered list (handle, the profiler's name of the op it runs, its user lines), so the linker
can give the k-th such op under a `call` frame the k-th call's line (format version 2; version 1
files have no extern calls and still read).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tracekit.load.userframes import is_user_file

COMPILED_KERNELS_FILE = "compiled_kernels.json"
FORMAT_VERSION = 2
HANDLE_COMMENT = re.compile(r"^\s*# \[Provenance debug handles\] (?P<handle>\S+)\s*$")
CALL_DEF = re.compile(r"^(?P<indent>\s*)def call\(")
EXTERN_PREFIX = "extern_kernels."
TORCH_OPS = re.compile(r"^torch\.ops\.(?P<ns>\w+)\.(?P<op>\w+)(?:\.\w+)?$")
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


def extern_op_name(handle: str) -> str | None:
    """The profiler's name of the op an extern handle runs: `extern_kernels.mm:12` ->
    `aten::mm`, `torch.ops.nanogpt.mm_t.default:40` -> `nanogpt::mm_t` (None: not extern)."""
    name = handle.rsplit(":", 1)[0]
    if name.startswith(EXTERN_PREFIX):
        return "aten::" + name[len(EXTERN_PREFIX):]
    match = TORCH_OPS.match(name)
    return f"{match.group('ns')}::{match.group('op')}" if match else None


def call_handles(output_code: str) -> list[str]:
    """The extern handles of a generated module's `call` function, in the order it calls them."""
    handles: list[str] = []
    indent: int | None = None
    for line in output_code.splitlines():
        definition = CALL_DEF.match(line)
        if definition:
            indent = len(definition.group("indent"))
            continue
        if indent is None or not line.strip():
            continue
        if len(line) - len(line.lstrip()) <= indent:
            indent = None
            continue
        handle = HANDLE_COMMENT.match(line)
        if handle and extern_op_name(handle.group("handle")):
            handles.append(handle.group("handle"))
    return handles


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
    return compiled_from_log(path, rank)[0]


def stack_lines(stacks: list[str]) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for stack in stacks:
        frame = innermost_frame(stack)
        if frame is not None and frame not in lines:
            lines.append(frame)
    return lines


def compiled_from_log(path: Path, rank: int | None = None
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every compiled kernel's user lines, and every generated module's extern calls, in one
    TORCH_TRACE log (one process)."""
    entries: dict[tuple[str, str | None], dict[str, Any]] = {}
    modules: dict[str, dict[str, Any]] = {}
    files: dict[str, str | None] = {}
    module: str | None = None
    handles: list[str] = []
    for header, payload in log_artifacts(path):
        if "inductor_output_code" in header:
            module = header["inductor_output_code"].get("filename")
            files = kernel_files(payload)
            handles = call_handles(payload)
            continue
        artifact = header.get("artifact") or {}
        if artifact.get("name") != "inductor_provenance_tracking_kernel_stack_traces":
            continue
        try:
            traces = json.loads(payload) if payload.strip() else {}
        except ValueError:
            continue
        if module and handles and module not in modules:
            modules[module] = {"output_code": module, "rank": rank, "calls": [
                {"handle": h, "op": extern_op_name(h), "lines": stack_lines(traces.get(h, []))}
                for h in handles]}
        for launch, stacks in traces.items():
            name = launch.rsplit(":", 1)[0]
            if "." in name:  # extern_kernels.mm: a library call, not a generated kernel
                continue
            key = (name, files.get(name))
            entry = entries.setdefault(key, {"name": name, "kernel_file": files.get(name),
                                             "output_code": module, "rank": rank,
                                             "lines": []})
            entry["lines"].extend(f for f in stack_lines(stacks) if f not in entry["lines"])
    return [e for e in entries.values() if e["lines"]], list(modules.values())


def rank_of_log(path: Path) -> int | None:
    match = re.search(r"rank_(\d+)", path.name)
    return int(match.group(1)) if match else None


def compiled_kernels(trace_dir: Path) -> list[dict[str, Any]]:
    """Every kernel of every TORCH_TRACE log in a directory."""
    return compiled_record(trace_dir)[0]


def compiled_record(trace_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every kernel, and every generated module's extern calls, of every TORCH_TRACE log in a
    directory."""
    kernels: list[dict[str, Any]] = []
    modules: list[dict[str, Any]] = []
    for log in sorted(trace_dir.glob("*.log")):
        found, calls = compiled_from_log(log, rank_of_log(log))
        kernels.extend(found)
        modules.extend(calls)
    return kernels, modules


def save_compiled_kernels(trace_dir: Path, run_dir: Path) -> Path | None:
    """Write `<run>/compiled_kernels.json` from the run's TORCH_TRACE logs (None when no
    compiled kernel was recorded)."""
    kernels, modules = compiled_record(trace_dir) if trace_dir.is_dir() else ([], [])
    if not kernels and not modules:
        return None
    out = run_dir / COMPILED_KERNELS_FILE
    out.write_text(json.dumps({"version": FORMAT_VERSION, "kernels": kernels,
                               "extern_calls": modules}, indent=1) + "\n")
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


def read_extern_calls(run_dir: Path) -> list[dict[str, Any]]:
    """The run's generated modules with their extern calls (empty for version 1 files)."""
    try:
        data = json.loads((run_dir / COMPILED_KERNELS_FILE).read_text())
    except (OSError, ValueError):
        return []
    modules = data.get("extern_calls") if isinstance(data, dict) else None
    return [m for m in modules or [] if isinstance(m, dict) and m.get("output_code")
            and isinstance(m.get("calls"), list)]
