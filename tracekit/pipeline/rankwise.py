"""Analyse a multi-rank run one rank per process: no process holds more than one rank's frames.

`analyze_run` loads every rank into one process, which then holds all of their frames (about a
third of each rank's JSON): with 8 ranks that is several times the largest file. Here each rank
file gets its own process for its whole life, which loads and links it and runs the detectors on
it; the parent sees only small things:

  1. load:     each rank process loads and links its file, and sends back a thin copy (metadata,
               steps, warnings); the parent assigns ranks and world size from all of them, as
               the loader does.
  2. summary:  each rank process sends what other ranks need of it: its median step and the
               summaries of the detectors that compare ranks (tracekit.detectors.SUMMARIES,
               e.g. sm_contention's NCCL table), computed with the detectors' Params.
  3. detect:   the parent hands every rank process the run's RankContext (the run's step time,
               the profiled steps, every rank's summaries); each runs the detectors on a Run
               holding its own rank with that context and sends back its findings.

The findings are the same as `analyze_run`'s (tests/tracekit/test_rankwise.py checks it on every
reference run). At most `workers` (default: one per CPU) parsing processes run at a time: when
each rank's share of them is big enough (`parse_processes`), each rank process parses its file in
slices on that share.
All rank processes stay alive until the findings are in, each holding only its own rank.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from tracekit.accounting.table import RunAccounting, run_accounting
from tracekit.compare import RankTotals, rank_totals
from tracekit.detectors import (
    apply_passes,
    check_kinds,
    rank_summaries,
    run_detectors,
    worst_first,
)
from tracekit.errors import UserError
from tracekit.finding import Finding
from tracekit.link.steptime import median_step_us, step_us_over_ranks
from tracekit.load import stream
from tracekit.load.progress import LoadProgress, show_progress
from tracekit.load.run import TraceJob, load_trace_file
from tracekit.load.rundir import (
    LoadPlan,
    finish_ranks,
    plan_load,
    read_steps_log,
    skip_or_raise,
)
from tracekit.pipeline.analysis import analyze_run, linker, select_findings
from tracekit.trace import RankContext, Run, Trace, check_rank


@dataclass
class RankSummary:
    """What a rank process tells the parent after loading (step 2)."""

    step_us: float | None
    profiled_steps: frozenset[int]
    detector_summaries: dict[str, Any]


def summarize_rank(trace: Trace, rank: int, world_size: int, kinds: list[str] | None,
                   params: Mapping[str, Any] | None) -> RankSummary:
    """Step 2 for one rank, once the run has given it its rank and world size."""
    trace.rank, trace.world_size = rank, world_size
    return RankSummary(median_step_us(trace), frozenset(int(s) for s in trace.steps["step"]),
                       rank_summaries(trace, kinds, params))


@dataclass(frozen=True)
class DetectRequest:
    """What a rank needs of the run for step 3."""

    path: Path
    manifest: dict[str, Any] | None
    steps_log: Any
    context: RankContext
    want_totals: bool


def detect_rank(trace: Trace, rank: int, world_size: int, request: DetectRequest,
                kinds: list[str] | None, params: Mapping[str, Any] | None
                ) -> tuple[list[Finding], RankTotals | None, RunAccounting]:
    """Step 3 for one rank: its findings (its diff totals when asked) and its accounting."""
    trace.rank, trace.world_size = rank, world_size
    run = Run(path=request.path, traces=[trace], manifest=request.manifest,
              steps_log=request.steps_log, context=request.context)
    findings = run_detectors(run, kinds=kinds, params=params)
    totals = rank_totals(trace) if request.want_totals else None
    return findings, totals, RunAccounting.of_traces([trace])


def run_context(summaries: dict[int, RankSummary]) -> RankContext:
    """The run's RankContext from every rank's summary (the parent's part of step 2)."""
    return RankContext(
        step_us=step_us_over_ranks(s.step_us for s in summaries.values()),
        profiled_steps=frozenset().union(*(s.profiled_steps for s in summaries.values())),
        summaries=_by_kind(summaries))


def detect_requests(plan: LoadPlan, steps_log: Any, context: RankContext, n_ranks: int,
                    want_totals: bool) -> list[DetectRequest]:
    """Step 3's request per rank, in rank order: run-level findings (steps.jsonl) come from
    the lowest rank only, as in one Run."""
    return [DetectRequest(plan.path, plan.manifest, steps_log if i == 0 else None, context,
                          want_totals) for i in range(n_ranks)]


def rank_process(job: TraceJob, conn: Connection, gate: Any, kinds: list[str] | None,
                 params: Mapping[str, Any] | None) -> None:
    """One rank's whole analysis, in its own process, driven by the parent over `conn`."""
    try:
        with gate:  # at most `workers` ranks are parsed at once
            trace = load_trace_file(job)
        conn.send(("loaded", trace.thin()))
        message, value = conn.recv()
        if message == "stop":
            return
        rank, world_size = value
        conn.send(("summary", summarize_rank(trace, rank, world_size, kinds, params)))
        message, request = conn.recv()
        if message == "stop":
            return
        conn.send(("findings", detect_rank(trace, rank, world_size, request, kinds, params)))
    except (EOFError, BrokenPipeError):  # the parent stopped (an error on another rank)
        return
    except UserError as exc:
        _send_quietly(conn, ("error", str(exc)))
    except Exception as exc:  # a bug: the parent reports it with the rank file's name
        _send_quietly(conn, ("crash", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _send_quietly(conn: Connection, message: tuple[str, Any]) -> None:
    with contextlib.suppress(BrokenPipeError, OSError):  # nobody is listening any more
        conn.send(message)


@dataclass
class RankProcess:
    """The parent's handle on one rank process."""

    path: Path
    process: Any
    conn: Connection
    thin: Trace | None = None

    def receive(self, expected: str) -> Any:
        try:
            message, value = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"{self.path.name}: its analysis process died "
                               f"(exit code {self.process.exitcode}; out of memory?)") from None
        if message == "error":
            raise UserError(value)
        if message == "crash":
            raise RuntimeError(f"{self.path.name}: {value}")
        if message != expected:
            raise RuntimeError(f"{self.path.name}: expected {expected}, got {message}")
        return value


def analyze_rankwise(path: Path | str, kinds: Iterable[str] | None = None,
                     rank: int | None = None, min_cost_us: float = 0.0,
                     progress: bool = True, workers: int | None = None,
                     params: Mapping[str, Any] | None = None) -> tuple[Run, list[Finding]]:
    """Findings of a run directory, worst first, with `analyze_run`'s arguments and results;
    the Run returned holds thin traces (no events: enough for report headers)."""
    run, findings, _ = analyze_rankwise_totals(path, kinds, rank, min_cost_us, progress,
                                               workers, totals=False, params=params)
    return run, findings


def thinned(full: Run, totals: bool = True) -> tuple[Run, list[RankTotals]]:
    """A run analysed in one process, as the rankwise path returns it: thin traces (the step
    accounting kept), and each rank's totals when `totals`."""
    sums = [rank_totals(t) for t in full.traces] if totals else []
    run_accounting(full)
    return replace(full, traces=[t.thin() for t in full.traces]), sums


def analyze_rankwise_totals(path: Path | str, kinds: Iterable[str] | None = None,
                            rank: int | None = None, min_cost_us: float = 0.0,
                            progress: bool = True, workers: int | None = None,
                            totals: bool = True, params: Mapping[str, Any] | None = None
                            ) -> tuple[Run, list[Finding], list[RankTotals]]:
    """`analyze_rankwise`, plus each rank's `tracekit.compare.RankTotals` (what `diff` needs of
    a run besides its findings) when `totals`."""
    plan = plan_load(path)
    kinds = check_kinds(kinds) if kinds else None  # before minutes of loading
    if len(plan.files) < 2:  # one file: parsed in slices on all CPUs by the loader instead
        full, found = analyze_run(plan.path, kinds=kinds, rank=rank, min_cost_us=min_cost_us,
                                  progress=progress, params=params)
        thin, sums = thinned(full, totals)
        return thin, found, sums
    cpus = max(1, workers or _cpus())
    per_file = parse_processes(len(plan.files), cpus)
    link = linker(plan)
    jobs = [TraceJob(f, link, processes=per_file) for f in plan.files]
    mp_context = mp.get_context()
    gate = mp_context.Semaphore(max(1, cpus // per_file))
    steps_log = read_steps_log(plan.run_dir)
    ranks: list[RankProcess] = []
    try:
        for job in jobs:
            parent_end, child_end = mp_context.Pipe()
            # Not a daemon: it may start its own slice parsers. Joined or ended below.
            process = mp_context.Process(target=rank_process, args=(job, child_end, gate, kinds,
                                                                    params))
            process.start()
            child_end.close()
            ranks.append(RankProcess(job.path, process, parent_end))
        bar = LoadProgress(show_progress(progress, len(jobs)), [r.path.name for r in ranks])
        loaded, skipped = _load_ranks(ranks, bar)
        by_thin = {id(r.thin): r for r in loaded}
        thin = [r.thin for r in loaded if r.thin is not None]
        finish_ranks(plan, thin, skipped)
        loaded = [by_thin[id(t)] for t in thin]  # in rank order
        for r, t in zip(loaded, thin, strict=True):
            r.conn.send(("rank", (t.rank, t.world_size)))
        summaries = {t.rank: r.receive("summary") for r, t in zip(loaded, thin, strict=True)}
        context = run_context(summaries)
        requests = detect_requests(plan, steps_log, context, len(loaded), totals)
        for r, request in zip(loaded, requests, strict=True):
            r.conn.send(("detect", request))
        results = [r.receive("findings") for r in loaded]
        findings = [f for found, _, _ in results for f in found]
        sums = [s for _, s, _ in results if s is not None]
        accounting = RunAccounting.combine([a for _, _, a in results])
    except BaseException:
        _stop(ranks, grace_s=STOP_GRACE_S)  # an error: nothing they do is needed any more
        raise
    _stop(ranks, grace_s=FINISH_GRACE_S)
    run = Run(path=plan.path, traces=thin, manifest=plan.manifest, steps_log=steps_log,
              context=context, accounting=accounting)
    check_rank(run, rank)
    # Passes over all ranks' findings (the distortion finding of rank 0 marks every rank's).
    findings = apply_passes(findings)
    return run, worst_first(select_findings(findings, rank, min_cost_us)), sums


def parse_processes(files: int, cpus: int) -> int:
    """Processes that parse each of `files` rank files on `cpus` CPUs: its rank process
    plus slice parsers (tracekit.load.stream) when the rank's share of the CPUs could run a
    pool of them (`MIN_CPUS_FOR_POOL`, the rule for one file), else the rank process alone.

    Slice parsers buy wall time with CPU (each slice's columns travel back to the rank
    process, whose strings are then shared again): on two CPUs one of them saved 10% of the
    wall time of loading a 46 MB trace for 25% more CPU. So they start only where the rank
    processes leave CPUs idle, as many as a pool for one file needs; otherwise each rank is
    parsed by its own process alone."""
    share = cpus // max(1, files)
    return share if share >= stream.MIN_CPUS_FOR_POOL else 1


STOP_GRACE_S = 0.5
"""After an error, how long a rank process may take to leave before it is terminated (it may be
in the middle of parsing a big file, which nobody needs any more)."""
FINISH_GRACE_S = 10.0
"""After the findings are in, how long the rank processes may take to exit."""


def _stop(ranks: list[RankProcess], grace_s: float) -> None:
    """Tell every rank process to stop and wait for them (terminating stragglers).

    Each is told with an explicit message rather than by closing the pipe: the rank processes
    are forked one after another, so each later one holds a copy of the earlier ones' pipe
    ends, and a closed pipe reads as closed only once every copy is; waiting for that cost up
    to a timeout per rank (11 s for two rank files of different runs, 16.5 s for three)."""
    for r in ranks:
        _send_quietly(r.conn, ("stop", None))
        r.conn.close()
    deadline = time.monotonic() + grace_s
    for r in ranks:
        r.process.join(timeout=max(0.0, deadline - time.monotonic()))
        if r.process.is_alive():
            r.process.terminate()
            r.process.join(timeout=1.0)


def _load_ranks(ranks: list[RankProcess], bar: Any) -> tuple[list[RankProcess], list[str]]:
    """Wait for every rank process to load its file; files that are not traces are skipped
    (as the loader does in a directory), other errors stop everything."""
    loaded: list[RankProcess] = []
    skipped: list[str] = []
    waiting = {r.conn: r for r in ranks}
    with bar:
        while waiting:
            for conn in wait(list(waiting)):
                r = waiting.pop(conn)  # type: ignore[arg-type]
                try:
                    r.thin = r.receive("loaded")
                    loaded.append(r)
                except UserError as exc:
                    skipped.append(skip_or_raise(exc, r.path, single_file=False))
                bar.done(r.path.name)
    return loaded, skipped


def _cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _by_kind(summaries: dict[int, RankSummary]) -> dict[str, dict[int, Any]]:
    out: dict[str, dict[int, Any]] = {}
    for rank, summary in summaries.items():
        for kind, value in summary.detector_summaries.items():
            out.setdefault(kind, {})[rank] = value
    return out
