"""Settling a C/C++ harness's input spec: inferred statically first, then, when that spec
fails its check, proposed by the tester model; every spec is checked against the reference
(``c_spec_check``) and repaired or dropped, never trusted unchecked.

The model sees the source, the spec vocabulary, the statically inferred draft and why it
failed (prompt ``c_spec.j2``); its answer is one JSON object, read leniently
(``edge_text``) and checked for shape (``parse_spec``) before it reaches the compiler. A
proposal that fails its check goes back to the model once with the reasons (the repair);
one that fails again is dropped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bakeoff.agent.harness import c_plan
from bakeoff.agent.harness.c_driver import run_function
from bakeoff.agent.harness.c_signature import SignatureError, defined_functions
from bakeoff.agent.harness.c_spec import SpecDraft, infer_spec
from bakeoff.agent.harness.c_spec_check import SpecOutcome, settle
from bakeoff.agent.harness.edge_text import gist, json_object
from bakeoff.agent.seams import Message, Model

if TYPE_CHECKING:
    from bakeoff.agent.harness.c_harness import CHarness

SPEC_KEYS = {"vars", "args", "support", "unordered", "float_rel", "float_abs", "edge"}
MAX_SUPPORT_CHARS = 20_000
REPAIRS = 1  # a failed proposal goes back to the model this many times


def parse_spec(text: str, harness: CHarness, draft: SpecDraft) -> tuple[SpecDraft | None, list[str]]:
    """A model's proposal as a draft the check can run, or None and why. Pure."""
    spec = json_object(text)
    if spec is None:
        return None, [f"spec proposal: the tester's answer held no JSON object ({gist(text)})"]
    notes = [f"spec proposal: key {k!r} left out (not in the vocabulary)" for k in sorted(set(spec) - SPEC_KEYS)]
    spec = {k: v for k, v in spec.items() if k in SPEC_KEYS}
    if not isinstance(spec.get("vars", {}), Mapping) or not isinstance(spec.get("args", {}), Mapping):
        return None, [*notes, "spec proposal: 'vars' and 'args' must be objects"]
    support = spec.get("support", "")
    if not isinstance(support, str) or len(support) > MAX_SUPPORT_CHARS:
        return None, [*notes, f"spec proposal: 'support' must be code of at most {MAX_SUPPORT_CHARS} characters"]
    try:
        plan = c_plan.build_plan(harness.signature, spec)
        run_function(plan, "ref", f"::bk_ref::{harness.function}", [])  # the driver can generate its inputs
        plan.values({name: 1.0 for name in plan.vars})
    except (c_plan.ConstraintError, SignatureError, ValueError, TypeError, KeyError, AttributeError) as exc:
        return None, [*notes, f"spec proposal rejected: {exc}"[:300]]
    missing = [h for h in draft.missing if h not in defined_functions(support)] if support else list(draft.missing)
    return SpecDraft(constraints=spec, notes=["proposed by the tester model"], missing=missing, degree=draft.degree), notes


async def propose_spec(model: Model, harness: CHarness, goal: str, draft: SpecDraft,
                       problems: list[str]) -> tuple[SpecDraft | None, list[str]]:
    """Ask the tester for a spec, given the draft and why it failed. Errors of the model call
    itself propagate: the caller decides what a failed call means."""
    from bakeoff.agent.prompting import render

    language = "C" if harness.language == "c" else "C++"
    prompt = render("c_spec", language=language, goal=goal or f"test {harness.function}", source=harness.reference_source,
                    entry=harness.function, fence="c" if language == "C" else "cpp",
                    draft=json.dumps(draft.constraints, indent=1, default=str), problems=problems)
    completion = await model.complete([Message(role="user", content=prompt)], temperature=0.0)
    return parse_spec(completion.text, harness, draft)


async def settle_spec(harness: CHarness, tester: Model | None = None, goal: str = "",
                      draft: SpecDraft | None = None) -> SpecOutcome:
    """Give ``harness`` a checked spec: the static draft (inferred from its reference unless
    given) if it passes, else the tester's proposal (repaired once). ``testable`` is False when
    none passes: the harness then has nothing to test with."""
    draft = draft or harness.draft or infer_spec(harness.reference_source, harness.function)
    harness.draft = None
    outcome = await settle(harness, [("inferred", draft)])
    if outcome.testable or tester is None:
        return outcome
    notes, problems, shown = list(outcome.notes), list(outcome.problems), draft
    for _ in range(1 + REPAIRS):
        proposal, why = await propose_spec(tester, harness, goal, shown, problems)
        notes += why
        if proposal is None:
            problems = why  # what was wrong with the answer goes back with the next request
            continue
        tried = await settle(harness, [("model", proposal)])
        notes += tried.notes
        if tried.testable:
            return SpecOutcome(tried.constraints, "model", notes)
        problems, shown = tried.problems, proposal
    return SpecOutcome(None, "", notes, problems)
