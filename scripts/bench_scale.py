"""Scale benchmark: tracekit `analyze` vs HTA's TraceAnalysis load vs raw gunzip+JSON parse.

Builds large, realistic multi-rank runs by replicating the recorded steps of a real trace (by
default tests/data/gpu/select_backward_index: eager forward/backward, NCCL, Python stacks, fwdbwd
and ac2g flows), then times each contender in its own subprocess on the same files:

    raw json     gzip.decompress + json.loads of every rank file, one after another
    raw orjson   the same with orjson.loads (the fastest generic parse available)
    raw msgspec  ISA-L gunzip + tracekit's typed decode (tracekit.load.events) of every rank
                 file: the parse `analyze` starts from, alone
    tracekit     what `cli.py analyze` runs: tracekit.pipeline.analyze_rankwise(run_dir), one
                 process per rank, with the parsed-frame cache off (cold)
    tracekit warm  the same with the cache on, after one run that filled it (skipped with
                 --no-warm); what a second `analyze` of the same run costs
    tracekit one-process  tracekit.pipeline.analyze_run(run_dir), cold: every rank's frames in
                 one process, as `diff`, `timeline` and the Python API hold them
    hta          hta.trace_analysis.TraceAnalysis(trace_dir=run_dir) (loading only)

Reported per contender: wall seconds of the work itself (imports excluded, measured inside the
subprocess), peak RSS of the biggest single process (ru_maxrss of the worker and of its own
children), peak RSS of the whole process tree (psutil, sampled every 20 ms: parallel per-rank
parsers add up), and events per second.

    python scripts/bench_scale.py                          # 100 MB x 2 ranks (quick)
    python scripts/bench_scale.py --sizes 100,500 --ranks 2
    python scripts/bench_scale.py --sizes 1000 --ranks 8 --steps 3 --hta-ranks 1 --hta-timeout 300 \
        --out-dir results/ --machine "32-core GPU host"   # HTA on one rank, cut off at 5 min
    python scripts/bench_scale.py --sizes 100,500 --steps 5   # five long steps, not 780+

By default every replica keeps its own profiler steps (780 at 100 MB per rank, growing with the
size); `--steps N` makes the replicas share N long steps, the shape of a big model's trace.
HTA's load time grows with events x steps, tracekit's with events alone.

Generated runs are kept in --workdir (default /tmp/tracekit_bench) and reused when their
parameters match, since writing a gigabyte of gzip takes longer than analysing it.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO / "tests" / "data" / "gpu" / "select_backward_index"
STEP_NAME = re.compile(r"^ProfilerStep#(\d+)$")
# Integer ids that must stay unique per copy; each gets its own stride so links stay consistent.
ID_ARGS = ("External id", "correlation", "Python id", "Python parent id", "Ev Idx",
           "Sequence number")
GAP_US = 500.0
"""Idle time between replicas, so copies never overlap on any thread or stream."""


# ---- building large traces ----------------------------------------------------------------


@dataclass
class Template:
    """One source rank file split into replicable events and everything else."""

    meta: dict[str, Any]
    fixed: list[dict[str, Any]]
    """Metadata (ph M), instants and the whole-trace span: written once."""
    events: list[dict[str, Any]]
    strides: dict[str, int]
    flow_stride: int
    period_us: float
    steps_per_copy: int
    first_step: int
    bytes_per_copy: int


def load_template(path: Path) -> Template:
    doc = orjson.loads(gzip.decompress(path.read_bytes()) if path.suffix == ".gz"
                       else path.read_bytes())
    events = doc.pop("traceEvents")
    fixed = [e for e in events if e.get("ph") in ("M", "i") or e.get("cat") == "Trace"]
    body = [e for e in events if not (e.get("ph") in ("M", "i") or e.get("cat") == "Trace")]
    strides = {}
    for key in ID_ARGS:
        values = [e["args"][key] for e in body
                  if isinstance(e.get("args"), dict) and isinstance(e["args"].get(key), int)]
        strides[key] = (max(values) + 1) if values else 0
    # ac2g flow ids are correlation ids; fwdbwd flows have their own id space.
    flow_ids = [e["id"] for e in body if e.get("cat") == "fwdbwd" and isinstance(e.get("id"), int)]
    flow_stride = max(flow_ids) + 1 if flow_ids else 0
    starts = [e["ts"] for e in body]
    ends = [e["ts"] + e.get("dur", 0.0) for e in body]
    steps = [int(m.group(1)) for e in body if (m := STEP_NAME.match(str(e.get("name", ""))))]
    first_step = min(steps) if steps else 0
    steps_per_copy = (max(steps) - first_step + 1) if steps else 0
    return Template(meta=doc, fixed=fixed, events=body, strides=strides, flow_stride=flow_stride,
                    period_us=max(ends) - min(starts) + GAP_US, steps_per_copy=steps_per_copy,
                    first_step=first_step, bytes_per_copy=len(orjson.dumps(body)))


def replica(template: Template, copy: int) -> list[dict[str, Any]]:
    """The template's events shifted by `copy` periods, with ids and step numbers made unique."""
    shift = copy * template.period_us
    out = []
    for event in template.events:
        new = dict(event)
        new["ts"] = event["ts"] + shift
        args = event.get("args")
        if isinstance(args, dict):
            args = dict(args)
            for key, stride in template.strides.items():
                value = args.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    args[key] = value + copy * stride
            new["args"] = args
        if "id" in event and isinstance(event["id"], int):
            stride = (template.strides["correlation"] if event.get("cat") == "ac2g"
                      else template.flow_stride)
            new["id"] = event["id"] + copy * stride
        match = STEP_NAME.match(str(event.get("name", "")))
        if match:
            new["name"] = f"ProfilerStep#{int(match.group(1)) + copy * template.steps_per_copy}"
        out.append(new)
    return out


