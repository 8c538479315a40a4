"""Timeline and diff pages of a big run: build cost, page size, first draw, zoom, JS heap.

    python scripts/bench_timeline.py --base RUN_DIR [--new RUN_DIR] [--repo CHECKOUT]
    python scripts/bench_timeline.py --build 500 --ranks 4 --steps 5     # make the runs first

For the run BASE (and BASE vs NEW when --new is given) it

1. builds the pages with the command line, in a subprocess of the checkout `--repo` (default:
   this one; another checkout gives the "before" numbers): `cli.py timeline BASE -o PAGE` and
   `cli.py diff BASE NEW --html PAGE`. Measured: wall and CPU seconds (the command and its
   reaped children), peak RSS of the biggest process and of the whole process tree, HTML size.
   With the parse cache warm by default (a `load` of each run first, untimed); --cold turns
   the cache off (TRACEKIT_CACHE=0), which adds the JSON parse that `analyze` benchmarks time.
2. opens each page in a fresh headless chromium (software WebGL: SwiftShader on the CPU) and
   times navigation to the plot's first paint: the first animation frame in which Plotly's
   plot is laid out with its axis labels, plus reading back one WebGL pixel, which waits for
   the queued draws. Then it zooms with `Plotly.relayout` (what a drag-zoom does) around the
   middle of the run: to one profiler step (the run's width / --steps), 100 ms, 10 ms, 1 ms,
   pans by one 1 ms window, and zooms back out; each is timed until the page's redraw (and any
   level-of-detail update it starts) is flushed to WebGL and a frame has passed. Bars drawn
   after each step and the JS heap (after a GC, via DevTools) are recorded.

Timings are upper bounds for a desktop browser with a GPU. On a shared machine quote CPU
seconds next to wall; --repeat N repeats the zoom sequence and reports the median.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.browser.chrome import GL_SYNC_JS, chromium, relayout, severe_logs  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
from bench_scale import _sample_tree_rss  # noqa: E402  (one sampler for both benchmarks)

# Runs before the page's own scripts: note the first animation frame in which the plot is
# laid out and labelled (frames do not run while the page is still parsing or drawing).
FIRST_PAINT_JS = """
(function () {
  window.__tkBench = {ready: null};
  function check() {
    var gd = document.querySelector('.plotly-graph-div');
    if (gd && gd._fullLayout && document.querySelector('.ytick text')) {
      window.__tkBench.ready = performance.now();
      return;
    }
    requestAnimationFrame(check);
  }
  requestAnimationFrame(check);
})();
"""

ZOOM_LEVELS = ("one step", "100 ms", "10 ms", "1 ms")


def run_command(argv: list[str], repo: Path, env_extra: dict[str, str],
                timeout_s: int) -> dict[str, Any]:
    """Run one command of `repo`: wall, CPU (user + sys, with reaped children), peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(repo), **env_extra}
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=repo, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    stop, peak = threading.Event(), [0.0]
    sampler = threading.Thread(target=_sample_tree_rss, args=(proc.pid, stop, peak),
                               daemon=True)
    sampler.start()
    killer = threading.Timer(timeout_s, proc.kill)
    killer.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    killer.cancel()
    stop.set()
    sampler.join()
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
              "max_process_rss_mb": usage.ru_maxrss / 1024, "tree_rss_mb": peak[0] / 2**20,
              "rc": proc.returncode}
    if proc.returncode != 0:
        result["error"] = (err.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:300]
    return result


def build_pages(args: argparse.Namespace, out_dir: Path) -> list[dict[str, Any]]:
    env = {"TRACEKIT_CACHE": "0"} if args.cold else {}
    cli = [sys.executable, str(args.repo / "cli.py")]
    if not args.cold:
        for run in filter(None, (args.base, args.new)):
            warm = [sys.executable, "-c",
                    f"from tracekit.pipeline import load; load({str(run)!r}, progress=False)"]
            run_command(warm, args.repo, {}, args.timeout)
    jobs = []
    if "timeline" in args.pages:
        jobs.append(("timeline", cli + ["timeline", str(args.base), "-o",
                                        str(out_dir / "timeline.html")], out_dir / "timeline.html"))
    if args.new and "diff" in args.pages:
        jobs.append(("diff --html", cli + ["diff", str(args.base), str(args.new), "--html",
                                           str(out_dir / "diff.html")], out_dir / "diff.html"))
    results = []
    for name, argv, page in jobs:
        page.unlink(missing_ok=True)
        r = run_command(argv, args.repo, env, args.timeout)
        r.update(page=name, path=str(page),
                 html_mb=page.stat().st_size / 1e6 if page.exists() else None)
        print(f"built {name}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, peak RSS "
              f"{r['max_process_rss_mb']:.0f} MB (tree {r['tree_rss_mb']:.0f} MB), "
              f"{r['html_mb'] or 0:.1f} MB HTML {r.get('error', '')}", flush=True)
        results.append(r)
    return results


