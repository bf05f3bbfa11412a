"""Choose: the fastest of the vote's winners, and the report behind the choice.

DESIGN.md "Selection, precisely", steps 6 and 7. Speed is the speedup at the target
parallelism (a ``Timing``'s own speedup; its curve at fewer threads is only reported). One
winner is faster than another only when its speedup interval lies wholly above the other's;
winners no one is faster than tie, and among those whose median speedup is within
``SPEED_TOLERANCE`` of the best median a tie goes to the smaller diff.

For a speed task ("make it faster", "parallelize", ...) a winner whose interval does not lie
above 1 is not shipped: the verdict says no candidate is faster than the original, and names
the best correct candidate, which is offered without being applied.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from bakeoff.agent.selection.vote import Vote, is_probe, vote
from bakeoff.agent.types import Candidate, ExecutionMatrix, ReportRow, TestCase, Timing, TimingSetup, Verdict

# Tied winners (overlapping intervals) whose median speedups are this close to the best
# median count as equally fast, and the smallest diff among them wins.
SPEED_TOLERANCE = 0.03

_SPEED_WORDS = re.compile(
    r"\b(fast|faster|fastest|speed\w*|quick\w*|slow\w*|parallel\w*|optimi[sz]\w*|perf\w*|latency|throughput|"
    r"efficien\w*|openmp|omp|mpi|cuda|simd|vectori[sz]\w*|accelerat\w*|scal(e|es|ing|able))\b", re.I)


def is_speed_task(goal: str) -> bool:
    """Whether a task asks for speed: then a winner must be faster than the original."""
    return bool(_SPEED_WORDS.search(goal))


def _interval(t: Timing | None) -> tuple[float, float, float]:
    if t is None or t.speedup is None:
        return 1.0, 1.0, 1.0  # untimed: no claim of being faster than the reference
    return t.speedup, t.low if t.low is not None else t.speedup, t.high if t.high is not None else t.speedup


def _timed(t: Timing | None) -> bool:
    return t is not None and t.speedup is not None


def _diff_size(c: str, cands: Mapping[str, Candidate], diff_sizes: Mapping[str, int] | None) -> int:
    if diff_sizes and c in diff_sizes:
        return diff_sizes[c]
    cand = cands.get(c)
    if cand is None:
        return 0
    return len(cand.patch.splitlines()) if cand.patch else len((cand.source or "").splitlines())


def fastest(winners: Sequence[str], timing_of: Mapping[str, Timing | None], size: Mapping[str, int]) -> tuple[str, str]:
    """The winner to ship, and why among the others: the speed front (no other winner's
    interval at the target lies wholly above its own), of those the ones whose median is
    within ``SPEED_TOLERANCE`` of the front's best, then the smallest diff, then the best median."""
    iv = {c: _interval(timing_of.get(c)) for c in winners}
    front = [c for c in winners if not any(iv[o][1] > iv[c][2] for o in winners if o != c)]
    timed = [c for c in front if _timed(timing_of.get(c))]
    best_median = max((iv[c][0] for c in timed), default=0.0)
    # An untimed winner makes no claim either way: it ties with every winner it is not beaten by.
    near = [c for c in front if c not in timed or iv[c][0] >= (1.0 - SPEED_TOLERANCE) * best_median]
    near.sort(key=lambda c: (size[c], -iv[c][0], c))
    winner = near[0]
    s, lo, hi = iv[winner]
    if len(winners) == 1:
        return winner, f"; speedup {s:.2f}x (interval {lo:.2f}-{hi:.2f})" if winner in timed else ""
    if len(front) == 1:
        return winner, f"; it is the fastest: {s:.2f}x (interval {lo:.2f}-{hi:.2f}), an interval above every other winner's"
    if len(near) == 1:
        return winner, (f"; {len(front)} winners are not told apart by timing (intervals overlap), and it has the best "
                        f"median: {s:.2f}x (interval {lo:.2f}-{hi:.2f})")
    return winner, (f"; {len(near)} winners are not told apart by timing (intervals overlap"
                    + (f", medians within {SPEED_TOLERANCE:.0%}" if len(timed) > 1 else "")
                    + f"), so the smallest diff ({size[winner]} lines) won")


