"""The planted-pathology GPU traces of tests/data/gpu and the script that recorded them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tracekit.link import link_trace
from tracekit.pipeline import load
from tracekit.trace import Run

REPO = Path(__file__).resolve().parents[1]
GPU_DATA = REPO / "tests" / "data" / "gpu"
SCRIPT = REPO / "scripts" / "record_planted_traces.py"


def planted_site(tag: str) -> tuple[int, int, str]:
    """(line, def line of the enclosing function, its name) of the `# planted: <tag>` line."""
    text = SCRIPT.read_text()
    hits = [i + 1 for i, t in enumerate(text.splitlines()) if f"# planted: {tag}" in t]
    if not hits:
        raise AssertionError(f"no planted marker {tag!r} in {SCRIPT}")
    line = hits[0]
    enclosing = [n for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef)
                 and n.lineno <= line <= (n.end_lineno or n.lineno)]
    inner = max(enclosing, key=lambda n: n.lineno)
    return line, inner.lineno, inner.name


def planted_line(tag: str) -> int:
    return planted_site(tag)[0]


def load_planted(scenario: str) -> Run:
    """A planted run, linked with the recording script's directory as a source root.

    The script ran as `scripts/record_planted_traces.py`, so its frames name the file relative
    to scripts/ (its sys.path entry); say so, as a manifest's sys_path would.
    """
    path = GPU_DATA / scenario
    if not path.is_dir():
        pytest.skip(f"{path} not recorded")
    run = load(path, link=False, progress=False)
    for trace in run.traces:
        link_trace(trace, source_roots=[SCRIPT.parent, REPO])
    return run


def external_traces() -> Path:
    """Other people's traces (../shared/traces-external beside the checkout)."""
    for candidate in (REPO.parent / "shared" / "traces-external",
                      Path("/work/shared/traces-external")):
        if candidate.is_dir():
            return candidate
    return REPO.parent / "shared" / "traces-external"


EXTERNAL = external_traces()