def merged_steps(template: Template, copies: int, steps: int) -> list[dict[str, Any]]:
    """`steps` ProfilerStep annotations (CPU and GPU) that split the copies between them, for a
    trace of a few long steps (a big model's) instead of one step span per replicated step."""
    out = []
    for cat in ("user_annotation", "gpu_user_annotation"):
        spans = [e for e in template.events
                 if e.get("cat") == cat and STEP_NAME.match(str(e.get("name", "")))]
        if not spans:
            continue
        start = min(e["ts"] for e in spans)
        end = max(e["ts"] + e.get("dur", 0.0) for e in spans)
        for step in range(steps):
            first, last = step * copies // steps, (step + 1) * copies // steps - 1
            if last < first:
                continue
            event = dict(spans[0], name=f"ProfilerStep#{template.first_step + step}")
            event["ts"] = start + first * template.period_us
            event["dur"] = end + last * template.period_us - event["ts"]
            out.append(event)
    return out


def write_rank(template: Template, rank: int, world_size: int, copies: int,
               path: Path, steps: int = 0) -> tuple[int, int]:
    """Write one rank file (gzip level 1, like a quick export); returns (events, JSON bytes).
    With `steps`, the copies share that many ProfilerStep spans (merged_steps)."""
    meta = dict(template.meta)
    dist = dict(meta.get("distributedInfo") or {})
    dist.update(rank=rank, world_size=world_size)
    meta["distributedInfo"] = dist
    head = orjson.dumps(meta)[:-1] + b',"traceEvents":['
    written = 0
    tmp = path.with_suffix(".tmp")
    fixed = template.fixed
    if steps:
        fixed = fixed + merged_steps(template, copies, steps)
        # The replicas then carry no step spans of their own.
        template = replace(template, events=[e for e in template.events
                                             if not STEP_NAME.match(str(e.get("name", "")))])
    events = len(fixed)
    with gzip.open(tmp, "wb", compresslevel=1) as fh:
        chunk = head + orjson.dumps(fixed)[1:-1]
        for copy in range(copies):
            body = replica(template, copy)
            events += len(body)
            chunk += b"," + orjson.dumps(body)[1:-1]
            fh.write(chunk)
            written += len(chunk)
            chunk = b""
        tail = b"]}"
        fh.write(tail)
        written += len(tail)
    os.replace(tmp, path)
    return events, written


