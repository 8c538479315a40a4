"""Measure how fast a timeline page draws and zooms in headless chromium (software WebGL).

    python tests/browser/zoom_bench.py --kernels 100000 200000

For each size: the synthetic benchmark run (`tests/browser/bench.py`) is written as a page,
opened in headless chromium, and timed from navigation to Plotly's first render; then the plot
is zoomed (`Plotly.relayout`) onto a 10 ms window and timed until that redraw, and any
level-of-detail update it starts, has finished and a frame has gone by; then zoomed back out.
The numbers are upper bounds for a desktop browser: SwiftShader rasterises on the CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # the repo, when not installed
from tests.browser.chrome import GL_SYNC_JS, chromium, open_timeline, relayout, severe_logs


def full_range(driver: Any) -> list[float]:
    return driver.execute_script(
        "return document.querySelector('.plotly-graph-div')._fullLayout.xaxis.range.slice();")


def measure_page(driver: Any, page: Path, window_ms: float = 10.0) -> dict[str, float]:
    """First draw, zoom to a `window_ms` window in the middle, zoom back out: seconds each."""
    start = time.perf_counter()
    open_timeline(driver, page, timeout_s=600)
    driver.execute_script(GL_SYNC_JS + "tracekitGlSync(document.querySelector("
                          "'.plotly-graph-div'));")
    first = time.perf_counter() - start
    lo, hi = full_range(driver)
    mid = (lo + hi) / 2
    zoom_in, bars_in = relayout(driver, {"xaxis.range": [mid, mid + window_ms]})
    pan, _ = relayout(driver, {"xaxis.range": [mid + window_ms, mid + 2 * window_ms]})
    zoom_out, bars_out = relayout(driver, {"xaxis.range": [lo, hi]})
    errors = severe_logs(driver)
    if errors:
        raise RuntimeError(f"console errors: {errors[:3]}")
    return {"first_draw_s": first, "zoom_in_s": zoom_in, "pan_s": pan, "zoom_out_s": zoom_out,
            "bars_in_window": bars_in, "bars_zoomed_out": bars_out,
            "page_mb": page.stat().st_size / 1e6}


def main() -> None:
    from tests.browser.bench import synthetic_run
    from tracekit.timeline import write_timeline_html

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", type=int, nargs="+", default=[100_000, 200_000])
    parser.add_argument("--window-ms", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.kernels:
            page = write_timeline_html(synthetic_run(n, ranks=2), [], Path(tmp) / f"{n}.html")
            # A fresh browser per page: one page's GPU memory must not slow the next.
            with chromium(Path(tmp) / f"profile-{n}") as driver:
                r = measure_page(driver, page, args.window_ms)
            print(f"{n:>7,} kernels, {r['page_mb']:.1f} MB: first draw {r['first_draw_s']:.2f} s,"
                  f" zoom to {args.window_ms:g} ms {r['zoom_in_s']:.2f} s "
                  f"({r['bars_in_window']:,} bars drawn), pan {r['pan_s']:.2f} s, zoom out "
                  f"{r['zoom_out_s']:.2f} s ({r['bars_zoomed_out']:,} bars drawn)", flush=True)


if __name__ == "__main__":
    main()
