"""The vote: which candidates are correct.

DESIGN.md "Selection, precisely", steps 1, 3 and 4. Everything here works on plain lists and
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

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, Field

from bakeoff.agent.types import ExecutionMatrix, TestCase

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


def is_probe(test: TestCase) -> bool:
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
    checks = [t for t in known if not is_probe(t)]
    probes = [t for t in known if is_probe(t)]
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
