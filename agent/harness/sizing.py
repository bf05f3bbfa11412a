"""Inputs sized for the question: the timing input grows until the original takes long enough.

On a tiny input thread start-up decides the race, not the parallel code. So the timing
input's size is scaled until the original takes at least ``min_time_s`` per call at one
thread, bounded by memory (the probe's peak resident memory), by a time cap per call, and by
how many probes and how much probing time it may spend. Each step extrapolates from what was
measured: time ~ scale^p with p fitted from the last two probes (1.5 before there are two),
and memory assumed to grow no faster than time (a function touches its data at least once),
so a step never plans to pass the memory cap.

``grow`` is pure over its ``probe`` (scale -> the original's time and memory, or None when it
failed): the C and Python harnesses give it their own probes, the tests a synthetic one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import NamedTuple

MIB = 1024 * 1024


class Probe(NamedTuple):
    seconds: float  # the original's time per call at one thread
    memory_bytes: float | None = None  # peak resident memory of the probe, when known
    too_large: bool = False  # the input is past a size limit of its own: not run


@dataclass(frozen=True)
class SizingLimits:
    min_time_s: float = 0.2  # the original should take at least this per call at one thread
    max_time_s: float = 2.0  # ... and never more (a cap on the cost of every timing call)
    memory_bytes: float | None = None  # the probe's peak resident memory stays below this (None: 512 MiB,
    # or a quarter of the sandbox's memory where the harness knows it)
    max_probes: int = 6
    budget_s: float = 20.0  # total seconds spent in the original while probing
    max_step: float = 16.0  # the most the scale grows (or shrinks) in one step


@dataclass(frozen=True)
class Sized:
    scale: float
    seconds: float | None  # the original's time at that scale (None: it never ran)
    memory_bytes: float | None
    why: str


async def grow(probe: Callable[[float], Awaitable[Probe | None]], limits: SizingLimits,
               key: Callable[[float], Hashable] = lambda s: s) -> Sized:
    """The scale of the timing input (1 = as drawn) at which the original takes at least
    ``limits.min_time_s``, or the largest one the limits allow. ``key``: scales with equal
    keys are the same input (sizes are rounded), so one is never probed twice."""
    first = await probe(1.0)
    if first is None or first.too_large:
        return Sized(1.0, None, None, "the original failed on the timing input" if first is None else
                     "the timing input is past its size limit")
    measured: list[tuple[float, Probe]] = [(1.0, first)]  # every probe that ran, for the fits
    limits = limits if limits.memory_bytes is not None else dataclasses.replace(limits, memory_bytes=512 * MIB)
    ok: list[tuple[float, Probe]] = []  # the probes within every cap
    too_big: float | None = None  # the smallest scale past a cap (memory, time, or it failed)
    stop, spent, seen = "", 0.0, {key(1.0)}
    nxt: float | None = 1.0
    result: Probe | None = first
    while True:
        assert nxt is not None
        if result is not None:
            spent += result.seconds
        if result is None or result.too_large or (result.memory_bytes or 0) > limits.memory_bytes \
                or result.seconds > limits.max_time_s:
            if not ok or nxt > _best(ok, limits)[0]:
                too_big = nxt if too_big is None else min(too_big, nxt)
                stop = ("failed" if result is None else "size" if result.too_large else
                        "time" if result.seconds > limits.max_time_s else "memory")
        else:
            ok.append((nxt, result))
        if len(seen) >= limits.max_probes or spent >= limits.budget_s:
            break
        nxt = _next_scale(ok, measured, too_big, limits)
        if nxt is None or key(nxt) in seen:
            stop = stop or ("memory" if nxt is None and ok and ok[-1][1].seconds < limits.min_time_s else "")
            break
        seen.add(key(nxt))
        result = await probe(nxt)
        if result is not None and not result.too_large:
            measured.append((nxt, result))
    if not ok:
        s, r = min(measured, key=lambda x: x[1].seconds)
        return Sized(s, r.seconds, r.memory_bytes, f"the original takes {r.seconds:.2f} s per call at one thread "
                                                   f"even on the smallest input tried, past the {limits.max_time_s:g} s cap")
    return _choose(ok, limits, stop)


def _fit(points: list[tuple[float, float]]) -> float | None:
    """q in y ~ scale^q from the last two points whose values can be read."""
    usable = [(s, y) for s, y in points if y > 1e-4]
    if len(usable) < 2 or abs(math.log(usable[-1][0] / usable[-2][0])) < 1e-9:
        return None
    (s1, y1), (s2, y2) = usable[-2], usable[-1]
    return min(4.0, max(0.5, math.log(y2 / y1) / math.log(s2 / s1)))


def _best(ok: list[tuple[float, Probe]], limits: SizingLimits) -> tuple[float, Probe]:
    """The probe to step from: the smallest long enough, else the longest."""
    enough = [x for x in ok if x[1].seconds >= limits.min_time_s]
    return min(enough, key=lambda x: x[1].seconds) if enough else max(ok, key=lambda x: x[1].seconds)


def _next_scale(ok: list[tuple[float, Probe]], measured: list[tuple[float, Probe]], too_big: float | None,
                limits: SizingLimits) -> float | None:
    """The next scale to probe, aiming at 1.5x the minimum time, or None when there is
    nothing left to try (long enough already, or no room in memory)."""
    p = _fit([(s, r.seconds) for s, r in sorted(measured)]) or 1.5  # between linear and quadratic until measured
    aim = min(1.5 * limits.min_time_s, limits.max_time_s)
    if not ok:  # even the drawn input is past a cap: shrink it
        scale, last = min(measured, key=lambda x: x[0])
        return scale * max(1.0 / limits.max_step, min(0.8, (aim / last.seconds) ** (1.0 / p)))
    scale, last = _best(ok, limits)
    if last.seconds >= limits.min_time_s:
        # Long enough; far past the aim (every timing call would cost more than needed), shrink
        # toward it: below the drawn input when that is the only probe, else never below the
        # smallest scale probed (a shrink that fell short is not retried).
        target = scale * (aim / last.seconds) ** (1.0 / p)
        if last.seconds > 2 * aim and (len(measured) == 1 or target > min(s for s, _ in measured)):
            return target
        return None
    step = min(limits.max_step, max(1.25, (aim / max(last.seconds, 1e-6)) ** (1.0 / p)))
    if last.memory_bytes:
        room = 0.9 * limits.memory_bytes / last.memory_bytes
        if room <= 1.05:
            return None
        # Memory grows no faster than time (p) as far as we know; a measured fit says better.
        q = _fit([(s, r.memory_bytes or 0.0) for s, r in sorted(measured)]) or max(p, 2.0)
        step = min(step, room ** (1.0 / q))
    nxt = scale * step
    if too_big is not None and nxt >= too_big:
        nxt = math.sqrt(scale * too_big)  # between what fits and what did not
        if nxt / scale < 1.1:
            return None
    return nxt


def _choose(ok: list[tuple[float, Probe]], limits: SizingLimits, stop: str) -> Sized:
    """The smallest probed scale that is long enough within the caps, else the longest within them."""
    s, r = _best(ok, limits)
    if r.seconds >= limits.min_time_s:
        why = (f"the original takes {r.seconds:.2f} s per call at one thread on it" if s == 1.0 else
               f"scaled x{s:.3g} until the original took {r.seconds:.2f} s per call at one thread")
        return Sized(s, r.seconds, r.memory_bytes, why)
    reason = {"memory": f"bounded by memory ({limits.memory_bytes / MIB:.0f} MiB)",
              "time": f"bounded by the {limits.max_time_s:g} s cap per call",
              "size": "bounded by the largest input allowed",
              "failed": "the original failed on a larger input"}.get(stop, "bounded by the probes allowed")
    return Sized(s, r.seconds, r.memory_bytes,
                 f"scaled x{s:.3g}, {reason}: the original takes {r.seconds:.3f} s per call at one thread "
                 f"(target {limits.min_time_s:g} s)")
