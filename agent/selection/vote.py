"""The vote: which candidates are correct.

DESIGN.md "Selection, precisely", steps 1, 3 and 4. Everything here works on plain lists and
pydantic data (an ``ExecutionMatrix``, ``TestCase``s, ``Timing``s); running things is the
harness's job, asking models is the caller's (``resolve_close_call`` takes callables).

Without a reference the vote is an agreement model over two kinds of evidence that one
sampling model produced independently: candidates and tests. Candidates are grouped by
identical behaviour, each group scored by its size times the tests it passes (CodeT's dual
agreement), with the departures from CodeT that ``agreement.RULE`` makes: the rule family
and how the product's member was chosen (by cross-validation) are in ``agreement``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, Field

from bakeoff.agent.selection.agreement import RULE, AgreementRule, group_support
from bakeoff.agent.types import ExecutionMatrix, TestCase

# Top groups whose scores are within this fraction of each other are a close call.
CLOSE_MARGIN = 0.15


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


def is_probe(test: TestCase) -> bool:
    """A probe is an input with no known answer: candidates are compared on what they return."""
    return test.expected is None and test.kind in ("differential", "distinguishing") and not test.code.lstrip().startswith(
        ("assert", "def ")
    )


def _behaviour(matrix: ExecutionMatrix, cand: str, checks: Sequence[TestCase], probes: Sequence[TestCase]) -> tuple:
    cells = matrix.cells.get(cand, {})
    outs = matrix.outputs.get(cand, {})
    passed = tuple(t.id for t in checks if cells.get(t.id) == "pass")
    returned = []
    for t in probes:
        cell = cells.get(t.id, "missing")
        returned.append(outs.get(t.id, "!pass") if cell == "pass" else "!" + cell)
    return passed, tuple(returned)


def vote(
    matrix: ExecutionMatrix,
    tests: Sequence[TestCase],
    *,
    reference: bool,
    gate: Mapping[str, bool] | None = None,
    rule: AgreementRule = RULE,
) -> Vote:
    """Who is correct. With a reference: passes every validated test, never flaky. Without:
    the group of identical behaviour with the strongest agreement under ``rule`` (see the
    module doc; the product's rule unless a benchmark compares others)."""
    gated = [c for c in matrix.candidates if gate is not None and not gate.get(c, False)]
    flaky = [c for c in matrix.candidates if c not in gated and matrix.flaky(c)]
    eligible = [c for c in matrix.candidates if c not in gated and c not in flaky]
    if not eligible:
        return Vote(method="none", flaky=flaky, gated=gated, reason=_nobody(gated, flaky))
    if reference:
        return _reference_vote(matrix, tests, eligible, flaky, gated)
    return _agreement(matrix, tests, eligible, flaky, gated, rule)


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


def _agreement(matrix, tests, eligible, flaky, gated, rule: AgreementRule) -> Vote:
    known = [t for t in tests if t.id in matrix.tests and t.valid is not False]
    checks = [t for t in known if not is_probe(t)]
    probes = [t for t in known if is_probe(t)]
    if not checks and not probes:
        return Vote(method="none", flaky=flaky, gated=gated, reason="no tests to vote with")
    behaviours: dict[tuple, list[str]] = {}
    for c in eligible:
        passed, returned = _behaviour(matrix, c, checks, probes)
        behaviours.setdefault((passed, returned if rule.grouping == "outputs" else ()), []).append(c)
    keys = list(behaviours)
    sizes = [len(behaviours[k]) for k in keys]
    passes = [set(k[0]) for k in keys]
    # A behaviour that never passes a test nor returns a value has nothing to vote with.
    alive = [bool(passes[i]) or any(_returns(matrix, c, probes) for c in behaviours[k]) for i, k in enumerate(keys)]
    scores = group_support(rule, sizes, passes, alive, checks)
    order = sorted(range(len(keys)), key=lambda i: (-scores[i], -sizes[i], behaviours[keys[i]][0]))
    groups = [Group(members=behaviours[keys[i]], passed=sorted(passes[i]), score=scores[i]) for i in order]
    top = groups[0]
    if top.score <= 0:
        if rule.fallback:
            return _majority(matrix, probes, eligible, flaky, gated)
        return Vote(method="none", groups=groups, flaky=flaky, gated=gated, reason="no candidate passes a generated test")
    tied = [g for g in groups if g.score == top.score]
    tie_note = ""
    if len(tied) > 1 and probes and rule.tie_break:
        # Equal support from the tests: the groups whose returned values more of all the
        # candidates share win (the tests cannot tell them apart, the population can).
        agree = _population_agreement(matrix, eligible, probes)
        mean = {id(g): sum(agree(c) for c in g.members) / len(g.members) for g in tied}
        best = max(mean.values())
        kept = [g for g in tied if mean[id(g)] == best]
        if len(kept) < len(tied):
            tie_note = f"; {len(tied)} groups tied on the tests, the one whose outputs most candidates share won"
            groups = kept + [g for g in groups if g not in kept]
            tied, top = kept, kept[0]
    winners = [c for g in tied for c in g.members]
    # A tie (broken or not) is the closest call there is.
    runner_up = top.score if len(tied) > 1 or tie_note else (groups[1].score if len(groups) > 1 else 0.0)
    close = runner_up > 0 and (top.score - runner_up) <= CLOSE_MARGIN * top.score
    same = "behave identically" if rule.grouping == "outputs" else "pass the same tests"
    reason = (
        f"{len(top.members)} of {len(eligible)} eligible candidates {same}, pass "
        f"{len(top.passed)} of {len(checks)} generated tests and form the best-supported group "
        f"(score {top.score:.3g} vs {runner_up:.3g} for the next){tie_note}"
    )
    return Vote(method="dual-agreement", groups=groups, winners=winners, flaky=flaky, gated=gated,
                close_call=close, reason=reason)


def _returns(matrix: ExecutionMatrix, cand: str, probes: Sequence[TestCase]) -> bool:
    """Whether the candidate returns a value on at least one probe input."""
    cells = matrix.cells.get(cand, {})
    return any(cells.get(t.id) == "pass" for t in probes)


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


def _majority(matrix, probes, eligible, flaky, gated) -> Vote:
    """No test says anything (none parsed, or none passed): the largest group of candidates
    that return the same values on the probe inputs, as long as it has company. Independent
    samples that agree on every input are rarely wrong the same way by chance."""
    by_outputs: dict[tuple, list[str]] = {}
    for c in eligible:
        if _returns(matrix, c, probes):
            by_outputs.setdefault(_behaviour(matrix, c, [], probes)[1], []).append(c)
    groups = [Group(members=m, passed=[], score=float(len(m))) for m in by_outputs.values()]
    groups.sort(key=lambda g: (-g.score, g.members[0]))
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
