"""The Python differential harness: the original function is the reference for every candidate.

``PythonHarness`` implements ``protocol.DifferentialHarness`` for a Python function: inputs
come from its type hints plus model-proposed edge cases (``testgen.typed_inputs``, mutated
near the proposals), every candidate runs on every input in its own process (see
``pyexec``), several times, and its outputs are compared with the reference's.
"""

from __future__ import annotations

import asyncio
import inspect
import statistics
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

from bakeoff.agent.harness.parallelism import local_view
from bakeoff.agent.harness.protocol import DifferentialHarness
from bakeoff.agent.harness.pyexec import CallResult, PyJob, PyResult, decode, run_jobs, signature, values_equal
from bakeoff.agent.harness.sizing import Probe, SizingLimits, grow
from bakeoff.agent.harness.testgen import call_of, mutate_inputs, parameters, typed_inputs
from bakeoff.agent.stats import curve_threads, timing_with_curve
from bakeoff.agent.types import ExecutionMatrix, Outcome, TargetParallelism, TestCase, Timing, TimingSetup

# The largest call text a timing input may have: every timing process parses the literal (a
# 1 MB list literal takes CPython seconds), so sizing stops there.
MAX_CALL_CHARS = 1 << 16

# A runner takes a batch of jobs (and optionally ``workers=``, how many run at once) and returns
# their results in order: ``pyexec.run_jobs`` (host processes, blocking) or a
# ``pyexec.SandboxRunner`` (async, inside a sandbox).
Runner = Callable[..., "list[PyResult] | Awaitable[list[PyResult]]"]


