"""Choose: the fastest of the vote's winners, and the report behind the choice.

DESIGN.md "Selection, precisely", steps 6 and 7. One winner is faster than another only
when its speedup interval lies wholly above the other's; winners no one is faster than tie,
and a tie goes to the smaller diff.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bakeoff.agent.selection.vote import Vote, is_probe, vote
from bakeoff.agent.types import Candidate, ExecutionMatrix, ReportRow, TestCase, Timing, Verdict


def _interval(t: Timing | None) -> tuple[float, float, float]:
    if t is None or t.speedup is None:
        return 1.0, 1.0, 1.0  # untimed: no claim of being faster than the reference
    return t.speedup, t.low if t.low is not None else t.speedup, t.high if t.high is not None else t.speedup


def _diff_size(c: str, cands: Mapping[str, Candidate], diff_sizes: Mapping[str, int] | None) -> int:
    if diff_sizes and c in diff_sizes:
        return diff_sizes[c]
    cand = cands.get(c)
    if cand is None:
        return 0
    return len(cand.patch.splitlines()) if cand.patch else len((cand.source or "").splitlines())


def fastest(winners: Sequence[str], timing_of: Mapping[str, Timing | None], size: Mapping[str, int]) -> tuple[str, str]:
    """The winner to ship, and why among the others: the speed front (no other winner's
    interval lies wholly above its own), then the smallest diff, then the best median."""
    iv = {c: _interval(timing_of.get(c)) for c in winners}
    front = [c for c in winners if not any(iv[o][1] > iv[c][2] for o in winners if o != c)]
    front.sort(key=lambda c: (size[c], -iv[c][0], c))
    winner = front[0]
    s, lo, hi = iv[winner]
    if len(winners) == 1:
        timed = timing_of.get(winner) is not None and timing_of[winner].speedup is not None
        return winner, f"; speedup {s:.2f}x (interval {lo:.2f}-{hi:.2f})" if timed else ""
    if len(front) == 1:
        return winner, f"; it is the fastest: {s:.2f}x (interval {lo:.2f}-{hi:.2f}), an interval above every other winner's"
    return winner, (f"; {len(front)} winners are not told apart by timing (intervals overlap), so the smallest diff "
                    f"({size[winner]} lines) won")


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
) -> Verdict:
    """The fastest of the vote's winners (step 6) and the report (step 7)."""
    cands = {c.id: c for c in candidates}
    timing_of = {c: (timings or {}).get(c) or (cands[c].timing if c in cands else None)
                 for c in [*matrix.candidates, *cands]}
    winner, why_speed = None, ""
    if ballot.winners:
        size = {c: _diff_size(c, cands, diff_sizes) for c in ballot.winners}
        winner, why_speed = fastest(ballot.winners, timing_of, size)
    reason = f"{winner} won: {ballot.reason}{why_speed}." if winner else f"no winner: {ballot.reason}."
    return Verdict(
        winner=winner, correct=list(ballot.winners), method=ballot.method, reason=reason,
        rows=report_rows(ballot, cands, matrix, tests, timing_of), groups=[g.members for g in ballot.groups],
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
) -> Verdict:
    """``vote`` then ``choose``."""
    ballot = vote(matrix, tests, reference=reference, gate=gate)
    return choose(ballot, candidates, matrix, tests, timings=timings, diff_sizes=diff_sizes)
