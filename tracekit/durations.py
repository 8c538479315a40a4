"""Microseconds as short human durations, the three ways findings, reports and diffs write them."""

from __future__ import annotations


def format_us(us: float) -> str:
    """850 us, 12.3 ms, 1.52 s (reports, finding titles)."""
    if us >= 1e6:
        return f"{us / 1e6:.2f} s"
    if us >= 1e3:
        return f"{us / 1e3:.1f} ms"
    return f"{us:.0f} us"


def ms_or_us(us: float) -> str:
    """2.37 ms, 850 us (gap and cost wording: two decimals of a millisecond)."""
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} us"


def signed_us(value: float | None) -> str:
    """-1.52 s, 12.34 ms, 850.0 us, "-" for None (differences between runs)."""
    if value is None:
        return "-"
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value >= 1e6:
        return f"{sign}{value / 1e6:.2f} s"
    if value >= 1e3:
        return f"{sign}{value / 1e3:.2f} ms"
    return f"{sign}{value:.1f} us"
