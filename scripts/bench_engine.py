"""Engine benchmark: `analyze` of one many-rank run on the local engine and on a dask cluster.

Builds a run of --ranks rank files (replicated steps of a recorded trace, as bench_scale.py
does; the files are written in parallel), then times, each as its own `cli.py analyze ... --json`
process:

    local        the default engine: one process per rank file on this machine
    dask W       `--engine dask --scheduler tcp://127.0.0.1:PORT` against a cluster started with
                 the two commands README documents for several nodes (`dask scheduler`, then
                 `dask worker ADDRESS --nworkers W --nthreads 1`), here on one host

and checks that every engine printed the same findings as the local one (compared as sets:
equal findings may come back in either order when severity and cost tie).

    python scripts/bench_engine.py --ranks 64 --size-mb 20 --workers 8,16 --out engine.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCALE_PATH = REPO / "scripts" / "bench_scale.py"


def bench_scale() -> Any:
    spec = importlib.util.spec_from_file_location("bench_scale", SCALE_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_scale"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def write_one(source: str, rank: int, ranks: int, size_mb: int, run_dir: str) -> int:
    scale = bench_scale()
    sources = sorted(Path(source).glob("rank*.json*")) or [Path(source)]
    template = scale.load_template(sources[rank % len(sources)])
    copies = max(1, math.ceil(size_mb * 1e6 / template.bytes_per_copy))
    _, nbytes = scale.write_rank(template, rank, ranks, copies,
                                 Path(run_dir) / f"rank{rank}.pt.trace.json.gz")
    return nbytes


def build(source: Path, ranks: int, size_mb: int, workdir: Path, jobs: int) -> tuple[Path, int]:
    run_dir = workdir / f"{source.name}_{size_mb}MB_x{ranks}"
    done = workdir / f"{run_dir.name}.bytes"
    if done.exists():
        return run_dir, int(done.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    with ProcessPoolExecutor(jobs) as pool:
        sizes = list(pool.map(write_one, [str(source)] * ranks, range(ranks), [ranks] * ranks,
                              [size_mb] * ranks, [str(run_dir)] * ranks))
    done.write_text(str(sum(sizes)))
    return run_dir, sum(sizes)


def analyze(run_dir: Path, extra: list[str], env: dict[str, str]) -> tuple[float, list[Any], str]:
    """Wall seconds, the findings JSON and stderr's last line of one `cli.py analyze --json`."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), "analyze", str(run_dir),
                           "--json", *extra], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    if proc.returncode not in (0, 1):
        return wall, [], f"exit {proc.returncode}: {last}"
    return wall, json.loads(proc.stdout), ""


def canonical(findings: list[Any]) -> list[str]:
    return sorted(json.dumps(f, sort_keys=True) for f in findings)


def dask_command(tool: str) -> list[str]:
    """`dask scheduler` / `dask worker` as installed, else the same through python -m."""
    exe = shutil.which("dask")
    if exe:
        return [exe, tool]
    return [sys.executable, "-m", f"distributed.cli.dask_{tool}"]


def with_cluster(workers: int, port: int, env: dict[str, str], run: Any) -> Any:
    address = f"tcp://127.0.0.1:{port}"
    logs = open(os.devnull, "w")  # noqa: SIM115 (held for the cluster's lifetime)
    scheduler = subprocess.Popen(dask_command("scheduler") + [
        "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"],
        stdout=logs, stderr=logs, env=env)
    worker = subprocess.Popen(dask_command("worker") + [
        address, "--nworkers", str(workers), "--nthreads", "1",
        "--dashboard-address", ":0", "--memory-limit", "0"], stdout=logs, stderr=logs, env=env)
    try:
        from distributed import Client

        t0 = time.perf_counter()
        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
        started = time.perf_counter() - t0
        return started, run(address)
    finally:
        for proc in (worker, scheduler):
            proc.terminate()
        for proc in (worker, scheduler):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        logs.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--size-mb", type=int, default=20, help="MB of JSON per rank file")
    parser.add_argument("--workers", default="8", help="dask worker processes, comma separated")
    parser.add_argument("--source", type=Path,
                        default=REPO / "tests" / "data" / "gpu" / "select_backward_index")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tracekit_engine"))
    parser.add_argument("--port", type=int, default=8786)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    jobs = os.cpu_count() or 1
    t0 = time.perf_counter()
    run_dir, nbytes = build(args.source, args.ranks, args.size_mb, args.workdir, jobs)
    print(f"run: {args.ranks} rank files, {nbytes / 1e6:,.0f} MB of JSON "
          f"(built in {time.perf_counter() - t0:.0f} s); {jobs} CPUs", flush=True)
    env = {**os.environ, "TRACEKIT_CACHE": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH"))
                                         if p)}
    wall, local, error = analyze(run_dir, [], env)
    rows = [{"engine": "local", "workers": jobs, "wall_s": wall, "findings": len(local),
             "same_as_local": True, "error": error}]
    print(f"  local: {wall:.1f} s, {len(local)} findings {error}", flush=True)
    for workers in [int(w) for w in args.workers.split(",")]:
        started, (wall, found, error) = with_cluster(
            workers, args.port, env,
            lambda address: analyze(run_dir, ["--engine", "dask", "--scheduler", address], env))
        same = not error and canonical(found) == canonical(local)
        rows.append({"engine": "dask", "workers": workers, "wall_s": wall,
                     "cluster_start_s": started, "findings": len(found),
                     "same_as_local": same, "error": error})
        print(f"  dask, {workers} workers (cluster up in {started:.1f} s): {wall:.1f} s, "
              f"{len(found)} findings, same as local: {same} {error}", flush=True)
    print("\n| engine | worker processes | wall s | findings | same findings as local |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['engine']} | {r['workers']} | {r['wall_s']:.1f} | {r['findings']} | "
              f"{'yes' if r['same_as_local'] else 'NO ' + r['error']} |")
    if args.out:
        args.out.write_text(json.dumps({"cpus": jobs, "ranks": args.ranks,
                                        "json_bytes": nbytes, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
