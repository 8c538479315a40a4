"""Options shared by the commands."""

from __future__ import annotations

import os

PARAM_HELP = ("Override a detector threshold, DETECTOR.NAME=VALUE (repeatable), e.g. "
              "comm_gap.min_gap_us=100; the names are the fields of each detector's Params.")


def split_kinds(kinds: list[str] | None) -> list[str] | None:
    """`--kinds a,b --kinds c` -> [a, b, c]; None when not given."""
    if not kinds:
        return None
    names = [k.strip() for item in kinds for k in item.split(",") if k.strip()]
    return names or None


def one_blas_thread() -> None:
    """Ask numpy's OpenBLAS for one thread unless the user chose a number; call before numpy
    is imported. The analysis calls no BLAS routine, while OpenBLAS starts a thread per CPU
    when numpy is imported, and they spin before they sleep: `import numpy` took 0.15-0.21
    CPU s with them and 0.11-0.15 without on 2 CPUs (README: Performance has the 16-CPU host).
    """
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