class PythonHarness(DifferentialHarness):
    """The differential harness for one Python function (``protocol.DifferentialHarness``).

    The reference's outputs are the expected values. Each candidate runs ``repeats`` times,
    each in a fresh process with a different hash seed, so set-order and other
    nondeterminism shows; a result that changes between runs is ``flaky``.

    Programs run through ``runner``; with none they run on this machine (``run_jobs``), so
    callers running candidates they did not write pass ``SandboxRunner(sandbox)``.
    """

    language = "python"

    def __init__(
        self,
        reference_source: str,
        entry: str,
        *,
        runner: Runner | None = None,
        float_tol: tuple[float, float] = (1e-9, 1e-12),
        unordered: bool = False,
        repeats: int = 3,
        count: int = 24,
        size: int = 8,
        timing_size: int = 2000,
        timeout_s: float = 2.0,
        seed: int = 0,
        sizing: SizingLimits | None = None,
        timing_threads: int | None = None,
    ):
        self.reference_source = reference_source
        self.entry = entry
        self.runner: Runner = runner or run_jobs
        self.rel, self.abs = float_tol
        self.unordered = unordered
        self.repeats = repeats
        self.count = count
        self.size = size
        self.timing_size = timing_size  # the timing input's size before sizing grows it
        self.timeout_s = timeout_s
        self.seed = seed
        self.sizing = sizing or SizingLimits()
        self.timing_threads = timing_threads
        self.timing_setup: TimingSetup | None = None
        self._sized: tuple[str, TimingSetup] | None = None
        parameters(reference_source, entry)  # the user's error, reported now: no such function

    async def _run(self, jobs: Sequence[PyJob], workers: int | None = None) -> list[PyResult]:
        kw = {} if workers is None else {"workers": workers}
        if inspect.iscoroutinefunction(self.runner) or inspect.iscoroutinefunction(getattr(self.runner, "__call__", None)):
            return await self.runner(jobs, **kw)  # type: ignore[misc]
        # Not a coroutine function: it blocks and returns the results.
        blocking = cast(Callable[..., list[PyResult]], self.runner)
        return await asyncio.to_thread(blocking, jobs, **kw)

    def _calls(self, extra_inputs: Sequence[Any]) -> list[str]:
        calls = typed_inputs(self.reference_source, self.entry, count=self.count, size=self.size, seed=self.seed)
        proposed: list[str] = []
        for x in extra_inputs:
            text = x if isinstance(x, str) else repr(tuple(x) if isinstance(x, list) else x)
            if not text.lstrip().startswith(self.entry):
                text = f"{self.entry}{text if text.startswith('(') else '(' + text + ')'}"
            call = call_of(text, self.entry)
            if call and call not in calls:
                calls.append(call)
                proposed.append(call)
        # Edge cases a model proposes are where bugs hide: probe next to them too.
        calls += [c for c in mutate_inputs(proposed, self.entry, per_call=2, seed=self.seed) if c not in calls]
        return calls

    def _job(self, source: str, tests: Sequence[TestCase], seed: int) -> PyJob:
        return PyJob(
            source=source,
            entry=self.entry,
            asserts=[t.code for t in tests if t.input is None],
            calls=[t.input for t in tests if t.input is not None],
            timeout_s=self.timeout_s,
            max_timeouts=2,
            hash_seed=seed,
        )

    async def make_tests(self, extra_inputs: Sequence[Any] = ()) -> list[TestCase]:
        calls = self._calls(extra_inputs)
        probe = [TestCase(id=f"diff-{i}", kind="differential", code=c, input=c) for i, c in enumerate(calls)]
        runs = await self._run([self._job(self.reference_source, probe, s) for s in (0, 1)])
        if runs[0].load_error:
            raise ValueError(f"the reference does not load: {runs[0].load_error}")
        tests = []
        for i, t in enumerate(probe):
            a, b = runs[0].calls[i], runs[1].calls[i]
            # An input the reference fails on, or answers differently twice, is no test.
            if a.outcome == "pass" and b.outcome == "pass" and self._same(a.value, b.value):
                tests.append(t.model_copy(update={"expected": a.value, "valid": True}))
        return tests

    def _same(self, a: Any, b: Any) -> bool:
        return values_equal(decode(a), decode(b), rel=self.rel, abs_tol=self.abs, unordered=self.unordered)

    async def run_matrix(self, sources: Mapping[str, str], tests: Sequence[TestCase]) -> ExecutionMatrix:
        ids = list(sources)
        jobs = [self._job(sources[c], tests, seed) for c in ids for seed in range(self.repeats)]
        results = await self._run(jobs)
        matrix = ExecutionMatrix()
        asserts = [t for t in tests if t.input is None]
        calls = [t for t in tests if t.input is not None]
        for n, c in enumerate(ids):
            runs = results[n * self.repeats : (n + 1) * self.repeats]
            for j, t in enumerate(asserts):
                seen = {r.asserts[j] for r in runs}
                matrix.set(c, t.id, seen.pop() if len(seen) == 1 else "flaky")
            for j, t in enumerate(calls):
                cells = [r.calls[j] for r in runs]
                outcome, output = self._judge_call(cells, t)
                matrix.set(c, t.id, outcome, output if output is not None else None)
            if runs and runs[0].load_error:
                for t in tests:
                    matrix.set(c, t.id, "error", "!" + runs[0].load_error[:200])
        return matrix

    def _judge_call(self, cells: Sequence[CallResult], test: TestCase) -> tuple[Outcome, str | None]:
        kinds = {c.outcome for c in cells}
        if kinds != {"pass"}:
            if len(kinds) > 1:
                return "flaky", None
            kind = kinds.pop()
            return kind, "!" + (f"killed: more than {self.timeout_s:g} s per call" if kind == "timeout" else kind)
        first = cells[0].value
        if any(not self._same(first, c.value) for c in cells[1:]):
            return "flaky", signature(first)
        if test.expected is None:
            return "pass", signature(first)
        return ("pass" if self._same(test.expected, first) else "fail"), signature(first)

    def _timing_call(self, size: int) -> str:
        return typed_inputs(self.reference_source, self.entry, count=1, size=size, seed=self.seed + 1)[0]

    async def timing_input(self) -> tuple[str, TimingSetup]:
        """The call every candidate is timed on: the typed input of ``timing_size``, grown until
        the reference takes ``sizing.min_time_s`` per call (within its caps); sized once."""
        if self._sized is None:
            async def probe(scale: float) -> Probe | None:
                call = self._timing_call(max(1, round(self.timing_size * scale)))
                if len(call) > MAX_CALL_CHARS:
                    return Probe(0.0, too_large=True)
                job = PyJob(source=self.reference_source, entry=self.entry, calls=[call],
                            timeout_s=2 * self.sizing.max_time_s, max_timeouts=1, cpus=1)
                cell = (await self._run([job], workers=1))[0].calls[0]
                return Probe(cell.seconds[0]) if cell.outcome == "pass" and cell.seconds else None

            sized = await grow(probe, self.sizing, key=lambda s: max(1, round(self.timing_size * s)))
            size = max(1, round(self.timing_size * sized.scale))
            self._sized = (self._timing_call(size), TimingSetup(threads=0, size={"size": float(size)},
                                                                reference_s=sized.seconds, sizing=sized.why))
        return self._sized

    async def time(self, sources: Mapping[str, str], *, repeats: int = 5,
                   target: TargetParallelism | None = None) -> dict[str, Timing]:
        """Interleaved timing of one call on the sized typed input, the candidate on 1, 2, 4,
        ... up to the target's CPUs (its processes pinned to them), the reference on the
        target's; each sample is one call (the median of 3 when the input is short) in one fresh process. The processes of
        one candidate run one at a time: an unrecorded warm-up round, then rounds alternating
        the reference first and last (as in ``agent.stats.interleaved``), as one batch: one
        sandbox command per candidate."""
        goal = target or (TargetParallelism(threads=self.timing_threads, source="the harness's timing threads")
                          if self.timing_threads else local_view())
        counts = curve_threads(goal.threads)
        call, setup = await self.timing_input()
        self.timing_setup = setup.model_copy(update={"threads": goal.threads, "threads_source": goal.source,
                                                     "curve_threads": counts})
        sides: list[int] = [0, *reversed(counts)]  # the warm-up round; 0 is the reference
        for i in range(repeats):
            # Alternate which goes first so a drift in machine load does not favour one side.
            sides += [0, *counts] if i % 2 == 0 else [*reversed(counts), 0]

        def seconds(res: PyResult) -> float:
            cell = res.calls[0] if res.calls else None
            if cell is None or cell.outcome != "pass":
                return float("inf")
            return statistics.median(cell.seconds)

        # On an input long enough one call is a sample; on a short one, the median of 3.
        per_process = 1 if (setup.reference_s or 0.0) >= self.sizing.min_time_s > 0 else 3
        timings: dict[str, Timing] = {}
        for c, src in sources.items():
            jobs = [PyJob(source=src if side else self.reference_source, entry=self.entry, calls=[call],
                          call_repeats=per_process, timeout_s=30.0, max_timeouts=1, cpus=side or goal.threads)
                    for side in sides]
            results = await self._run(jobs, workers=1)
            recorded = list(zip(sides, results))[len(counts) + 1:]
            base = [seconds(r) for side, r in recorded if side == 0]
            by_threads = {t: [seconds(r) for side, r in recorded if side == t] for t in counts}
            timings[c] = timing_with_curve(base, by_threads, goal.threads)
        return timings
