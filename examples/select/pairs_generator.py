"""candidate: the same double loop as one generator expression."""

from __future__ import annotations


def count_close_pairs(values: list[float], radius: float) -> int:
    """Number of pairs i < j with |values[i] - values[j]| <= radius."""
    n = len(values)
    return sum(1 for i in range(n) for j in range(i + 1, n) if abs(values[i] - values[j]) <= radius)
