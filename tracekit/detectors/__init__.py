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
from tracekit.trace import Run, Trace

Detector = Callable[..., list[Finding]]
Summary = Callable[[Trace], Any]

DETECTORS: dict[str, Detector] = {}
SUMMARIES: dict[str, Summary] = {}
"""Detectors that compare ranks register what they need of each rank: a small summary that
`tracekit.rankwise` computes in the rank's process and hands to the others (Run.context)."""

# Modules imported by `run_detectors`, so registration happens on first use.
DETECTOR_MODULES = ("select_backward", "sm_contention", "comm_gap", "slow_step")


def register(kind: str) -> Callable[[Detector], Detector]:
    def wrap(fn: Detector) -> Detector:
        DETECTORS[kind] = fn
        return fn

    return wrap


def register_summary(kind: str) -> Callable[[Summary], Summary]:
    def wrap(fn: Summary) -> Summary:
        SUMMARIES[kind] = fn
        return fn

    return wrap


def rank_summaries(trace: Trace, kinds: Iterable[str] | None = None) -> dict[str, Any]:
    """Each wanted cross-rank detector's summary of one rank."""
    load_detectors()
    wanted = set(kinds) if kinds else set(SUMMARIES)
    return {kind: fn(trace) for kind, fn in SUMMARIES.items() if kind in wanted}


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
    findings: list[Finding] = []
    for kind in check_kinds(kinds):
        findings.extend(available[kind](run, **(params or {}).get(kind, {})))
    return worst_first(findings)


def check_kinds(kinds: Iterable[str] | None) -> list[str]:
    """The detector names asked for (all when None); a one-line error for an unknown one."""
    available = load_detectors()
    wanted = list(kinds) if kinds else list(available)
    unknown = [k for k in wanted if k not in available]
    if unknown:
        raise UserError(f"unknown detector(s) {', '.join(unknown)}; known: {', '.join(available)}")
    return wanted


def worst_first(findings: list[Finding]) -> list[Finding]:
    """Findings by severity, then by cost, highest first."""
    return sorted(findings, key=lambda f: (SEVERITY_ORDER[f.severity], -f.cost_us))
