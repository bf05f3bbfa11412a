"""candidate: sort once, then count each value's partners to its right with bisect."""

from __future__ import annotations

from bisect import bisect_right


def count_close_pairs(values: list[float], radius: float) -> int:
    """Number of pairs i < j with |values[i] - values[j]| <= radius."""
    if radius < 0:
        return 0
    xs = sorted(values)
    return sum(bisect_right(xs, x + radius, lo=i + 1) - (i + 1) for i, x in enumerate(xs))
