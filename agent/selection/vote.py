"""Vote and choose: which candidates are correct, and which of them ships.

DESIGN.md "Selection, precisely", steps 1 and 3-7. Everything here works on plain lists and
pydantic data (an ``ExecutionMatrix``, ``TestCase``s, ``Timing``s); running things is the
harness's job, asking models is the caller's (``resolve_close_call`` takes callables).

Without a reference the vote is an agreement model over two kinds of evidence that one
sampling model produced independently: candidates and tests. Candidates are grouped by
identical behaviour (the tests they pass and, where probes ran, the values they return).
Each generated test is weighted by how much of the candidate population it agrees with,
each group by its size times the weighted tests it passes. Groups the tests cannot tell apart
(a tie) are told apart by how many candidates return the same values on the probe inputs;
when no test is passed at all, the largest group of equal outputs wins. See ``_agreement``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from bakeoff.agent.types import Candidate, ExecutionMatrix, ReportRow, TestCase, Timing, Verdict

# Top groups whose scores are within this fraction of each other are a close call.
CLOSE_MARGIN = 0.15
# How strongly a generated test's weight follows the share of behaviours that pass it
# (0: CodeT's plain count; 1: proportional). See _agreement_scores.
AGREEMENT_POWER = 0.5


class Group(BaseModel):
    members: list[str]
    passed: list[str]  # ids of the scored tests the group passes
    score: float


class Vote(BaseModel):
    method: Literal["reference", "dual-agreement", "majority", "none"]
    groups: list[Group] = Field(default_factory=list)  # best first
    winners: list[str] = Field(default_factory=list)
    flaky: list[str] = Field(default_factory=list)
    close_call: bool = False
    reason: str = ""
    gated: list[str] = Field(default_factory=list)  # dropped at the gate (build / repo tests)


# --------------------------------------------------------------------------- vote


def _is_probe(test: TestCase) -> bool:
    """A probe is an input with no known answer: candidates are compared on what they return."""
    return test.expected is None and test.kind in ("differential", "distinguishing") and not test.code.lstrip().startswith(
        ("assert", "def ")
    )


def _behaviour(matrix: ExecutionMatrix, cand: str, checks: Sequence[TestCase], probes: Sequence[TestCase]) -> tuple:
    cells = matrix.cells.get(cand, {})
    outs = matrix.outputs.get(cand, {})
    passed = tuple(t.id for t in checks if cells.get(t.id) == "pass")
    returned = tuple(outs.get(t.id, "!" + cells.get(t.id, "missing")) if cells.get(t.id) == "pass" else "!" + cells.get(t.id, "missing") for t in probes)
    return passed, returned


def vote(
    matrix: ExecutionMatrix,
    tests: Sequence[TestCase],
    *,
    reference: bool,
    gate: Mapping[str, bool] | None = None,
) -> Vote:
    """Who is correct. With a reference: passes every validated test, never flaky. Without:
    the group of identical behaviour with the strongest agreement (see the module doc)."""
    gated = [c for c in matrix.candidates if gate is not None and not gate.get(c, False)]
    flaky = [c for c in matrix.candidates if c not in gated and matrix.flaky(c)]
    eligible = [c for c in matrix.candidates if c not in gated and c not in flaky]
    if not eligible:
        return Vote(method="none", flaky=flaky, gated=gated, reason=_nobody(gated, flaky))
    if reference:
        return _reference_vote(matrix, tests, eligible, flaky, gated)
    return _agreement(matrix, tests, eligible, flaky, gated)


def _nobody(gated: Sequence[str], flaky: Sequence[str]) -> str:
    parts = []
    if gated:
        parts.append(f"{len(gated)} failed the build or the repo's tests")
    if flaky:
        parts.append(f"{len(flaky)} gave results that changed between runs (flaky)")
    return "no candidate is eligible: " + ("; ".join(parts) if parts else "there are no candidates")


def _reference_vote(matrix, tests, eligible, flaky, gated) -> Vote:
    checks = [t for t in tests if t.valid is not False and t.id in matrix.tests]
    groups: dict[tuple, list[str]] = {}
    for c in eligible:
        groups.setdefault(_behaviour(matrix, c, checks, [])[0], []).append(c)
    scored = []
    for passed, members in groups.items():
        weight = sum(t.weight for t in checks if t.id in passed)
        scored.append(Group(members=members, passed=list(passed), score=float(weight)))
    scored.sort(key=lambda g: (-g.score, -len(g.members), g.members[0]))
    winners = [c for g in scored if checks and len(g.passed) == len(checks) for c in g.members]
    if not checks:
        reason = "no validated test: the reference rejected every test, so nothing can be called correct"
        winners = []
    elif winners:
        reason = f"{len(winners)} of {len(matrix.candidates)} candidates pass all {len(checks)} validated tests and are never flaky"
    else:
        best = scored[0]
        reason = f"no candidate passes all {len(checks)} validated tests (best: {len(best.passed)}, by {', '.join(best.members[:3])})"
    return Vote(method="reference", groups=scored, winners=winners, flaky=flaky, gated=gated, reason=reason, close_call=False)


def _agreement(matrix, tests, eligible, flaky, gated) -> Vote:
    known = [t for t in tests if t.id in matrix.tests and t.valid is not False]
    checks = [t for t in known if not _is_probe(t)]
    probes = [t for t in known if _is_probe(t)]
    if not checks and not probes:
        return Vote(method="none", flaky=flaky, gated=gated, reason="no tests to vote with")
    behaviours: dict[tuple, list[str]] = {}
    for c in eligible:
        behaviours.setdefault(_behaviour(matrix, c, checks, probes), []).append(c)
    keys = list(behaviours)
    sizes = [len(behaviours[k]) for k in keys]
    passes = [set(k[0]) for k in keys]
    outputs = [k[1] for k in keys]
    # A behaviour that never passes a test nor returns a value has nothing to vote with.
    alive = [bool(p) or any(not o.startswith("!") for o in out) for p, out in zip(passes, outputs)]
    scores = _agreement_scores(sizes, passes, outputs, alive, checks)
    order = sorted(range(len(keys)), key=lambda i: (-scores[i], -sizes[i], behaviours[keys[i]][0]))
    groups = [Group(members=behaviours[keys[i]], passed=sorted(passes[i]), score=scores[i]) for i in order]
    top = groups[0]
    if top.score <= 0:
        return _majority(behaviours, keys, outputs, eligible, flaky, gated)
    tied = [g for g in groups if g.score == top.score]
    tie_note = ""
    if len(tied) > 1 and probes:
        # Equal support from the tests: the groups whose returned values more of all the
        # candidates share win (the tests cannot tell them apart, the population can).
        agree = _population_agreement(matrix, eligible, probes)
        best = max(agree(g.members[0]) for g in tied)
        kept = [g for g in tied if agree(g.members[0]) == best]
        if len(kept) < len(tied):
            tie_note = f"; {len(tied)} groups tied on the tests, the one whose outputs most candidates share won"
            groups = kept + [g for g in groups if g not in kept]
            tied, top = kept, kept[0]
    winners = [c for g in tied for c in g.members]
    # A tie (broken or not) is the closest call there is.
    runner_up = top.score if len(tied) > 1 or tie_note else (groups[1].score if len(groups) > 1 else 0.0)
    close = runner_up > 0 and (top.score - runner_up) <= CLOSE_MARGIN * top.score
    reason = (
        f"{len(top.members)} of {len(eligible)} eligible candidates behave identically, pass "
        f"{len(top.passed)} of {len(checks)} generated tests and form the best-supported group "
        f"(score {top.score:.3g} vs {runner_up:.3g} for the next){tie_note}"
    )
    return Vote(method="dual-agreement", groups=groups, winners=winners, flaky=flaky, gated=gated,
                close_call=close, reason=reason)


def _population_agreement(matrix: ExecutionMatrix, eligible: Sequence[str], probes: Sequence[TestCase]) -> Callable[[str], int]:
    """candidate -> how many (candidate, probe) pairs of the eligible population return the
    same value as it does on the probes it answers."""
    counts: dict[str, dict[str, int]] = {}
    for t in probes:
        c = counts.setdefault(t.id, {})
        for x in eligible:
            if matrix.cells.get(x, {}).get(t.id) == "pass":
                o = matrix.outputs.get(x, {}).get(t.id, "")
                c[o] = c.get(o, 0) + 1

    def agree(cand: str) -> int:
        cells, outs = matrix.cells.get(cand, {}), matrix.outputs.get(cand, {})
        return sum(counts[t.id].get(outs.get(t.id, ""), 0) for t in probes if cells.get(t.id) == "pass")

    return agree


def _majority(behaviours, keys, outputs, eligible, flaky, gated) -> Vote:
    """No test says anything (none parsed, or none passed): the largest group of candidates
    that return the same values on the probe inputs, as long as it has company. Independent
    samples that agree on every input are rarely wrong the same way by chance."""
    sizes = {i: len(behaviours[k]) for i, k in enumerate(keys) if any(not o.startswith("!") for o in outputs[i])}
    order = sorted(sizes, key=lambda i: (-sizes[i], behaviours[keys[i]][0]))
    groups = [Group(members=behaviours[keys[i]], passed=[], score=float(sizes[i])) for i in order]
    if not groups or groups[0].score < 2:
        return Vote(method="none", groups=groups, flaky=flaky, gated=gated,
                    reason="no candidate passes a generated test or agrees with another on any input")
    top = groups[0]
    winners = [c for g in groups if g.score == top.score for c in g.members]
    runner_up = groups[1].score if len(groups) > 1 else 0.0
    close = runner_up > 0 and (top.score - runner_up) <= CLOSE_MARGIN * top.score
    reason = (
        f"no generated test is passed, so the vote is on behaviour alone: {len(top.members)} of {len(eligible)} "
        f"eligible candidates return the same values on every probe input (next group: {runner_up:.0f})"
    )
    return Vote(method="majority", groups=groups, winners=winners, flaky=flaky, gated=gated, close_call=close, reason=reason)


def _agreement_scores(
    sizes: Sequence[int],
    passes: Sequence[set[str]],
    outputs: Sequence[tuple[str, ...]],
    alive: Sequence[bool],
    checks: Sequence[TestCase],
) -> list[float]:
    """Support of each behaviour group: (candidates in it) x (tests it passes, each test
    weighted by how widely it is agreed with).

    CodeT's dual agreement counts every passed test alike, but a test written with a wrong
    expected value is passed only by the candidates that share that very mistake, while a
    right test is also passed by most partly-wrong behaviours (they are right on most
    inputs). So a test counts by its generation count times the square root of the share
    of distinct behaviours that pass it. Groups are finer than CodeT's (the values returned
    on probe inputs split behaviours that pass the same tests), which breaks up large groups
    of candidates that share a pass-set by accident.
    """
    live = [i for i in range(len(sizes)) if alive[i]]
    if not live:
        return [0.0] * len(sizes)
    share = {t.id: sum(1 for i in live if t.id in passes[i]) / len(live) for t in checks}
    weight = {t.id: t.weight * share[t.id] ** AGREEMENT_POWER for t in checks}
    return [float(sizes[i] * sum(weight[t] for t in passes[i])) if alive[i] else 0.0 for i in range(len(sizes))]


# --------------------------------------------------------------------------- choose


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


def choose(
    vote: Vote,
    candidates: Sequence[Candidate],
    matrix: ExecutionMatrix,
    tests: Sequence[TestCase],
    *,
    timings: Mapping[str, Timing] | None = None,
    diff_sizes: Mapping[str, int] | None = None,
) -> Verdict:
    """The fastest of the vote's winners (step 6) and the report (step 7).

    One winner is faster than another only when its speedup interval lies wholly above the
    other's; winners no one is faster than tie, and a tie goes to the smaller diff."""
    cands = {c.id: c for c in candidates}
    timing_of = {c: (timings or {}).get(c) or (cands[c].timing if c in cands else None) for c in matrix.candidates}
    for c in cands:
        timing_of.setdefault(c, (timings or {}).get(c) or cands[c].timing)
    winners = list(vote.winners)
    winner = None
    why_speed = ""
    if winners:
        iv = {c: _interval(timing_of.get(c)) for c in winners}
        front = [c for c in winners if not any(iv[o][1] > iv[c][2] for o in winners if o != c)]
        front.sort(key=lambda c: (_diff_size(c, cands, diff_sizes), -iv[c][0], c))
        winner = front[0]
        s, lo, hi = iv[winner]
        if len(winners) == 1:
            why_speed = ""
        elif len(front) == 1:
            why_speed = f"; it is the fastest: {s:.2f}x (interval {lo:.2f}-{hi:.2f}), an interval above every other winner's"
        else:
            why_speed = (
                f"; {len(front)} winners are not told apart by timing (intervals overlap), so the smallest diff "
                f"({_diff_size(winner, cands, diff_sizes)} lines) won"
            )
        if timing_of.get(winner) is not None and timing_of[winner].speedup is not None and len(winners) == 1:
            why_speed = f"; speedup {s:.2f}x (interval {lo:.2f}-{hi:.2f})"
    group_of = {c: i for i, g in enumerate(vote.groups) for c in g.members}
    scored = {t.id: t for t in tests if t.id in matrix.tests and t.valid is not False and not _is_probe(t)}
    rows = []
    for c in list(dict.fromkeys([*matrix.candidates, *cands])):
        cand = cands.get(c)
        t = timing_of.get(c)
        passed = sum(1 for tid in scored if matrix.cells.get(c, {}).get(tid) == "pass")
        note = ""
        if c in vote.gated:
            note = "failed the gate (build or repo tests)"
        elif c in vote.flaky:
            note = "flaky: a result changed between runs"
        elif cand is not None and cand.error:
            note = cand.error[:80]
        rows.append(ReportRow(
            candidate=c,
            built=cand.built if cand is not None else (c not in vote.gated if vote.gated else None),
            gate=(c not in vote.gated) if vote.gated or c in matrix.candidates else None,
            tests_passed=passed,
            tests_total=len(scored),
            group=group_of.get(c),
            flaky=c in vote.flaky,
            correct=c in winners,
            speedup=t.speedup if t else None,
            low=t.low if t else None,
            high=t.high if t else None,
            cost_usd=cand.cost_usd if cand is not None else 0.0,
            note=note,
        ))
    reason = f"{winner} won: {vote.reason}{why_speed}." if winner else f"no winner: {vote.reason}."
    return Verdict(
        winner=winner, correct=winners, method=vote.method, reason=reason, rows=rows,
        groups=[g.members for g in vote.groups],
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
    v = vote(matrix, tests, reference=reference, gate=gate)
    return choose(v, candidates, matrix, tests, timings=timings, diff_sizes=diff_sizes)


def render_table(verdict: Verdict):
    """The report as a rich table (one row per candidate; the winner marked)."""
    from rich.table import Table

    table = Table(title=f"bakeoff select ({verdict.method})", caption=verdict.reason)
    for col in ("candidate", "built", "tests passed", "group", "flaky", "speedup ± interval", "cost"):
        table.add_column(col, justify="right" if col in ("tests passed", "group", "cost") else "left")

    def yn(v: bool | None) -> str:
        return "-" if v is None else ("yes" if v else "no")

    for r in verdict.rows:
        speed = "-" if r.speedup is None else f"{r.speedup:.2f}x [{r.low:.2f}, {r.high:.2f}]"
        name = f"* {r.candidate}" if r.candidate == verdict.winner else r.candidate
        if r.note:
            name += f" ({r.note})"
        table.add_row(
            name, yn(r.built), f"{r.tests_passed}/{r.tests_total}", "-" if r.group is None else str(r.group),
            yn(r.flaky), speed, f"${r.cost_usd:.4f}",
            style="bold green" if r.candidate == verdict.winner else None,
        )
    return table


# --------------------------------------------------------------------------- close calls


Distinguish = Callable[[Sequence[Group]], Awaitable[Sequence[str]]]
Run = Callable[[Sequence[str], Sequence[str]], Awaitable[Mapping[str, Mapping[str, str]]]]


async def resolve_close_call(
    vote: Vote,
    *,
    distinguish: Distinguish,
    run: Run,
    judge: Any | None = None,
    reference: str | None = None,
    task: str = "",
) -> Vote:
    """Step 5: settle a close call between the top groups on inputs chosen to tell them apart.

    ``distinguish(groups)`` proposes inputs (the tester model with prompt distinguish.j2, see
    ``model_distinguisher``); ``run(inputs, candidate_ids)`` returns each candidate's output per
    input. Each input where the groups disagree is decided by the ``reference`` candidate's
    output when there is one, else by a ``judge`` model that sees the real outputs (judge.j2),
    else by the majority of all candidates run. The group that wins the most inputs wins."""
    if not vote.close_call or len(vote.groups) < 2:
        return vote
    top = [g for g in vote.groups if g.score >= vote.groups[0].score * (1 - CLOSE_MARGIN)] or vote.groups[:2]
    top = top[:4]
    inputs = list(await distinguish(top))
    if not inputs:
        return vote.model_copy(update={"reason": vote.reason + "; no distinguishing input was proposed"})
    ids = [c for g in top for c in g.members]
    if reference is not None:
        ids.append(reference)
    outputs = await run(inputs, ids)
    wins = [0] * len(top)
    decided = 0
    for x in inputs:
        per_group = [outputs.get(g.members[0], {}).get(x) for g in top]
        if len(set(per_group)) < 2:
            continue  # the groups agree here: this input tells nothing
        if reference is not None:
            truth = outputs.get(reference, {}).get(x)
            choice = [i for i, o in enumerate(per_group) if o is not None and o == truth]
        elif judge is not None:
            choice = await _ask_judge(judge, task, x, per_group)
        else:
            counts = {}
            for g in top:
                for c in g.members:
                    o = outputs.get(c, {}).get(x)
                    if o is not None and not o.startswith("!"):
                        counts[o] = counts.get(o, 0) + 1
            best = max(counts.values(), default=0)
            choice = [i for i, o in enumerate(per_group) if best and counts.get(o) == best]
        for i in choice:
            wins[i] += 1
        decided += 1
    if not decided or max(wins) == 0:
        return vote.model_copy(update={"reason": vote.reason + "; the distinguishing inputs did not separate the groups"})
    best = max(wins)
    winners_idx = [i for i, w in enumerate(wins) if w == best]
    winners = [c for i in winners_idx for c in top[i].members]
    how = "the reference" if reference is not None else ("a judge" if judge is not None else "the majority")
    reason = (
        vote.reason + f"; close call settled on {decided} distinguishing inputs decided by {how}: "
        f"group of {', '.join(top[winners_idx[0]].members[:3])} won {best}"
    )
    reordered = [top[i] for i in winners_idx] + [g for g in vote.groups if all(g is not top[i] for i in winners_idx)]
    return vote.model_copy(update={"winners": winners, "close_call": len(winners_idx) > 1, "reason": reason,
                                   "groups": reordered})


async def _ask_judge(judge: Any, task: str, call: str, outputs: Sequence[str | None]) -> list[int]:
    from bakeoff.agent.prompting import render
    from bakeoff.agent.seams import Message

    letters = [chr(ord("A") + i) for i in range(len(outputs))]
    prompt = render("judge", task=task, call=call,
                    options=[{"letter": l, "output": o if o is not None else "(no output)"} for l, o in zip(letters, outputs)])
    completion = await judge.complete([Message(role="user", content=prompt)], temperature=0.0)
    return parse_judgement(completion.text, len(outputs))


def parse_judgement(text: str, n: int) -> list[int]:
    """The options a judge named on its ``ANSWER:`` line (letters A, B, ...); none if unclear."""
    import re

    m = re.findall(r"ANSWER:\s*([A-Z](?:\s*,\s*[A-Z])*)", text.upper())
    if not m:
        return []
    picked = {ord(x.strip()) - ord("A") for x in m[-1].split(",")}
    return sorted(i for i in picked if 0 <= i < n)


def model_distinguisher(model: Any, task: str, sources: Mapping[str, str], entry: str) -> Distinguish:
    """A ``distinguish`` callable backed by the tester model (prompt distinguish.j2)."""

    async def distinguish(groups: Sequence[Group]) -> list[str]:
        from bakeoff.agent.prompting import render
        from bakeoff.agent.seams import Message
        from bakeoff.agent.harness.testgen import parse_inputs

        versions = [{"name": f"version {i + 1}", "code": sources.get(g.members[0], "")} for i, g in enumerate(groups)]
        prompt = render("distinguish", task=task, entry=entry, versions=versions)
        completion = await model.complete([Message(role="user", content=prompt)], temperature=0.0)
        return parse_inputs(completion.text, entry)

    return distinguish
