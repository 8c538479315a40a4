"""Give memory the loader has freed back to the operating system.

Loading builds many mid-sized buffers (each slice's raw columns, pandas' transient copies)
and frees them before the next stage allocates its own, larger ones. glibc's malloc keeps such
freed heap memory for reuse by later small allocations rather than returning it, while the
large arrays of the next stage are mapped fresh: the process's resident size then counts both.
Measured on a 690 MB rank file (2-core dev box): joining the slices' columns took the resident
size from 312 to 498 MB, of which 190 MB was freed memory that `malloc_trim` returns. So it is
called where slices are joined (and once frames are read back from the cache).

Nowhere else: every trim hands back pages that the next stage then faults in again. On
2 x 690 MB rank files, trimming also after loading, after linking and between detectors cost
0.7-1.1 CPU s of page faults per run (sys time 1.6-2.5 s against 1.0-1.4 s) for no lower peak in
a rank process (561-572 MB either way, scanner or typed path); with every rank in one process
the peak was 50 MB (6%) lower with them.

Elsewhere than glibc (macOS, musl, Windows) the heap part does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache
from typing import Any


@cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_freed() -> None:
    """Return the freed parts of the heap to the OS (glibc's `malloc_trim`; a few ms), and
    the buffers arrow's memory pool keeps for reuse (pandas 3 holds strings in arrow arrays:
    on a linked 690 MB rank the pool held ~100 MB of freed buffers)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
    if "pyarrow" in sys.modules:  # never imported just for this
        release = getattr(sys.modules["pyarrow"].default_memory_pool(), "release_unused", None)
        if release is not None:
            release()


@cache
def arrow_on_malloc() -> None:
    """Make arrow allocate with malloc (its system pool) in this process, once.

    pandas 3 keeps string columns in arrow arrays, and linking makes and drops many of them.
    Arrow's default pool (mimalloc or jemalloc) keeps what is freed for reuse, outside
    `malloc_trim`'s reach, so a rank process's peak counted both: on a 690 MB rank, linking
    peaked at 706 MB resident with the default pool and 641 MB with malloc's (2-core dev box).
    """
    try:
        import pyarrow as pa
    except ImportError:
        return
    pa.set_memory_pool(pa.system_memory_pool())
