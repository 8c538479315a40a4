"""The statement behind a stretch of CPU time, from the Python frames that fill it.

A late launch or an idle GPU is explained by what the CPU thread did meanwhile; the user needs
the statement to change, not the def line of a long function. With `with_stack=True` every
Python call is a frame, nested by time (`python.parent`). Starting from the innermost frame
that covers `dominant_frac` of the window, the call tree is followed down as long as one
callee holds that share of the window: all the frames of one function called from the level
above count together, so a loop that calls `polar_express` twenty times leads into
`polar_express` although no single call fills the window.

The statement is the call, in the deepest user function on that path that has one, of the
level below it (a torch function, a builtin, another user function): for `_normuon_update ->
polar_express -> matmul`, `polar_express` computes `g @ g` (no call named matmul), so the line
is the one in `_normuon_update` that calls `polar_express`. Only the deepest user function and
the user function above it are tried (MAX_CALLERS), each for the frames just below it, through
library wrappers (c10d's) down to the next user function; the search stops at a function whose
line no longer names it in the source (the file changed since recording). A call is found by
parsing the function (`tracekit.source.call_line`), exact only when the function calls that
name on one line. Without one, the deepest user function's def line is given (or its caller's,
when that is the user's too), `line_exact` false, as before.
Frames already running when the profiler started are named by the line they were executing
(`tracekit.load.frames.already_running`); their function is the one holding that line.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracekit.durations import format_us
from tracekit.finding import SourceLine
from tracekit.source import SourceFiles, call_line, call_name, def_line_of, function_found

MAX_CALLERS = 2
"""User functions tried for the call that holds the window: the deepest one on the path and its
caller. Further up the statement found is the training loop's (`return train(spec, ctx)`),
true but not what to change."""
MAX_DEPTH = 256
"""Call depth followed at most (CPython's default recursion limit is 1000; real stacks in
training loops are 30-80 frames deep)."""


def dominant_path(py: pd.DataFrame, rows: np.ndarray, overlap: np.ndarray,
                  need: float) -> list[np.ndarray]:
    """Levels of the call tree that hold at least `need` of the window, outermost first: the
    ancestors of the innermost frame covering `need`, that frame, then the callees below it
    whose calls of one function together hold `need` (each level: the rows of its frames)."""
    covering = overlap >= need
    if not covering.any():
        return []
    depth = py["depth"].to_numpy()
    parents = py["parent"].to_numpy()
    names = py["name"].to_numpy(dtype=object)
    candidates = rows[covering]
    innermost = int(candidates[np.lexsort((py["dur"].to_numpy()[candidates],
                                           -depth[candidates]))[0]])
    above = [innermost]
    while parents[above[-1]] >= 0 and len(above) < MAX_DEPTH:
        above.append(int(parents[above[-1]]))
    levels = [np.array([r]) for r in reversed(above)]
    while len(levels) < MAX_DEPTH:
        below = np.isin(parents[rows], levels[-1])
        if not below.any():
            break
        held = pd.Series(overlap[below]).groupby(names[rows[below]]).sum()
        if held.max() < need:
            break
        callee = held.idxmax()
        levels.append(rows[below][names[rows[below]] == callee])
    return levels


HELD_SHARE = 0.1
"""A callee is listed under the deepest level when it holds at least this share of the window."""
HELD_LISTED = 3


def held_below(py: pd.DataFrame, rows: np.ndarray, overlap: np.ndarray, level: np.ndarray,
               width: float) -> list[dict[str, object]]:
    """The functions the deepest level's time went to, when no one of them held enough to
    follow: its callees, a library wrapper's (torch.compile's `compile_wrapper`) replaced by
    the functions it called, summed per function; those holding HELD_SHARE of the window or
    more, largest first (at most HELD_LISTED)."""
    parents = py["parent"].to_numpy()
    is_user = py["is_user"].to_numpy(dtype=bool)
    child = np.isin(parents[rows], level)
    wrapper = child & ~is_user[rows]
    grandchild = np.isin(parents[rows], rows[wrapper])
    keep = (child & ~wrapper) | grandchild
    if not keep.any():
        return []
    names = np.array([level_name(py, int(r)) for r in rows[keep]], dtype=object)
    held = pd.Series(overlap[keep]).groupby(names).sum().sort_values(ascending=False)
    held = held[held >= HELD_SHARE * width].head(HELD_LISTED)
    return [{"function": str(name), "us": round(float(us), 3)} for name, us in held.items()]


def level_name(py: pd.DataFrame, row: int) -> str:
    """A level's short name: the function for a Python frame, the called name for a builtin."""
    function = str(py.at[row, "function"])
    if int(py.at[row, "line"]) >= 0:
        return function
    return call_name(str(py.at[row, "name"])) or function


