"""Compare two runs (BASE and NEW) as data: what got faster or slower, what appeared or went.

`diff_runs(base_run, base_findings, new_run, new_findings)` returns a `RunDiff`; `cli.py diff`
renders it (rich terminal tables, `--json`, `--html`). Everything here is plain data so tests and
notebooks can assert on it.

Normalisation. Two runs rarely have the same number of profiled steps or ranks, so every time in
a per-name table is GPU/CPU time per profiled step and rank ("per step"): the total over the
compared ranks divided by the number of ProfilerStep spans in them (by the number of ranks when
a trace has no steps). Counts are totals, so "appeared"/"disappeared" are exact.

Kernel names are matched across runs by `normalize_kernel_name`: the leading `void ` and the
argument list go; numeric template values (vector widths, tile sizes), lambda ids (`#3`), long
hashes and a trailing `_<n>` (Inductor's kernel index) become `N` or are dropped. Template TYPE
arguments are kept on purpose: `vectorized_elementwise_kernel<4, FillFunctor<float>, ..>` and
`..<4, CUDAFunctor_add<float>, ..>` are different work, and stripping them would hide exactly
the kernels a fix removes (the select_backward zero-fill).

Findings are matched on (kind, cause source, normalised culprit kernel), falling back to the
cause op when a finding has neither; findings of one key on several ranks are summed. The cause
source is the file and the text of its line when each run's copy of the file can be read (runs
of different code: an edit above the line moves it, the finding is still the same), else
`file:line`.

JSON schema (`RunDiff.to_dict()`, `schema_version` 1; times in microseconds unless the name says
`_ms`; `null` where a value cannot be computed):

    {
      "schema_version": 1,
      "base": RunInfo, "new": RunInfo,
        RunInfo = {"path": str, "ranks": [int], "profiled_steps": int,
                   "step_time_source": str, "findings": int}
      "rank": int | null,                         # the --rank filter, or null for all ranks
      "steps": {
        "source": "steps.jsonl" | "gpu ProfilerStep" | "cpu ProfilerStep" | null,
        "base": Dist | null, "new": Dist | null,
          Dist = {"n": int, "mean_ms", "median_ms", "std_ms", "min_ms", "p90_ms", "max_ms",
                  "values_ms": [float]}
        "delta_mean_ms", "delta_median_ms", "pct_change_mean": float | null,
        "welch_t", "welch_p", "mannwhitney_u", "mannwhitney_p": float | null,
        "note": str
      },
      "kernel_categories": [Row], "kernels": [Row], "kernels_by_launching_op": [Row],
      "cpu_ops": [Row], "cpu_labels": [Row], "gpu_labels": [Row],
        Row = {"name": str,               # the matching key (normalised name)
               "example": str,            # one raw name behind the key
               "base_count": int, "new_count": int,
               "base_us": float, "new_us": float,   # per profiled step and rank
               "delta_us": float, "pct_change": float | null,
               "status": "both" | "appeared" | "disappeared"}
        rows sorted by |delta_us|, largest first
      "kernels_appeared": [str], "kernels_disappeared": [str],
      "findings": {
        "resolved": [FindingRow],  # in BASE only
        "introduced": [FindingRow],  # in NEW only
        "common": [FindingRow],
          FindingRow = {"kind", "source": str | null, "culprit": str | null,
                        "title": str, "ranks": [int],
                        "base_count": int, "new_count": int,
                        "base_cost_us": float, "new_cost_us": float, "delta_cost_us": float}
      },
      "comm": [CommRow],
        CommRow = {"rank": int, "base_nccl_us", "new_nccl_us", "base_exposed_us",
                   "new_exposed_us", "delta_exposed_us": float | null}   # per profiled step
      "notes": [str]
    }

`kernels_by_launching_op`: GPU time of the kernels launched under each CPU op name, counting a
kernel once for every DISTINCT op name on its launch stack (so `aten::select_backward` owns the
fill it launches through `aten::zero_`); needs a linked trace.
`cpu_ops`: inclusive CPU time of each op name. `cpu_labels`/`gpu_labels`: record_function spans
on the CPU and their GPU-side copies, ProfilerStep spans excluded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tracekit.errors import UserError
from tracekit.finding import Finding, SourceLine
from tracekit.link.source import SourceIndex
from tracekit.trace import Run, Trace

SCHEMA_VERSION = 1
MAX_STACK_DEPTH = 512
"""Guard for the op-parent walk; real CPU op stacks are tens deep."""

# ---- name normalisation ------------------------------------------------------------------------

_ANON = re.compile(r"\(anonymous namespace\)")
_LAMBDA_ID = re.compile(r"#\d+")
# A hash: 12+ hex digits, or 32+ base-32-ish characters (Inductor's FX graph keys); short
# alphanumeric runs are real name parts (`tilesize256x64x8`, `sm90`).
_HASH = re.compile(r"(?<![0-9A-Za-z])(?:(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{12,}"
                   r"|(?=[0-9a-z]*\d)[0-9a-z]{32,})(?![0-9A-Za-z])")
_NUMBER = re.compile(r"(?<![A-Za-z_0-9.])\d+(?:\.\d+)?(?:[uU]?[lL]{0,2}|[fF])?\b")
_TRAILING_INDEX = re.compile(r"_\d+$")
_SPACES = re.compile(r"\s+")
_STEP_LABEL = re.compile(r"^ProfilerStep#\d+$")


def _cut_argument_list(name: str) -> str:
    """Drop the outermost `(...)` parameter list: the first `(` outside template brackets."""
    depth = 0
    for pos, char in enumerate(name):
        if char == "<":
            depth += 1
        elif char == ">":
            depth = max(depth - 1, 0)
        elif char == "(" and depth == 0 and pos > 0:
            return name[:pos]
    return name


def normalize_kernel_name(name: str) -> str:
    """The cross-run matching key of a kernel name (see the module docstring for why)."""
    key = name.strip()
    if key.startswith("void "):
        key = key[5:]
    key = _ANON.sub("anon", key)
    key = _cut_argument_list(key)
    key = _LAMBDA_ID.sub("#N", key)
    key = _HASH.sub("<hash>", key)
    key = _NUMBER.sub("N", key)
    key = _TRAILING_INDEX.sub("", key)
    return _SPACES.sub(" ", key).strip()


def normalize_label(name: str) -> str:
    """Matching key of an op or record_function label: hashes and `#<n>` ids removed."""
    return _SPACES.sub(" ", _HASH.sub("<hash>", _LAMBDA_ID.sub("#N", name.strip())))


def _normalize_unique(names: pd.Series, fn: Callable[[str], str]) -> pd.Series:
    """Apply a name normaliser once per distinct name (names repeat thousands of times)."""
    if names.empty:
        return names.astype(object)
    codes, uniques = pd.factorize(names.astype(str))
    mapped = np.array([fn(u) for u in uniques], dtype=object)
    return pd.Series(mapped[codes], index=names.index)


# ---- data classes --------------------------------------------------------------------------


@dataclass
class Distribution:
    """Step times of one run, in milliseconds."""

    n: int
    mean_ms: float
    median_ms: float
    std_ms: float
    min_ms: float
    p90_ms: float
    max_ms: float
    values_ms: list[float]

    @classmethod
    def of(cls, values_ms: Iterable[float]) -> Distribution | None:
        arr = np.asarray([v for v in values_ms if v is not None and math.isfinite(v)], float)
        if arr.size == 0:
            return None
        return cls(n=int(arr.size), mean_ms=float(arr.mean()), median_ms=float(np.median(arr)),
                   std_ms=float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
                   min_ms=float(arr.min()), p90_ms=float(np.percentile(arr, 90)),
                   max_ms=float(arr.max()), values_ms=[float(v) for v in arr])


@dataclass
class StepComparison:
    source: str | None
    base: Distribution | None
    new: Distribution | None
    delta_mean_ms: float | None = None
    delta_median_ms: float | None = None
    pct_change_mean: float | None = None
    welch_t: float | None = None
    welch_p: float | None = None
    mannwhitney_u: float | None = None
    mannwhitney_p: float | None = None
    note: str = ""


@dataclass
class Row:
    """One name compared across runs (times per profiled step and rank)."""

    name: str
    example: str
    base_count: int
    new_count: int
    base_us: float
    new_us: float
    delta_us: float
    pct_change: float | None
    status: str


@dataclass
class FindingRow:
    kind: str
    source: str | None
    culprit: str | None
    title: str
    ranks: list[int]
    base_count: int
    new_count: int
    base_cost_us: float
    new_cost_us: float
    delta_cost_us: float


@dataclass
class FindingsDiff:
    resolved: list[FindingRow] = field(default_factory=list)
    introduced: list[FindingRow] = field(default_factory=list)
    common: list[FindingRow] = field(default_factory=list)


@dataclass
class CommRow:
    """Per rank NCCL kernel time and exposed (not overlapped by compute) NCCL time, per step."""

    rank: int
    base_nccl_us: float | None
    new_nccl_us: float | None
    base_exposed_us: float | None
    new_exposed_us: float | None
    delta_exposed_us: float | None


@dataclass
class RunInfo:
    path: str
    ranks: list[int]
    profiled_steps: int
    step_time_source: str | None
    findings: int


@dataclass
class RunDiff:
    base: RunInfo
    new: RunInfo
    rank: int | None
    steps: StepComparison
    kernel_categories: list[Row]
    kernels: list[Row]
    kernels_by_launching_op: list[Row]
    cpu_ops: list[Row]
    cpu_labels: list[Row]
    gpu_labels: list[Row]
    kernels_appeared: list[str]
    kernels_disappeared: list[str]
    findings: FindingsDiff
    comm: list[CommRow]
    notes: list[str] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON form documented in the module docstring (NaN becomes null)."""
        return _clean(asdict(self))

    def row(self, table: str, name: str) -> Row | None:
        """The row of `name` (a matching key) in one of the Row tables, or None."""
        for row in getattr(self, table):
            if row.name == name:
                return row
        return None


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python, recursively."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---- selection and normalisation of a run ----------------------------------------------------


