"""The per-rank analysis on a dask.distributed cluster: `analyze --engine dask --scheduler ADDR`.

The same three steps as `tracekit.pipeline.rankwise` (load, summary, detect), each a dask task
per rank file: a rank's loaded trace stays in the memory of the worker that loaded it (the tasks of
steps 2 and 3 take its future, so dask runs them where it lives) and only the thin copies,
the small summaries and the findings travel to this process. Workers must see the rank files
at the same paths (a shared file system) and have tracekit installed; findings are the same
as the local engine's (tests/tracekit/test_dask_engine.py).

dask is optional: `pip install 'tracekit-nanogpt[dask]'`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tracekit.accounting.table import RunAccounting
from tracekit.detectors import apply_passes, check_kinds, worst_first
from tracekit.errors import UserError
from tracekit.finding import Finding
from tracekit.load.run import TraceJob, load_trace_file
from tracekit.load.rundir import finish_ranks, plan_load, read_steps_log, skip_or_raise
from tracekit.pipeline.analysis import linker, select_findings
from tracekit.pipeline.rankwise import (
    DetectRequest,
    RankSummary,
    detect_rank,
    detect_requests,
    run_context,
    summarize_rank,
)
from tracekit.trace import Run, Trace, check_rank


@dataclass
class Loaded:
    """A rank file's load on a worker: its trace, or the one-line error it gave."""

    path: Path
    trace: Trace | None
    error: str | None = None


def load_rank(job: TraceJob) -> Loaded:
    try:
        return Loaded(job.path, load_trace_file(job))
    except UserError as exc:  # not a trace (skipped, as in a directory) or a broken one
        return Loaded(job.path, None, str(exc))


def thin_of(loaded: Loaded) -> Loaded:
    return Loaded(loaded.path, loaded.trace.thin() if loaded.trace else None, loaded.error)


def summarize_loaded(loaded: Loaded, rank: int, world_size: int, kinds: list[str] | None,
                     params: Mapping[str, Any] | None) -> RankSummary:
    assert loaded.trace is not None
    return summarize_rank(loaded.trace, rank, world_size, kinds, params)


def detect_loaded(loaded: Loaded, rank: int, world_size: int, request: DetectRequest,
                  kinds: list[str] | None, params: Mapping[str, Any] | None
                  ) -> tuple[list[Finding], Any, RunAccounting]:
    assert loaded.trace is not None
    return detect_rank(loaded.trace, rank, world_size, request, kinds, params)


def client_for(scheduler: Any, timeout_s: float = 30.0) -> Any:
    """A distributed.Client on `scheduler` (an address such as tcp://host:8786, or a Cluster
    object); None starts a LocalCluster on this machine."""
    try:
        from distributed import Client
    except ImportError:
        raise UserError("--engine dask needs dask.distributed: "
                        "pip install 'tracekit-nanogpt[dask]'") from None
    try:
        if scheduler is None:
            return Client(processes=True)
        return Client(scheduler, timeout=timeout_s)
    except (OSError, TimeoutError) as exc:
        raise UserError(f"--scheduler {scheduler}: cannot connect ({exc})") from None


def analyze_on_dask(path: Path | str, scheduler: Any = None,
                    kinds: Iterable[str] | None = None, rank: int | None = None,
                    min_cost_us: float = 0.0, totals: bool = False,
                    params: Mapping[str, Any] | None = None
                    ) -> tuple[Run, list[Finding], list[Any]]:
    """`tracekit.pipeline.analyze_rankwise_totals` with dask workers as the rank processes."""
    plan = plan_load(path)
    kind_list = check_kinds(kinds) if kinds else None
    steps_log = read_steps_log(plan.run_dir)
    # One process per rank file on the workers: their CPUs are shared out by dask.
    link = linker(plan)
    jobs = [TraceJob(f, link, processes=1) for f in plan.files]
    with client_for(scheduler) as client:
        futures = client.map(load_rank, jobs, pure=False)
        thin, skipped, by_thin = [], [], {}
        for future, loaded in zip(futures, client.gather(client.map(thin_of, futures)),
                                  strict=True):
            if loaded.trace is None:
                skipped.append(skip_or_raise(UserError(loaded.error), loaded.path,
                                             single_file=plan.single_file))
                continue
            thin.append(loaded.trace)
            by_thin[id(loaded.trace)] = future
        finish_ranks(plan, thin, skipped)
        ordered = [by_thin[id(t)] for t in thin]  # in rank order
        summaries = client.gather([
            client.submit(summarize_loaded, f, t.rank, t.world_size, kind_list, params,
                          pure=False)
            for f, t in zip(ordered, thin, strict=True)])
        context = run_context({t.rank: s for t, s in zip(thin, summaries, strict=True)})
        requests = detect_requests(plan, steps_log, context, len(thin), totals)
        results = client.gather([
            client.submit(detect_loaded, f, t.rank, t.world_size, r, kind_list, params,
                          pure=False)
            for f, t, r in zip(ordered, thin, requests, strict=True)])
        del futures, ordered, by_thin  # the workers drop the traces
    findings = [f for found, _, _ in results for f in found]
    sums = [s for _, s, _ in results if s is not None]
    run = Run(path=plan.path, traces=thin, manifest=plan.manifest, steps_log=steps_log,
              context=context, accounting=RunAccounting.combine([a for _, _, a in results]))
    check_rank(run, rank)
    # Passes over all ranks' findings (the distortion finding of rank 0 marks every rank's).
    findings = apply_passes(findings)
    return run, worst_first(select_findings(findings, rank, min_cost_us)), sums
