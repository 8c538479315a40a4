"""How the run behind a directory ended, from the trainer's manifest.json: a run that was
interrupted or failed must never be analysed as if it were whole.

The trainer writes every trace file whole or not at all (see trainer/profiling.py) and records
in the manifest the run's status (running, complete, interrupted, failed), where it stopped and
which ranks wrote their traces. A directory missing a rank's trace because its run stopped is
refused (the cross-rank analyses would be wrong); traces that are all there but come from a run
that stopped later get a note. Runs without a manifest (other programs) are taken as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tracekit.errors import UserError
from tracekit.trace import Trace


def stop_text(manifest: dict[str, Any] | None) -> str | None:
    """"the run was interrupted by SIGTERM at step 8", ...; None for a complete run or when the
    manifest does not say."""
    if not isinstance(manifest, dict):
        return None
    status = manifest.get("status")
    if status not in ("running", "interrupted", "failed"):
        return None
    stop = manifest.get("stop") if isinstance(manifest.get("stop"), dict) else {}
    at = stop.get("at_step")
    where = f" at step {at}" if isinstance(at, int) else ""
    reason = stop.get("reason")
    launcher = f" ({stop['launcher']})" if isinstance(stop.get("launcher"), str) else ""
    if status == "running":
        return ("the run did not finish (its manifest still says running: it was killed, or is "
                "still running)")
    if status == "interrupted":
        return f"the run was interrupted by {reason or 'a signal'}{where}{launcher}"
    return f"the run failed{where}" + (f": {reason}" if reason else "") + launcher


def check_no_traces(run_dir: Path, manifest: dict[str, Any] | None) -> None:
    """A run directory without trace files: say why when the manifest knows."""
    text = stop_text(manifest)
    if text is not None:
        raise UserError(f"{run_dir}: incomplete run: {text} before any rank wrote its trace")


def check_run_state(path: Path, single_file: bool, manifest: dict[str, Any] | None,
                    traces: list[Trace]) -> None:
    """Refuse a run directory whose stopped run left ranks without traces; note on the first
    trace that the run stopped when the traces themselves are whole."""
    text = stop_text(manifest)
    if text is None or not traces:
        return
    assert manifest is not None
    loaded = sorted(t.rank for t in traces)
    world = manifest.get("world_size")
    expected = range(world) if isinstance(world, int) and world > 0 else loaded
    missing = sorted(set(expected) - set(loaded))
    if missing and not single_file:
        raise UserError(
            f"{path}: incomplete run: {text}; rank(s) {_ranks(missing)} wrote no trace (only "
            f"{_ranks(loaded)} did), so cross-rank analyses would mislead: analyse one rank's "
            "file on its own to see it anyway")
    traces[0].warnings.insert(0, f"{text}: the traces here are whole, but the run is not")


def _ranks(ranks: list[int]) -> str:
    return ", ".join(str(r) for r in ranks)

