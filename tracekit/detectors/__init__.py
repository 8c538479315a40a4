"""Detectors: pure functions of a loaded, linked Run that return Findings, registered by name.

A detector module defines a frozen `Params` dataclass (its thresholds, each default justified in
the module docstring from measured traces) and `detect(run, params) -> list[Finding]` decorated
with `@register("kind", Params)`. The decorated `detect` takes `detect(run)`,
`detect(run, Params(...))` or `detect(run, min_gap_us=60)`; `run_detectors` takes one Params per
kind (from `parse_params`, e.g. the CLI's `--param comm_gap.min_gap_us=60`). A detector that
compares ranks also registers a summary of one rank (`register_summary`), computed with the same
Params in the rank's own process (tracekit.pipeline.rankwise).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tracekit.accounting.budget import apply_budget
from tracekit.errors import UserError
from tracekit.finding import SEVERITY_ORDER, Finding
from tracekit.trace import Run, Trace

Summary = Callable[[Trace, Any], Any]


@dataclass(frozen=True)
class Detector:
    kind: str
    detect: Callable[..., list[Finding]]
    """detect(run, params=None, **overrides)"""
    params: type
    """The frozen Params dataclass."""


DETECTORS: dict[str, Detector] = {}
SUMMARIES: dict[str, Summary] = {}
"""Detectors that compare ranks register what they need of each rank: a small summary
(summary(trace, params)) that `tracekit.pipeline.rankwise` computes in the rank's process and
hands to the others (Run.context)."""

# Modules imported by `load_detectors`, so registration happens on first use.
DETECTOR_MODULES = ("select_backward", "sm_contention", "comm_gap", "slow_step", "gpu_idle",
                    "straggler", "exposed_comm", "profiler_distortion", "strided_elementwise")
FindingsPass = Callable[[list[Finding]], list[Finding]]
PASSES: dict[str, FindingsPass] = {}
"""Passes over every detector's findings of a run (all ranks), run after the detectors: a
finding that changes how others read (profiler_distortion) marks them."""


def register(kind: str, params: type) -> Callable[[Callable[..., list[Finding]]],
                                                  Callable[..., list[Finding]]]:
    """Register `fn(run, params)` as detector `kind` with its Params class."""

    def wrap(fn: Callable[..., list[Finding]]) -> Callable[..., list[Finding]]:
        @functools.wraps(fn)
        def detect(run: Run, params_: Any = None, /, **overrides: Any) -> list[Finding]:
            chosen = params_ if params_ is not None else params()
            return fn(run, dataclasses.replace(chosen, **overrides) if overrides else chosen)

        DETECTORS[kind] = Detector(kind, detect, params)
        return detect

    return wrap


def register_pass(kind: str) -> Callable[[FindingsPass], FindingsPass]:
    def wrap(fn: FindingsPass) -> FindingsPass:
        PASSES[kind] = fn
        return fn

    return wrap


def apply_passes(findings: list[Finding]) -> list[Finding]:
    """Every registered pass over the run's findings (idempotent), worst first."""
    load_detectors()
    for fn in PASSES.values():
        findings = fn(findings)
    return worst_first(findings)


def register_summary(kind: str) -> Callable[[Summary], Summary]:
    def wrap(fn: Summary) -> Summary:
        SUMMARIES[kind] = fn
        return fn

    return wrap


def load_detectors() -> dict[str, Detector]:
    for module in DETECTOR_MODULES:
        importlib.import_module(f"{__name__}.{module}")
    return DETECTORS


def params_for(kind: str, params: Mapping[str, Any] | None) -> Any:
    """The Params detector `kind` runs with: the given ones, else its defaults."""
    chosen = (params or {}).get(kind)
    return chosen if chosen is not None else load_detectors()[kind].params()


def rank_summaries(trace: Trace, kinds: Iterable[str] | None = None,
                   params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Each wanted cross-rank detector's summary of one rank."""
    load_detectors()
    wanted = set(kinds) if kinds else set(SUMMARIES)
    return {kind: fn(trace, params_for(kind, params)) for kind, fn in SUMMARIES.items()
            if kind in wanted}


def run_detectors(run: Run, kinds: Iterable[str] | None = None,
                  params: Mapping[str, Any] | None = None) -> list[Finding]:
    """Run the named detectors (all by default), each with its Params from `params` (defaults
    for the kinds not in it), then the cost budget (tracekit.accounting.budget: costs become
    the step time each finding alone claims); findings sorted worst first."""
    available = load_detectors()
    findings: list[Finding] = []
    for kind in check_kinds(kinds):
        findings.extend(available[kind].detect(run, params_for(kind, params)))
    return apply_passes(apply_budget(run, findings))


def check_kinds(kinds: Iterable[str] | None) -> list[str]:
    """The detector names asked for (all when None); a one-line error for an unknown one."""
    available = load_detectors()
    wanted = list(kinds) if kinds else list(available)
    unknown = [k for k in wanted if k not in available]
    if unknown:
        raise UserError(f"unknown detector(s) {', '.join(unknown)}; known: {', '.join(available)}")
    return wanted


def parse_params(items: Iterable[str] | None) -> dict[str, Any]:
    """`["comm_gap.min_gap_us=60", "slow_step.factor=3"]` -> {kind: Params}, each value
    converted to its field's type; a one-line error for an unknown detector, parameter or a
    value of the wrong type."""
    available = load_detectors()
    overrides: dict[str, dict[str, Any]] = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        kind, dot, field_name = name.strip().partition(".")
        if not sep or not dot:
            raise UserError(f"--param must look like DETECTOR.NAME=VALUE, not {item!r}")
        if kind not in available:
            raise UserError(f"--param {item}: unknown detector {kind!r}; known: "
                            f"{', '.join(available)}")
        fields = {f.name: f for f in dataclasses.fields(available[kind].params)}
        if field_name not in fields:
            raise UserError(f"--param {item}: {kind} has no parameter {field_name!r}; known: "
                            f"{', '.join(fields)}")
        default = getattr(available[kind].params(), field_name)
        convert = float if default is None else type(default)  # an optional number: float
        try:
            value = convert(text.strip())
        except ValueError:
            raise UserError(f"--param {item}: {field_name} takes a {convert.__name__}, "
                            f"not {text.strip()!r}") from None
        overrides.setdefault(kind, {})[field_name] = value
    return {kind: available[kind].params(**values) for kind, values in overrides.items()}


def worst_first(findings: list[Finding]) -> list[Finding]:
    """Findings by severity, then by cost, highest first."""
    return sorted(findings, key=lambda f: (SEVERITY_ORDER[f.severity], -f.cost_us))