def _traces(run: Run, rank: int | None) -> list[Trace]:
    if rank is None:
        return list(run.traces)
    if rank not in run.ranks:
        known = ", ".join(str(r) for r in run.ranks) or "none"
        raise UserError(f"rank {rank} is not in {run.path} (ranks: {known})")
    return [run.rank(rank)]


def _step_count(traces: list[Trace]) -> int:
    """Denominator of the per-step tables: ProfilerStep spans over the traces (>= 1 per rank)."""
    return sum(max(len(t.steps), 1) for t in traces)


def _concat(traces: list[Trace], frame: str) -> pd.DataFrame:
    frames = [getattr(t, frame).assign(rank=t.rank) for t in traces]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ---- step times ------------------------------------------------------------------------------


def _steps_log_ms(run: Run, skip_below: int) -> list[float] | None:
    """Wall times from steps.jsonl, without the first steps (compilation, warmup)."""
    log = run.steps_log
    if log is None or log.empty or "wall_ms" not in log:
        return None
    if "step" in log:
        log = log[log["step"] >= skip_below]
    values = pd.to_numeric(log["wall_ms"], errors="coerce").dropna()
    return [float(v) for v in values] or None


def _rank_step_ms(steps: pd.DataFrame, side: str) -> pd.DataFrame:
    """One rank's step durations (ms) from its ProfilerStep spans.

    CPU spans tile the CPU timeline (one step starts where the last ended), so the span is the
    step. GPU spans cover only the step's kernels: a step whose kernels started late because
    the CPU stalled (data wait, sync) would look as fast as the others. So on the GPU side a
    step lasts from the previous step's GPU end to its own GPU end (completion to completion:
    its work plus the idle time the GPU spent waiting for it); the first profiled step, which
    has no predecessor in the trace, uses its own span.
    """
    ordered = steps.sort_values("step")
    start, end = ordered[f"{side}_ts"], ordered[f"{side}_end"]
    if side == "gpu":
        follows = ordered["step"].diff().eq(1) & end.shift().notna()
        start = start.where(~follows, end.shift())
    return pd.DataFrame({"step": ordered["step"].to_numpy(),
                         "ms": ((end - start) / 1000.0).to_numpy()})


