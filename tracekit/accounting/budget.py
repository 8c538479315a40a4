"""The cost budget: a finding's cost is the step time it claims that nobody else claimed.

Detectors estimate costs in their own terms (a gap's length, a kernel's time); those estimates
overlap: two comm streams idle at the same moment, two findings blaming the same idle window.
So every finding that can place its loss on the timeline carries `spans` (Finding.spans: the
intervals it says are lost), and after every detector has run this pass, per rank and worst
first (severity, then slow_step before the findings that refine it, then estimated cost
per step it touches), sets

    cost_us = length of (union of the finding's spans, inside the rank's step windows,
                         minus everything a worse finding of that rank already claimed)

A finding's cost therefore never exceeds its steps, time on two streams counts once (the
union), and the costs of a step's findings never sum to more than the step (the subtraction).
Findings left with less than MIN_CLAIM_US are dropped (what they explain is explained by a
worse one, or lies outside the steps but for a sliver at a window's edge).
Severity is recomputed from the new cost per step; evidence gains `cost_per_step_us`,
`cost_pct_of_step` (of the run's step time) and `cost_by_step_us` ({step: cost inside that
step's window}, ProfilerStep numbers only: a finding merged over steps says what it costs in
each). Findings without
spans (run-level ones, from steps.jsonl) keep their cost.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from tracekit.accounting.sets import GpuSets, gpu_sets
from tracekit.finding import SEVERITY_ORDER, Finding, severity_from_cost
from tracekit.intervals import (
    EMPTY,
    as_set,
    intersect_intervals,
    subtract_intervals,
    total_length,
    union_intervals,
)
from tracekit.link.steptime import run_step_us
from tracekit.trace import Run

STEP_LEVEL = frozenset({"slow_step"})
"""Kinds that explain a whole slow step: at equal severity they claim first, and the findings
that refine them (gpu_idle naming the same stall) keep what is left."""


MIN_CLAIM_US = 1.0
"""The least time a finding must claim to be kept. What claims less is a sliver where a span
meets a step window's edge (a comm_gap of the ResNet MI300X trace, 2.7 ms long outside its
steps, kept 16 ns of one step: "cost 0 us"), which no user can act on."""


RESIDUAL = frozenset({"exposed_comm"})
"""Kinds that explain what no more specific finding does (exposed communication as such): they
claim last, whatever their severity, and keep the rest."""


def claim_order(f: Finding, sets: GpuSets) -> tuple[int, int, int, float]:
    """Who claims first: residual kinds last; then severity, then step-level kinds, then the
    estimated cost per step the finding's spans touch (a one-step stall ranks by that step)."""
    touched = int(np.count_nonzero(sets.per_window(as_set(f.spans)) > 0))
    return (1 if f.kind in RESIDUAL else 0, SEVERITY_ORDER[f.severity],
            0 if f.kind in STEP_LEVEL else 1, -f.cost_us / max(touched, 1))


def apply_budget(run: Run, findings: list[Finding]) -> list[Finding]:
    """The findings with costs trimmed to the time each claims alone (see module doc)."""
    step_us = run_step_us(run)
    by_rank: dict[int, list[Finding]] = defaultdict(list)
    for f in findings:
        if f.spans is not None:
            by_rank[f.rank].append(f)
    dropped: set[int] = set()
    for rank, items in by_rank.items():
        try:
            trace = run.rank(rank)
        except KeyError:
            continue
        sets = gpu_sets(trace)
        windows = len(sets.steps)
        claimed = EMPTY
        for f in sorted(items, key=lambda f, sets=sets: claim_order(f, sets)):
            own = subtract_intervals(intersect_intervals(as_set(f.spans), sets.windows), claimed)
            cost = total_length(own)
            if cost < MIN_CLAIM_US:
                dropped.add(id(f))
                f.spans = EMPTY
                continue
            claimed = union_intervals(np.concatenate([claimed[0], own[0]]),
                                      np.concatenate([claimed[1], own[1]]))
            f.spans = own
            f.cost_us = round(cost, 3)
            per_step = cost / max(windows, 1)
            f.severity = severity_from_cost(per_step, step_us)
            f.evidence["cost_per_step_us"] = round(per_step, 3)
            f.evidence["cost_by_step_us"] = {
                int(step): round(float(us), 3)
                for step, us in zip(sets.steps, sets.per_window(own), strict=True)
                if us > 0 and step >= 0}
            f.evidence["cost_pct_of_step"] = (round(100.0 * per_step / step_us, 2)
                                              if step_us else None)
    return [f for f in findings if id(f) not in dropped]