def python_source(py: pd.DataFrame, rows: np.ndarray, overlap: np.ndarray, width: float,
                  dominant_frac: float, running: np.ndarray,
                  files: SourceFiles) -> tuple[SourceLine | None, list[str]]:
    """The user's statement behind a window, and the call chain from the function holding it
    down to the deepest level that holds the window (see the module docstring); when that
    level's time is spread over several callees, the chain ends with the largest ones
    (`held_below`), e.g. `{_cautious_wd_and_update_inplace 3.4 ms, polar_express 2.6 ms}`.

    `rows`: the Python frames (rows of `py`) overlapping the window on its thread, `overlap`
    their overlap with it, `width` the window's length, `dominant_frac` the share that holds it,
    `running` per row of `py` whether the frame was on the stack when the tracer started.
    (None, []) without user frames."""
    levels = dominant_path(py, rows, overlap, dominant_frac * width)
    if not levels:
        return None, []
    source, names = statement(py, levels, running, files)
    if source is None:
        return None, []
    held = held_below(py, rows, overlap, levels[-1], width)
    if held:
        names = names + ["{" + ", ".join(f"{h['function']} {format_us(float(h['us']))}"
                                         for h in held) + "}"]
    return source, names


def statement(py: pd.DataFrame, levels: list[np.ndarray], running: np.ndarray,
              files: SourceFiles) -> tuple[SourceLine | None, list[str]]:
    """The statement and the chain for a dominant path (see the module docstring)."""
    chain = [int(level[0]) for level in reversed(levels)]  # innermost first
    is_user = py["is_user"].to_numpy(dtype=bool)
    user_pos = [i for i, row in enumerate(chain) if is_user[row]]
    if not user_pos:
        return None, []
    for pos in [p for p in user_pos[:MAX_CALLERS] if p > 0]:
        caller = chain[pos]
        file, line, function = frame_site(py, caller)
        path = files.resolve(file)
        if not function_found(path, line, function, files, running=bool(running[caller])):
            break
        below = callee_names(py, chain, pos, is_user)
        found = next((hit for callee in below if (hit := call_line(
            path, line, function, callee, files, running=bool(running[caller]))) is not None),
            None)
        if found is not None:
            return SourceLine(file=file, line=found, function=function, line_exact=True), \
                chain_names(py, chain, pos, is_user)
    # No call found: the deepest user function (or its caller, when that is the user's too),
    # at its def line.
    pos = user_pos[0]
    if pos == 0 and len(user_pos) > 1 and user_pos[1] == 1:
        pos = 1
    row = chain[pos]
    file, line, function = frame_site(py, row)
    if running[row]:  # named by the line it was executing: give its def line
        line = def_line_of(files.resolve(file), line, function, files)
    return SourceLine(file=file, line=line, function=function, line_exact=False), \
        chain_names(py, chain, pos, is_user)


def frame_site(py: pd.DataFrame, row: int) -> tuple[str, int, str]:
    return str(py.at[row, "file"]), int(py.at[row, "line"]), str(py.at[row, "function"])


def callee_names(py: pd.DataFrame, chain: list[int], pos: int, is_user: np.ndarray) -> list[str]:
    """Called names that may appear in the user frame chain[pos]: the frame below it and,
    through library wrappers (c10d's, torch functions), the frames further down to the next
    user frame."""
    names = []
    for row in reversed(chain[:pos]):
        name = call_name(str(py.at[row, "name"]))
        if name:
            names.append(name)
        if is_user[row]:
            break
    return names


def chain_names(py: pd.DataFrame, chain: list[int], pos: int, is_user: np.ndarray) -> list[str]:
    """The user's functions from chain[pos] down, and the innermost level."""
    return [level_name(py, row) for row in reversed(chain[:pos + 1])
            if is_user[row] or row == chain[0]]