def _profiler_steps_ms(traces: list[Trace], side: str) -> list[float]:
    """Per ProfilerStep number, the slowest rank's duration (a step is as slow as its last rank)."""
    frames = [_rank_step_ms(t.steps, side) for t in traces if not t.steps.empty]
    if not frames:
        return []
    both = pd.concat(frames, ignore_index=True).dropna()
    return [float(v) for v in both.groupby("step")["ms"].max().sort_index()]


def _has_gpu_steps(traces: list[Trace]) -> bool:
    return any(not t.steps.empty and t.steps["gpu_ts"].notna().any() for t in traces)


def _significance(base: list[float], new: list[float], comp: StepComparison) -> None:
    """Welch's t-test and Mann-Whitney U over step times (two-sided), when scipy is present."""
    if len(base) < 2 or len(new) < 2:
        comp.note += " Too few steps for a significance test (need 2+ per run)."
        return
    try:
        from scipy import stats
    except ImportError:
        comp.note += " scipy is not installed: no significance test."
        return
    if np.std(base) == 0 and np.std(new) == 0:
        comp.note += " Step times are constant in both runs: no significance test."
        return
    welch = stats.ttest_ind(new, base, equal_var=False)
    mwu = stats.mannwhitneyu(new, base, alternative="two-sided")
    comp.welch_t, comp.welch_p = float(welch.statistic), float(welch.pvalue)
    comp.mannwhitney_u, comp.mannwhitney_p = float(mwu.statistic), float(mwu.pvalue)


