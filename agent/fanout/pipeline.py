"""``fan_out``: n candidate edits developed at once, every one tested, the fastest correct one chosen.

The whole data flow of a fan-out, one step per line of ``fan_out``:

    base        the repository at base, built, tested and benchmarked once      baseline.py
    tests       generated tests and differential cases, made meanwhile          tests.py
    candidates  n trajectories (edit, build, test, profile, repair) in waves    candidates.py
    gate        built, and the repository's tests that passed at base pass      matrix.py
    matrix      every candidate on every test                                   matrix.py
    vote        who is correct (the base version is the reference)             selection/vote.py
    close call  top groups close: inputs that tell them apart, a judge decides   close_calls.py
    timing      the winners timed against the base, interleaved, at the target   timing.py
                parallelism, on an input grown until the base takes long enough
    choice      the fastest correct candidate (for a speed task: only one       selection/choose.py
                faster than the base), with the report's table
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Sequence

from bakeoff.agent.fanout.baseline import Baseline, FanOutError, measure_baseline
from bakeoff.agent.fanout.candidates import develop, trajectories
from bakeoff.agent.fanout.close_calls import settle_close_call
from bakeoff.agent.fanout.matrix import as_probe, gate, run_matrix, scored_tests
from bakeoff.agent.fanout.settings import FanOutServices
from bakeoff.agent.fanout.source import file_of, guess_entry, inline_includes, local_headers
from bakeoff.agent.fanout.strategies import language_of
from bakeoff.agent.fanout.tests import MadeTests, make_tests, pick_harness
from bakeoff.agent.fanout.timing import time_winners
from bakeoff.agent.fanout.trajectory import Trajectory
from bakeoff.agent.harness.protocol import DifferentialHarness
from bakeoff.agent.selection.choose import choose, is_speed_task
from bakeoff.agent.selection.table import render_table
from bakeoff.agent.selection.vote import Vote, vote
from bakeoff.agent.seams import Sandbox
from bakeoff.agent.types import Candidate, FanOutResult, Timing, Verdict


async def fan_out(goal: str, files: Sequence[str], n: int, *, services: FanOutServices,
                  entry: str | None = None, language: str | None = None, keeps_behaviour: bool = True) -> FanOutResult:
    """Develop ``n`` candidates for ``goal`` on ``files`` at once, test them all, ship the fastest correct one.

    ``keeps_behaviour``: the base version is the reference every candidate must match (an
    optimization, a port). False for a goal that changes what the code computes (a fix, a
    feature): candidates are then voted on by agreement, and close calls settled by a judge."""
    check_request(files, services)
    language = language or language_of(files)
    n = max(1, min(n, services.settings.max_n))
    services.events.emit("fanout.start", goal=goal, files=list(files), n=n, language=language,
                         models=[m.name for m in services.editors], keeps_behaviour=keeps_behaviour)
    async with contextlib.AsyncExitStack() as stack:
        # Held: open while the candidates work, taking none of the slots they wait for.
        base_sb = await stack.enter_async_context(services.pool.sandbox(services.workspace, hold=True))
        baseline = await measure_baseline(base_sb, files, services.settings)
        ref = await Reference.read(base_sb, baseline, goal, entry, language, services, keeps_behaviour)
        stack.push_async_callback(close_harness, ref.harness)
        tests_job = asyncio.create_task(make_tests(ref.harness, services.tester, goal, ref.source, ref.entry,
                                                   language, services.settings))
        stack.push_async_callback(cancel, tests_job)
        developing = trajectories(goal, files, n, language, ref.entry, baseline, services)
        candidates = await develop(developing, services)
        made = await tests_job
        harness = None if made.harness_failed else ref.harness
        made_tests = made.tests if keeps_behaviour else [as_probe(t) for t in made.tests]
        sources = ref.sources(candidates, developing)
        tests = scored_tests(baseline, made_tests, reference=keeps_behaviour)
        matrix = await run_matrix(candidates, made_tests, harness, sources,
                                  {c: t.profile_output for c, t in developing.items()}, baseline,
                                  reference=keeps_behaviour)
        ballot = vote(matrix, tests, reference=keeps_behaviour, gate=gate(candidates))
        if made.build_only:
            ballot = built_only(ballot)
        ballot = await settle_close_call(ballot, harness=harness, sources=sources, goal=goal, entry=ref.entry,
                                         reference=keeps_behaviour, services=services)
        timings, setup = await time_winners(ballot.winners, harness, sources,
                                            {c: developing[c].final_files for c in ballot.winners}, baseline, base_sb,
                                            services.pool, services.workspace, services.settings, services.events)
    verdict = choose(ballot, candidates, matrix, tests, timings=timings or None, setup=setup,
                     speed_task=keeps_behaviour and is_speed_task(goal))
    return finish(verdict, candidates, timings, made, services)


def built_only(ballot: Vote) -> Vote:
    """No CUDA device: building and the repository's tests are all the candidates passed, and
    neither shows a kernel correct, so no candidate is called correct (nor timed)."""
    from bakeoff.agent.harness.cuda_harness import NO_DEVICE

    built = sorted({c for g in ballot.groups for c in g.members} | set(ballot.flaky))
    reason = (f"{NO_DEVICE}: {len(built)} candidate{'s' if len(built) != 1 else ''} built, and none is called "
              "correct or faster: nothing ran on a GPU")
    return ballot.model_copy(update={"winners": [], "method": "none", "close_call": False, "reason": reason})


def check_request(files: Sequence[str], services: FanOutServices) -> None:
    if not files:
        raise FanOutError("fan_out needs at least one file to edit: pass files=[...] relative to the repository root")
    if not services.editors:
        raise FanOutError("fan_out needs an editor model: configure one (--model, or [model] editor = ...)")


class Reference:
    """The base version of the entry function: its source (with the local headers it includes
    inlined) and the differential harness that compares every candidate with it."""

    def __init__(self, entry: str | None, path: str | None, source: str | None, headers: dict[str, str],
                 harness: DifferentialHarness | None, keeps_behaviour: bool = True) -> None:
        self.entry, self.path, self.source, self.headers, self.harness = entry, path, source, headers, harness
        self.keeps_behaviour = keeps_behaviour  # the base is the reference (and runs with the candidates)

    @classmethod
    async def read(cls, sb: Sandbox, baseline: Baseline, goal: str, entry: str | None, language: str,
                   services: FanOutServices, keeps_behaviour: bool = True) -> Reference:
        entry = entry or guess_entry(goal, baseline.files)
        path = file_of(entry, baseline.files) if entry else None
        source = baseline.files.get(path) if path else None
        headers = await local_headers(sb, source, path) if source else {}
        harness = pick_harness(
            language_of([path]) if path else language, entry,
            inline_includes(source, headers) if source else None,
            sb if services.settings.harness_in_sandbox else None, services.events, goal,
        )
        return cls(entry, path, source, headers, harness, keeps_behaviour)

    def sources(self, candidates: Sequence[Candidate], developed: dict[str, Trajectory]) -> dict[str, str]:
        """Each gated candidate's version of the entry file, and the base's as ``"base"`` when
        it is the reference."""
        out = {
            c.id: inline_includes(c.source, {**self.headers, **developed[c.id].final_files})
            for c in candidates if c.source and c.error is None and c.patch
        }
        if self.source is not None and self.keeps_behaviour:
            out["base"] = inline_includes(self.source, self.headers)
        return out


def finish(verdict: Verdict, candidates: list[Candidate], timings: dict[str, Timing], made: MadeTests,
           services: FanOutServices) -> FanOutResult:
    if made.notes:
        verdict.reason += " " + " ".join(made.notes)
    by_id = {c.id: c for c in candidates}
    for cid, timing in timings.items():
        by_id[cid].timing = timing
    winner = by_id.get(verdict.winner) if verdict.winner else None
    services.events.emit("fanout.end", winner=verdict.winner, reason=verdict.reason, correct=verdict.correct,
                         best=verdict.best, timing=verdict.timing.model_dump(mode="json") if verdict.timing else None)
    return FanOutResult(verdict=verdict, candidates=candidates, winner=winner,
                        patch=winner.patch if winner else "", report_table=table_text(verdict))


def table_text(verdict: Verdict) -> str:
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=140, force_terminal=False, color_system=None).print(render_table(verdict))
    return buf.getvalue()


async def close_harness(harness: DifferentialHarness | None) -> None:
    """Remove what a harness left on disk (the C harness's build directory)."""
    close = getattr(harness, "close", None)
    if close is not None:
        await close()


async def cancel(job: asyncio.Task) -> None:
    """A job still running when the fan-out ends (cancelled, or a sandbox failed) stops with it."""
    if not job.done():
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
