"""Drive Debian's headless chromium through selenium, for tests of the HTML timeline.

Only the system browser is used (`/usr/bin/chromium` + `chromedriver`): selenium's own browser
download needs the network, which CI does not have. A fresh --user-data-dir per session keeps
runs independent.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver",)
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars",
    # WebGL without a GPU: SwiftShader, which --disable-gpu alone would leave off.
    "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
)


def find_browser() -> tuple[str, str] | None:
    """Paths of chromium and chromedriver, or None when either is missing."""
    browser = next((p for n in CHROMIUM_NAMES if (p := shutil.which(n))), None)
    driver = next((p for n in DRIVER_NAMES if (p := shutil.which(n))), None)
    if browser is None and Path("/usr/bin/chromium").exists():
        browser = "/usr/bin/chromium"
    return (browser, driver) if browser and driver else None


@contextmanager
def chromium(profile_dir: Path, width: int = 1600, height: int = 1000) -> Iterator[Any]:
    """A headless chromium WebDriver with browser console logs captured."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_browser()
    if found is None:
        raise RuntimeError("chromium/chromedriver not installed")
    browser, driver_path = found
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=driver_path, log_output=os.devnull)
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(120)
        driver.set_script_timeout(300)
        yield driver
    finally:
        driver.quit()


def open_timeline(driver: Any, page: Path, timeout_s: float = 90.0) -> float:
    """Open a timeline page and wait until Plotly has drawn it; returns seconds it took.

    "Drawn" means the plot div has its `_fullLayout` and its y-axis tick labels exist in the
    DOM, i.e. plotly.js parsed the embedded data and rendered, not merely that HTML arrived.
    """
    start = time.perf_counter()
    driver.get(page.resolve().as_uri())
    deadline = start + timeout_s
    while time.perf_counter() < deadline:
        ready = driver.execute_script(
            "var gd = document.querySelector('.plotly-graph-div');"
            "return !!(gd && gd._fullLayout && document.querySelector('.ytick text'));")
        if ready:
            return time.perf_counter() - start
        time.sleep(0.05)
    raise TimeoutError(f"{page} did not render within {timeout_s} s")


def severe_logs(driver: Any) -> list[str]:
    """Console messages at level SEVERE (uncaught errors, failed loads)."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry.get("level") == "SEVERE"]


# WebGL draws are queued to the GPU process (here SwiftShader, on the CPU) and finish after
# the JS returns; reading one pixel back waits for them, so timings include the rasterising.
GL_SYNC_JS = """
function tracekitGlSync(gd) {
  var px = new Uint8Array(4);
  (gd._fullLayout._glcanvas || {each: function () {}}).each(function (d) {
    var gl = d.regl ? d.regl._gl : null;
    if (gl) { gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px); }
  });
}
"""

# Relayout, then wait for the page's level-of-detail update (a promise the page keeps while
# it redraws, absent on pages without LOD), the GL work and one animation frame: the time
# until the new view is on screen. Returns [ms, bars drawn]; bars drawn counts the non-NaN
# segments of the visible bar traces (those whose meta is "bar-hover").
RELAYOUT_JS = GL_SYNC_JS + """
var done = arguments[arguments.length - 1];
var gd = document.querySelector('.plotly-graph-div');
var t0 = performance.now();
Plotly.relayout(gd, arguments[0]).then(function () {
  return gd._tracekitLod ? gd._tracekitLod.pending : null;
}).then(function () {
  tracekitGlSync(gd);
  requestAnimationFrame(function () {
    var ms = performance.now() - t0, bars = 0;
    gd._fullData.forEach(function (t) {
      if (t.meta !== 'bar-hover' || t.visible !== true) { return; }
      for (var i = 0; i < t.x.length; i += 3) { if (t.x[i] === t.x[i]) { bars += 1; } }
    });
    done([ms, bars]);
  });
}).catch(function (e) { done(['error', String(e)]); });
"""


def relayout(driver: Any, update: dict) -> tuple[float, int]:
    """Apply a Plotly.relayout and return (seconds until redrawn, bars drawn after it)."""
    result = driver.execute_async_script(RELAYOUT_JS, update)
    if result[0] == "error":
        raise RuntimeError(f"relayout failed: {result[1]}")
    return result[0] / 1000.0, int(result[1])


DRAWN_BARS_JS = """
var gd = document.querySelector('.plotly-graph-div');
return gd._fullData.filter(function (t) {
  return t.meta === 'bar-hover' && t.visible === true;
}).map(function (t) {
  var bars = [];
  for (var i = 0; i < t.x.length; i += 3) {
    if (t.x[i] !== t.x[i]) { continue; }
    var c = t.customdata ? Array.from(t.customdata[i]) : [];
    bars.push([t.x[i], t.x[i + 1], t.y[i]].concat(c));
  }
  return {category: t.legendgroup, bars: bars};
});
"""


def drawn_bars(driver: Any) -> dict[str, list[list[float]]]:
    """Per category: the segments drawn now, [x0, x1, y, *customdata] each."""
    return {t["category"]: t["bars"] for t in driver.execute_script(DRAWN_BARS_JS)}


def drawn_by_axes(driver: Any) -> list[dict[str, Any]]:
    """Per bar trace: category, its y axis ("y", "y2", ...) and segments as in drawn_bars."""
    return driver.execute_script(DRAWN_BARS_JS.replace(
        "return {category: t.legendgroup, bars: bars};",
        "return {category: t.legendgroup, yaxis: t.yaxis, bars: bars};"))


def lod_settled(driver: Any) -> None:
    """Wait until the page's level-of-detail redraw in flight (if any) has finished."""
    driver.execute_async_script(
        "var done = arguments[arguments.length - 1];"
        "var gd = document.querySelector('.plotly-graph-div');"
        "Promise.resolve(gd._tracekitLod ? gd._tracekitLod.pending : null)"
        ".then(function () { done(true); });")
