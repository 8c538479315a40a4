"""The statement behind CPU time that delays a collective: the Python call tree is followed down
to the deepest user code that holds the gap, and the finding points at the call to change."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.synth import SynthTrace, write_run
from tracekit.detectors.comm_gap import detect
from tracekit.pipeline import load
from tracekit.source import call_line, def_line_of

NELEMS = 8 * 1024 * 1024

# An optimizer shaped like modded-nanogpt's: a decorated step() (the profiler names it by its
# decorator's line), one call of _normuon_update per parameter, which calls polar_express
# (matrix products written with @: no call named matmul).
OPT_PY = textwrap.dedent('''\
    import torch


    def polar_express(g):
        for _ in range(5):
            g = g @ g.T
        return g


    class NorMuon:
        @torch.no_grad()
        def step(self, params):
            for p in params:
                self._normuon_update(p)

        def _normuon_update(self, p):
            g = p.grad
            v = polar_express(g)
            p.add_(v)


    def main(opt, params):
        while True:
            opt.step(params)
''')
DECORATOR_LINE, UPDATE_CALL, UPDATE_DEF, POLAR_DEF, POLAR_CALL, MAIN_LOOP_CALL = \
    11, 14, 16, 4, 18, 24


def late_gap_trace(polar_calls: int, matmuls_per_call: int, polar_share: float) -> SynthTrace:
    """Steps of 10 ms: an all_reduce, then ~2 ms of Python in the optimizer (polar_express
    calls taking `polar_share` of it), then the next all_reduce. `main` was already running
    when profiling began (named by its loop's line)."""
    t = SynthTrace(rank=0, world_size=2)
    t.python_frame("opt.py", MAIN_LOOP_CALL, "main", ts=0, dur=40_000)
    for step in range(3):
        base = 10_000.0 * step
        t.step(step, cpu_ts=base, cpu_dur=9_000, gpu_ts=base + 50, gpu_dur=9_000)
        t.nccl_kernel("allreduce", launch_ts=base + 8, kernel_ts=base + 100, kernel_dur=100,
                      nelems=NELEMS)
        t.python_frame("opt.py", DECORATOR_LINE, "step", ts=base + 20, dur=1_975)
        t.python_frame("opt.py", UPDATE_DEF, "_normuon_update", ts=base + 25, dur=1_960)
        call = 1_900 * polar_share / polar_calls
        for i in range(polar_calls):
            start = base + 30 + i * call
            t.python_frame("opt.py", POLAR_DEF, "polar_express", ts=start, dur=call - 5)
            for j in range(matmuls_per_call):
                t.python_builtin("method matmul of Tensor object",
                                 ts=start + 1 + j * (call - 10) / matmuls_per_call,
                                 dur=(call - 10) / matmuls_per_call - 1)
        t.nccl_kernel("allreduce", launch_ts=base + 2_000, kernel_ts=base + 2_015,
                      kernel_dur=100, nelems=NELEMS)
    return t


def late_finding(tmp_path: Path, polar_calls: int = 4, matmuls_per_call: int = 5,
                 polar_share: float = 1.0):
    run_dir = write_run(tmp_path / "run", [late_gap_trace(polar_calls, matmuls_per_call,
                                                          polar_share)])
    (run_dir / "source").mkdir()
    (run_dir / "source" / "opt.py").write_text(OPT_PY)
    (f,) = detect(load(run_dir, progress=False))
    return f


def test_the_gap_is_followed_into_polar_express_and_points_at_its_call(tmp_path: Path) -> None:
    """No single polar_express call fills the 1.9 ms gap, four of them together do: the line
    is the call of polar_express in _normuon_update (its matmuls are `@`, not calls)."""
    f = late_finding(tmp_path)
    src = f.cause.source
    assert (src.file, src.line, src.function, src.line_exact) == \
        ("opt.py", POLAR_CALL, "_normuon_update", True)
    assert f.evidence["cpu_activity"]["call_chain"] == ["_normuon_update", "polar_express",
                                                        "matmul"]
    assert "CPU in _normuon_update -> polar_express -> matmul (opt.py:18)" in f.title


def test_time_in_the_users_own_function_points_at_its_call_in_the_decorated_step(
        tmp_path: Path) -> None:
    """polar_express holds 40% of the gap, _normuon_update's own code the rest: the line is the
    call of _normuon_update in step(), found although the profiler names step() by its
    decorator's line, and the chain says how much of it polar_express held."""
    f = late_finding(tmp_path, polar_share=0.4)
    src = f.cause.source
    assert (src.line, src.function, src.line_exact) == (UPDATE_CALL, "step", True)
    # the chain ends with where _normuon_update's time went: polar_express's four 185 us
    # calls, as far as they overlap the gap (it opens at +200 us, 15 us into the first)
    assert f.evidence["cpu_activity"]["call_chain"] == ["step", "_normuon_update",
                                                        "{polar_express 570 us}"]


def test_a_call_is_exact_only_when_one_statement_makes_it(tmp_path: Path) -> None:
    src = tmp_path / "prog.py"
    src.write_text("def f(x):\n    g(x)\n    if x:\n        g(x + 1)\n    h(x)\n")
    assert call_line(src, 1, "f", "h") == 5
    assert call_line(src, 1, "f", "g") is None  # two statements call g: which one ran is unknown


def test_a_frame_running_when_profiling_began_is_found_by_the_line_it_was_executing(
        tmp_path: Path) -> None:
    path = tmp_path / "opt.py"
    path.write_text(OPT_PY)
    assert call_line(path, MAIN_LOOP_CALL, "main", "step") is None  # not a def line
    assert call_line(path, MAIN_LOOP_CALL, "main", "step", running=True) == MAIN_LOOP_CALL
    assert def_line_of(path, MAIN_LOOP_CALL, "main") == 22
    assert def_line_of(path, DECORATOR_LINE, "step") == DECORATOR_LINE  # names it already
