"""Which steps of steps.jsonl the profiler touched: its warmup steps, recorded steps, and the
step after each trace export, from the runners' own field or inferred for older logs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tracekit.link.profiler_steps import profiler_touch
from tracekit.link.steptime import logged_step_ms
from tracekit.load.rundir import read_manifest, read_steps_log
from tracekit.trace import Run

COMPILED_CPU = Path(__file__).resolve().parents[1] / "data" / "compiled_cpu"

# A split recording: steps 3-4 timed, 6-7 with stacks (5 is both the first export and the
# second window's warmup), 8 follows the second export.
SPLIT_LABELS = ["", "", "warmup", "active", "active", "export", "stacks", "stacks", "export",
                ""]


def split_log(with_field: bool) -> pd.DataFrame:
    touches = [[], [], ["warmup"], ["active"], ["active"], ["warmup", "export"], ["active"],
               ["active"], ["export"], []]
    rows = []
    for step, touch in enumerate(touches):
        row = {"step": step, "wall_ms": 10.0, "profiled": step in (3, 4, 6, 7)}
        if step in (6, 7):
            row["window"] = "stacks"
        if with_field:
            row["profiler"] = touch
        rows.append(row)
    return pd.DataFrame(rows)


def test_the_runners_field_names_each_touch_and_the_export_outranks_the_warmup() -> None:
    assert profiler_touch(split_log(with_field=True)).tolist() == SPLIT_LABELS


def test_an_older_log_is_read_from_its_profiled_and_window_columns() -> None:
    assert profiler_touch(split_log(with_field=False)).tolist() == SPLIT_LABELS


def test_a_log_without_a_profiled_column_takes_the_windows_from_the_manifest() -> None:
    log = split_log(with_field=False).drop(columns=["profiled", "window"])
    manifest = {"profiled_steps": [3, 4], "profiler": {"stack_window": [6, 7]}}
    assert profiler_touch(log, manifest).tolist() == SPLIT_LABELS
    assert set(profiler_touch(log, None)) == {""}  # nothing known: nothing touched


def test_the_compiled_cpu_run_warms_up_at_step_2_and_exports_before_step_6() -> None:
    log = read_steps_log(COMPILED_CPU)
    touch = profiler_touch(log, read_manifest(COMPILED_CPU))
    assert dict(zip(log["step"], touch, strict=True)) == {
        0: "", 1: "", 2: "warmup", 3: "active", 4: "active", 5: "active", 6: "export", 7: ""}


def test_step_comparisons_leave_out_the_export_and_stack_window_steps() -> None:
    log = split_log(with_field=True)
    log["wall_ms"] = [float(100 + s) for s in log["step"]]
    run = Run(path=Path("."), traces=[], steps_log=log)
    assert logged_step_ms(run) == [101.0, 102.0, 103.0, 104.0, 109.0]
