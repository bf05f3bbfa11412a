"""The C/C++ differential harness: the original function is the reference for every candidate.

``CHarness`` reads the function's signature (``c_signature``), generates a driver that
builds random inputs from the types and the constraints (``c_plan``, ``c_driver``), and compiles
the reference and each candidate into one program per candidate, each in its own namespace
(C++) or with its global symbols renamed (C) (``c_build``). The driver runs the reference once
per test, then the candidate at every thread count several times, and compares inside the
process (``c_runs``): exact for integers, relative/absolute tolerance for floats,
order-insensitive when asked. A result that changes between runs or thread counts is
``flaky`` (a race); so is a candidate ThreadSanitizer catches racing (``c_race``). Timing
runs the candidate against the reference in one process, at the target parallelism and at
1, 2, 4, ... threads below it, on an input grown until the reference takes long enough
(``c_timing``, ``sizing``).

Processes run through a ``Sandbox`` when one is given; otherwise as plain subprocesses in a
temporary directory, with the same timeouts (faster, and what the benchmarks use)
(``c_workdir``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import shlex
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from bakeoff.agent.events import EventBus
from bakeoff.agent.harness import c_plan
from bakeoff.agent.harness.c_build import OPENMP, Dialect, DriverBuilds, DriverRuntime, default_runtime_dir
from bakeoff.agent.harness.c_race import THREADS as RACE_THREADS
from bakeoff.agent.harness.c_race import RaceCheck
from bakeoff.agent.harness.c_runs import DriverRuns, check_args, read_cell
from bakeoff.agent.harness.c_signature import Signature, guess_language, parse_signature
from bakeoff.agent.harness.c_spec import SpecDraft
from bakeoff.agent.harness.c_timing import DriverTiming, TimingOptions, timing_input
from bakeoff.agent.harness.c_workdir import LocalDir, SandboxDir, WorkDir
from bakeoff.agent.harness.parallelism import local_view
from bakeoff.agent.harness.protocol import DifferentialHarness
from bakeoff.agent.harness.sizing import MIB, SizingLimits
from bakeoff.agent.seams import ExecResult, Sandbox
from bakeoff.agent.stats import curve_threads
from bakeoff.agent.types import ExecutionMatrix, TargetParallelism, TestCase, Timing, TimingSetup

def _default_threads() -> list[int]:
    cores = os.cpu_count() or 2
    # Oversubscription (4x the cores) exposes races that two threads on two cores hide.
    return sorted({1, 2, cores, 2 * cores, 4 * cores})


def _workdir(sandbox: Sandbox | None, cache_dir: Path | None) -> tuple[WorkDir, str, Path | None]:
    """Where commands run, where the driver runtime is cached, and the directory to remove at the end."""
    if sandbox is not None:
        return SandboxDir(sandbox), "rt", None
    tmp = Path(tempfile.mkdtemp(prefix="bakeoff-diff-"))
    return LocalDir(tmp), str(cache_dir or default_runtime_dir()), tmp


def _literals(tests: Sequence[TestCase]) -> list[dict[str, Any]]:
    return [t.input for t in tests if isinstance(t.input, dict) and t.input.get("values")]


def _by_source(sources: Mapping[str, str]) -> dict[str, list[str]]:
    """Candidates grouped by their source: each distinct source is built and run once."""
    by_source: dict[str, list[str]] = {}
    for cid, src in sources.items():
        by_source.setdefault(src, []).append(cid)
    return by_source


def _memory_for_sizing(sandbox: Sandbox | None) -> float:
    """A quarter of the sandbox's memory limit: timing holds the inputs of both sides and copies."""
    limits = getattr(sandbox, "limits", None)
    memory = getattr(limits, "memory_bytes", None)
    return memory / 4 if memory else 512 * MIB


def _sizing_limits(timing: TimingOptions, sandbox: Sandbox | None) -> SizingLimits:
    """How far the timing input may grow: the options' limits, the sandbox's memory by default."""
    sizing = timing.sizing or SizingLimits()
    if sizing.memory_bytes is None:
        sizing = dataclasses.replace(sizing, memory_bytes=_memory_for_sizing(sandbox))
    return sizing


