"""Rows looked up by an integer id that joins events (correlation, External id): ids are
unique per event kind but a few events share one, so each id keeps one row by a rule."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RowsByKey:
    """One row per integer key (ids >= 0): `rows[i]` holds key `keys[i]`, keys sorted."""

    keys: np.ndarray
    rows: np.ndarray

    @classmethod
    def first(cls, key: np.ndarray, then: np.ndarray) -> RowsByKey:
        """For each key >= 0, the row first by `then` (ties: the first row)."""
        rows = np.flatnonzero(key >= 0)
        rows = rows[np.lexsort((then[rows], key[rows]))]
        sorted_key = key[rows]
        first = np.ones(len(rows), dtype=bool)
        np.not_equal(sorted_key[1:], sorted_key[:-1], out=first[1:])
        return cls(sorted_key[first], rows[first].astype(np.int64))

    def lookup(self, key: np.ndarray) -> np.ndarray:
        """The row holding each key (-1 if none)."""
        key = np.asarray(key)
        out = np.full(len(key), -1, dtype=np.int64)
        if len(self.keys) == 0 or len(key) == 0:
            return out
        pos = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
        hit = self.keys[pos] == key
        out[hit] = self.rows[pos[hit]]
        return out
