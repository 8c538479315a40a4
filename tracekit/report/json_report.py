"""The JSON renderer: exactly the list of Finding dicts of the contract (DESIGN.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from tracekit.finding import Finding


def plain(value: Any) -> Any:
    """JSON-safe copy: numpy scalars -> Python, NaN/inf -> null, tuples -> lists, Path -> str."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def findings_as_dicts(findings: list[Finding]) -> list[dict[str, Any]]:
    return [plain(f.to_dict()) for f in findings]


def render_json(findings: list[Finding]) -> str:
    """The JSON list, indented for people; strict JSON (no NaN)."""
    return json.dumps(findings_as_dicts(findings), indent=2, allow_nan=False)
