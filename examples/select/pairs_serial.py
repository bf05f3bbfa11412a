"""Counting close pairs: how many pairs of readings lie within a radius of each other."""

from __future__ import annotations


def count_close_pairs(values: list[float], radius: float) -> int:
    """Number of pairs i < j with |values[i] - values[j]| <= radius."""
    count = 0
    n = len(values)
    for i in range(n):
        for j in range(i + 1, n):
            if abs(values[i] - values[j]) <= radius:
                count += 1
    return count
