"""The user's record_function labels around a moment on a CPU thread (`comm:all_reduce:bucket1`,
`tie:lm_head->embed`): what detectors name a launch or a phase by. Labels torch writes itself
(ProfilerStep#N, nccl:..., record_param_comms) are not the user's."""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass

import numpy as np

from tracekit.trace import Trace

INTERNAL_LABEL = re.compile(
    r"^(ProfilerStep#|nccl:|##|Torch-Compiled|record_param_comms|c10d::|CompiledFunction)")
"""record_function names torch itself writes; user labels are everything else."""


@dataclass
class LabelIndex:
    """User record_function spans on CPU threads as arrays, for many "label at (tid, t)" asks."""

    tid: np.ndarray
    ts: np.ndarray
    end: np.ndarray
    names: np.ndarray

    @classmethod
    def of(cls, trace: Trace) -> LabelIndex:
        cached = _LABEL_INDEX.get(id(trace))
        if cached is not None and cached[0]() is trace:
            return cached[1]
        ann = trace.annotations
        if len(ann):
            ann = ann[(ann["side"] == "cpu")
                      & ~ann["name"].astype(str).str.match(INTERNAL_LABEL).to_numpy(bool)]
        index = cls(tid=ann["tid"].to_numpy(dtype=np.int64) if len(ann) else np.zeros(0, int),
                    ts=ann["ts"].to_numpy(dtype=np.float64) if len(ann) else np.zeros(0),
                    end=ann["end"].to_numpy(dtype=np.float64) if len(ann) else np.zeros(0),
                    names=ann["name"].astype(str).to_numpy() if len(ann) else np.zeros(0, str))
        _LABEL_INDEX[id(trace)] = (weakref.ref(trace), index)
        return index

    def at(self, tid: int, t: float) -> str | None:
        """The innermost (latest-starting) label open on thread `tid` at time `t`."""
        if not len(self.ts) or tid < 0 or not np.isfinite(t):
            return None
        hit = np.flatnonzero((self.tid == tid) & (self.ts <= t) & (self.end >= t))
        if not len(hit):
            return None
        return str(self.names[hit[np.argmax(self.ts[hit])]])

    def at_many(self, tids: np.ndarray, times: np.ndarray) -> list[str | None]:
        """`at` for each (tid, t), one thread at a time: every label of the thread against a
        block of its queries at once (blocks bounded to a few million pairs)."""
        tids = np.asarray(tids, dtype=np.int64)
        times = np.asarray(times, dtype=np.float64)
        out: list[str | None] = [None] * len(times)
        asked = (tids >= 0) & np.isfinite(times)
        for tid in np.unique(tids[asked]):
            own = np.flatnonzero(self.tid == tid)
            if not len(own):
                continue
            starts, ends = self.ts[own], self.end[own]
            queries = np.flatnonzero(asked & (tids == tid))
            block = max(1, 4_000_000 // len(own))
            for lo in range(0, len(queries), block):
                rows = queries[lo:lo + block]
                t = times[rows][:, None]
                score = np.where((starts <= t) & (ends >= t), starts, -np.inf)
                best = np.argmax(score, axis=1)  # the first of the latest-starting, as `at`
                for row, label, open_ in zip(rows, best, np.isfinite(score.max(axis=1)),
                                             strict=True):
                    if open_:
                        out[row] = str(self.names[own[label]])
        return out


_LABEL_INDEX: dict[int, tuple[weakref.ref, LabelIndex]] = {}


def user_label(trace: Trace, tid: int, ts: float) -> str | None:
    """The innermost user record_function label open on CPU thread `tid` at time `ts`."""
    return LabelIndex.of(trace).at(tid, ts)


def user_labels(trace: Trace, tids: np.ndarray, times: np.ndarray) -> list[str | None]:
    """`user_label` of many (tid, time) pairs."""
    return LabelIndex.of(trace).at_many(tids, times)
