"""Timing a C/C++ candidate against the reference: interleaved inside one driver process.

The input: ``timing_input`` draws the large size of every size variable, and ``sized_input``
scales them until the reference takes long enough at one thread (``sizing.grow``; the driver's
``probe`` mode reports the reference's time and peak memory).

The timing: the driver times only the call, the candidate at each thread count of the curve
and the reference at the target (the last count), one reference call per round (see
``c_runtime``). It answers ``@@BK X ref|cand seconds threads`` per timed call, ``@@BK R
seconds`` per reference run and ``@@BK L seconds threads`` with the candidate's limit before
each of its calls. A candidate stopped by its limit gets a censored timing: its speedup is at
most the reference's time over the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import shlex
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from bakeoff.agent.harness.c_build import DriverBuilds
from bakeoff.agent.harness.c_plan import DriverPlan, draw_vars
from bakeoff.agent.harness.c_runs import spec_lines
from bakeoff.agent.harness.c_workdir import SIGALRM_CODES, WorkDir, digest
from bakeoff.agent.harness.sizing import Probe, Sized, SizingLimits, grow
from bakeoff.agent.seams import ExecResult
from bakeoff.agent.stats import timing_with_curve
from bakeoff.agent.types import CurvePoint, TestCase, Timing

_LINE = re.compile(r"@@BK ([XRLPE]) (.*)")


def censored_timing(reference_s: Sequence[float], limit_s: float, threads: int) -> Timing:
    """A candidate stopped at its limit on the timing input: its speedup is at most the
    reference's median time over the limit (the interval runs from 0 to that bound)."""
    bound = _censored_bound(reference_s, limit_s)
    return Timing(baseline_s=list(reference_s), candidate_s=[limit_s], speedup=bound, low=0.0, high=bound,
                  threads=threads, curve=[CurvePoint(threads=threads, speedup=bound, low=0.0, high=bound, censored=True)])