def heap_mb(driver: Any) -> float:
    """JS heap in use after a GC, typed arrays' backing stores included."""
    driver.execute_cdp_cmd("HeapProfiler.collectGarbage", {})
    usage = driver.execute_cdp_cmd("Runtime.getHeapUsage", {})
    return (usage["usedSize"] + usage.get("backingStorageSize", 0)) / 2**20


def browser_rss_mb(driver: Any) -> float:
    """Summed RSS of the chromium processes (renderer, GPU process with SwiftShader, ...)."""
    import psutil

    root = psutil.Process(driver.service.process.pid)
    total = 0
    for proc in root.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_info().rss
    return total / 2**20


def first_paint(driver: Any, page: Path, timeout_s: float) -> dict[str, float]:
    """Navigate and wait for the first painted plot; ms since navigation start."""
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": FIRST_PAINT_JS})
    driver.get(page.resolve().as_uri())
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        ready = driver.execute_script("return window.__tkBench && window.__tkBench.ready;")
        if ready is not None:
            break
        time.sleep(0.05)
    else:
        raise TimeoutError(f"{page.name} did not draw within {timeout_s:.0f} s")
    painted = driver.execute_script(
        GL_SYNC_JS + "tracekitGlSync(document.querySelector('.plotly-graph-div'));"
        "return performance.now();")
    dom_ready = driver.execute_script(
        "return performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd;")
    return {"dom_ready_ms": dom_ready, "layout_ms": ready, "first_paint_ms": painted}


def x_range(driver: Any) -> list[float]:
    return driver.execute_script(
        "return document.querySelector('.plotly-graph-div')._fullLayout.xaxis.range.slice();")


