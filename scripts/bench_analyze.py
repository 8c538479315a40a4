"""Benchmark (not a test): tracekit `analyze` vs HTA's TraceAnalysis load vs raw parsing.

The performance contract (issue 12): on a 54 MB, 216k-event trace, `analyze` (load + link +
every detector) must be at least 10x faster than HTA's TraceAnalysis merely loading the trace,
cold, with a lower peak memory.

Without --trace, the benchmark trace is built by replicating a real trace's events (default: the
A100 two-rank NCCL trace from HTA's test data, ~40k events, 2 profiler steps) until it holds
--events events: each copy is shifted in time past the previous one, and every id that joins
events (External id, correlation, flow ids, Python ids, Ev Idx) is shifted so that the copies
stay separate and valid, and ProfilerStep#N is renumbered, so it reads as one long run.

Each contender runs in its own subprocess (so peak RSS is its own: ru_maxrss of the process,
and of its children for HTA's and tracekit's worker processes); time is measured inside the
subprocess around the work only, after imports:

    imports  nothing but the tracekit worker's imports: with the interpreter's start, the
             fixed floor of a whole `analyze` process
    raw      gzip.decompress + orjson.loads (json when orjson is missing)
    typed    ISA-L gunzip + tracekit's typed decode (tracekit.load.events) alone
    tracekit load + link + every registered detector (what `analyze` runs), frame cache off;
             per-stage seconds are printed too
    tracekit cached  the same with the parsed-frame cache on, after a run that filled it
    hta      hta.trace_analysis.TraceAnalysis on a directory holding (a link to) the trace

    python scripts/bench_analyze.py                     # build ~216k events, run them all
    python scripts/bench_analyze.py --trace big.json.gz --repeat 3
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = ROOT.parent / "shared/traces-external/a100_nccl_2ranks_rank0.json.gz"
FALLBACK_SOURCE = ROOT / "tests/data/gpu/comm_gap_late/rank0.pt.trace.json.gz"
ID_ARGS = ("External id", "correlation", "Python id", "Python parent id", "Ev Idx")


def loads(raw: bytes) -> Any:
    try:
        import orjson
    except ImportError:
        return json.loads(raw)
    return orjson.loads(raw)


# ---- building the big trace ------------------------------------------------------------------

def replicate(doc: dict[str, Any], target_events: int) -> dict[str, Any]:
    """Copies of the document's events, shifted in time and ids, until target_events."""
    events = doc["traceEvents"]
    meta = [e for e in events if e.get("ph") == "M"]
    body = [e for e in events if e.get("ph") != "M"]
    timed = [e for e in body if isinstance(e.get("ts"), int | float)]
    t0 = min(e["ts"] for e in timed)
    span = max(e["ts"] + float(e.get("dur", 0) or 0) for e in timed) - t0 + 1000.0
    max_id = 0
    for e in body:
        args = e.get("args") or {}
        for key in ID_ARGS:
            if isinstance(args.get(key), int):
                max_id = max(max_id, args[key])
        if isinstance(e.get("id"), int):
            max_id = max(max_id, e["id"])
    id_step = max_id + 1
    steps = [int(e["name"].split("#")[1]) for e in body
             if str(e.get("name", "")).startswith("ProfilerStep#")]
    step_span = (max(steps) - min(steps) + 1) if steps else 0
    copies = max(1, -(-target_events // max(1, len(body))))
    out: list[dict[str, Any]] = list(meta)
    for i in range(copies):
        for e in body:
            c = copy.copy(e)
            if i:
                if isinstance(c.get("ts"), int | float):
                    c["ts"] = c["ts"] + i * span
                if isinstance(c.get("id"), int):
                    c["id"] = c["id"] + i * id_step
                args = c.get("args")
                if args:
                    args = dict(args)
                    for key in ID_ARGS:
                        if isinstance(args.get(key), int) and args[key] > 0:
                            args[key] = args[key] + i * id_step
                    c["args"] = args
                name = str(c.get("name", ""))
                if name.startswith("ProfilerStep#") and step_span:
                    c["name"] = f"ProfilerStep#{int(name.split('#')[1]) + i * step_span}"
            out.append(c)
            if len(out) - len(meta) >= target_events:
                break
        if len(out) - len(meta) >= target_events:
            break
    return {**{k: v for k, v in doc.items() if k != "traceEvents"}, "traceEvents": out}


def build_trace(source: Path, target_events: int, workdir: Path) -> Path:
    """workdir/big/rank0.pt.trace.json.gz, reused when built before from the same source."""
    run_dir = workdir / f"big_{source.name.split('.')[0]}_{target_events}"
    path = run_dir / "rank0.pt.trace.json.gz"
    if path.exists():
        return path
    run_dir.mkdir(parents=True, exist_ok=True)
    doc = loads(gzip.decompress(source.read_bytes()))
    big = replicate(doc, target_events)
    raw = json.dumps(big).encode()
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(raw, compresslevel=6))
    tmp.rename(path)
    return path


# ---- contenders (each in its own subprocess) -------------------------------------------------

def peak_rss_mb() -> float:
    """Peak resident memory of this process and (separately) its reaped children, in MB.

    This process's own peak is read from /proc (VmHWM, kept per address space): ru_maxrss
    survives exec, so it would count the benchmark's parent process, which forked this one
    while holding the trace (a 268 MB floor under every contender here)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        with open("/proc/self/status") as fh:
            own = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        pass
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0  # both in KiB on Linux


def cpu_s() -> float:
    """CPU seconds of this process and its reaped children (steadier than wall time on a
    shared machine)."""
    usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def work_raw(path: Path) -> dict[str, Any]:
    started, cpu0 = time.perf_counter(), cpu_s()
    doc = loads(gzip.decompress(path.read_bytes()))
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "cpu_s": cpu_s() - cpu0, "events": len(doc["traceEvents"])}


def work_typed(path: Path) -> dict[str, Any]:
    from tracekit.load.events import decode_document
    from tracekit.load.read import read_bytes

    started, cpu0 = time.perf_counter(), cpu_s()
    meta, events = decode_document(read_bytes(path))
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "cpu_s": cpu_s() - cpu0, "events": len(events)}


def work_imports(path: Path) -> dict[str, Any]:
    """Nothing but what the tracekit worker imports: with the interpreter's start, the fixed
    floor of a whole `analyze` process (see the whole-process columns)."""
    return {"seconds": 0.0, "cpu_s": 0.0}


def work_tracekit(path: Path, cache: bool = False) -> dict[str, Any]:
    """analyze's work, stage by stage: load (parse to frames), link, every detector; with
    `cache`, the frames come from the parsed-frame cache (filled by a run before)."""
    os.environ["TRACEKIT_CACHE"] = "1" if cache else "0"
    from tracekit.detectors import load_detectors
    from tracekit.link import link_trace
    from tracekit.load import load
    from tracekit.source import source_roots

    detectors = load_detectors()
    stages: dict[str, float] = {}
    started, cpu0 = time.perf_counter(), cpu_s()
    run = load(path, progress=False)
    stages["load"] = time.perf_counter() - started
    mark = time.perf_counter()
    roots = list(source_roots(path.parent, run.manifest))
    for trace in run.traces:
        link_trace(trace, source_roots=roots)
    stages["link"] = time.perf_counter() - mark
    findings = 0
    for kind, detector in detectors.items():
        mark = time.perf_counter()
        findings += len(detector.detect(run))
        stages[kind] = time.perf_counter() - mark
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "cpu_s": cpu_s() - cpu0, "findings": findings,
            "stages": {k: round(v, 3) for k, v in stages.items()},
            "kernels": sum(len(t.kernels) for t in run.traces)}


def work_hta(path: Path) -> dict[str, Any]:
    from tracekit.hta import _import_trace_analysis, quiet, staged

    trace_analysis = _import_trace_analysis()
    with staged(path) as tmp, quiet():
        started, cpu0 = time.perf_counter(), cpu_s()
        analysis = trace_analysis(trace_dir=str(tmp))
        elapsed, cpu = time.perf_counter() - started, cpu_s() - cpu0
    return {"seconds": elapsed, "cpu_s": cpu, "ranks": len(analysis.t.traces)}


def work_tracekit_cached(path: Path) -> dict[str, Any]:
    return work_tracekit(path, cache=True)


WORKERS = {"imports": work_imports, "raw": work_raw, "typed": work_typed,
           "tracekit": work_tracekit, "tracekit cached": work_tracekit_cached, "hta": work_hta}
IMPORTS = {"imports": ("tracekit.detectors", "tracekit.link", "tracekit.load", "tracekit.source")}
"""What a worker imports before its clock starts (the tracekit workers import these inside)."""


def run_worker(name: str, path: Path, cache: str | None = None) -> dict[str, Any]:
    """Run one contender in a fresh interpreter; its JSON result, or an error. A name
    "tracekit @DIR" runs this script's worker on DIR's copy of tracekit (a baseline). Besides
    the worker's own clock (the work, after imports), the whole process is timed: wall and
    CPU seconds from start to exit, interpreter start and imports included."""
    name, _, baseline = name.partition(" @")
    tree = Path(baseline) if baseline else ROOT
    if name == "tracekit cached":  # fill the cache first (kept beside the trace)
        run_worker(f"tracekit{' @' + baseline if baseline else ''}", path, cache="1")
    # This script measures, the baseline's tracekit is measured: the same harness for both.
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_analyze.py"), "--worker", name,
           str(path)]
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if cache is not None:
        env["BENCH_FILL_CACHE"] = cache
    if name.startswith("tracekit") or name == "imports":  # as `cli.py analyze` runs
        env.setdefault("OPENBLAS_NUM_THREADS", "1")  # (commands.options.one_blas_thread)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, cwd=tree)
    whole_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0]}
    result = json.loads(lines[-1])
    result["whole_s"] = whole_s
    result["whole_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime
                                                                 + before.ru_stime)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, help="trace to time (default: build one)")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE,
                        help="real trace replicated to build the benchmark trace")
    parser.add_argument("--events", type=int, default=216_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tracekit_bench_analyze"))
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per contender, interleaved (best kept)")
    parser.add_argument("--skip", default="", help="comma-separated contenders to skip")
    parser.add_argument("--baseline", type=Path,
                        help="also time `analyze` from this checkout (e.g. main before a change)")
    parser.add_argument("--machine", default="", help="what ran it, for the table's title")
    parser.add_argument("--out", type=Path, help="also write every run as JSON here")
    parser.add_argument("--worker", nargs=2, metavar=("NAME", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        name, path = args.worker
        for module in IMPORTS.get(name, ()):
            __import__(module)
        if os.environ.get("BENCH_FILL_CACHE"):
            name = "tracekit cached"  # a run that fills the cache
        result = WORKERS[name](Path(path))
        result["peak_rss_mb"] = peak_rss_mb()
        print(json.dumps(result))
        return

    if args.trace:
        path = args.trace
    else:
        source = args.source if args.source.exists() else FALLBACK_SOURCE
        print(f"building a {args.events}-event trace from {source} ...", flush=True)
        path = build_trace(source, args.events, args.workdir)
    raw_mb = len(gzip.decompress(path.read_bytes())) / 1e6
    print(f"trace: {path}  {path.stat().st_size / 1e6:.1f} MB gzip, {raw_mb:.1f} MB JSON")

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    names = [name for name in WORKERS if name not in skip]
    if args.baseline:
        names.insert(names.index("tracekit") if "tracekit" in names else 0,
                     f"tracekit @{args.baseline.resolve()}")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(max(1, args.repeat)):  # interleaved, so a busy spell hits every contender
        for name in names:
            runs[name].append(run_worker(name, path))
            print(f"  {name}: {runs[name][-1]}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        good = [r for r in runs[name] if "error" not in r]
        results[name] = min(good, key=lambda r: r["seconds"]) if good else runs[name][0]

    tk = results.get("tracekit", {})
    raw_mb_line = f"{raw_mb:.1f} MB JSON"
    print()
    header = ("| contender | work s | work CPU s | whole process s | whole process CPU s | "
              "peak RSS MB | work time / tracekit | RSS / tracekit |")
    print(f"**{args.machine + ': ' if args.machine else ''}{path.name}, {raw_mb_line}**\n")
    print(header)
    print("|" + " --- |" * 8)
    for name, r in results.items():
        if "error" in r:
            print(f"| {name} | error: {r['error']} |" + " |" * 6)
            continue
        t_ratio = r["seconds"] / tk["seconds"] if tk.get("seconds") else float("nan")
        m_ratio = r["peak_rss_mb"] / tk["peak_rss_mb"] if tk.get("peak_rss_mb") else float("nan")
        cpu = f"{r['cpu_s']:.2f}" if "cpu_s" in r else "-"
        print(f"| {name} | {r['seconds']:.2f} | {cpu} | {r.get('whole_s', 0):.2f} | "
              f"{r.get('whole_cpu_s', 0):.2f} | {r['peak_rss_mb']:.0f} | {t_ratio:.2f} | "
              f"{m_ratio:.2f} |")
    events = results.get("raw", {}).get("events")
    if events:
        print(f"\n{events} events; contract: hta/tracekit time >= 10, hta/tracekit RSS > 1. "
              "work: timed inside the worker after its imports; whole process: from start to "
              "exit (interpreter start and imports included); best of the repeats by work s.")
    if args.out:
        args.out.write_text(json.dumps({"machine": args.machine, "trace": str(path),
                                        "json_mb": raw_mb, "runs": runs,
                                        "best": results}, indent=1))


if __name__ == "__main__":
    main()
