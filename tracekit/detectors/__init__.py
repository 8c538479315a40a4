"""Detectors: pure functions of a loaded, linked Run that return Findings, registered by name.

A detector module defines `detect(run: Run, **params) -> list[Finding]` decorated with
`@register("kind")`; its docstring explains the pathology in plain words and justifies each
threshold parameter's default from measured traces.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

from tracekit.errors import UserError
from tracekit.finding import SEVERITY_ORDER, Finding
from tracekit.trace import Run

Detector = Callable[..., list[Finding]]

DETECTORS: dict[str, Detector] = {}

# Modules imported by `run_detectors`, so registration happens on first use.
DETECTOR_MODULES = ("select_backward", "sm_contention", "comm_gap", "slow_step")


def register(kind: str) -> Callable[[Detector], Detector]:
    def wrap(fn: Detector) -> Detector:
        DETECTORS[kind] = fn
        return fn

    return wrap


def load_detectors() -> dict[str, Detector]:
    for module in DETECTOR_MODULES:
        importlib.import_module(f"{__name__}.{module}")
    return DETECTORS


def run_detectors(
    run: Run,
    kinds: Iterable[str] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
) -> list[Finding]:
    """Run the named detectors (all by default); findings sorted worst first."""
    available = load_detectors()
    wanted = list(kinds) if kinds else list(available)
    unknown = [k for k in wanted if k not in available]
    if unknown:
        raise UserError(f"unknown detector(s) {', '.join(unknown)}; known: {', '.join(available)}")
    findings: list[Finding] = []
    for kind in wanted:
        findings.extend(available[kind](run, **(params or {}).get(kind, {})))
    findings.sort(key=lambda f: (SEVERITY_ORDER[f.severity], -f.cost_us))
    return findings