def zoom_sequence(driver: Any, steps: int) -> list[tuple[str, float, int]]:
    """(view, seconds to redraw, bars drawn) for each zoom of the sequence."""
    lo, hi = sorted(x_range(driver))
    width = hi - lo
    step_w = width / steps
    centre = lo + step_w * (steps // 2) + step_w / 2  # the middle of the middle step
    widths = {"one step": step_w, "100 ms": 100.0, "10 ms": 10.0, "1 ms": 1.0}
    out = []
    for name in ZOOM_LEVELS:
        w = widths[name]
        took, bars = relayout(driver, {"xaxis.range": [centre - w / 2, centre + w / 2]})
        out.append((name, took, bars))
    took, bars = relayout(driver, {"xaxis.range": [centre + 0.5, centre + 1.5]})
    out.append(("pan 1 ms", took, bars))
    took, bars = relayout(driver, {"xaxis.range": [lo, hi]})
    out.append(("whole run", took, bars))
    return out


def measure_page(page: Path, args: argparse.Namespace, shots: Path | None) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as profile, \
            chromium(Path(profile), width=1600, height=1000) as driver:
        driver.set_page_load_timeout(args.timeout)
        result.update(first_paint(driver, page, args.timeout))
        result["heap_after_load_mb"] = heap_mb(driver)
        result["browser_rss_after_load_mb"] = browser_rss_mb(driver)
        if shots:
            driver.save_screenshot(str(shots / f"{page.stem}_load.png"))
        runs = []
        heaps = []
        for _ in range(args.repeat):
            runs.append(zoom_sequence(driver, args.steps))
            heaps.append(heap_mb(driver))
            if shots and len(runs) == 1:
                relayout(driver, {"xaxis.range": x_range(driver)})
        result["zoom"] = [{"view": name, "s": statistics.median(r[i][1] for r in runs),
                           "max_s": max(r[i][1] for r in runs), "bars": runs[0][i][2]}
                          for i, (name, _, _) in enumerate(runs[0])]
        result["heap_after_zooms_mb"] = max(heaps)
        result["browser_rss_after_zooms_mb"] = browser_rss_mb(driver)
        if shots:
            lo, hi = sorted(x_range(driver))
            mid = lo + (hi - lo) / args.steps * (args.steps // 2 + 0.5)
            relayout(driver, {"xaxis.range": [mid - 0.5, mid + 0.5]})
            driver.save_screenshot(str(shots / f"{page.stem}_1ms.png"))
        result["console_errors"] = severe_logs(driver)[:3]
    return result


def report(builds: list[dict[str, Any]]) -> str:
    lines = ["| page | build wall s | build CPU s | peak RSS MB (tree) | HTML MB | first paint s "
             "| JS heap MB | " + " | ".join(f"zoom: {z} s (bars)" for z in
                                           (*ZOOM_LEVELS, "pan 1 ms", "whole run")) + " |",
             "| --- " * 13 + "|"]
    for b in builds:
        p = b.get("browser", {})
        if "error" in p or "error" in b:
            lines.append(f"| {b['page']} | {b['wall_s']:.1f} | {b['cpu_s']:.1f} | "
                         f"{b['max_process_rss_mb']:.0f} ({b['tree_rss_mb']:.0f}) | "
                         f"{b['html_mb'] or 0:.1f} | failed: {p.get('error') or b.get('error')} |")
            continue
        zooms = " | ".join(f"{z['s']:.2f} ({z['bars']:,})" for z in p["zoom"])
        lines.append(
            f"| {b['page']} | {b['wall_s']:.1f} | {b['cpu_s']:.1f} | "
            f"{b['max_process_rss_mb']:.0f} ({b['tree_rss_mb']:.0f}) | {b['html_mb']:.1f} | "
            f"{p['first_paint_ms'] / 1000:.2f} | {p['heap_after_load_mb']:.0f} / "
            f"{p['heap_after_zooms_mb']:.0f} | {zooms} |")
    return "\n".join(lines)


def build_runs(args: argparse.Namespace) -> None:
    """Make BASE and NEW from two recorded GPU runs (--sources) with bench_scale.py."""
    from bench_scale import build_run

    gpu = REPO / "tests" / "data" / "gpu"
    infos = [build_run(gpu / name, args.build, args.ranks, args.workdir, args.steps)
             for name in args.sources.split(",")]
    args.base, args.new = (Path(i["run_dir"]) for i in infos)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="run directory of the timeline (diff BASE)")
    parser.add_argument("--new", type=Path, help="diff NEW run directory (skip diff if absent)")
    parser.add_argument("--build", type=int, metavar="MB",
                        help="first make BASE and NEW of MB per rank with bench_scale.py")
    parser.add_argument("--sources", default="sm_contention_eager,sm_contention_triton",
                        help="BASE,NEW: recorded runs under tests/data/gpu to replicate")
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="profiler steps in the run")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tracekit_bench"))
    parser.add_argument("--repo", type=Path, default=REPO,
                        help="the checkout whose cli.py builds the pages")
    parser.add_argument("--out-dir", type=Path, default=None, help="keep the pages here")
    parser.add_argument("--shots", type=Path, help="save screenshots (load, 1 ms) here")
    parser.add_argument("--cold", action="store_true", help="parse cache off")
    parser.add_argument("--repeat", type=int, default=3, help="zoom sequences per page")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per build or load")
    parser.add_argument("--pages", default="timeline,diff", help="which pages to measure")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    if args.build:
        build_runs(args)
    if args.base is None:
        parser.error("give --base RUN_DIR (or --build MB)")
    args.repo = args.repo.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out_dir or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        if args.shots:
            args.shots.mkdir(parents=True, exist_ok=True)
        builds = build_pages(args, out_dir)
        for b in builds:
            if b["html_mb"] is None:
                continue
            try:
                b["browser"] = measure_page(Path(b["path"]), args, args.shots)
            except Exception as exc:  # a page too big to open is a result, not a crash
                b["browser"] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
            print(json.dumps({b["page"]: b["browser"]}), flush=True)
    table = report(builds)
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"repo": str(args.repo), "cold": args.cold,
                                         "builds": builds, "table": table}, indent=1))


if __name__ == "__main__":
    main()
