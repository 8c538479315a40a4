"""An op's recorded tensor arguments (record_shapes): shapes, strides and element sizes, read
from the JSON texts the profiler wrote (`ops.input_dims`, `input_strides`, `input_types`)."""

from __future__ import annotations

import json
from typing import Any

DTYPE_BYTES: dict[str, int] = {
    "double": 8, "float": 4, "c10::half": 2, "c10::bfloat16": 2, "half": 2, "bfloat16": 2,
    "long int": 8, "int": 4, "c10::float8_e4m3fn": 1, "c10::float8_e5m2": 1,
}
"""Bytes per element of the dtypes the profiler names (lower case)."""


def parse_json_field(text: Any) -> list[Any] | None:
    """input_dims/input_strides/input_types are stored as the JSON text recorded by the
    profiler; None when absent or not a list."""
    if isinstance(text, list):
        return text
    if not isinstance(text, str) or not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, list) else None