def compare_steps(base_run: Run, new_run: Run, base_traces: list[Trace],
                  new_traces: list[Trace], skip_below: int = 1) -> StepComparison:
    """Step time of each run and the difference; both runs always use the same source.

    steps.jsonl (every step, not only profiled ones) when both runs have it, and no --rank
    filter (it is rank 0's wall clock); else the GPU-side ProfilerStep spans when both runs have
    them (the CPU runs ahead of the GPU, so CPU spans measure launch time); else CPU spans.
    """
    base_log = _steps_log_ms(base_run, skip_below)
    new_log = _steps_log_ms(new_run, skip_below)
    all_ranks = (len(base_traces) == len(base_run.traces)
                 and len(new_traces) == len(new_run.traces))
    if base_log and new_log and all_ranks:
        source, base_ms, new_ms = "steps.jsonl", base_log, new_log
        note = f"steps.jsonl wall time, steps >= {skip_below}."
    elif _has_gpu_steps(base_traces) and _has_gpu_steps(new_traces):
        source = "gpu ProfilerStep"
        base_ms = _profiler_steps_ms(base_traces, "gpu")
        new_ms = _profiler_steps_ms(new_traces, "gpu")
        note = ("GPU-side ProfilerStep spans (previous step's GPU end to this step's), "
                "slowest rank per step.")
    else:
        source = "cpu ProfilerStep"
        base_ms = _profiler_steps_ms(base_traces, "cpu")
        new_ms = _profiler_steps_ms(new_traces, "cpu")
        note = "CPU ProfilerStep spans, slowest rank per step."
    comp = StepComparison(source=source, base=Distribution.of(base_ms),
                          new=Distribution.of(new_ms), note=note)
    if comp.base is None or comp.new is None:
        comp.source = None
        comp.note = "No step times in one of the runs (no steps.jsonl, no ProfilerStep spans)."
        return comp
    comp.delta_mean_ms = comp.new.mean_ms - comp.base.mean_ms
    comp.delta_median_ms = comp.new.median_ms - comp.base.median_ms
    if comp.base.mean_ms > 0:
        comp.pct_change_mean = 100.0 * comp.delta_mean_ms / comp.base.mean_ms
    _significance(comp.base.values_ms, comp.new.values_ms, comp)
    return comp


