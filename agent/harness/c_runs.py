"""Running a built C/C++ driver over tests: the spec lines it reads, the lines it answers.

The driver reads one line per test (``index seed literal n P...``) and answers on stdout
``@@BK B i`` when it begins test ``i``, ``@@BK L i seconds`` with the limit of each call,
and ``@@BK T i fields...`` with the test's result. A process that dies in a test (a crash,
or its alarm past the limit) is run again on the tests after it.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import NamedTuple

from bakeoff.agent.harness.c_plan import DriverPlan
from bakeoff.agent.harness.c_workdir import SIGALRM_CODES, WorkDir, digest, run_limited
from bakeoff.agent.seams import ExecResult
from bakeoff.agent.types import Outcome, TestCase


def spec_lines(plan: DriverPlan, tests: Sequence[TestCase], indices: Sequence[int]) -> str:
    """The driver's input for the tests at ``indices``: literal inputs are numbered in test order."""
    literal_ids: dict[int, int] = {}
    k = 0
    for i, t in enumerate(tests):
        if isinstance(t.input, dict) and t.input.get("values"):
            literal_ids[i] = k
            k += 1
    lines = []
    for i in indices:
        inp = tests[i].input
        P = plan.values(inp["vars"])
        lines.append(f"{i} {int(inp['seed'])} {literal_ids.get(i, -1)} {len(P)} " + " ".join(repr(float(x)) for x in P))
    return "\n".join(lines) + "\n"


def no_smaller(tests: Sequence[TestCase], at: int, among: Sequence[int]) -> list[int]:
    """The tests in ``among`` whose size variables are each at least test ``at``'s (inputs with
    literal values are sized by what they hold, so they never count)."""
    def sizes(t: TestCase) -> dict[str, float] | None:
        inp = t.input if isinstance(t.input, dict) else {}
        return None if inp.get("values") else dict(inp.get("vars") or {})

    base = sizes(tests[at])
    if not base:
        return []
    out = []
    for i in among:
        mine = sizes(tests[i])
        if i != at and mine is not None and all(mine.get(k, -math.inf) >= v for k, v in base.items()):
            out.append(i)
    return out


def _read_results(stdout: str, results: dict[int, list[str]]) -> tuple[int | None, float | None]:
    """Record each ``T`` line's fields in ``results``; return the test begun without a result
    (where the process died, if it did) and that test's call limit."""
    began, limit = None, None
    for line in stdout.splitlines():
        at = line.find("@@BK ")
        if at < 0:
            continue
        fields = line[at + 5 :].split(" ")
        if fields[0] == "B":
            began, limit = int(fields[1]), None
        elif fields[0] == "L" and len(fields) > 2:
            limit = float(fields[2])
        elif fields[0] == "T":
            idx = int(fields[1])
            results[idx] = fields[2:] or ["error"]
            began = None
    return began, limit


class DriverRuns:
    """Runs of built drivers in one work directory, each under a backstop timeout."""

    def __init__(self, workdir: WorkDir, limiter: asyncio.Semaphore, plan: DriverPlan, call_timeout: float, pin: str):
        self.workdir = workdir
        self.limiter = limiter
        self.plan = plan
        self.call_timeout = call_timeout
        self.pin = pin  # e.g. "taskset -c 0,1 ": drivers (not compilers) run on these CPUs
        # A program that hangs or crashes on one input is not run on any other: an MPI
        # deadlock or MPI error (a collective some ranks skip, a bad count) seldom depends on
        # the input, and every run after it costs a launch of all its ranks.
        self.death_ends_all = False

    async def protocol(self, binary: str, args: str, tests: Sequence[TestCase], per_test_runs: int,
                       first: ExecResult | None = None) -> dict[int, list[str]]:
        """Run ``binary`` over all tests, resuming after a test that crashed or hung.
        Returns test index -> the fields of its ``T`` line after the index (or
        ["error"|"timeout", why] when the process died in that test). ``first``: the
        first pass over all tests, when it already ran (``first_passes``)."""
        remaining = list(range(len(tests)))
        results: dict[int, list[str]] = {}
        while remaining:
            if first is not None:
                res, first = first, None
            else:
                res = await self._pass(binary, args, tests, remaining, per_test_runs)
            began, limit = _read_results(res.stdout, results)
            if all(i in results for i in remaining):
                break
            stuck = began if began is not None else next(i for i in remaining if i not in results)
            hung = res.timed_out or res.exit_code in SIGALRM_CODES
            if res.limit:  # a limit of the sandbox stopped it: processes, memory or wall time
                why = f"killed: {res.limit}"
            elif not hung:
                why = f"crashed (exit {res.exit_code}): {res.stderr.strip()[-300:]}"
            elif limit is not None and began == stuck and limit < self.call_timeout:
                why = f"no result within {limit:.2f}s (its limit: 20x the reference's time plus a margin)"
            else:
                why = f"no result within {self.call_timeout:g}s"
            results[stuck] = ["timeout" if hung else "error", why]
            if self.death_ends_all:
                for i in remaining:
                    results.setdefault(i, ["timeout" if hung else "error",
                                           f"not run: it {'hung' if hung else 'crashed'} on {tests[stuck].id}"])
            elif hung:
                # A program past its limit on one input is not run on those at least as large:
                # each would cost the limit again, and end the same way.
                for i in no_smaller(tests, stuck, remaining):
                    results.setdefault(i, ["timeout", f"not run: past its limit on {tests[stuck].id}, an input no larger"])
            remaining = [i for i in remaining if i not in results]
        return results

    async def _pass(self, binary: str, args: str, tests: Sequence[TestCase], remaining: Sequence[int],
                    per_test_runs: int) -> ExecResult:
        name = f"specs_{digest(binary, args, str(list(remaining)))}.txt"
        await self.workdir.write(name, spec_lines(self.plan, tests, remaining))
        backstop = self.call_timeout * (per_test_runs + 1) * len(remaining) + 30
        return await run_limited(self.workdir, self.limiter, f"{self.pin}./{binary} {args} < {name}", backstop)

    # Each sandbox command costs setup (bubblewrap and a cgroup, or a docker exec), and one
    # command at a time leaves cores idle: in a sandbox, the first passes of all candidates
    # over the tests run in one command.

    async def first_passes(self, binaries: Sequence[str], args: str, tests: Sequence[TestCase],
                           per_test_runs: int) -> dict[str, ExecResult]:
        """Each binary's first pass over all tests, one after another, in one command."""
        name = f"specs_{digest(args, str(len(tests)), *binaries)}.txt"
        await self.workdir.write(name, spec_lines(self.plan, tests, range(len(tests))))
        backstop = self.call_timeout * (per_test_runs + 1) * len(tests) + 30
        parts = []
        for b in binaries:
            parts.append(
                f"timeout -k 5 {backstop:g} {self.pin}./{b} {args} < {name} > {b}.out 2> {b}.err; rc=$?; "
                f"echo \"@@OUT {b} $rc\"; grep -a '@@BK ' {b}.out | head -c 200000; echo; "
                f"echo \"@@ERR {b}\"; tail -c 300 {b}.err; echo; echo \"@@END {b}\""
            )
        res = await run_limited(self.workdir, self.limiter, "; ".join(parts), backstop * len(binaries) + 30)
        return _split_passes(res.stdout)


