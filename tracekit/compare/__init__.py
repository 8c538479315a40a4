"""Compare two runs (BASE and NEW) as data: what got faster or slower, what appeared or went.

`diff_runs(base_run, base_findings, new_run, new_findings)` returns a `RunDiff`; `cli.py diff`
renders it (rich terminal tables, `--json`, `--html`). Everything here is plain data so tests and
notebooks can assert on it.

Normalisation. Two runs rarely have the same number of profiled steps or ranks, so every time in
a per-name table is GPU/CPU time per profiled step and rank ("per step"): the total over the
compared ranks divided by the number of ProfilerStep spans in them (by the number of ranks when
a trace has no steps). Counts are totals, so "appeared"/"disappeared" are exact.

Kernel names are matched across runs by `tracekit.names.normalize_kernel_name`.

Findings are matched on what they are: kind, statement, normalised culprit kernel (the cause op
when a finding has neither), with the statement placed in both runs by a line-level diff of
each run's own copy of the file (`findings`, `edits`); findings of one key on several ranks are
summed. Each finding says whether its line was edited between the runs; a statement the change
edited but left alike is the same finding in both.
Ranks are paired only with the same rank: a rank in one run only is left out (with a note),
and two runs with no rank in common are not compared. How the runs differ beyond their timings
(device, world size, ranks, versions, profiled steps) comes first in the report (`context`).

The parts: `schema` (the data classes and the JSON form), `steps` (step-time statistics),
`tables` (per-name tables), `totals` (one rank's share, computed where the rank is loaded),
`findings` (matching findings across runs), `edits` (which lines changed), `comm` (exposed
communication), `context` (what each run is, and where they differ). Nothing here
loads or analyses a run: `tracekit.pipeline` does, and hands the results in.
"""

from __future__ import annotations

from tracekit.compare.comm import compare_comm
from tracekit.compare.context import RunContexts, context_of, paired_ranks
from tracekit.compare.findings import compare_findings, finding_key, source_file_reader
from tracekit.compare.schema import (
    CommRow,
    Distribution,
    FindingRow,
    FindingsDiff,
    Row,
    RunDiff,
    RunInfo,
    StepComparison,
)
from tracekit.compare.steps import compare_steps
from tracekit.compare.tables import compare_tables, step_count
from tracekit.compare.totals import TABLES, RankTotals, combined_table, rank_totals
from tracekit.finding import Finding
from tracekit.link.steptime import COMPARE_FROM_STEP
from tracekit.trace import Run, Trace, select_traces

__all__ = ["CommRow", "Distribution", "FindingRow", "FindingsDiff", "RankTotals", "Row",
           "RunDiff", "RunInfo", "StepComparison", "compare_findings", "compare_steps",
           "diff_runs", "diff_totals", "finding_key", "rank_totals"]


def _info(run: Run, traces: list[Trace], findings: list[Finding], source: str | None) -> RunInfo:
    return RunInfo(path=str(run.path), ranks=[t.rank for t in traces],
                   profiled_steps=sum(len(t.steps) for t in traces), step_time_source=source,
                   findings=len(findings))


def diff_runs(base_run: Run, base_findings: list[Finding], new_run: Run,
              new_findings: list[Finding], rank: int | None = None,
              skip_steps_below: int = COMPARE_FROM_STEP) -> RunDiff:
    """Everything `cli.py diff` reports, as data."""
    return diff_totals(base_run, [rank_totals(t) for t in base_run.traces], base_findings,
                       new_run, [rank_totals(t) for t in new_run.traces], new_findings,
                       rank=rank, skip_steps_below=skip_steps_below)


def diff_totals(base_run: Run, base_totals: list[RankTotals], base_findings: list[Finding],
                new_run: Run, new_totals: list[RankTotals], new_findings: list[Finding],
                rank: int | None = None, skip_steps_below: int = COMPARE_FROM_STEP) -> RunDiff:
    """`diff_runs` from each rank's totals: the runs' traces need only their steps (thin
    traces, as tracekit.pipeline.rankwise returns, do)."""
    context = RunContexts(context_of(base_run), context_of(new_run))
    notes: list[str] = []
    ranks = paired_ranks(base_run, new_run, rank, notes)
    base_traces = [t for t in select_traces(base_run, rank) if t.rank in ranks]
    new_traces = [t for t in select_traces(new_run, rank) if t.rank in ranks]
    base_findings = [f for f in base_findings if f.rank in ranks]
    new_findings = [f for f in new_findings if f.rank in ranks]
    base_totals = [t for t in base_totals if t.rank in ranks]
    new_totals = [t for t in new_totals if t.rank in ranks]
    steps = compare_steps(base_run, new_run, base_traces, new_traces, skip_steps_below)
    base_per, new_per = step_count(base_traces), step_count(new_traces)
    tables = {name: compare_tables(combined_table(base_totals, name, base_per),
                                    combined_table(new_totals, name, new_per))
              for name in TABLES}
    linked = all(t.linked for t in base_traces + new_traces)
    if not linked:
        notes.append("Some traces are not linked: kernels_by_launching_op may be incomplete.")
    for label, traces in (("BASE", base_traces), ("NEW", new_traces)):
        if not any(t.has_gpu for t in traces):
            notes.append(f"{label} has no GPU activity: kernel tables are empty for it.")
    return RunDiff(
        base=_info(base_run, base_traces, base_findings, steps.source),
        new=_info(new_run, new_traces, new_findings, steps.source),
        rank=rank,
        steps=steps,
        **tables,
        kernels_appeared=[r.name for r in tables["kernels"] if r.status == "appeared"],
        kernels_disappeared=[r.name for r in tables["kernels"] if r.status == "disappeared"],
        findings=compare_findings(base_findings, new_findings, source_file_reader(base_run),
                                  source_file_reader(new_run)),
        comm=compare_comm({t.rank: t.comm for t in base_totals if t.comm},
                          {t.rank: t.comm for t in new_totals if t.comm}),
        notes=notes,
        context=context.to_dict(),
    )


