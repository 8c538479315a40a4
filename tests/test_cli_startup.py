"""`cli.py --help` imports no numerical library: they are loaded when a command runs, so the
help answers in a fraction of a second (README: Performance)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("pandas", "numpy", "pyarrow", "torch", "scipy", "plotly", "msgspec")
PROBE = f"""
import runpy, sys
sys.argv = ["cli.py", *sys.argv[1:]]
try:
    runpy.run_path("cli.py", run_name="__main__")
except SystemExit:
    pass
print("LOADED", sorted(m for m in {HEAVY!r} if m in sys.modules))
import os
print("BLAS_THREADS", os.environ.get("OPENBLAS_NUM_THREADS"))
"""


def probe(*args: str, env: dict[str, str] | None = None) -> list[str]:
    return subprocess.run([sys.executable, "-c", PROBE, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=True, env=env).stdout.splitlines()


def loaded_after(*args: str) -> str:
    return next(line for line in probe(*args) if line.startswith("LOADED"))


def test_help_and_command_help_import_no_numerical_library() -> None:
    assert loaded_after("--help") == "LOADED []"
    for command in ("analyze", "diff", "timeline", "train", "profile"):
        assert loaded_after(command, "--help") == "LOADED []", command


def test_a_command_does_load_them() -> None:  # the probe sees imports when there are some
    assert "pandas" in loaded_after("analyze", "/nonexistent")


def test_analyze_help_names_every_detector() -> None:
    from tracekit.detectors import DETECTOR_MODULES

    out = subprocess.run([sys.executable, "cli.py", "analyze", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, "COLUMNS": "400"}).stdout
    said = " ".join(out.split())
    assert [kind for kind in DETECTOR_MODULES if kind not in said] == []


SMALL_TRACE = "tests/data/external/a100_alexnet_single.json.gz"


def test_an_analysis_asks_numpy_for_one_blas_thread_unless_the_user_chose() -> None:
    """numpy's OpenBLAS starts (and spins) a thread per CPU at import; no analysis uses it."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    for command in (["analyze", SMALL_TRACE], ["diff", SMALL_TRACE, SMALL_TRACE]):
        assert "BLAS_THREADS 1" in probe(*command, env=env), command
        assert "BLAS_THREADS 3" in probe(*command, env={**env, "OPENBLAS_NUM_THREADS": "3"})
    assert "BLAS_THREADS None" in probe("--help", env=env)
