import asyncio

import pytest

from bakeoff.agent.stats import interleaved, speedup_interval


@pytest.mark.parametrize(
    "baseline, candidate, faster",
    [
        ([1.0, 1.02, 0.98, 1.01, 0.99], [0.5, 0.51, 0.49, 0.5, 0.52], True),
        ([1.0, 1.02, 0.98, 1.01, 0.99], [1.0, 0.99, 1.01, 1.02, 0.98], False),
        ([1.0, 1.0, 1.0], [2.0, 2.1, 1.9], False),
    ],
)
def test_interval_excludes_one_only_when_clearly_faster(baseline, candidate, faster):
    point, low, high = speedup_interval(baseline, candidate)
    assert low <= point <= high
    assert (low > 1.0) is faster


def test_speedup_needs_samples():
    with pytest.raises(ValueError):
        speedup_interval([], [1.0])


def test_interleaved_alternates_order():
    order = []

    async def base():
        order.append("b")
        return 1.0

    async def cand():
        order.append("c")
        return 0.5

    timing = asyncio.run(interleaved(base, cand, repeats=4, warmup=0))
    assert order == ["b", "c", "c", "b", "b", "c", "c", "b"]
    assert timing.speedup == pytest.approx(2.0)
    assert timing.faster


def test_a_failed_run_gives_no_speedup_rather_than_nan():
    from bakeoff.agent.stats import timing_from_samples

    timing = timing_from_samples([1.0, 1.1], [float("inf"), 0.5])
    assert timing.speedup is None and timing.low is None and not timing.faster
    assert timing.candidate_s == [0.5]