class CHarness(DifferentialHarness):
    """Differential harness for one C or C++ function (see ``agent.harness.protocol``)."""

    dialect: Dialect = OPENMP  # the compilers and driver main of the parallel model

    def __init__(
        self,
        reference_source: str,
        function: str,
        *,
        language: Literal["c", "c++"] | None = None,
        sandbox: Sandbox | None = None,
        constraints: Mapping[str, Any] | None = None,
        threads: Sequence[int] | None = None,
        repeats: int = 3,
        float_rel: float = 1e-6,
        float_abs: float = 1e-9,
        unordered: bool = False,
        compile_flags: Sequence[str] = ("-O2", "-fopenmp"),
        small_tests: int = 4,
        medium_tests: int = 1,
        seed: int = 0,
        call_timeout: float = 10.0,
        build_timeout: float = 120.0,
        timing: TimingOptions | None = None,
        jobs: int | None = None,
        limiter: asyncio.Semaphore | None = None,
        events: EventBus | None = None,
        cache_dir: Path | None = None,
        cpus: str | None = None,
        race_check: bool = True,
    ):
        self.reference_source, self.function = reference_source, function
        self.language: str = language or guess_language(reference_source)
        self.signature: Signature = parse_signature(reference_source, function)
        self.threads, self.repeats = list(threads or _default_threads()), repeats
        self._comparison = (float_rel, float_abs, unordered)  # unless the constraints say otherwise
        self.flags = list(compile_flags)
        self.small_tests, self.medium_tests, self.seed = small_tests, medium_tests, seed
        self.call_timeout, self.build_timeout = call_timeout, build_timeout
        self.timing_options = timing or TimingOptions()
        self.sizing = _sizing_limits(self.timing_options, sandbox)
        self.timing_setup: TimingSetup | None = None  # how the winners were timed, once they are
        self._sized: tuple[TestCase, TimingSetup] | None = None
        self.events = events
        # One command at a time in a sandbox: its limits (memory, processes) are for the whole
        # sandbox, and two compilers at once can exceed them.
        self.limiter = limiter or asyncio.Semaphore(jobs or (1 if sandbox is not None else os.cpu_count() or 2))
        self.build_logs: dict[str, str] = {}  # candidate id -> why it did not build
        self.details: dict[str, dict[str, str]] = {}  # candidate id -> test id -> what happened
        self.notes: list[str] = []
        self.timing_errors: dict[str, str] = {}
        # Candidates that passed every test are run once more under ThreadSanitizer (+ Archer).
        self.race_check = race_check
        self.races: dict[str, str] = {}  # candidate id -> the TSan report that made it flaky
        self.race_counts: dict[str, int] = {}  # candidate id -> how many TSan reports it had
        self.matched: dict[str, dict[str, tuple[int, int]]] = {}  # candidate id -> test id -> (runs matching the reference, runs)
        # A spec inferred from the source and not yet checked against the reference: whoever
        # makes the tests settles it first (``c_spec_model.settle_spec``); None for a given spec.
        self.draft: SpecDraft | None = None
        self._sandbox = sandbox
        self._workdir, self.rt_dir, self._tmp = _workdir(sandbox, cache_dir)
        self.cpus = cpus
        self.use_constraints(constraints or {})

    @property
    def workdir(self) -> WorkDir:
        """Where this harness writes and runs its drivers (spec checks run there too)."""
        return self._workdir

    def use_constraints(self, constraints: Mapping[str, Any]) -> None:
        """Drive the function with this plan from now on (``c_plan``'s vocabulary): an inferred
        spec once it has been validated (``c_spec_check``), or one a person wrote."""
        self.constraints = dict(constraints)
        self.plan = c_plan.build_plan(self.signature, self.constraints)
        float_rel, float_abs, unordered = self._comparison
        self.float_rel = float(self.constraints.get("float_rel", float_rel))
        self.float_abs = float(self.constraints.get("float_abs", float_abs))
        self.unordered = bool(self.constraints.get("unordered", unordered))
        self._sized = None  # a new plan: the timing input is drawn and sized again
        self._assemble(self.rt_dir, self.cpus)

    def _assemble(self, rt_dir: str, cpus: str | None) -> None:
        """The collaborators that build, run, time and race-check, all in one work directory."""
        # Driver runs (not compiles) pinned to these CPUs, e.g. "0,1" to measure on two cores.
        pin = f"taskset -c {shlex.quote(cpus)} " if cpus else ""
        runtime = DriverRuntime(self._workdir, rt_dir, self.flags, self.limiter, self.build_timeout, self.dialect)
        self.builds = DriverBuilds(language=self.language, flags=self.flags, reference_source=self.reference_source,
                                   plan=self.plan, support=str(self.constraints.get("support", "")),
                                   workdir=self._workdir, runtime=runtime, limiter=self.limiter,
                                   build_timeout=self.build_timeout)
        self.runs = DriverRuns(self._workdir, self.limiter, self.plan, self.call_timeout, self.launcher(pin))
        self.timing = DriverTiming(self.builds, self._workdir, self.call_timeout, pin, self.timing_options.budget_s)
        self.race_checker = RaceCheck(self.builds, self._workdir, self.limiter, build_timeout=self.build_timeout,
                                      pin=pin, on_skip=self._race_check_skipped)

    def launcher(self, pin: str) -> str:
        """What the correctness runs' command starts with (``MpiHarness``: ``mpirun``)."""
        return pin

    def _emit(self, kind: str, **data: Any) -> None:
        if self.events is not None:
            self.events.emit(kind, **data)

    def _check_args(self, threads: Sequence[int], repeats: int) -> str:
        return check_args(self.float_rel, self.float_abs, self.unordered, threads, repeats, self.call_timeout)

    # ------------------------------------------------------------------ the protocol

    def _draw_tests(self, extra_inputs: Sequence[Any]) -> list[TestCase]:
        """Small and medium inputs drawn from the size variables, then the edge cases."""
        rng = random.Random(self.seed)
        vars_spec = self.plan.vars
        tests: list[TestCase] = []
        for k in range(self.small_tests):
            tests.append(TestCase(id=f"diff-small-{k}", kind="differential",
                                  input={"seed": rng.randrange(1 << 31), "vars": c_plan.draw_vars(vars_spec, rng, "small")}))
        for k in range(self.medium_tests):
            tests.append(TestCase(id=f"diff-medium-{k}", kind="differential",
                                  input={"seed": rng.randrange(1 << 31), "vars": c_plan.draw_vars(vars_spec, rng, "medium")}))
        for k, extra in enumerate([*(self.constraints.get("edge") or []), *extra_inputs]):
            if not isinstance(extra, Mapping):
                raise c_plan.ConstraintError(f"an edge case must be a mapping with 'vars' and/or 'values', not {extra!r}")
            drawn = c_plan.draw_vars(vars_spec, rng, "small")
            drawn.update({k2: float(v) for k2, v in (extra.get("vars") or {}).items()})
            inp: dict[str, Any] = {"seed": rng.randrange(1 << 31), "vars": drawn}
            if extra.get("values"):
                inp["values"] = dict(extra["values"])
            tests.append(TestCase(id=f"diff-edge-{k}", kind="differential", input=inp))
        return tests

    async def make_tests(self, extra_inputs: Sequence[Any] = ()) -> list[TestCase]:
        tests = self._draw_tests(extra_inputs)
        binary = await self.builds.reference_binary(_literals(tests))
        results = await self.runs.protocol(binary, "ref", tests, 1)
        kept = []
        for i, t in enumerate(tests):
            r = results.get(i, ["error", "no result"])
            if r[0] != "ok":
                why = ("threw: " if r[0] == "exc" else "") + " ".join(r[1:])
                self.notes.append(f"{t.id} dropped: the reference {why}")
                continue
            kept.append(t.model_copy(update={"expected": {"digest": r[1], "preview": r[2]}, "valid": True}))
        self._emit("differential.tests", function=self.function, kept=len(kept), dropped=len(tests) - len(kept))
        return kept

    async def run_matrix(self, sources: Mapping[str, str], tests: Sequence[TestCase]) -> ExecutionMatrix:
        matrix = ExecutionMatrix(candidates=list(sources), tests=[t.id for t in tests])
        literals = _literals(tests)
        by_source = _by_source(sources)
        args = self._check_args(self.threads, self.repeats)
        runs = len(self.threads) * self.repeats + 1
        first: dict[str, ExecResult] = {}
        if isinstance(self._workdir, SandboxDir) and tests:
            await self.builds.candidates_at_once(list(by_source), literals)
            built = [b for b, _ in [await self.builds.candidate(src, literals) for src in by_source] if b is not None]
            first = await self.runs.first_passes(built, args, tests, runs)

        async def one(src: str, cids: list[str]) -> None:
            binary, log = await self.builds.candidate(src, literals)
            if binary is None:
                for cid in cids:
                    self.build_logs[cid] = log
                    for t in tests:
                        matrix.set(cid, t.id, "error", "build failed")
                return
            results = await self.runs.protocol(binary, args, tests, runs, first.get(binary))
            self._record(matrix, cids, tests, results)

        await asyncio.gather(*(one(src, cids) for src, cids in by_source.items()))
        if self.race_check and tests:
            await asyncio.gather(*(self._race_check(src, cids, tests, literals, matrix)
                                   for src, cids in by_source.items()
                                   if all(o == "pass" for o in matrix.cells.get(cids[0], {}).values())))
        # Keep the caller's order of candidates and tests.
        matrix.candidates = list(sources)
        matrix.tests = [t.id for t in tests]
        self._emit("differential.matrix", function=self.function, candidates=len(sources), builds=len(by_source))
        return matrix

    def _record(self, matrix: ExecutionMatrix, cids: Sequence[str], tests: Sequence[TestCase],
                results: Mapping[int, list[str]]) -> None:
        """One build's results, for every candidate that has its source."""
        for i, t in enumerate(tests):
            cell = read_cell(results[i], t)
            if cell.reference_moved:
                self.notes.append(f"{t.id}: the reference gave a different output than when the tests were made")
            for cid in cids:
                matrix.set(cid, t.id, cell.outcome, cell.output)
                self.details.setdefault(cid, {})[t.id] = cell.detail
                self.matched.setdefault(cid, {})[t.id] = cell.matched

    # ------------------------------------------------------------------ the race check

    def _race_check_skipped(self, why: str) -> None:
        if not any(n.startswith("race check skipped") for n in self.notes):
            self.notes.append(f"race check skipped: {why}")
            self._emit("differential.race_check_skipped", function=self.function, reason=why)

    async def _race_check(self, source: str, cids: list[str], tests: Sequence[TestCase],
                          literals: Sequence[Mapping[str, Any]], matrix: ExecutionMatrix) -> None:
        """The first small and the first medium test at 4 threads under ThreadSanitizer: a race
        the timing-bound runs missed makes every test of the candidate ``flaky``."""
        report = await self.race_checker.report(source, tests, literals, self._check_args([RACE_THREADS], 1))
        if report is None or not report.racy:
            return
        first = next((ln.strip() for ln in report.summary.splitlines() if "WARNING" in ln), "data race")
        for cid in cids:
            self.races[cid] = report.summary
            self.race_counts[cid] = report.count
            self.notes.append(f"{cid}: ThreadSanitizer found a race:\n{report.summary}")
            for t in tests:
                matrix.set(cid, t.id, "flaky", f"flaky: {first}")
                self.details.setdefault(cid, {})[t.id] = f"flaky tsan {first}"
        self._emit("differential.race", function=self.function, candidates=cids, summary=report.summary)

    # ------------------------------------------------------------------ timing

    def target(self, target: TargetParallelism | None) -> TargetParallelism:
        if target is not None:
            return target
        if self.timing_options.threads is not None:
            return TargetParallelism(threads=self.timing_options.threads, source="the harness's timing threads")
        return local_view()

    async def timing_input(self, pin: str | None = None, limits: SizingLimits | None = None) -> tuple[TestCase, TimingSetup]:
        """The input every candidate is timed on: the large size, scaled until the reference
        takes ``sizing.min_time_s`` per call at one thread (within ``limits``, by default the
        harness's); sized once. ``pin`` prefixes each probe's command."""
        if self._sized is None:
            test, sized = await self.timing.sized_input(timing_input(self.plan, self.seed), limits or self.sizing, pin)
            setup = TimingSetup(threads=0, size=dict(test.input["vars"]), reference_s=sized.seconds, sizing=sized.why)
            self._sized = (test, setup)
            self._emit("differential.timing_input", function=self.function, size=setup.size,
                       reference_s=sized.seconds, why=sized.why)
        return self._sized

    async def time(self, sources: Mapping[str, str], *, repeats: int = 5,
                   target: TargetParallelism | None = None) -> dict[str, Timing]:
        """Each candidate against the reference on the sized input, at the target parallelism
        and at 1, 2, 4, ... below it (the scaling curve), interleaved inside one process and
        timing only the call. Distinct sources are timed once each, one per CPU slot at a time.
        Run this with nothing else running (but other timings on other CPU slots)."""
        goal = self.target(target)
        counts = list(self.timing_options.curve) or curve_threads(goal.threads)
        slots = self.timing_options.slots
        async with slots.take() if slots else contextlib.nullcontext(None) as pin:
            test, setup = await self.timing_input(pin)
        self.timing_setup = setup.model_copy(update={"threads": counts[-1], "threads_source": goal.source,
                                                     "curve_threads": counts})
        done: dict[str, Timing | str] = {}
        # A warm-up round pays for first-call costs (the thread pool, first touches); next to a
        # call of a tenth of a second or more they are noise, and the round is not worth its time.
        warmup = 0 if (setup.reference_s or 0.0) >= 0.1 else 1

        async def one(src: str) -> None:
            async with slots.take() if slots else contextlib.nullcontext(None) as pin:
                done[src] = await self.timing.time_source(src, test, repeats, counts, pin, warmup)

        distinct = list(dict.fromkeys(sources.values()))
        if slots:
            await asyncio.gather(*(one(src) for src in distinct))
        else:
            for src in distinct:
                await one(src)
        out: dict[str, Timing] = {}
        for cid, src in sources.items():
            result = done[src]
            if isinstance(result, Timing):
                out[cid] = result
            else:
                self.timing_errors[cid] = result
        return out

    async def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