def _write_one(job: tuple[Template, int, int, Path, int, int]) -> tuple[str, dict[str, Any]]:
    """Write one rank file of a run; (what to print, its entry in the run's info)."""
    template, rank, ranks, run_dir, size_mb, steps = job
    copies = max(1, math.ceil(size_mb * 1e6 / template.bytes_per_copy))
    path = run_dir / f"rank{rank}.pt.trace.json.gz"
    t0 = time.perf_counter()
    events, nbytes = write_rank(template, rank, ranks, copies, path, steps)
    line = (f"  wrote {path.name}: {nbytes / 1e6:.0f} MB JSON, {events:,} events, "
            f"{copies} copies of {template.steps_per_copy} steps"
            + (f" in {steps} profiler steps " if steps else " ")
            + f"({time.perf_counter() - t0:.0f} s)")
    return line, {"path": str(path), "events": events, "json_bytes": nbytes,
                  "gz_bytes": path.stat().st_size}


def build_run(source: Path, size_mb: int, ranks: int, workdir: Path,
              steps: int = 0) -> dict[str, Any]:
    """Write (or reuse) a run of `ranks` files of ~size_mb MB uncompressed JSON each; with
    `steps`, of that many long profiler steps."""
    suffix = f"_{steps}steps" if steps else ""
    run_dir = workdir / f"{source.name}_{size_mb}MB_x{ranks}{suffix}"
    # Kept beside the run, not in it: loaders treat every *.json in a run directory as a trace.
    info_path = workdir / f"{run_dir.name}.info.json"
    if info_path.exists():
        return json.loads(info_path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    sources = sorted(source.glob("rank*.json*")) or [source]
    templates = [load_template(p) for p in sources]
    info: dict[str, Any] = {"run_dir": str(run_dir), "size_mb": size_mb, "ranks": ranks,
                            "steps": steps, "source": str(source), "files": []}
    jobs = [(templates[rank % len(templates)], rank, ranks, run_dir, size_mb, steps)
            for rank in range(ranks)]
    processes = min(ranks, os.cpu_count() or 1)
    if processes > 1:  # each rank file is written by its own process (gzip is the cost)
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(processes) as pool:
            written = list(pool.map(_write_one, jobs))
    else:
        written = [_write_one(job) for job in jobs]
    for line, entry in written:
        print(line, flush=True)
        info["files"].append(entry)
    info_path.write_text(json.dumps(info, indent=1))
    return info


# ---- measuring ------------------------------------------------------------------------------

WORKERS = {
    "raw json": """
import gzip, json
for f in FILES:
    with open(f, "rb") as fh:
        doc = json.loads(gzip.decompress(fh.read()))
    del doc
""",
    "raw orjson": """
import gzip, orjson
for f in FILES:
    with open(f, "rb") as fh:
        doc = orjson.loads(gzip.decompress(fh.read()))
    del doc
""",
    "raw msgspec": """
from tracekit.load.events import decode_document
from tracekit.load.read import read_bytes
from pathlib import Path
for f in FILES:
    meta, events = decode_document(read_bytes(Path(f)))
    del meta, events
""",
    "tracekit": """
from tracekit.pipeline import analyze_rankwise
run, findings = analyze_rankwise(RUN_DIR, progress=False)
""",
    "tracekit one-process": """
from tracekit.pipeline import analyze_run
run, findings = analyze_run(RUN_DIR, progress=False)
""",
    "hta": """
import logging
logging.disable(logging.CRITICAL)
from hta.trace_analysis import TraceAnalysis
analysis = TraceAnalysis(trace_dir=RUN_DIR)
""",
}
IMPORTS = {
    "tracekit": "import tracekit.pipeline, tracekit.load, tracekit.detectors\n"
                "tracekit.detectors.load_detectors()\n",
    "tracekit one-process": "import tracekit.pipeline, tracekit.load, tracekit.detectors\n"
                            "tracekit.detectors.load_detectors()\n",
    "hta": "import hta.trace_analysis\n",
}
HARNESS = """
import json, resource, sys, time
FILES = {files!r}
RUN_DIR = {run_dir!r}
{imports}
def cpu_s():
    usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)
t0, c0 = time.perf_counter(), cpu_s()
{work}
wall, cpu = time.perf_counter() - t0, cpu_s() - c0
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:  # ru_maxrss survives exec (it would count the benchmark's parent): VmHWM does not
    with open("/proc/self/status") as fh:
        own = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
except (OSError, StopIteration, ValueError):
    pass
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print("BENCH_RESULT " + json.dumps({{"wall_s": wall, "cpu_s": cpu, "self_kb": own,
                                     "children_kb": kids}}))
"""


@dataclass
class Measurement:
    contender: str
    size_mb: int
    ranks: int
    events: int
    wall_s: float | None
    max_process_rss_mb: float | None
    tree_rss_mb: float | None
    events_per_s: float | None
    cpu_s: float | None = None
    """CPU seconds of the work, this process and its reaped children (on a shared machine the
    steadier measure: JSON MB / cpu_s is the throughput per core)."""
    json_mb: float | None = None
    """JSON MB this contender read (all the run's rank files, or the subset it was given)."""
    files: int = 0
    """Rank files it read."""
    largest_mb: float | None = None
    """JSON MB of the largest of them (what a rank process's peak RSS is compared with)."""
    error: str = ""


def _sample_tree_rss(pid: int, stop: threading.Event, peak: list[float]) -> None:
    """Peak summed RSS of a process and all its descendants, sampled every 20 ms."""
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        total = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += proc.memory_info().rss
        peak[0] = max(peak[0], total)
        stop.wait(0.02)


def measure(contender: str, info: dict[str, Any], timeout_s: int,
            env_extra: dict[str, str]) -> Measurement:
    """One contender on the run `info` (or on the part of it that `info` names: `subset`)."""
    files = [f["path"] for f in info["files"]]
    events = sum(f["events"] for f in info["files"])
    kind, _, baseline = contender.partition(" @")  # "tracekit @DIR": another checkout's
    kind = kind.replace(" warm", "")
    kind = kind.split(" (")[0]  # "hta (1 of 8 ranks)"
    code = HARNESS.format(files=files, run_dir=info["run_dir"], imports=IMPORTS.get(kind, ""),
                          work=WORKERS[kind])
    tree = baseline or str(REPO)
    pythonpath = os.pathsep.join(p for p in (tree, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": pythonpath, **env_extra}
    if kind.startswith("tracekit"):  # as `cli.py analyze` runs (commands.options.one_blas_thread)
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
    result = Measurement(contender, info["size_mb"], info["ranks"], events, None, None, None,
                         None, json_mb=sum(f["json_bytes"] for f in info["files"]) / 1e6,
                         files=len(files),
                         largest_mb=max(f["json_bytes"] for f in info["files"]) / 1e6)
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=tree)
        stop, peak = threading.Event(), [0.0]
        sampler = threading.Thread(target=_sample_tree_rss, args=(proc.pid, stop, peak))
        sampler.start()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            result.error = f"timed out after {timeout_s} s"
        stop.set()
        sampler.join()
        out.seek(0)
        text = out.read()
    found = [line for line in text.splitlines() if line.startswith("BENCH_RESULT ")]
    if not found:
        last = (text.strip().splitlines() or ["no output"])[-1][:160]
        result.error = result.error or (f"failed after {time.perf_counter() - started:.0f} s "
                                        f"(exit {proc.returncode}): {last}")
        return result
    data = json.loads(found[-1].split(" ", 1)[1])
    result.wall_s = data["wall_s"]
    result.cpu_s = data.get("cpu_s")
    result.max_process_rss_mb = max(data["self_kb"], data["children_kb"]) / 1024
    result.tree_rss_mb = peak[0] / 2**20
    result.events_per_s = events / data["wall_s"] if data["wall_s"] > 0 else None
    return result


def clear_caches(info: dict[str, Any]) -> None:
    """Remove tracekit's parsed-frame caches of the benchmark's own generated files."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tracekit.load.cache import clear_cache

    for f in info["files"]:
        clear_cache(Path(f["path"]))


def subset(info: dict[str, Any], ranks: int, workdir: Path) -> dict[str, Any]:
    """`info` narrowed to its first `ranks` rank files, in a directory of links to them (for
    a contender too slow to read the whole run in the time there is)."""
    files = info["files"][:ranks]
    run_dir = workdir / f"{Path(info['run_dir']).name}.first{ranks}"
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in files:
        link = run_dir / Path(f["path"]).name
        if not link.is_symlink():
            link.symlink_to(f["path"])
        paths.append({**f, "path": str(link)})
    return {**info, "run_dir": str(run_dir), "files": paths}


def run_contenders(info: dict[str, Any], contenders: list[str], timeout_s: int,
                   hta_ranks: int = 0, hta_timeout_s: int = 0) -> list[Measurement]:
    """Each contender in turn on the run; HTA on the first `hta_ranks` rank files only when
    that is fewer than the run has, and cut off after `hta_timeout_s` when given."""
    results = []
    for contender in contenders:
        target, limit = info, timeout_s
        if contender == "tracekit warm":
            clear_caches(info)
            measure("tracekit", info, timeout_s, {"TRACEKIT_CACHE": "1"})  # fills the cache
            env = {"TRACEKIT_CACHE": "1"}
        else:
            env = {"TRACEKIT_CACHE": "0"}
        if contender == "hta":
            limit = hta_timeout_s or timeout_s
            if 0 < hta_ranks < len(info["files"]):
                target = subset(info, hta_ranks, Path(info["run_dir"]).parent)
                contender = f"hta ({hta_ranks} of {len(info['files'])} ranks)"
        print(f"  {contender} ...", end="", flush=True)
        m = measure(contender, target, limit, env)
        # Each result as it comes: a cut-off benchmark still says what it measured.
        print(f" {m.wall_s:.1f} s ({m.cpu_s or 0:.1f} CPU s), peak RSS "
              f"{m.max_process_rss_mb or 0:,.0f} MB (largest "
              f"process) / {m.tree_rss_mb or 0:,.0f} MB (all)" if m.wall_s is not None
              else f" failed: {m.error}", flush=True)
        results.append(m)
    if "tracekit warm" in contenders:
        clear_caches(info)
    return results


COLUMNS = ("run", "contender", "wall s", "CPU s", "MB/s per core", "events/s",
           "max proc RSS MB", "tree RSS MB", "vs raw parse", "vs hta (wall/MB)",
           "vs hta (CPU/MB)", "RSS / largest file")


def table_rows(results: list[Measurement]) -> list[dict[str, str]]:
    """One row of COLUMNS per measurement. Ratios to HTA are per MB of JSON read, so they stay
    fair when HTA read only some of the rank files (`--hta-ranks`)."""
    by_run: dict[tuple[int, int], dict[str, Measurement]] = {}
    for m in results:
        by_run.setdefault((m.size_mb, m.ranks), {})[m.contender] = m
    rows = []
    for (size, ranks), group in by_run.items():
        raws = [group[c] for c in ("raw json", "raw orjson") if c in group and group[c].wall_s]
        raw = min(raws, key=lambda m: m.wall_s or 0) if raws else None
        hta = next((m for c, m in group.items() if c.startswith("hta") and m.wall_s), None)
        for m in group.values():
            row = dict.fromkeys(COLUMNS, "")
            row["contender"] = m.contender
            row["run"] = f"{size} MB x{ranks}" + (f" ({m.json_mb:.0f} MB)" if m.json_mb else "")
            if m.wall_s is None:
                row["wall s"] = m.error
                rows.append(row)
                continue
            mb = m.json_mb or 0
            row.update({
                "wall s": f"{m.wall_s:.2f}", "CPU s": f"{m.cpu_s or 0:.2f}",
                "MB/s per core": f"{mb / m.cpu_s:.0f}" if m.cpu_s else "",
                "events/s": f"{m.events_per_s:,.0f}",
                "max proc RSS MB": f"{m.max_process_rss_mb:,.0f}",
                "tree RSS MB": f"{m.tree_rss_mb:,.0f}",
                "vs raw parse": (f"{m.wall_s / mb / (raw.wall_s / raw.json_mb):.2f}x"
                                 if raw and raw.wall_s and raw.json_mb and mb else ""),
            })
            if hta is not None and hta is not m and mb and hta.json_mb:
                row["vs hta (wall/MB)"] = (
                    f"{(hta.wall_s or 0) / hta.json_mb / (m.wall_s / mb):.1f}x faster")
                if m.cpu_s and hta.cpu_s:
                    row["vs hta (CPU/MB)"] = (
                        f"{hta.cpu_s / hta.json_mb / (m.cpu_s / mb):.1f}x less")
            if m.largest_mb and m.tree_rss_mb is not None and m.max_process_rss_mb is not None:
                row["RSS / largest file"] = (f"{m.tree_rss_mb / m.largest_mb:.1f}x / "
                                             f"{m.max_process_rss_mb / m.largest_mb:.1f}x")
            rows.append(row)
    return rows


NOTE = ("vs raw parse: wall time per MB / that of the faster of raw json and raw orjson. "
        "vs hta: HTA's wall (CPU) seconds per MB of JSON it read / this contender's. "
        "RSS / largest file: tree peak / single-process peak, over the largest rank file's "
        "JSON size. MB/s per core: JSON MB / CPU s (CPU: this process and its reaped "
        "children).")


def print_table(rows: list[dict[str, str]], title: str, file: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in COLUMNS:
        table.add_column(col, justify="right" if col not in ("run", "contender") else "left")
    for row in rows:
        table.add_row(*(row[c] for c in COLUMNS))
    Console(width=220, file=file).print(table)
    print(NOTE, file=file)


def markdown_table(rows: list[dict[str, str]], title: str) -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(COLUMNS) + " |",
             "| " + " | ".join("---" for _ in COLUMNS) + " |"]
    lines += ["| " + " | ".join(row[c] for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines + ["", NOTE, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100", help="MB of JSON per rank, comma separated")
    parser.add_argument("--ranks", default="2", help="rank counts, comma separated")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE,
                        help="run directory (rank*.json[.gz]) or trace file to replicate")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tracekit_bench"))
    parser.add_argument("--skip", default="", help="contenders to skip: raw json,hta,...")
    parser.add_argument("--no-warm", action="store_true", help="skip the cached second analyze")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per measurement")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--out-dir", type=Path,
                        help="write table.md, table.txt and results.json into this folder")
    parser.add_argument("--machine", default="",
                        help="what ran it, for the table's title (e.g. '2-core dev box, shared')")
    parser.add_argument("--hta-ranks", type=int, default=0,
                        help="HTA loads only the first N rank files (0: all); its ratios are "
                             "per MB read")
    parser.add_argument("--hta-timeout", type=int, default=0,
                        help="seconds HTA may take before it is cut off (0: --timeout)")
    parser.add_argument("--baseline", type=Path,
                        help="also time `analyze` from this checkout (e.g. main before a change)")
    parser.add_argument("--build-only", action="store_true", help="only write the traces")
    parser.add_argument("--steps", type=int, default=0,
                        help="profiler steps per trace (0: one per replicated step, which grows "
                             "with the size; N: the copies share N long steps)")
    args = parser.parse_args()

    contenders = ["raw json", "raw orjson", "raw msgspec", "tracekit", "tracekit warm",
                  "tracekit one-process",
                  "hta"]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.no_warm:
        skip.add("tracekit warm")
    contenders = [c for c in contenders if c not in skip]
    if args.baseline:
        contenders.insert(contenders.index("tracekit") if "tracekit" in contenders else 0,
                          f"tracekit @{args.baseline.resolve()}")
    infos, results = [], []
    for size in [int(s) for s in args.sizes.split(",")]:
        for ranks in [int(r) for r in args.ranks.split(",")]:
            print(f"{size} MB x {ranks} ranks:", flush=True)
            info = build_run(args.source, size, ranks, args.workdir, args.steps)
            infos.append(info)
            if args.build_only:
                continue
            results.extend(run_contenders(info, contenders, args.timeout, args.hta_ranks,
                                          args.hta_timeout))
    if args.build_only:
        return
    title = (f"tracekit scale benchmark ({args.machine + ', ' if args.machine else ''}"
             f"{os.cpu_count()} CPUs)")
    rows = table_rows(results)
    print_table(rows, title)
    payload = json.dumps({"cpus": os.cpu_count(), "machine": args.machine, "argv": sys.argv[1:],
                          "results": [asdict(r) for r in results], "runs": infos}, indent=1)
    if args.out:
        args.out.write_text(payload)
    if args.out_dir:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "results.json").write_text(payload)
        (args.out_dir / "table.md").write_text(markdown_table(rows, title))
        with open(args.out_dir / "table.txt", "w") as fh:
            print_table(rows, title, file=fh)
        print(f"wrote {args.out_dir}/table.md, table.txt, results.json")


if __name__ == "__main__":
    main()
