"""candidate: sort and two pointers, but with the radius's magnitude: a negative radius
matches pairs it should not."""

from __future__ import annotations


def count_close_pairs(values: list[float], radius: float) -> int:
    """Number of pairs i < j with |values[i] - values[j]| <= radius."""
    xs, r = sorted(values), abs(radius)
    count, lo = 0, 0
    for hi in range(len(xs)):
        while xs[hi] - xs[lo] > r:
            lo += 1
        count += hi - lo
    return count