# ---- per-name tables --------------------------------------------------------------------------


def _aggregate(frame: pd.DataFrame, key: pd.Series, raw: pd.Series, value: pd.Series,
               per: int) -> pd.DataFrame:
    """count, per-step time and one raw example name per key."""
    if frame.empty:
        return pd.DataFrame(columns=["count", "us", "example"])
    grouped = pd.DataFrame({"key": key.to_numpy(), "raw": raw.astype(str).to_numpy(),
                            "value": value.to_numpy(dtype=np.float64)}).groupby("key", sort=False)
    out = pd.DataFrame({"count": grouped.size(), "us": grouped["value"].sum() / per,
                        "example": grouped["raw"].first()})
    return out


def _compare_tables(base: pd.DataFrame, new: pd.DataFrame) -> list[Row]:
    """Outer-join two aggregates into Rows sorted by |delta|."""
    joined = base.add_suffix("_b").join(new.add_suffix("_n"), how="outer")
    rows: list[Row] = []
    if joined.empty:
        return rows
    joined["count_b"] = joined["count_b"].fillna(0).astype(int)
    joined["count_n"] = joined["count_n"].fillna(0).astype(int)
    joined["us_b"] = joined["us_b"].astype(float).fillna(0.0)
    joined["us_n"] = joined["us_n"].astype(float).fillna(0.0)
    joined["delta"] = joined["us_n"] - joined["us_b"]
    joined = joined.reindex(joined["delta"].abs().sort_values(ascending=False, kind="stable")
                            .index)
    for key, rec in joined.iterrows():  # one row per distinct name (hundreds), not per event
        status = ("appeared" if rec["count_b"] == 0 else
                  "disappeared" if rec["count_n"] == 0 else "both")
        example = rec["example_b"] if isinstance(rec["example_b"], str) else rec["example_n"]
        pct = (100.0 * rec["delta"] / rec["us_b"]) if rec["us_b"] > 0 else None
        rows.append(Row(name=str(key), example=str(example), base_count=int(rec["count_b"]),
                        new_count=int(rec["count_n"]), base_us=float(rec["us_b"]),
                        new_us=float(rec["us_n"]), delta_us=float(rec["delta"]),
                        pct_change=pct, status=status))
    return rows


def _kernel_table(traces: list[Trace], by: str, per: int | None = None) -> pd.DataFrame:
    kernels = _concat(traces, "kernels")
    per = per or _step_count(traces)
    if kernels.empty:
        return _aggregate(kernels, kernels.get("name", pd.Series()), pd.Series(), pd.Series(), 1)
    if by == "category":
        key = kernels["category"].fillna("other").astype(str)
        return _aggregate(kernels, key, key, kernels["dur"], per)
    key = _normalize_unique(kernels["name"], normalize_kernel_name)
    return _aggregate(kernels, key, kernels["name"], kernels["dur"], per)


