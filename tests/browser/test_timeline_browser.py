"""The timeline HTML in a real headless chromium: renders, no console errors, lanes, findings.

Skipped only when chromium is missing outside CI; in CI (env CI set) a missing browser fails.
Screenshots go to pytest's tmp dir (their paths are printed with -s).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("plotly")

sys.path.insert(0, str(Path(__file__).parent))
from chrome import chromium, find_browser, open_timeline, severe_logs  # noqa: E402

from tracekit.analysis import analyze_run  # noqa: E402
from tracekit.timeline import write_timeline_html  # noqa: E402
from tracekit.timeline.bench import synthetic_run  # noqa: E402

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
    assert "sm_contention" in notes and "costs" in notes and "ProfilerStep#8" in notes
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
