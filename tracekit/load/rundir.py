"""A run directory: its trace files, the trainer's manifest.json and steps.jsonl, and which rank
each trace file is."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tracekit.errors import UserError
from tracekit.load.frames import rank_info
from tracekit.load.read import parse_json
from tracekit.load.runstate import check_no_traces, check_run_state
from tracekit.load.stream import header_meta
from tracekit.trace import Trace

MANIFEST_NAME = "manifest.json"


STEPS_LOG_NAME = "steps.jsonl"


TRACE_SUFFIXES = (".json", ".json.gz")


RANK_IN_NAME = re.compile(r"rank[_\-.]?(\d+)", re.IGNORECASE)


RUN_FILES = (MANIFEST_NAME, "findings.json", "diff.json", "accounting.json",
             "compiled_kernels.json")


def is_trace_name(path: Path) -> bool:
    name = path.name
    return name.endswith(TRACE_SUFFIXES) and name not in RUN_FILES


def discover(directory: Path) -> list[Path]:
    """Trace files in a run directory (not recursive), in name order."""
    files = sorted(p for p in directory.iterdir() if p.is_file() and is_trace_name(p))
    if not files:
        raise UserError(f"{directory}: no trace files (*.json, *.json.gz) in this directory")
    return files


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The trainer's manifest.json, when present and readable (it is optional)."""
    path = directory / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = parse_json(path.read_bytes())
    except Exception:  # an unreadable manifest must not stop the analysis of the traces
        return None
    return manifest if isinstance(manifest, dict) else None


def read_steps_log(directory: Path) -> pd.DataFrame | None:
    """steps.jsonl as a frame (one row per training step), when present."""
    path = directory / STEPS_LOG_NAME
    if not path.is_file():
        return None
    rows = []
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            row = parse_json(line)
        except Exception:  # a half-written last line of an interrupted run
            continue
        if isinstance(row, dict):
            rows.append(row)
    return pd.DataFrame(rows) if rows else None


@dataclass(frozen=True)
class LoadPlan:
    """What loading a path involves, before any file is read."""

    path: Path
    run_dir: Path
    files: list[Path]
    manifest: dict[str, Any] | None

    @property
    def single_file(self) -> bool:
        return not self.path.is_dir()


def plan_load(path: str | os.PathLike[str]) -> LoadPlan:
    """The trace files of a path (a file, or a run directory's rank files) and its manifest;
    a one-line error for a missing path, a directory without traces (saying why when the run
    stopped early) or rank files of different runs (`check_one_run`, before any is parsed)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    run_dir = path if path.is_dir() else path.parent
    manifest = read_manifest(run_dir)
    if path.is_dir() and not any(is_trace_name(p) for p in path.iterdir() if p.is_file()):
        check_no_traces(path, manifest)
    files = discover(path) if path.is_dir() else [path]
    check_one_run(files)
    return LoadPlan(path, run_dir, files, manifest)


def finish_ranks(plan: LoadPlan, traces: list[Trace], skipped: list[str]) -> None:
    """Ranks and world size of the loaded traces (in place, sorted by rank); the skipped files
    noted on the first; an error when nothing was a trace."""
    if not traces:
        raise UserError(f"{plan.path}: no profiler traces here ({'; '.join(skipped)})")
    assign_ranks(traces, files_in_order=plan.files, manifest=plan.manifest)
    # Sorted first: the notes below go on the lowest rank, whichever file finished loading first.
    traces.sort(key=lambda t: t.rank)
    check_run_state(plan.path, plan.single_file, plan.manifest, traces)
    if skipped:
        traces[0].warnings.extend(f"skipped {s}" for s in skipped)


def skip_or_raise(exc: UserError, path: Path, single_file: bool) -> str:
    """In a directory, a JSON file that is simply not a trace (a config, a summary) is skipped
    (the reason is returned); a broken trace file, or a file named on its own, is an error."""
    if single_file or "not a profiler trace" not in str(exc):
        raise exc
    return f"{path.name}: not a profiler trace"


def assign_ranks(traces: list[Trace], files_in_order: list[Path],
                  manifest: dict[str, Any] | None) -> None:
    """Rank from distributedInfo, else from the file name (rank3...), else file order;
    world size from distributedInfo, else the manifest, else the number of files."""
    order = {p: i for i, p in enumerate(files_in_order)}
    world_sizes: dict[int, list[str]] = {}
    claimed: dict[int, Path] = {}
    for trace in sorted(traces, key=lambda t: order[t.path]):
        info_rank, info_world = rank_info(trace.meta)
        named = rank_from_name(trace.path.name)
        if info_rank is not None:
            trace.rank = info_rank
        elif named is not None:
            trace.rank = named
        else:
            trace.rank = order[trace.path]
        if trace.rank in claimed:
            raise UserError(
                f"two trace files claim rank {trace.rank}: {claimed[trace.rank].name} and "
                f"{trace.path.name} (one profiling cycle per directory, please)"
            )
        claimed[trace.rank] = trace.path
        if info_world is not None:
            world_sizes.setdefault(info_world, []).append(trace.path.name)
    if len(world_sizes) > 1:
        parts = "; ".join(f"{', '.join(names)}: {world}"
                          for world, names in sorted(world_sizes.items()))
        raise UserError(f"rank files disagree on the world size ({parts}): they come from "
                        "different runs")
    if world_sizes:
        world = next(iter(world_sizes))
    elif manifest and isinstance(manifest.get("world_size"), int):
        world = int(manifest["world_size"])
    else:
        world = max(len(traces), max(t.rank for t in traces) + 1)
    for trace in traces:
        trace.world_size = world


def check_one_run(files: list[Path]) -> None:
    """A one-line error naming the files when the rank files' own metadata says they come
    from different runs: different world sizes, NCCL versions or backends, or one rank twice.
    Files without distributedInfo say nothing here (their ranks are checked once loaded)."""
    if len(files) < 2:
        return
    seen: dict[str, dict[Any, list[str]]] = {"world size": {}, "NCCL version": {},
                                              "backend": {}}
    ranks: dict[int, str] = {}
    for path in files:
        info = header_meta(path).get("distributedInfo")
        if not isinstance(info, dict):
            named = rank_from_name(path.name)
            if named is not None:
                _claim(ranks, named, path)
            continue
        for what, key in (("world size", "world_size"), ("NCCL version", "nccl_version"),
                          ("backend", "backend")):
            value = info.get(key)
            if isinstance(value, (int, str)) and not isinstance(value, bool):
                seen[what].setdefault(value, []).append(path.name)
        rank = info.get("rank")
        if isinstance(rank, int) and not isinstance(rank, bool):
            _claim(ranks, rank, path)
    for what, groups in seen.items():
        if len(groups) > 1:
            parts = "; ".join(f"{_names(names)}: {value}" for value, names in groups.items())
            raise UserError(f"{files[0].parent}: rank files of different runs ({what} "
                            f"differs: {parts})")


def rank_from_name(name: str) -> int | None:
    """The rank a file name states (rank3, rank-3, rank_3, RANK.3), if any."""
    match = RANK_IN_NAME.search(name)
    return int(match.group(1)) if match else None


def _claim(ranks: dict[int, str], rank: int, path: Path) -> None:
    if rank in ranks:
        raise UserError(f"{path.parent}: two trace files claim rank {rank}: {ranks[rank]} and "
                        f"{path.name} (rank files of different runs, or two profiling cycles, "
                        "in one directory)")
    ranks[rank] = path.name


def _names(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 3 else f"{', '.join(names[:3])} and " \
        f"{len(names) - 3} more"