def launching_op_pairs(trace: Trace) -> pd.DataFrame:
    """(kernel row, op name) for every distinct op name on each kernel's launch stack.

    Walks `ops.parent` upward one level at a time for all kernels at once, so the Python loop
    runs once per stack level, not once per kernel.
    """
    kernels, ops = trace.kernels, trace.ops
    if kernels.empty or ops.empty or "op_idx" not in kernels:
        return pd.DataFrame({"kernel": pd.Series(dtype=np.int64),
                             "op": pd.Series(dtype=object)})
    parent = ops["parent"].to_numpy(dtype=np.int64)
    op_names = ops["name"].astype(str).to_numpy(dtype=object)
    current = kernels["op_idx"].to_numpy(dtype=np.int64).copy()
    kernel_rows = np.arange(len(kernels), dtype=np.int64)
    found_k, found_op = [], []
    for _ in range(MAX_STACK_DEPTH):
        alive = (current >= 0) & (current < len(ops))
        if not alive.any():
            break
        found_k.append(kernel_rows[alive])
        found_op.append(current[alive])
        nxt = np.full_like(current, -1)
        nxt[alive] = parent[current[alive]]
        current = nxt
    if not found_k:
        return pd.DataFrame({"kernel": pd.Series(dtype=np.int64),
                             "op": pd.Series(dtype=object)})
    pairs = pd.DataFrame({"kernel": np.concatenate(found_k),
                          "op": op_names[np.concatenate(found_op)]})
    return pairs.drop_duplicates()


def _launching_op_table(traces: list[Trace], per: int | None = None) -> pd.DataFrame:
    per = per or _step_count(traces)
    parts = []
    for trace in traces:
        pairs = launching_op_pairs(trace)
        if pairs.empty:
            continue
        dur = trace.kernels["dur"].to_numpy(dtype=np.float64)[pairs["kernel"].to_numpy()]
        parts.append(pd.DataFrame({"op": pairs["op"].to_numpy(), "dur": dur}))
    if not parts:
        return pd.DataFrame(columns=["count", "us", "example"])
    both = pd.concat(parts, ignore_index=True)
    key = _normalize_unique(both["op"], normalize_label)
    return _aggregate(both, key, both["op"], both["dur"], per)


def _ops_table(traces: list[Trace], per: int | None = None) -> pd.DataFrame:
    ops = _concat(traces, "ops")
    if ops.empty:
        return pd.DataFrame(columns=["count", "us", "example"])
    key = _normalize_unique(ops["name"], normalize_label)
    return _aggregate(ops, key, ops["name"], ops["dur"], per or _step_count(traces))


def _labels_table(traces: list[Trace], side: str, per: int | None = None) -> pd.DataFrame:
    ann = _concat(traces, "annotations")
    if ann.empty:
        return pd.DataFrame(columns=["count", "us", "example"])
    names = ann["name"].astype(str)
    ann = ann[(ann["side"] == side) & ~names.str.match(_STEP_LABEL)]
    if ann.empty:
        return pd.DataFrame(columns=["count", "us", "example"])
    key = _normalize_unique(ann["name"], normalize_label)
    return _aggregate(ann, key, ann["name"], ann["dur"], per or _step_count(traces))


# ---- findings ---------------------------------------------------------------------------------


LineText = Callable[[SourceLine], str | None]


def source_line_reader(run: Run) -> LineText:
    """The stripped text of a finding's source line in the run's own copy of the code (its
    source snapshot or the roots the linker used); None when the file cannot be read."""
    index = SourceIndex(roots=list(dict.fromkeys(r for t in run.traces for r in t.source_roots)))
    lines: dict[str, list[str] | None] = {}

    def text(source: SourceLine) -> str | None:
        if source.file not in lines:
            path = index.resolve(source.file)
            try:
                lines[source.file] = path.read_text().splitlines() if path else None
            except (OSError, UnicodeDecodeError):
                lines[source.file] = None
        found = lines[source.file]
        if found is None or source.line is None or not 0 < source.line <= len(found):
            return None
        return found[source.line - 1].strip() or None

    return text


