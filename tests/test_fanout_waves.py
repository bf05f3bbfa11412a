"""Fan-out waves and budgets on the bundled slow Python example: a first wave that agrees stops
the rest, a budget that runs out fails the remaining candidates cleanly. Neither rests on a
close timing (the winner's algorithmic change is many times faster), so these run beside other
files, apart from ``test_trajectory``'s timing-bound cases."""

from __future__ import annotations

import pytest

from bakeoff.agent.events import EventBus
from bakeoff.agent.fanout.pipeline import fan_out
from bakeoff.agent.fanout.strategies import strategies_for
from bakeoff.agent.models.budget import Budget, BudgetedModel
from tests.test_trajectory import PY_GOAL, recorder, repo_copy, script, services


@pytest.mark.slow
async def test_adaptive_n_stops_after_a_first_wave_that_agrees(tmp_path):
    repo = repo_copy(tmp_path, "slow_python")
    bus = EventBus()
    seen = recorder(bus)
    agreeing = [s for s in strategies_for("python") if s.name in ("py-algorithm", "py-multiprocessing", "py-idioms")]
    result = await fan_out(
        PY_GOAL, ["pairs.py"], 6,
        services=services(repo, script("slow_python"), bus, strategies=agreeing, rounds=1, first_wave=0.5,
                          profile_repeats=1, timing_repeats=2),
    )

    assert [c.strategy for c in result.candidates] == ["py-algorithm", "py-multiprocessing", "py-idioms"]
    stop = [e for e in seen if e.kind == "fanout.early_stop"]
    assert len(stop) == 1 and stop[0].data == {"started": 3, "skipped": 3}
    assert result.winner is not None and result.winner.strategy == "py-algorithm", result.report_table


@pytest.mark.slow
async def test_budget_exhaustion_fails_the_remaining_candidates_cleanly(tmp_path):
    repo = repo_copy(tmp_path, "slow_python")
    budget = Budget(max_tokens=2500)
    model = BudgetedModel(script("slow_python"), budget)
    bus = EventBus()
    result = await fan_out(
        PY_GOAL, ["pairs.py"], 4,
        services=services(repo, model, bus, budget=budget, rounds=1, first_wave=1.0, profile_repeats=1,
                          timing_repeats=2),
    )

    failed = [c for c in result.candidates if c.error and "budget" in c.error.lower()]
    assert len(result.candidates) == 4
    assert failed, [c.error for c in result.candidates]
    assert all("BudgetExceeded" in c.error for c in failed)
    assert budget.spent_tokens <= 2500
    assert result.verdict.reason  # the run went on to a verdict
