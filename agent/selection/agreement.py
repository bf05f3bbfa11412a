"""The rules of the no-reference vote: how candidates and generated tests vouch for each other.

Without a reference, two kinds of evidence come from one sampling model, independently:
candidates and tests. CodeT's dual agreement groups candidates that pass the same tests and
scores a group by (candidates in it) x (tests it passes). Each ``AgreementRule`` is CodeT's
rule with some of five departures, each a principle from the selection literature:

- ``grouping="outputs"``: candidates are the same behaviour only when they also return the
  same values on every probe input (AlphaCode's and MBR-exec's clustering on shared inputs);
  this splits big groups that share a pass-set by accident.
- ``test_power``: a test counts by its generation count times (share of distinct
  behaviours that pass it) ** power. A test written with a wrong expected value is passed
  only by the candidates that share that mistake; a right one also by most partly-wrong
  behaviours (test validity from the population).
- ``size_power``: a group's size counts as size ** power (0.5 is CodeT's released code).
- ``tie_break``: groups the tests cannot tell apart are told apart by how many candidates
  of the whole population return the same values on the probes (MBR-exec's soft agreement).
- ``fallback``: when no test is passed at all, the largest group of equal outputs wins (if it
  has company) instead of nobody.

``FAMILY`` is every combination (48 rules); ``RULE`` is the product's, the one that the
benchmark's cross-validation picks (``bench/select_codet.py --cv``, 5 folds of the 82
HumanEval dev problems): of the rules that the folds cannot tell from the best one (within
one standard error of the paired per-fold differences), the one with fewest departures.
On that data grouping by outputs is worth about 0.1 of the random-to-oracle gap, the fallback
and the tie-break a few problems on several folds; the share weighting (one problem, one
fold) and the square-root size are within the folds' noise, so the product leaves them out.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product
from typing import Literal

from pydantic import BaseModel, ConfigDict

from bakeoff.agent.types import TestCase


class AgreementRule(BaseModel):
    """One member of the family (see the module doc); the defaults are CodeT's paper formula."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    grouping: Literal["tests", "outputs"] = "tests"
    test_power: float = 0.0
    size_power: float = 1.0
    tie_break: bool = False
    fallback: bool = False

    @property
    def departures(self) -> int:
        """How many ways this rule differs from CodeT's: the simpler, the fewer."""
        codet = AgreementRule()
        return sum(getattr(self, f) != getattr(codet, f) for f in type(self).model_fields)

    @property
    def name(self) -> str:
        parts = ["codet"]
        if self.grouping == "outputs":
            parts.append("outputs")
        if self.test_power:
            parts.append(f"share^{self.test_power:g}")
        if self.size_power != 1:
            parts.append(f"size^{self.size_power:g}")
        if self.tie_break:
            parts.append("tie-break")
        if self.fallback:
            parts.append("fallback")
        return "+".join(parts)


CODET_RULE = AgreementRule()
FAMILY: tuple[AgreementRule, ...] = tuple(
    AgreementRule(grouping=g, test_power=tp, size_power=sp, tie_break=tb, fallback=fb)
    for g, tp, sp, tb, fb in product(("tests", "outputs"), (0.0, 0.5, 1.0), (0.5, 1.0), (False, True), (False, True))
)
RULE = AgreementRule(grouping="outputs", tie_break=True, fallback=True)


def group_support(
    rule: AgreementRule,
    sizes: Sequence[int],
    passes: Sequence[set[str]],
    alive: Sequence[bool],
    checks: Sequence[TestCase],
) -> list[float]:
    """Support of each behaviour group: size ** size_power x (the tests it passes, each by its
    weight times the share of live behaviours passing it ** test_power). A group that passes
    no test nor returns any value (``alive`` false) has none."""
    live = [i for i in range(len(sizes)) if alive[i]]
    if not live:
        return [0.0] * len(sizes)
    share = {t.id: sum(1 for i in live if t.id in passes[i]) / len(live) for t in checks}
    weight = {t.id: t.weight * share[t.id] ** rule.test_power for t in checks}
    return [float(sizes[i] ** rule.size_power * sum(weight[t] for t in passes[i])) if alive[i] else 0.0
            for i in range(len(sizes))]