def finding_key(finding: Finding, line_text: LineText | None = None
                ) -> tuple[str, str | None, str | None]:
    """(kind, cause source, normalised culprit kernel); cause op if neither. The source is
    `file: <line text>` when `line_text` can read it, else `file:line`."""
    source = finding.cause.source if finding.cause else None
    where = None
    if source:
        text = line_text(source) if line_text else None
        where = f"{source.file}: {text}" if text else f"{source.file}:{source.line}"
    kernel = finding.culprit.kernel if finding.culprit else None
    culprit = normalize_kernel_name(kernel) if kernel else None
    if where is None and culprit is None and finding.cause and finding.cause.op:
        culprit = f"op {finding.cause.op}"
    return finding.kind, where, culprit


def _source_text(finding: Finding) -> str | None:
    source = finding.cause.source if finding.cause else None
    return f"{source.file}:{source.line}" if source else None


def _group_findings(findings: list[Finding], line_text: LineText | None
                    ) -> dict[tuple[str, str | None, str | None], list[Finding]]:
    groups: dict[tuple[str, str | None, str | None], list[Finding]] = {}
    for finding in findings:
        groups.setdefault(finding_key(finding, line_text), []).append(finding)
    return groups


def compare_findings(base: list[Finding], new: list[Finding],
                     base_text: LineText | None = None,
                     new_text: LineText | None = None) -> FindingsDiff:
    """Findings resolved (BASE only), introduced (NEW only), and in both with the cost change.

    `base_text`/`new_text` read source lines in each run's code (`source_line_reader`), so a
    finding whose line moved between the runs still matches itself.
    """
    base_groups, new_groups = _group_findings(base, base_text), _group_findings(new, new_text)
    out = FindingsDiff()
    for key in list(base_groups) + [k for k in new_groups if k not in base_groups]:
        b, n = base_groups.get(key, []), new_groups.get(key, [])
        first = (b or n)[0]
        b_cost = float(sum(f.cost_us for f in b))
        n_cost = float(sum(f.cost_us for f in n))
        sources = list(dict.fromkeys(x for x in map(_source_text, b[:1] + n[:1]) if x))
        row = FindingRow(kind=key[0], source=" -> ".join(sources) or None, culprit=key[2],
                         title=first.title,
                         ranks=sorted({f.rank for f in b + n}),
                         base_count=sum(f.count for f in b), new_count=sum(f.count for f in n),
                         base_cost_us=b_cost, new_cost_us=n_cost, delta_cost_us=n_cost - b_cost)
        (out.common if b and n else out.resolved if b else out.introduced).append(row)
    for rows in (out.resolved, out.introduced, out.common):
        rows.sort(key=lambda r: -max(r.base_cost_us, r.new_cost_us, abs(r.delta_cost_us)))
    return out


# ---- communication ----------------------------------------------------------------------------


def _comm_per_rank(traces: list[Trace]) -> dict[int, tuple[float, float]]:
    """rank -> (NCCL busy us, exposed NCCL us), per profiled step of that rank."""
    from tracekit.overlap import kernel_overlap

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


# ---- one rank's share -------------------------------------------------------------------------

TABLES = ("kernels", "kernel_categories", "kernels_by_launching_op", "cpu_ops", "cpu_labels",
          "gpu_labels")


@dataclass
class RankTotals:
    """One rank's share of a diff: per-name counts and summed (not per-step) times, and its
    NCCL time. Small (one row per distinct name), so a rank's process can compute it and send
    it on (tracekit.rankwise) instead of its frames."""

    rank: int
    tables: dict[str, pd.DataFrame]
    comm: tuple[float, float] | None


def rank_totals(trace: Trace) -> RankTotals:
    traces = [trace]
    tables = {
        "kernels": _kernel_table(traces, "name", per=1),
        "kernel_categories": _kernel_table(traces, "category", per=1),
        "kernels_by_launching_op": _launching_op_table(traces, per=1),
        "cpu_ops": _ops_table(traces, per=1),
        "cpu_labels": _labels_table(traces, "cpu", per=1),
        "gpu_labels": _labels_table(traces, "gpu", per=1),
    }
    return RankTotals(trace.rank, tables, _comm_per_rank(traces).get(trace.rank))