def _split_passes(stdout: str) -> dict[str, ExecResult]:
    """Each binary's block of ``first_passes``'s output, as if it had run alone."""
    found: dict[str, ExecResult] = {}
    current: str | None = None
    rc: int | None = None
    out: list[str] = []
    err: list[str] = []
    target = out
    for line in stdout.splitlines():
        if line.startswith("@@OUT "):
            fields = line.split(" ")
            current, rc, out, err = fields[1], int(fields[2]) if len(fields) > 2 and fields[2].lstrip("-").isdigit() else None, [], []
            target = out
        elif line.startswith("@@ERR ") and current is not None:
            target = err
        elif current is not None and line == f"@@END {current}":
            # Output capped in the middle cannot join two binaries' blocks: both ends name it.
            # ``timeout`` answers 124 (or 137 after its kill) when the backstop ran out.
            found[current] = ExecResult(exit_code=rc, stdout="\n".join(out), stderr="\n".join(err),
                                        timed_out=rc in (124, 137))
            current = None
        else:
            target.append(line)
    return found


def check_args(rel: float, abs_tol: float, unordered: bool, threads: Sequence[int], repeats: int,
               call_timeout: float) -> str:
    """The driver's arguments that compare each candidate run with the reference's."""
    return (f"check {rel!r} {abs_tol!r} {int(unordered)} "
            f"{','.join(map(str, threads))} {repeats} {max(1, int(round(call_timeout)))}")


class DriverCell(NamedTuple):
    """One candidate on one test, as the driver's ``T`` line tells it."""

    outcome: Outcome
    output: str
    detail: str  # the line's fields, for a reader
    matched: tuple[int, int]  # (runs matching the reference, runs)
    reference_moved: bool  # the reference gave another output than when the tests were made


def read_cell(fields: list[str], test: TestCase) -> DriverCell:
    """``fields``: what ``DriverRuns.protocol`` returned for ``test``."""
    r = fields
    if len(r) > 5:  # the detail text has spaces
        r = [*r[:4], " ".join(r[4:])]
    status = r[0]
    outcome: Outcome
    if status in ("pass", "fail", "flaky", "error", "timeout"):
        outcome = status  # type: ignore[assignment]
    else:  # "referr": the reference threw on an input it handled in make_tests
        outcome = "error"
    moved = len(r) >= 5 and isinstance(test.expected, dict) and r[1] not in ("-", test.expected.get("digest"))
    output = r[2] if len(r) >= 5 and status in ("pass", "fail") else f"{status}: {r[-1]}"
    # "matches/runs" from the driver; a test with no result (the process died, or it was not
    # run) counts as one run that did not match.
    a, _, b = r[3].partition("/") if len(r) >= 5 else ("0", "", "1")
    counts = (int(a), int(b)) if a.isdigit() and b.isdigit() else (0, 1)
    return DriverCell(outcome, output, f"{status} {' '.join(r[1:])}", counts, moved)
