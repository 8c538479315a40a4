"""The timeline HTML in a real headless chromium: renders, no console errors, lanes, findings.

Skipped only when chromium is missing outside CI; in CI (env CI set) a missing browser fails.
Screenshots go to pytest's tmp dir (their paths are printed with -s).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("plotly")

from tests.browser.bench import synthetic_run, synthetic_trace
from tests.browser.chrome import (
    chromium,
    drawn_bars,
    drawn_by_axes,
    find_browser,
    lod_settled,
    open_timeline,
    relayout,
    severe_logs,
)
from tracekit.commands.diff_report import write_diff_html
from tracekit.compare import diff_runs
from tracekit.finding import Cause, Culprit, Finding
from tracekit.pipeline import analyze_run
from tracekit.timeline import write_timeline_html
from tracekit.timeline.bars import (
    LOD_DETAIL_MAX,
    LOD_MERGE_DIVISOR,
    LOD_MERGE_PX,
    LOD_MIN_BARS,
    LOD_PAD,
)
from tracekit.timeline.lanes import build_timeline
from tracekit.trace import Run

pytestmark = pytest.mark.slow
GPU = Path(__file__).resolve().parents[1] / "data" / "gpu"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    if find_browser() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium/chromedriver missing in CI (apt-get install chromium "
                        "chromium-driver)")
        pytest.skip("chromium/chromedriver not installed")
    if not os.environ.get("CI"):
        pytest.importorskip("selenium")
    with chromium(tmp_path_factory.mktemp("chromium-profile"), height=1000) as driver:
        yield driver


def rendered_text(driver, selector: str) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".map(function (e) { return e.textContent; });", selector)


def x_range(driver) -> list[float]:
    return driver.execute_script(
        "return document.querySelector('.plotly-graph-div')._fullLayout.xaxis.range;")


def hover_first_bar(driver, category: str) -> bool:
    """Move the real mouse (DevTools input events) onto the first bar of a category."""
    x, y = driver.execute_script(
        "var gd = document.querySelector('.plotly-graph-div'), cat = arguments[0];"
        "var t = gd._fullData.find(function (d) { return d.legendgroup === cat; });"
        "var fl = gd._fullLayout, r = gd.getBoundingClientRect();"
        "return [r.left + fl._size.l + fl.xaxis.l2p(t.x[0]) + 2,"
        "        r.top + fl._size.t + fl.yaxis.l2p(t.y[0])];", category)
    driver.execute_cdp_cmd("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
    deadline = time.time() + 10
    while time.time() < deadline:
        if driver.execute_script("return document.getElementById('tracekit-tip').innerHTML"):
            return True
        time.sleep(0.1)
    return False


def test_two_rank_run_with_findings_renders(browser, tmp_path: Path) -> None:
    run, findings = analyze_run(GPU / "sm_contention_eager", progress=False)
    assert findings
    page = write_timeline_html(run, findings, tmp_path / "sm_contention.html")
    took = open_timeline(browser, page)
    assert severe_logs(browser) == []
    lanes = rendered_text(browser, ".ytick text")
    assert "rank 0 · stream 17 (NCCL)" in lanes and "rank 1 · stream 17 (NCCL)" in lanes
    assert "rank 0 · CPU main thread" in lanes
    notes = " ".join(rendered_text(browser, ".annotation-text"))
    # The worst finding's note is the one shown (the all_reduces this script runs alone are
    # exposed communication, worse than the contention it plants).
    assert findings[0].kind in notes and "costs" in notes and "ProfilerStep#8" in notes
    assert any(f.kind == "sm_contention" for f in findings)
    legend = " ".join(rendered_text(browser, ".legendtext"))
    assert "NCCL" in legend and "finding: culprit kernel" in legend

    # Moving the mouse onto a bar's start shows the page's tooltip with kernel details.
    assert hover_first_bar(browser, "nccl")
    tip = browser.execute_script("return document.getElementById('tracekit-tip').innerHTML;")
    assert "ncclDevKernel" in tip and "blocks/SM" in tip and " us" in tip

    # A findings-table row zooms the plot onto that finding.
    before = x_range(browser)
    browser.find_element("id", "finding-row-1").click()
    deadline = time.time() + 20
    while x_range(browser) == before and time.time() < deadline:
        time.sleep(0.1)
    after = x_range(browser)
    assert after != before and after[1] - after[0] < before[1] - before[0]
    assert severe_logs(browser) == []

    shot = tmp_path / "sm_contention.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == PNG_MAGIC and shot.stat().st_size > 20_000
    print(f"\nscreenshot {shot} (page rendered in {took:.1f} s)")


def test_single_rank_step_view_labels_compute_stream(browser, tmp_path: Path) -> None:
    run, findings = analyze_run(GPU / "comm_gap_late", progress=False)
    page = write_timeline_html(run, findings, tmp_path / "comm_gap.html", rank=0, step=8)
    open_timeline(browser, page)
    assert severe_logs(browser) == []
    lanes = rendered_text(browser, ".ytick text")
    assert "rank 0 · stream 7 (compute)" in lanes and "rank 0 · stream 18 (NCCL)" in lanes
    assert not any(label.startswith("rank 1") for label in lanes)
    title = " ".join(rendered_text(browser, ".gtitle"))
    assert "comm_gap_late" in title and "rank 0" in title and "step 8" in title
    shot = tmp_path / "comm_gap.png"
    assert browser.save_screenshot(str(shot))
    print(f"\nscreenshot {shot}")


def test_many_kernels_page_loads(browser, tmp_path: Path) -> None:
    """A 20k-kernel synthetic run (the benchmark's shape) renders; the load time is printed.

    Headless chromium draws WebGL in software (SwiftShader) here, so the time is an upper
    bound for a desktop browser; the assertion only guards against a broken or hung page.
    """
    page = write_timeline_html(synthetic_run(20_000, ranks=2), [], tmp_path / "many.html")
    took = open_timeline(browser, page, timeout_s=180)
    assert severe_logs(browser) == []
    legend = " ".join(rendered_text(browser, ".legendtext"))
    assert "GEMM (3,000)" in legend
    print(f"\n20k kernels: {page.stat().st_size / 1e6:.1f} MB, rendered in {took:.1f} s")


def hover_texts(driver) -> list[str]:
    return driver.execute_script(
        "return JSON.parse(document.getElementById('tracekit-hover').textContent);")


def tip_at(driver, x_ms: float, y_lane: float) -> str:
    """Move the real mouse onto a point of the plot (axis units); the tooltip shown there."""
    x, y = driver.execute_script(
        "var gd = document.querySelector('.plotly-graph-div');"
        "var fl = gd._fullLayout, r = gd.getBoundingClientRect();"
        "return [r.left + fl._size.l + fl.xaxis.l2p(arguments[0]) + 2,"
        "        r.top + fl._size.t + fl.yaxis.l2p(arguments[1])];", x_ms, y_lane)
    driver.execute_cdp_cmd("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": 1, "y": 1})
    driver.execute_cdp_cmd("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
    deadline = time.time() + 10
    while time.time() < deadline:
        tip = driver.execute_script(
            "var t = document.getElementById('tracekit-tip');"
            "return t.style.display === 'block' ? t.innerHTML : '';")
        if tip:
            return tip
        time.sleep(0.1)
    return ""


def test_large_run_zooms_from_overview_to_every_bar(browser, tmp_path: Path) -> None:
    """Level of detail: a merged overview first, every bar of a zoomed window, right hover.

    After a zoom the page must draw exactly the bars that reach into the window padded by
    LOD_PAD window widths each side (as stored: float32 ms), each with its own hover text.
    """
    run = synthetic_run(40_000, ranks=2)
    tl = build_timeline(run)
    bars = tl.bars.assign(x0=tl.bars["x0"].astype(np.float32).astype(float),
                          x1=tl.bars["x1"].astype(np.float32).astype(float))
    gemm = bars[(bars["category"] == "gemm") & (bars["rank"] == 0)].sort_values("x0")
    target = gemm.iloc[len(gemm) // 2]
    finding = Finding(kind="comm_gap", severity="high", rank=0, step=None,
                      start_us=float(target["ts"]), dur_us=float(target["end"] - target["ts"]),
                      cost_us=10.0, count=1, title="planted", cause=Cause(),
                      culprit=Culprit(kernel=str(target["name"]), stream=int(target["stream"])))
    page = write_timeline_html(run, [finding], tmp_path / "lod.html")
    took = open_timeline(browser, page, timeout_s=180)
    assert took < 60  # the overview; drawing every bar takes ~8 s per 100k kernels here
    assert severe_logs(browser) == []
    overview = drawn_bars(browser)
    assert sum(len(b) for b in overview.values()) < len(bars) / 4
    texts = hover_texts(browser)

    lo = float(round((bars["x0"].min() + bars["x1"].max()) / 2))
    hi = lo + 10.0
    took, _ = relayout(browser, {"xaxis.range": [lo, hi]})
    drawn = drawn_bars(browser)
    near = reaching(tl.bars, *padded(lo, hi))
    assert 0 < len(near) < len(bars) / 10
    for cat, expected in near.groupby("category"):
        got = drawn.get(cat, [])
        assert len(got) == len(expected), cat
        assert all(b[5] == 1 for b in got)  # single bars, none merged
        got_pairs = sorted((round(b[0], 5), round(b[2], 3), texts[int(b[3])]) for b in got)
        want = sorted(zip(expected["x0"].round(5), expected["y"].round(3), expected["hover"],
                          strict=True))
        assert got_pairs == want, cat
    assert set(drawn) - set(near["category"]) <= {c for c, b in drawn.items() if not b}

    # Hover a GEMM bar of the window (the one furthest from its lane's previous bar, zoomed so
    # no other bar's end is near): the tooltip is that kernel's, with its own duration.
    lane = bars[bars["y"] == target["y"]].sort_values("x0")
    lane = lane.assign(gap=lane["x0"] - lane["x1"].cummax().shift())
    pick = lane[(lane["category"] == "gemm") & lane["x0"].between(lo, hi)]
    bar = pick.loc[pick["gap"].idxmax()]
    relayout(browser, {"xaxis.range": [bar["x0"] - 0.02, bar["x0"] + 0.02]})
    tip = tip_at(browser, float(bar["x0"]), float(bar["y"]))
    dur = float(np.float32(bar["end"] - bar["ts"]))
    assert "sm90_xmma_gemm" in tip and f"{dur:.1f} us" in tip, tip

    # Back out to the whole run: merged segments again, whose hover says so.
    _, count = relayout(browser, {"xaxis.range": [lo - 1000.0, hi + 1000.0]})
    assert count < len(bars) / 4
    merged = [b for seg in drawn_bars(browser).values() for b in seg if b[5] > 1]
    assert merged and all("merged" in texts[int(b[3])] for b in merged)

    # The findings table still zooms, and the zoomed view is drawn bar by bar.
    browser.find_element("id", "finding-row-1").click()
    deadline = time.time() + 20
    while x_range(browser)[1] - x_range(browser)[0] > 100 and time.time() < deadline:
        time.sleep(0.1)
    lod_settled(browser)
    view = x_range(browser)
    assert view[1] - view[0] < 1.0 and view[0] <= target["x0"] <= view[1]
    shown = drawn_bars(browser)
    assert shown["gemm"] and all(b[5] == 1 for seg in shown.values() for b in seg)
    assert severe_logs(browser) == []


def x_ranges(driver) -> list[list[float]]:
    """The x range of every x axis of the plot (one per row of a diff page)."""
    return driver.execute_script(
        "var fl = document.querySelector('.plotly-graph-div')._fullLayout;"
        "return Object.keys(fl).filter(function (k) { return /^xaxis[0-9]*$/.test(k); })"
        ".sort().map(function (k) { return fl[k].range.slice(); });")


def plot_width_px(driver) -> float:
    return driver.execute_script(
        "return document.querySelector('.plotly-graph-div')._fullLayout.xaxis._length;")


def padded(lo: float, hi: float) -> tuple[float, float]:
    """The window the page redraws for a view of [lo, hi]."""
    return lo - (hi - lo) * LOD_PAD, hi + (hi - lo) * LOD_PAD


def reaching(bars, lo: float, hi: float):
    """Bars reaching into [lo, hi], their x as the page stores them (float32 ms)."""
    b = bars.assign(x0=bars["x0"].astype(np.float32).astype(float),
                    x1=bars["x1"].astype(np.float32).astype(float))
    return b[(b["x1"] >= lo) & (b["x0"] <= hi)]


def test_busy_rank_does_not_merge_a_quiet_ranks_bars(browser, tmp_path: Path) -> None:
    """Level of detail is chosen per rank: the quiet rank is drawn bar by bar beside a busy
    rank that is merged, in the same view."""
    rng = np.random.default_rng(0)
    run = Run(path=Path("uneven"), traces=[synthetic_trace(0, 2, 80_000, 5, rng),
                                           synthetic_trace(1, 2, 3_000, 5, rng)])
    tl = build_timeline(run)
    quiet_end = float(tl.bars.loc[tl.bars["rank"] == 1, "x1"].max())
    lo, hi = float(tl.bars["x0"].min()), quiet_end * 4
    near = reaching(tl.bars, *padded(lo, hi))
    per_rank = near.groupby("rank").size()
    share = LOD_DETAIL_MAX / 2
    assert per_rank[0] > share >= per_rank[1] and per_rank.sum() > LOD_DETAIL_MAX / 2
    page = write_timeline_html(run, [], tmp_path / "uneven.html")
    open_timeline(browser, page, timeout_s=180)
    relayout(browser, {"xaxis.range": [lo, hi]})
    quiet_lanes = set(tl.lanes.loc[tl.lanes["rank"] == 1, "y"].astype(np.float32))
    drawn = [b for seg in drawn_bars(browser).values() for b in seg]
    quiet = [b for b in drawn if np.float32(b[2]) in quiet_lanes]
    busy = [b for b in drawn if np.float32(b[2]) not in quiet_lanes]
    assert len(quiet) == per_rank[1] and all(b[5] == 1 for b in quiet)
    assert any(b[5] > 1 for b in busy) and len(busy) < per_rank[0]
    assert severe_logs(browser) == []


def test_diff_page_zooms_both_runs_on_one_axis_to_every_bar(browser, tmp_path: Path) -> None:
    """diff --html of two big runs: both rows keep one x range at every zoom, each lane stays
    within the level of detail's bound, and a 1 ms view draws every bar of both runs near it,
    each with its own hover text."""
    base, new = synthetic_run(60_000, ranks=2, seed=1), synthetic_run(60_000, ranks=2, seed=2)
    timelines = [build_timeline(r, align="step") for r in (base, new)]
    page = write_diff_html(diff_runs(base, [], new, []), timelines, ["BASE", "NEW"],
                           tmp_path / "diff.html")
    assert sum(len(t.bars) for t in timelines) > LOD_MIN_BARS
    open_timeline(browser, page, timeout_s=180)
    assert severe_logs(browser) == []
    texts = hover_texts(browser)
    (lo, hi), (lo2, hi2) = x_ranges(browser)
    assert (lo, hi) == (lo2, hi2)
    mid = (lo + hi) / 2
    px = plot_width_px(browser)
    ranks_shown = sum(t.bars["rank"].nunique() for t in timelines)
    bound = max(LOD_DETAIL_MAX / ranks_shown, (1 + 2 * LOD_PAD) * px / LOD_MERGE_PX + 1,
                LOD_MERGE_DIVISOR + 1)
    for width in (hi - lo, (hi - lo) / 5, 100.0, 10.0, 1.0):
        view = [mid - width / 2, mid + width / 2]
        relayout(browser, {"xaxis.range": view})
        assert all(np.allclose(r, view) for r in x_ranges(browser)), width
        for trace in drawn_by_axes(browser):
            per_lane = pd.Series([b[2] for b in trace["bars"]], dtype=float).value_counts()
            assert (per_lane <= bound).all(), (width, trace["category"])
    # At 1 ms, every bar of both runs that reaches into the view and its padding is drawn one
    # by one (bars drawn for the 10 ms view before it may stay: no redraw was needed).
    drawn = drawn_by_axes(browser)
    for axis, tl in zip(("y", "y2"), timelines, strict=True):
        near = reaching(tl.bars, *padded(mid - 0.5, mid + 0.5))
        assert len(near) > 0
        for cat, expected in near.groupby("category"):
            got = [b for t in drawn if t["yaxis"] == axis and t["category"] == cat
                   for b in t["bars"]]
            assert all(b[5] == 1 for b in got), (axis, cat)
            got_pairs = {(round(b[0], 5), round(b[2], 3), texts[int(b[3])]) for b in got}
            want = set(zip(expected["x0"].round(5), expected["y"].round(3), expected["hover"],
                           strict=True))
            assert want <= got_pairs, (axis, cat)
    shot = tmp_path / "diff_1ms.png"
    assert browser.save_screenshot(str(shot))
    print(f"\nscreenshot {shot}")
    assert severe_logs(browser) == []
