"""Which accelerator a trace was recorded on: an NVIDIA GPU (CUDA), an AMD GPU (HIP/ROCm), an
Intel GPU (XPU), a Meta MTIA, or none (CPU only).

Kineto writes every accelerator's activity in the same few shapes, so the frames do not depend
on it: CUDA and HIP both use `kernel`/`cuda_runtime` categories (HIP's calls are named hip*),
XPU has `xpu_runtime` calls, MTIA has `mtia_runtime` calls and `mtia_ccp_events` device
activity (read as kernels and DMA memcpys). The kind is told from those categories and names,
the device properties and the distributed backend, and is named in reports and diffs.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

CUDA, HIP, XPU, MTIA, CPU = "cuda", "hip", "xpu", "mtia", "cpu"
LABELS = {CUDA: "CUDA GPU", HIP: "AMD GPU, HIP", XPU: "Intel XPU", MTIA: "MTIA",
          CPU: "CPU only"}
AMD_NAME = re.compile(r"\bAMD\b|Instinct|Radeon|\bMI\d{3}", re.IGNORECASE)
INTEL_NAME = re.compile(r"\bIntel\b|Data Center GPU|\bArc\b", re.IGNORECASE)
HIP_CALL = re.compile(r"^hip")


def device_names(meta: dict[str, Any]) -> list[str]:
    """Distinct device names in deviceProperties, in order."""
    props = meta.get("deviceProperties")
    if not isinstance(props, list):
        return []
    names = [p.get("name") for p in props if isinstance(p, dict)]
    return list(dict.fromkeys(n.strip() for n in names if isinstance(n, str) and n.strip()))


def detect(meta: dict[str, Any], categories: set[str], launches: pd.DataFrame,
           has_device_activity: bool) -> str:
    """The accelerator kind (CUDA, HIP, XPU, MTIA or CPU) of one trace."""
    info = meta.get("distributedInfo")
    backend = str(info.get("backend", "")) if isinstance(info, dict) else ""
    names = " ".join(device_names(meta))
    if categories & {"mtia_runtime", "mtia_ccp_events"} or "mtia" in backend.lower():
        return MTIA
    if "xpu_runtime" in categories or "xccl" in backend.lower() or INTEL_NAME.search(names):
        return XPU
    hip_calls = len(launches) > 0 and bool(_any_match(launches["name"], HIP_CALL))
    if hip_calls or AMD_NAME.search(names) or "rccl" in backend.lower():
        return HIP
    if has_device_activity or names:
        return CUDA
    return CPU


def _any_match(names: pd.Series, pattern: re.Pattern[str]) -> bool:
    uniques = pd.unique(names.astype(object))
    return bool(np.fromiter((pattern.search(str(u)) is not None for u in uniques), dtype=bool,
                            count=len(uniques)).any())


def describe(kind: str, meta: dict[str, Any]) -> str:
    """"CUDA GPU (NVIDIA H200)", "AMD GPU, HIP (AMD Instinct MI250X)", "CPU only", ..."""
    label = LABELS.get(kind, kind)
    names = device_names(meta) if kind != CPU else []
    return f"{label} ({', '.join(names)})" if names else label


def describe_traces(traces: list[Any]) -> str:
    """The accelerators of a run's traces in words (one entry per distinct description)."""
    described = dict.fromkeys(describe(t.device, t.meta) if t.has_gpu or t.device != CPU
                              else LABELS[CPU] for t in traces)
    return "; ".join(described) or LABELS[CPU]
