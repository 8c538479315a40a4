"""scripts/exact_lines.py: the share of the findings' cost on exact lines, with the findings
whose nature has no code location counted apart rather than as misses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "exact_lines.py"


def finding(kind: str, cost_us: float, source: dict | None = None, **evidence: object) -> dict:
    return {"kind": kind, "rank": 0, "step": 6, "cost_us": cost_us, "title": kind,
            "cause": {"source": source}, "evidence": evidence}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_the_share_counts_exact_inexact_and_missing_lines_and_sets_aside_the_rest(
        tmp_path: Path) -> None:
    path = tmp_path / "findings.json"
    path.write_text(json.dumps([
        finding("select_backward", 300.0, {"file": "m.py", "line": 3, "line_exact": True}),
        finding("comm_gap", 100.0, {"file": "m.py", "line": 1, "line_exact": False}),
        finding("slow_step", 600.0),  # a slow step nothing explains: a miss
        finding("slow_step", 9e6, no_code_location="warm-up, paid once per process"),
    ]))
    done = run(str(path), "--list")
    assert done.returncode == 0, done.stderr
    first, *listed = done.stdout.splitlines()
    assert "30.0% of the findings' cost on exact lines" in first
    assert "exact 1 (0.3 ms), inexact 1 (0.1 ms), no line 1 (0.6 ms), no code location 1" in first
    assert [line.split()[0] for line in listed] == ["no", "no", "inexact"]
    assert "m.py:1~" in listed[2]


@pytest.mark.slow
def test_a_run_directory_is_analysed_afresh() -> None:
    done = run("tests/data/compiled_cpu")
    assert done.returncode == 0, done.stderr
    # select_backward's fused kernel (exact), step 7 unexplained; warm-up steps 0-1 and the
    # step after the trace export have no code location
    assert "exact 1 (45.6 ms), inexact 0 (0.0 ms), no line 1 (747.3 ms), " \
           "no code location 3" in done.stdout


def test_a_missing_path_is_one_error_line(tmp_path: Path) -> None:
    done = run(str(tmp_path / "nothing"))
    assert done.returncode == 2 and done.stderr.strip().startswith("error: ")


def test_a_finding_at_several_lines_is_split_over_them_by_each_lines_time(
        tmp_path: Path) -> None:
    spread = finding("gpu_idle", 500.0, None, idle_us=1000.0, lines=3, line_costs=[
        {"file": "m.py", "line": 7, "exact": True, "us": 600.0},
        {"file": "m.py", "line": 2, "exact": False, "us": 300.0}])
    path = tmp_path / "findings.json"
    path.write_text(json.dumps([spread]))
    done = run(str(path))
    assert done.returncode == 0, done.stderr
    # budgeted to half its idle time: 300 us exact, 150 us at a def line, 50 us without a line
    assert "60.0% of the findings' cost on exact lines" in done.stdout
    assert "exact 1 (0.3 ms), inexact 0 (0.1 ms), no line 0 (0.1 ms)" in done.stdout