def combined_table(totals: list[RankTotals], name: str, per: int) -> pd.DataFrame:
    """The ranks' tables summed per name, per step: what one table over all ranks gives (the
    example name is the first rank's, in rank order)."""
    frames = [t.tables[name] for t in sorted(totals, key=lambda t: t.rank)
              if not t.tables[name].empty]
    if not frames:
        return pd.DataFrame(columns=["count", "us", "example"])
    grouped = pd.concat(frames).groupby(level=0, sort=False)
    return pd.DataFrame({"count": grouped["count"].sum(), "us": grouped["us"].sum() / per,
                         "example": grouped["example"].first()})


# ---- the whole diff ---------------------------------------------------------------------------


def _info(run: Run, traces: list[Trace], findings: list[Finding], source: str | None) -> RunInfo:
    return RunInfo(path=str(run.path), ranks=[t.rank for t in traces],
                   profiled_steps=sum(len(t.steps) for t in traces), step_time_source=source,
                   findings=len(findings))


def diff_runs(base_run: Run, base_findings: list[Finding], new_run: Run,
              new_findings: list[Finding], rank: int | None = None,
              skip_steps_below: int = 1) -> RunDiff:
    """Everything `cli.py diff` reports, as data."""
    return diff_totals(base_run, [rank_totals(t) for t in base_run.traces], base_findings,
                       new_run, [rank_totals(t) for t in new_run.traces], new_findings,
                       rank=rank, skip_steps_below=skip_steps_below)


def diff_totals(base_run: Run, base_totals: list[RankTotals], base_findings: list[Finding],
                new_run: Run, new_totals: list[RankTotals], new_findings: list[Finding],
                rank: int | None = None, skip_steps_below: int = 1) -> RunDiff:
    """`diff_runs` from each rank's totals: the runs' traces need only their steps (thin
    traces, as tracekit.rankwise returns, do)."""
    base_traces, new_traces = _traces(base_run, rank), _traces(new_run, rank)
    if rank is not None:
        base_findings = [f for f in base_findings if f.rank == rank]
        new_findings = [f for f in new_findings if f.rank == rank]
        base_totals = [t for t in base_totals if t.rank == rank]
        new_totals = [t for t in new_totals if t.rank == rank]
    notes: list[str] = []
    steps = compare_steps(base_run, new_run, base_traces, new_traces, skip_steps_below)
    base_per, new_per = _step_count(base_traces), _step_count(new_traces)
    tables = {name: _compare_tables(combined_table(base_totals, name, base_per),
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
        findings=compare_findings(base_findings, new_findings, source_line_reader(base_run),
                                  source_line_reader(new_run)),
        comm=compare_comm({t.rank: t.comm for t in base_totals if t.comm},
                          {t.rank: t.comm for t in new_totals if t.comm}),
        notes=notes,
    )


def diff_paths(base: Path | str, new: Path | str, rank: int | None = None,
               progress: bool = True) -> tuple[RunDiff, Run, Run, list[Finding], list[Finding]]:
    """Analyse both runs (files or run directories), each one process per rank
    (tracekit.rankwise: no process holds a rank's frames besides its own), then diff them.
    The Runs returned hold thin traces; `diff_runs` on loaded Runs gives the same RunDiff."""
    from tracekit.rankwise import analyze_rankwise_totals

    base_run, base_findings, base_totals = analyze_rankwise_totals(base, progress=progress)
    new_run, new_findings, new_totals = analyze_rankwise_totals(new, progress=progress)
    result = diff_totals(base_run, base_totals, base_findings, new_run, new_totals,
                         new_findings, rank=rank)
    return result, base_run, new_run, base_findings, new_findings
