"""The candidates: n trajectories with diversity on purpose, developed in waves.

Each trajectory gets its own strategy hint for the language, a temperature spread between
low and high, and the editor models in turn. The first wave starts a share of n; when its
candidates already agree (a clear, tested majority), the rest are not started.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from bakeoff.agent.fanout.baseline import Baseline
from bakeoff.agent.fanout.settings import FanOutServices
from bakeoff.agent.fanout.source import same_output
from bakeoff.agent.fanout.strategies import spread, strategies_for, temperatures
from bakeoff.agent.fanout.trajectory import Trajectory
from bakeoff.agent.types import Candidate

T = TypeVar("T")


def trajectories(goal: str, files: Sequence[str], n: int, language: str, entry: str | None,
                 baseline: Baseline, services: FanOutServices) -> dict[str, Trajectory]:
    """``c1`` … ``cn``, each with its own strategy, temperature and editor model."""
    settings = services.settings
    hints = spread(strategies_for(language, goal, settings.strategies), n)
    temps = temperatures(n, settings.temperature_low, settings.temperature_high)
    editors = services.editors
    lock = asyncio.Lock()  # one profiling at a time: candidates must not slow each other down
    return {
        f"c{i + 1}": Trajectory(
            f"c{i + 1}", goal=goal, files=files, language=language, entry=entry, strategy=hints[i],
            temperature=temps[i], model=editors[i % len(editors)], pool=services.pool,
            workspace=services.workspace, baseline=baseline, settings=settings, events=services.events,
            budget=services.budget, timing_lock=lock,
        )
        for i in range(n)
    }


async def develop(trajectories: Mapping[str, Trajectory], services: FanOutServices) -> list[Candidate]:
    """The first wave; the rest only when the first did not already agree (adaptive n)."""
    order = list(trajectories)
    for t in trajectories.values():
        t.announce("queued")
    first = max(1, min(len(order), math.ceil(len(order) * services.settings.first_wave)))
    candidates = await all_at_once([trajectories[c].run() for c in order[:first]])
    if first < len(order) and early_stop([trajectories[c] for c in order[:first]], candidates):
        services.events.emit("fanout.early_stop", started=first, skipped=len(order) - first)
        for c in order[first:]:
            trajectories[c].announce("failed", detail="not started: the first wave already agreed")
    elif first < len(order):
        services.events.emit("fanout.wave", started=len(order) - first)
        candidates += await all_at_once([trajectories[c].run() for c in order[first:]])
    return candidates


def early_stop(wave: Sequence[Trajectory], results: Sequence[Candidate]) -> bool:
    """A clear, tested majority: at least 3 candidates, all through the gate, all giving the same output."""
    if len(results) < 3 or any(c.error is not None or not c.patch for c in results):
        return False
    outputs = [t.profile_output for t in wave]
    return all(same_output(outputs[0], o) for o in outputs[1:])


async def all_at_once(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run ``coros`` at once; if one raises, the others are cancelled before it propagates."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
