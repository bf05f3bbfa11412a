"""Close calls in a fan-out (DESIGN, selection step 5): when the vote's top groups are close,
the tester proposes inputs on which they disagree, the harness runs every top candidate on
them, and the reference (when the task keeps behaviour), else the judge model, else the
majority, decides. ``selection.close_call`` holds the rule; this module gives it the run's
models and harness.

Only Python entry functions have distinguishing inputs (the prompt asks for calls with
literal arguments, which the harness runs in each candidate's own process).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bakeoff.agent.fanout.settings import FanOutServices
from bakeoff.agent.harness.protocol import DifferentialHarness
from bakeoff.agent.selection.vote import Vote
from bakeoff.agent.types import TestCase


async def settle_close_call(ballot: Vote, *, harness: DifferentialHarness | None, sources: Mapping[str, str],
                            goal: str, entry: str | None, reference: bool, services: FanOutServices) -> Vote:
    """``ballot`` with its close call settled where it can be; unchanged otherwise (with a note
    in its reason when the deciding models failed)."""
    from bakeoff.agent.fanout.trajectory import model_errors
    from bakeoff.agent.harness.edge_inputs import parse_python_inputs
    from bakeoff.agent.selection.close_call import model_distinguisher, resolve_close_call

    if not ballot.close_call or harness is None or harness.language != "python" or entry is None \
            or services.tester is None:
        return ballot
    distinguish = model_distinguisher(services.tester, goal, sources, entry,
                                      lambda text, name: parse_python_inputs(text, name)[0])

    async def run(inputs: Sequence[str], ids: Sequence[str]) -> dict[str, dict[str, str]]:
        tests = [TestCase(id=f"distinguish-{i}", kind="distinguishing", code=x, input=x) for i, x in enumerate(inputs)]
        matrix = await harness.run_matrix({c: sources[c] for c in ids if c in sources}, tests)
        return {c: {x: matrix.outputs.get(c, {}).get(t.id) or "!" + matrix.cells.get(c, {}).get(t.id, "missing")
                    for x, t in zip(inputs, tests)} for c in ids}

    services.events.emit("fanout.close_call", groups=[g.members for g in ballot.groups[:4]],
                         judge=services.judge.name if services.judge is not None else None)
    try:
        settled = await resolve_close_call(ballot, distinguish=distinguish, run=run, judge=services.judge,
                                           reference="base" if reference and "base" in sources else None, task=goal)
    except model_errors() as exc:
        return ballot.model_copy(update={"reason": ballot.reason + f"; the close call stays open ({type(exc).__name__}: "
                                                                   f"{str(exc)[:120]})"})
    services.events.emit("fanout.close_call.settled", winners=settled.winners, reason=settled.reason)
    return settled
