"""NCCL time and exposed (not overlapped by compute) NCCL time per rank, in two runs."""

from __future__ import annotations

from tracekit.compare.schema import CommRow
from tracekit.detectors.collectives import kernel_overlap
from tracekit.trace import Trace


def comm_per_rank(traces: list[Trace]) -> dict[int, tuple[float, float]]:
    """rank -> (NCCL busy us, exposed NCCL us), per profiled step of that rank."""
    out = {}
    for trace in traces:
        if trace.kernels.empty or not trace.kernels["is_nccl"].astype(bool).any():
            continue
        result = kernel_overlap(trace.kernels, trace.rank)
        per = max(len(trace.steps), 1)
        out[trace.rank] = (result.comm_busy_us / per, result.exposed_comm_us / per)
    return out


def compare_comm(base: dict[int, tuple[float, float]], new: dict[int, tuple[float, float]]
                 ) -> list[CommRow]:
    """Per rank: (NCCL busy us, exposed NCCL us) per step in each run, and the change."""
    rows = []
    for rank in sorted(set(base) | set(new)):
        b, n = base.get(rank), new.get(rank)
        delta = n[1] - b[1] if b and n else None
        rows.append(CommRow(rank=rank, base_nccl_us=b[0] if b else None,
                            new_nccl_us=n[0] if n else None,
                            base_exposed_us=b[1] if b else None,
                            new_exposed_us=n[1] if n else None, delta_exposed_us=delta))
    return rows