def _censored_bound(reference_s: Sequence[float], limit_s: float) -> float:
    ref = sorted(reference_s)[len(reference_s) // 2]
    return ref / limit_s if limit_s > 0 else 0.0


def timing_input(plan: DriverPlan, seed: int) -> TestCase:
    """The large input every candidate is timed on (the same for all of them), before sizing."""
    rng = random.Random(seed + 1)
    return TestCase(id="diff-timing", kind="differential",
                    input={"seed": rng.randrange(1 << 31), "vars": draw_vars(plan.vars, rng, "large")})


def scaled_vars(drawn: Mapping[str, float], spec: Mapping[str, Mapping], scale: float) -> dict[str, float]:
    """Every size variable times ``scale``, rounded (to a power of two where the variable is one)."""
    out = {}
    for name, value in drawn.items():
        v = max(1.0, value * scale)
        out[name] = float(2 ** round(math.log2(v)) if (spec.get(name) or {}).get("pow2") else round(v))
    return out


class CpuSlots:
    """Disjoint CPU sets ("0-7", "8-15") on which timings run at once, one timing per set,
    shared by every harness that times in the same phase. Base and candidate of one timing
    always run on the same set."""

    def __init__(self, cpu_sets: Sequence[str]):
        self.cpu_sets = list(cpu_sets)
        self._free: asyncio.Queue[str] | None = None

    @contextlib.asynccontextmanager
    async def take(self) -> AsyncIterator[str]:
        """A free set, as the command prefix that pins a process to it."""
        if self._free is None:
            self._free = asyncio.Queue()
            for cpus in self.cpu_sets:
                self._free.put_nowait(cpus)
        cpus = await self._free.get()
        try:
            yield f"taskset -c {shlex.quote(cpus)} "
        finally:
            self._free.put_nowait(cpus)


@dataclass(frozen=True)
class TimingOptions:
    """How a harness times: at ``threads`` (None: the target ``time`` is given, else this
    process's CPUs), on the large input grown by ``sizing`` (None: its defaults); ``curve``
    replaces the thread counts 1, 2, 4, ... target; ``slots`` are disjoint CPU sets on which
    timings run at once (None: one at a time); a timing stops after 2 rounds once
    ``budget_s`` has passed (so a slow candidate gets fewer rounds, and a wider interval, than
    a fast one)."""

    threads: int | None = None
    curve: tuple[int, ...] = ()
    sizing: SizingLimits | None = None
    slots: CpuSlots | None = None
    budget_s: float | None = None


@dataclass
class Samples:
    """What one timing run of the driver said."""

    reference: list[float] = field(default_factory=list)  # ``X ref``
    candidate: dict[int, list[float]] = field(default_factory=dict)  # threads -> ``X cand``
    reference_runs: list[float] = field(default_factory=list)  # ``R``: every reference call
    limit: float | None = None  # the last ``L``: the limit of the call it died in, if it did
    limit_threads: int | None = None
    error: str = ""

    @classmethod
    def read(cls, stdout: str) -> Samples:
        out = cls()
        for line in stdout.splitlines():
            m = _LINE.search(line)
            if not m:
                continue
            kind, fields = m.group(1), m.group(2).split(" ")
            if kind == "X" and len(fields) >= 2:
                if fields[0] == "ref":
                    out.reference.append(float(fields[1]))
                else:
                    t = int(fields[2]) if len(fields) > 2 else 0
                    out.candidate.setdefault(t, []).append(float(fields[1]))
            elif kind == "R":
                out.reference_runs.append(float(fields[0]))
            elif kind == "L":
                out.limit, out.limit_threads = float(fields[0]), int(fields[1]) if len(fields) > 1 else None
            elif kind == "E":
                out.error = " ".join(fields)
        return out

    def rounds(self, curve: Sequence[int]) -> int:
        return min([len(self.reference), *(len(self.candidate.get(t, [])) for t in curve)])


def read_timing(res: ExecResult, curve: Sequence[int]) -> Timing | str:
    """The timing in a driver's answer (the target is ``curve[-1]``), or why there is none."""
    samples = Samples.read(res.stdout)
    n = samples.rounds(curve)
    if n >= 1 and res.exit_code == 0:
        return timing_with_curve(samples.reference[:n], {t: samples.candidate[t][:n] for t in curve}, curve[-1])
    if res.exit_code in SIGALRM_CODES and samples.limit is not None and samples.reference_runs:
        return censored_timing(samples.reference_runs, samples.limit, curve[-1])
    return f"timing run failed: {samples.error or res.summary(500)}"


class DriverTiming:
    """Times candidate sources built by ``builds``; run it with nothing else running."""

    def __init__(self, builds: DriverBuilds, workdir: WorkDir, call_timeout: float, pin: str,
                 budget_s: float | None = None):
        self.builds = builds
        self.workdir = workdir
        self.call_timeout = call_timeout
        self.pin = pin
        self.budget_s = budget_s  # a timing stops after 2 rounds once this has passed

    async def sized_input(self, test: TestCase, limits: SizingLimits, pin: str | None = None) -> tuple[TestCase, Sized]:
        """``test`` with its size variables scaled until the reference takes long enough."""
        pin = self.pin if pin is None else pin
        binary = await self.builds.reference_binary([])
        drawn, spec = dict(test.input["vars"]), self.builds.plan.vars
        alarm = max(1, math.ceil(2 * limits.max_time_s))

        def at(scale: float) -> TestCase:
            return test.model_copy(update={"input": {**test.input, "vars": scaled_vars(drawn, spec, scale)}})

        async def probe(scale: float) -> Probe | None:
            t = at(scale)
            name = f"probe_{digest(binary, str(sorted(t.input['vars'].items())))}.txt"
            await self.workdir.write(name, spec_lines(self.builds.plan, [t], [0]))
            res = await self.workdir.run(f"{pin}./{binary} probe {alarm} < {name}", alarm + 30)
            for line in res.stdout.splitlines():
                m = _LINE.search(line)
                if m and m.group(1) == "P" and res.exit_code == 0:
                    fields = m.group(2).split(" ")
                    return Probe(float(fields[1]), float(fields[2]) * 1024)
            return None

        sized = await grow(probe, limits, key=lambda s: tuple(sorted(scaled_vars(drawn, spec, s).items())))
        return at(sized.scale), sized

    async def time_source(self, source: str, test: TestCase, repeats: int, curve: Sequence[int],
                          pin: str | None = None, warmup: int = 1) -> Timing | str:
        """The candidate ``source`` against the reference on ``test`` at each thread count of
        ``curve`` (the last is the target), after ``warmup`` unrecorded rounds, or why it has
        no timing. A candidate stopped by its limit below the target is timed again at the
        counts above it."""
        binary, log = await self.builds.candidate(source, [])
        if binary is None:
            return f"does not build: {log}"
        name = f"timing_{digest(binary)}.txt"
        await self.workdir.write(name, spec_lines(self.builds.plan, [test], [0]))
        cap = max(1, int(round(self.call_timeout)))
        budget = f" {self.budget_s:g}" if self.budget_s else ""
        counts, censored = list(curve), []
        while True:
            per_round = self.call_timeout * (len(counts) + 1)
            res = await self.workdir.run(
                f"{self.pin if pin is None else pin}./{binary} time {','.join(map(str, counts))} {repeats} {warmup} {cap}{budget}"
                f" < {name}", per_round * (repeats + 2) + 30)
            result = read_timing(res, counts)
            samples = Samples.read(res.stdout)
            died_below = samples.limit_threads if res.exit_code in SIGALRM_CODES else None
            if isinstance(result, Timing) and died_below is not None and died_below != counts[-1] and samples.reference_runs:
                # Too slow at few threads: those counts are censored, the rest are timed again.
                bound = _censored_bound(samples.reference_runs, samples.limit or 1.0)
                censored += [CurvePoint(threads=t, speedup=bound, low=0.0, high=bound, censored=True)
                             for t in counts if t <= died_below]
                counts = [t for t in counts if t > died_below]
                continue
            if isinstance(result, Timing):
                result.curve = sorted(censored + result.curve, key=lambda p: p.threads)
            return result
