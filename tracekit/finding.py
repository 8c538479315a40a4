"""Finding: one diagnosed problem, the stable JSON contract of `cli.py analyze --json`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Literal

Severity = Literal["high", "medium", "low"]
SEVERITY_ORDER: dict[str, int] = {"high": 0, "medium": 1, "low": 2}


@dataclass
class SourceLine:
    file: str
    line: int
    function: str
    line_exact: bool = False


def source_key(source: SourceLine | None) -> str:
    """`file:line` of a source line ("" for none): what findings are merged and matched by."""
    return f"{source.file}:{source.line}" if source else ""


@dataclass
class Culprit:
    kernel: str | None = None
    stream: int | None = None
    grid: list[int] | None = None
    blocks_per_sm: float | None = None


@dataclass
class Cause:
    op: str | None = None
    op_stack: list[str] = field(default_factory=list)
    source: SourceLine | None = None
    ordering: str | None = None


@dataclass
class Finding:
    kind: str
    severity: Severity
    rank: int
    step: int | None
    start_us: float
    dur_us: float
    cost_us: float
    count: int
    title: str
    culprit: Culprit
    cause: Cause
    evidence: dict[str, Any] = field(default_factory=dict)
    suggestion: str = ""
    spans: Any = field(default=None, compare=False, repr=False)
    """The intervals of this rank's trace clock (a pair of start/end arrays, us) that the
    finding claims as step time lost; None when it claims none it can place. Not part of the
    JSON contract or of equality: `tracekit.accounting.budget` turns them into `cost_us`."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON contract's fields (spans left out)."""
        return {f.name: _as_plain(getattr(self, f.name)) for f in fields(self)
                if f.name not in INTERNAL_FIELDS}


INTERNAL_FIELDS = frozenset({"spans"})
"""Finding fields that are not part of the JSON contract."""


def _as_plain(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else value


def severity_from_cost(cost_us: float, step_us: float | None) -> Severity:
    """High when a finding costs >= 5% of a step, medium >= 1%, else low.

    With no step time known (no ProfilerStep spans), fall back to absolute cost:
    >= 1 ms high, >= 100 us medium.
    """
    if step_us and step_us > 0:
        frac = cost_us / step_us
        return "high" if frac >= 0.05 else "medium" if frac >= 0.01 else "low"
    return "high" if cost_us >= 1000 else "medium" if cost_us >= 100 else "low"
