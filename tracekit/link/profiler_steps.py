"""Which steps of steps.jsonl the profiler touched, and how.

A runner's step log times every training step, but the steps around a profiled window are not
ordinary steps of the program:
- warmup: the step before a window's first recorded step. The profiler is prepared and its
  activity collection is on (Kineto discards the events); no Python tracer yet.
- active: a recorded step of the main window (the run directory's traces), or `stacks`: a step
  of a split recording's second window, recorded with Python stacks (`--record split`).
- export: the first step after a window's last one. The profiler stopped and exported its
  trace at the boundary before it; the runners restart the step's clock after their own rank's
  export, but the step still waits in its first collectives for ranks that are still exporting,
  and pays for freeing the profiler's buffers (modded-nanogpt on 2x H200: 0.7-4.5 s, against
  0.12 s steps). Its time is the profiler's, not the program's.

The runners write each row's touches in its `profiler` field, a list of "warmup", "active" and
"export" (a split recording's step after the first window is both "export" and "warmup");
older logs are read from their `profiled` and `window` columns (each window's steps are
consecutive), else from the manifest's `profiled_steps` and `profiler.stack_window`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

STACK_WINDOW = "stacks"
"""The `window` value of a split recording's second window (trainer.script_boot.STACKS_DIR)."""
LABELS = ("export", STACK_WINDOW, "active", "warmup")
"""Row labels, strongest first: a row touched in several ways takes the first that applies."""
NOT_THE_PROGRAM = frozenset({"export", STACK_WINDOW})
"""Touches whose time is the profiler's own: left out of every step-time median."""


def profiler_touch(log: pd.DataFrame, manifest: dict[str, Any] | None = None) -> pd.Series:
    """Per row of `log` (same index): "" for a step the profiler did not touch, else the
    strongest of LABELS."""
    steps = pd.to_numeric(log["step"], errors="coerce").to_numpy(dtype=np.float64)
    window = log["window"].fillna("").astype(str).to_numpy() if "window" in log \
        else np.full(len(log), "", dtype=object)
    stacked = window == STACK_WINDOW
    if "profiler" in log:
        touches = log["profiler"].explode()
        has = {name: touches.eq(name).groupby(level=0).any().reindex(log.index, fill_value=False)
               .to_numpy() for name in ("warmup", "active", "export")}
        marks = {"export": has["export"], STACK_WINDOW: has["active"] & stacked,
                 "active": has["active"] & ~stacked, "warmup": has["warmup"]}
    else:
        main, stack = recorded_steps(log, manifest, stacked)
        marks = {"export": np.isin(steps, [s.max() + 1 for s in (main, stack) if len(s)]),
                 STACK_WINDOW: np.isin(steps, stack), "active": np.isin(steps, main),
                 "warmup": np.isin(steps, [s.min() - 1 for s in (main, stack) if len(s)])}
    label = np.full(len(log), "", dtype=object)
    for name in reversed(LABELS):  # the strongest label is written last
        label[marks[name]] = name
    return pd.Series(label, index=log.index, name="profiler")


def recorded_steps(log: pd.DataFrame, manifest: dict[str, Any] | None,
                   stacked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step numbers of the main window and of the stack window, from an older log's columns
    (or the manifest when the log has no `profiled` column)."""
    steps = pd.to_numeric(log["step"], errors="coerce").to_numpy(dtype=np.float64)
    if "profiled" in log:
        profiled = log["profiled"].fillna(False).astype(bool).to_numpy()
        return steps[profiled & ~stacked], steps[profiled & stacked]
    manifest = manifest or {}
    main = np.asarray(manifest.get("profiled_steps") or [], dtype=np.float64)
    stack = np.asarray((manifest.get("profiler") or {}).get("stack_window") or [],
                       dtype=np.float64)
    return main, stack