def _not_faster(best: str, t: Timing | None, threads: int | None, reason: str) -> str:
    """Why a speed task ships nothing: its best correct candidate is not faster than the original."""
    at = f" at {threads} thread{'s' if threads != 1 else ''}" if threads else ""
    if t is None or t.speedup is None:
        return (f"correct, but no candidate is faster than the original (none could be timed){at}: {best} is "
                f"offered, not applied; {reason}.")
    lo = t.low if t.low is not None else t.speedup
    hi = t.high if t.high is not None else t.speedup
    return (f"correct, but no candidate is faster than the original (best {t.speedup:.2f}x [{lo:.2f}, {hi:.2f}])"
            f"{at}: {best} is offered, not applied; {reason}.")


def report_rows(ballot: Vote, cands: Mapping[str, Candidate], matrix: ExecutionMatrix, tests: Sequence[TestCase],
                timing_of: Mapping[str, Timing | None]) -> list[ReportRow]:
    """One row per candidate: built, gate, tests passed, group, flaky, correct, speedup, cost."""
    group_of = {c: i for i, g in enumerate(ballot.groups) for c in g.members}
    scored = {t.id: t for t in tests if t.id in matrix.tests and t.valid is not False and not is_probe(t)}
    rows = []
    for c in list(dict.fromkeys([*matrix.candidates, *cands])):
        cand = cands.get(c)
        t = timing_of.get(c)
        note = ""
        if c in ballot.gated:
            note = "failed the gate (build or repo tests)"
        elif c in ballot.flaky:
            note = "flaky: a result changed between runs"
        elif cand is not None and cand.error:
            note = cand.error[:80]
        rows.append(ReportRow(
            candidate=c,
            model=cand.model if cand is not None else "",
            built=cand.built if cand is not None else (c not in ballot.gated if ballot.gated else None),
            gate=(c not in ballot.gated) if ballot.gated or c in matrix.candidates else None,
            tests_passed=sum(1 for tid in scored if matrix.cells.get(c, {}).get(tid) == "pass"),
            tests_total=len(scored),
            group=group_of.get(c),
            flaky=c in ballot.flaky,
            correct=c in ballot.winners,
            speedup=t.speedup if t else None,
            low=t.low if t else None,
            high=t.high if t else None,
            threads=t.threads if t else None,
            curve=list(t.curve) if t else [],
            cost_usd=cand.cost_usd if cand is not None else 0.0,
            note=note,
        ))
    return rows


def choose(
    ballot: Vote,
    candidates: Sequence[Candidate],
    matrix: ExecutionMatrix,
    tests: Sequence[TestCase],
    *,
    timings: Mapping[str, Timing] | None = None,
    diff_sizes: Mapping[str, int] | None = None,
    speed_task: bool = False,
    setup: TimingSetup | None = None,
) -> Verdict:
    """The fastest of the vote's winners (step 6) and the report (step 7). For a speed task,
    a winner not shown faster than the original is only offered (``best``), not shipped."""
    cands = {c.id: c for c in candidates}
    timing_of = {c: (timings or {}).get(c) or (cands[c].timing if c in cands else None)
                 for c in [*matrix.candidates, *cands]}
    winner, why_speed, best = None, "", None
    if ballot.winners:
        size = {c: _diff_size(c, cands, diff_sizes) for c in ballot.winners}
        winner, why_speed = fastest(ballot.winners, timing_of, size)
    reason = f"{winner} won: {ballot.reason}{why_speed}." if winner else f"no winner: {ballot.reason}."
    if speed_task and winner is not None and not (timing_of.get(winner) and timing_of[winner].faster):
        best, winner = winner, None
        t = timing_of.get(best)
        reason = _not_faster(best, t, (t.threads if t else None) or (setup.threads if setup else None), ballot.reason)
    return Verdict(
        winner=winner, correct=list(ballot.winners), method=ballot.method, reason=reason,
        rows=report_rows(ballot, cands, matrix, tests, timing_of), groups=[g.members for g in ballot.groups],
        speed_task=speed_task, not_faster=best is not None, best=best, timing=setup,
    )


def select(
    matrix: ExecutionMatrix,
    tests: Sequence[TestCase],
    candidates: Sequence[Candidate] = (),
    *,
    reference: bool,
    gate: Mapping[str, bool] | None = None,
    timings: Mapping[str, Timing] | None = None,
    diff_sizes: Mapping[str, int] | None = None,
    speed_task: bool = False,
    setup: TimingSetup | None = None,
) -> Verdict:
    """``vote`` then ``choose``."""
    ballot = vote(matrix, tests, reference=reference, gate=gate)
    return choose(ballot, candidates, matrix, tests, timings=timings, diff_sizes=diff_sizes, speed_task=speed_task,
                  setup=setup)
