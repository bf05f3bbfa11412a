"""Timing a C/C++ candidate against the reference: A B A B inside one driver process.

The driver times only the call, at ``timing_threads`` threads, on the large input; it answers
``@@BK X ref|cand seconds`` per timed call, ``@@BK R seconds`` per reference run before the
candidates and ``@@BK L seconds`` with the candidate's limit. A candidate stopped by its limit
gets a censored timing: its speedup is at most the reference's time over the limit.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from bakeoff.agent.harness.c_build import DriverBuilds
from bakeoff.agent.harness.c_plan import DriverPlan, draw_vars
from bakeoff.agent.harness.c_runs import spec_lines
from bakeoff.agent.harness.c_workdir import SIGALRM_CODES, WorkDir, digest
from bakeoff.agent.seams import ExecResult
from bakeoff.agent.stats import timing_from_samples
from bakeoff.agent.types import TestCase, Timing

_SAMPLE = re.compile(r"@@BK (?:X (ref|cand)|(R)|(L)) (\S+)")


def censored_timing(reference_s: Sequence[float], limit_s: float, threads: int) -> Timing:
    """A candidate stopped at its limit on the timing input: its speedup is at most the
    reference's median time over the limit (the interval runs from 0 to that bound)."""
    ref = sorted(reference_s)[len(reference_s) // 2]
    bound = ref / limit_s if limit_s > 0 else 0.0
    return Timing(baseline_s=list(reference_s), candidate_s=[limit_s], speedup=bound, low=0.0, high=bound, threads=threads)


def timing_input(plan: DriverPlan, seed: int) -> TestCase:
    """The large input every candidate is timed on (the same for all of them)."""
    rng = random.Random(seed + 1)
    return TestCase(id="diff-timing", kind="differential",
                    input={"seed": rng.randrange(1 << 31), "vars": draw_vars(plan.vars, rng, "large")})


def read_timing(res: ExecResult, repeats: int, threads: int) -> Timing | str:
    """The timing in a driver's answer, or why there is none."""
    base: list[float] = []
    cand: list[float] = []
    refs: list[float] = []
    limit = None
    for line in res.stdout.splitlines():
        m = _SAMPLE.search(line)
        if not m:
            continue
        value = float(m.group(4))
        if m.group(1):
            (base if m.group(1) == "ref" else cand).append(value)
        elif m.group(2):
            refs.append(value)
        else:
            limit = value
    if len(base) == repeats and len(cand) == repeats:
        return timing_from_samples(base, cand, threads)
    if res.exit_code in SIGALRM_CODES and limit is not None and refs:
        return censored_timing(refs, limit, threads)
    return f"timing run failed: {res.summary(500)}"


class DriverTiming:
    """Times candidate sources built by ``builds``; run it with nothing else running."""

    def __init__(self, builds: DriverBuilds, workdir: WorkDir, call_timeout: float, threads: int, pin: str):
        self.builds = builds
        self.workdir = workdir
        self.call_timeout = call_timeout
        self.threads = threads
        self.pin = pin

    async def time_source(self, source: str, test: TestCase, repeats: int) -> Timing | str:
        """The candidate ``source`` against the reference on ``test``, or why it has no timing."""
        binary, log = await self.builds.candidate(source, [])
        if binary is None:
            return f"does not build: {log}"
        name = f"timing_{digest(binary)}.txt"
        await self.workdir.write(name, spec_lines(self.builds.plan, [test], [0]))
        cap = max(1, int(round(self.call_timeout)))
        res = await self.workdir.run(f"{self.pin}./{binary} time {self.threads} {repeats} 1 {cap} < {name}",
                                     self.call_timeout * (2 * repeats + 3) + 30)
        return read_timing(res, repeats, self.threads)
