"""What each run of a comparison is, and where BASE and NEW differ beyond their timings: the
accelerator, the world size, the ranks, the PyTorch, CUDA and NCCL versions, the profiled steps.

A diff of two runs on different hardware, software or scale is still a diff, but its numbers
mean something else; the report says so first. Versions come from the trainer's manifest when
there is one, else from the traces' own metadata (distributedInfo.nccl_version,
cuda_runtime_version), and are compared only when both runs record them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tracekit.errors import UserError
from tracekit.load.device import describe_traces
from tracekit.trace import Run


@dataclass(frozen=True)
class RunContext:
    """One run of a comparison, as the report describes it."""

    device: str
    world_size: int | None
    ranks: list[int]
    torch_version: str | None
    cuda_version: str | None
    nccl_version: str | None
    profiled_steps: list[int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first(values: list[Any]) -> Any:
    found = [v for v in values if v not in (None, "")]
    return found[0] if found else None


def _cuda_text(value: Any) -> str | None:
    """Kineto's cuda_runtime_version 12040 -> "12.4"; a manifest's "12.4" as it is."""
    if isinstance(value, int) and value > 1000:
        return f"{value // 1000}.{value % 1000 // 10}"
    return str(value) if value not in (None, "") else None


def context_of(run: Run) -> RunContext:
    manifest = run.manifest if isinstance(run.manifest, dict) else {}
    metas = [t.meta for t in run.traces]
    infos = [m.get("distributedInfo") for m in metas if isinstance(m.get("distributedInfo"), dict)]
    worlds = sorted({t.world_size for t in run.traces})
    steps = sorted({int(s) for t in run.traces for s in t.steps["step"]})
    return RunContext(
        device=describe_traces(run.traces),
        world_size=worlds[0] if len(worlds) == 1 else None,
        ranks=sorted(t.rank for t in run.traces),
        torch_version=_first([manifest.get("torch_version")]),
        cuda_version=_cuda_text(_first([manifest.get("cuda_version")]
                                       + [m.get("cuda_runtime_version") for m in metas])),
        nccl_version=_first([manifest.get("nccl_version")]
                            + [i.get("nccl_version") for i in infos]),
        profiled_steps=steps,
    )


def _steps_text(steps: list[int]) -> str:
    if not steps:
        return "no ProfilerStep spans"
    if steps == list(range(steps[0], steps[-1] + 1)):
        return f"steps {steps[0]}-{steps[-1]} ({len(steps)})"
    return f"steps {', '.join(map(str, steps))} ({len(steps)})"


def _ranks_text(ranks: list[int], world: int | None) -> str:
    of = f" of {world}" if world is not None else ""
    return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}{of}"


def differences(base: RunContext, new: RunContext) -> list[str]:
    """One sentence per way the runs differ beyond their timings (empty when alike)."""
    out: list[str] = []

    def differ(what: str, b: Any, n: Any, b_text: str | None = None,
               n_text: str | None = None) -> None:
        if b != n:
            out.append(f"BASE and NEW differ in {what}: BASE {b_text or b}, NEW {n_text or n}")

    differ("device", base.device, new.device)
    differ("world size", base.world_size, new.world_size,
           str(base.world_size or "unknown"), str(new.world_size or "unknown"))
    differ("ranks", base.ranks, new.ranks, _ranks_text(base.ranks, base.world_size),
           _ranks_text(new.ranks, new.world_size))
    for what, b, n in (("PyTorch version", base.torch_version, new.torch_version),
                       ("CUDA version", base.cuda_version, new.cuda_version),
                       ("NCCL version", base.nccl_version, new.nccl_version)):
        if b is not None and n is not None:
            differ(what, b, n)
    differ("profiled steps", base.profiled_steps, new.profiled_steps,
           _steps_text(base.profiled_steps), _steps_text(new.profiled_steps))
    return out


@dataclass(frozen=True)
class RunContexts:
    base: RunContext
    new: RunContext

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.base.to_dict(), "new": self.new.to_dict(),
                "differences": differences(self.base, self.new)}


def paired_ranks(base: Run, new: Run, rank: int | None, notes: list[str]) -> set[int]:
    """The ranks to compare: each rank only with itself. With `rank`, that one; else the ranks
    both runs hold (a note names those left out); none in common is an error."""
    if rank is not None:
        return {rank}
    base_ranks, new_ranks = set(base.ranks), set(new.ranks)
    common = base_ranks & new_ranks
    if not common:
        raise UserError(
            f"BASE and NEW have no rank in common (BASE {_ranks_text(sorted(base_ranks), None)}"
            f", NEW {_ranks_text(sorted(new_ranks), None)}): diff pairs each rank only with the "
            "same rank of the other run")
    for label, only in (("BASE", base_ranks - common), ("NEW", new_ranks - common)):
        if only:
            verb = "have" if len(only) > 1 else "has"
            notes.append(f"{_ranks_text(sorted(only), None)} of {label} {verb} no counterpart in "
                         "the other run: left out of the comparison")
    return common
