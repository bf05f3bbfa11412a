"""Timing statistics: medians and bootstrap intervals of a speedup.

Speed claims need statistics: timings are interleaved (baseline, candidate, baseline, ...)
so machine noise hits both alike, and a candidate is "faster" only when the interval of
its speedup lies above 1.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Awaitable, Callable, Mapping, Sequence

from bakeoff.agent.types import CurvePoint, Timing


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def speedup_interval(
    baseline: Sequence[float],
    candidate: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(speedup, low, high): median(baseline)/median(candidate) and its bootstrap interval."""
    if not baseline or not candidate:
        raise ValueError("speedup needs at least one timing on each side")
    point = median(baseline) / max(median(candidate), 1e-12)
    if len(baseline) < 2 or len(candidate) < 2:
        return point, point, point
    rng = random.Random(seed)
    ratios = []
    for _ in range(resamples):
        b = [rng.choice(baseline) for _ in baseline]
        c = [rng.choice(candidate) for _ in candidate]
        ratios.append(median(b) / max(median(c), 1e-12))
    ratios.sort()
    tail = (1.0 - confidence) / 2.0
    low = ratios[int(tail * (resamples - 1))]
    high = ratios[int((1.0 - tail) * (resamples - 1))]
    return point, low, high


def timing_from_samples(baseline: Sequence[float], candidate: Sequence[float], threads: int | None = None) -> Timing:
    """A Timing with its speedup; with no speedup when a run failed (a time that is not finite)."""
    if not all(math.isfinite(x) for x in [*baseline, *candidate]) or not baseline or not candidate:
        return Timing(baseline_s=[x for x in baseline if math.isfinite(x)],
                      candidate_s=[x for x in candidate if math.isfinite(x)], threads=threads)
    speed, low, high = speedup_interval(baseline, candidate)
    return Timing(
        baseline_s=list(baseline), candidate_s=list(candidate), speedup=speed, low=low, high=high, threads=threads
    )


def curve_threads(target: int) -> list[int]:
    """The thread counts of a scaling curve: 1, 2, 4, ... below ``target``, then ``target``."""
    counts, n = [], 1
    while n < target:
        counts.append(n)
        n *= 2
    return [*counts, max(1, target)]


def timing_with_curve(baseline: Sequence[float], by_threads: Mapping[int, Sequence[float]], target: int) -> Timing:
    """The Timing at ``target`` threads with the speedup at every thread count measured:
    each count's samples against the same baseline samples (the original, interleaved
    with all of them)."""
    curve = []
    for n in sorted(by_threads):
        t = timing_from_samples(baseline, by_threads[n], n)
        curve.append(CurvePoint(threads=n, speedup=t.speedup, low=t.low, high=t.high))
    at_target = timing_from_samples(baseline, by_threads.get(target, []), target) if by_threads.get(target) else \
        Timing(baseline_s=list(baseline), threads=target)
    at_target.curve = curve
    return at_target


async def interleaved(
    run_baseline: Callable[[], Awaitable[float]],
    run_candidate: Callable[[], Awaitable[float]],
    *,
    repeats: int = 5,
    warmup: int = 1,
    threads: int | None = None,
) -> Timing:
    """Time A B A B ... ``repeats`` times each (after ``warmup`` unrecorded pairs)."""
    for _ in range(warmup):
        await run_baseline()
        await run_candidate()
    base: list[float] = []
    cand: list[float] = []
    for i in range(repeats):
        # Alternate which goes first so a drift in machine load does not favour one side.
        if i % 2 == 0:
            base.append(await run_baseline())
            cand.append(await run_candidate())
        else:
            cand.append(await run_candidate())
            base.append(await run_baseline())
    return timing_from_samples(base, cand, threads)
