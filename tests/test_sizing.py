"""Inputs sized for the question: the timing input grows until the original takes long
enough, within memory, time and probe limits. Synthetic probes with a known cost model
drive ``grow``; one real C harness run checks the driver's probe end to end."""

from __future__ import annotations

import pytest

from bakeoff.agent.harness.sizing import MIB, Probe, SizingLimits, grow


def model(seconds_at_1: float, p: float, memory_at_1: float = MIB, q: float = 1.0, fails_above: float | None = None):
    """time = seconds_at_1 * scale^p, memory = 1 MiB + memory_at_1 * scale^q; records the scales probed."""
    probed: list[float] = []

    async def probe(scale: float) -> Probe | None:
        probed.append(scale)
        if fails_above is not None and scale > fails_above:
            return None
        return Probe(seconds_at_1 * scale ** p, MIB + memory_at_1 * scale ** q)

    return probe, probed


LIMITS = SizingLimits(min_time_s=0.2, max_time_s=2.0, memory_bytes=512 * MIB, max_probes=6)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
async def test_grows_until_the_original_takes_long_enough(p):
    probe, probed = model(0.002, p)
    sized = await grow(probe, LIMITS)
    assert LIMITS.min_time_s <= sized.seconds <= LIMITS.max_time_s
    assert sized.scale > 1 and sized.why.startswith("scaled x")
    assert len(probed) <= LIMITS.max_probes and len(set(probed)) == len(probed)


async def test_an_input_long_enough_already_is_kept():
    probe, probed = model(0.5, 1.0)
    sized = await grow(probe, LIMITS)
    assert sized.scale == 1.0 and probed == [1.0] and "takes 0.50 s" in sized.why


@pytest.mark.parametrize("p", [1.0, 3.0])
async def test_an_input_far_longer_than_needed_shrinks_toward_the_aim(p):
    # 1.2 s per call at the drawn size: every timing call would cost four times what it needs.
    probe, probed = model(1.2, p)
    sized = await grow(probe, LIMITS)
    assert sized.scale < 1 and LIMITS.min_time_s <= sized.seconds <= 2 * 1.5 * LIMITS.min_time_s, (sized, probed)
    assert len(probed) <= 3 and len(set(probed)) == len(probed)


async def test_memory_bounds_the_growth_and_says_so():
    # A memory-bound kernel: 64 MiB at scale 1, 10 us of work; 0.2 s would need 20,000x the data.
    probe, probed = model(1e-5, 1.0, memory_at_1=64 * MIB)
    sized = await grow(probe, LIMITS)
    assert sized.memory_bytes <= LIMITS.memory_bytes and sized.seconds < LIMITS.min_time_s
    assert "bounded by memory (512 MiB)" in sized.why
    assert all(MIB + 64 * MIB * s <= LIMITS.memory_bytes or s != sized.scale for s in probed)


async def test_memory_that_grows_faster_than_guessed_is_stepped_back_from():
    # Quadratic memory (an N*N matrix) with cubic time: the first step overshoots the cap,
    # the next ones settle below it.
    probe, _ = model(1e-4, 3.0, memory_at_1=8 * MIB, q=2.0)
    sized = await grow(probe, LIMITS)
    assert sized.memory_bytes <= LIMITS.memory_bytes and sized.scale > 1


async def test_an_input_past_the_time_cap_shrinks():
    probe, _ = model(5.0, 2.0)
    sized = await grow(probe, LIMITS)
    assert LIMITS.min_time_s <= sized.seconds <= LIMITS.max_time_s and sized.scale < 1


async def test_an_original_that_fails_on_larger_inputs_keeps_the_largest_that_worked():
    probe, probed = model(0.001, 1.0, fails_above=4.0)
    sized = await grow(probe, LIMITS)
    assert 1.0 <= sized.scale <= 4.0 and "failed on a larger input" in sized.why
    assert len(probed) <= LIMITS.max_probes


async def test_a_size_limit_of_the_harness_stops_growth():
    async def probe(scale: float) -> Probe:
        return Probe(0.0, too_large=True) if scale > 8 else Probe(1e-4 * scale)

    sized = await grow(probe, LIMITS)
    assert sized.scale <= 8 and "largest input allowed" in sized.why


async def test_the_original_failing_on_the_drawn_input_is_reported():
    async def probe(scale: float) -> None:
        return None

    sized = await grow(probe, LIMITS)
    assert sized.seconds is None and "failed on the timing input" in sized.why


QUADRATIC = """
#include <vector>
long pairs(std::vector<int> const& x) {
  long n = 0;
  for (size_t i = 0; i < x.size(); ++i)
    for (size_t j = i + 1; j < x.size(); ++j) n += (x[i] + x[j]) % 3 == 0;
  return n;
}
"""


async def test_the_c_harness_grows_its_timing_input_with_the_drivers_probe():
    from bakeoff.agent.harness.c_harness import CHarness
    from bakeoff.agent.harness.c_timing import TimingOptions

    h = CHarness(QUADRATIC, "pairs", constraints={"vars": {"n": {"small": [1, 8], "medium": 50, "large": 300}}},
                 timing=TimingOptions(sizing=SizingLimits(min_time_s=0.05, max_time_s=1.0)))
    try:
        test, setup = await h.timing_input()
    finally:
        await h.close()
    # 300 elements take microseconds; the size grows and the reference's time is reported.
    assert test.input["vars"]["n"] > 300 and setup.size == {"n": test.input["vars"]["n"]}
    assert setup.reference_s is not None and setup.sizing
    assert setup.reference_s >= 0.05 or "bounded" in setup.sizing
