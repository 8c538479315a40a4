"""Options shared by the commands."""

from __future__ import annotations

PARAM_HELP = ("Override a detector threshold, DETECTOR.NAME=VALUE (repeatable), e.g. "
              "comm_gap.min_gap_us=100; the names are the fields of each detector's Params.")


def split_kinds(kinds: list[str] | None) -> list[str] | None:
    """`--kinds a,b --kinds c` -> [a, b, c]; None when not given."""
    if not kinds:
        return None
    names = [k.strip() for item in kinds for k in item.split(",") if k.strip()]
    return names or None
