"""Close calls (DESIGN step 5): when the top groups are close, run inputs chosen to tell them
apart and let the reference, a judge that sees the real outputs, or the majority decide.

Proposing inputs and running them are the caller's: ``resolve_close_call`` takes callables,
so this module stays pure over plain data.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence

from bakeoff.agent.prompting import render
from bakeoff.agent.seams import Message, Model
from bakeoff.agent.selection.vote import CLOSE_MARGIN, Group, Vote

Distinguish = Callable[[Sequence[Group]], Awaitable[Sequence[str]]]
Run = Callable[[Sequence[str], Sequence[str]], Awaitable[Mapping[str, Mapping[str, str]]]]
Outputs = Mapping[str, Mapping[str, str]]  # candidate -> input -> output


async def resolve_close_call(
    ballot: Vote,
    *,
    distinguish: Distinguish,
    run: Run,
    judge: Model | None = None,
    reference: str | None = None,
    task: str = "",
) -> Vote:
    """Settle a close call between the top groups on inputs chosen to tell them apart.

    ``distinguish(groups)`` proposes inputs; ``run(inputs, candidate_ids)`` returns each
    candidate's output per input. Each input where the groups disagree is decided by the
    ``reference`` candidate's output when there is one, else by a ``judge`` model that sees
    the real outputs (judge.j2), else by the majority of all candidates run. The group that
    wins the most inputs wins."""
    if not ballot.close_call or len(ballot.groups) < 2:
        return ballot
    top = ([g for g in ballot.groups if g.score >= ballot.groups[0].score * (1 - CLOSE_MARGIN)] or ballot.groups[:2])[:4]
    inputs = list(await distinguish(top))
    if not inputs:
        return ballot.model_copy(update={"reason": ballot.reason + "; no distinguishing input was proposed"})
    ids = [c for g in top for c in g.members] + ([reference] if reference is not None else [])
    outputs = await run(inputs, ids)
    wins, decided = [0] * len(top), 0
    for x in inputs:
        per_group = [outputs.get(g.members[0], {}).get(x) for g in top]
        if len(set(per_group)) < 2:
            continue  # the groups agree here: this input tells nothing
        for i in await _decide(x, per_group, top, outputs, reference, judge, task):
            wins[i] += 1
        decided += 1
    if not decided or max(wins) == 0:
        return ballot.model_copy(update={"reason": ballot.reason + "; the distinguishing inputs did not separate the groups"})
    return _settled(ballot, top, wins, decided, how=(
        "the reference" if reference is not None else ("a judge" if judge is not None else "the majority")))


async def _decide(x: str, per_group: Sequence[str | None], top: Sequence[Group], outputs: Outputs,
                  reference: str | None, judge: Model | None, task: str) -> list[int]:
    """The indices of the groups whose output on input ``x`` is the right one."""
    if reference is not None:
        truth = outputs.get(reference, {}).get(x)
        return [i for i, o in enumerate(per_group) if o is not None and o == truth]
    if judge is not None:
        return await _ask_judge(judge, task, x, per_group)
    counts: dict[str, int] = {}
    for g in top:
        for c in g.members:
            o = outputs.get(c, {}).get(x)
            if o is not None and not o.startswith("!"):
                counts[o] = counts.get(o, 0) + 1
    best = max(counts.values(), default=0)
    return [i for i, o in enumerate(per_group) if best and counts.get(o) == best]


def _settled(ballot: Vote, top: Sequence[Group], wins: Sequence[int], decided: int, how: str) -> Vote:
    best = max(wins)
    winners_idx = [i for i, w in enumerate(wins) if w == best]
    winners = [c for i in winners_idx for c in top[i].members]
    reason = (
        ballot.reason + f"; close call settled on {decided} distinguishing inputs decided by {how}: "
        f"group of {', '.join(top[winners_idx[0]].members[:3])} won {best}"
    )
    reordered = [top[i] for i in winners_idx] + [g for g in ballot.groups if all(g is not top[i] for i in winners_idx)]
    return ballot.model_copy(update={"winners": winners, "close_call": len(winners_idx) > 1, "reason": reason,
                                     "groups": reordered})


async def _ask_judge(judge: Model, task: str, call: str, outputs: Sequence[str | None]) -> list[int]:
    letters = [chr(ord("A") + i) for i in range(len(outputs))]
    prompt = render("judge", task=task, call=call,
                    options=[{"letter": l, "output": o if o is not None else "(no output)"} for l, o in zip(letters, outputs)])
    completion = await judge.complete([Message(role="user", content=prompt)], temperature=0.0)
    return parse_judgement(completion.text, len(outputs))


def parse_judgement(text: str, n: int) -> list[int]:
    """The options a judge named on its ``ANSWER:`` line (letters A, B, ...); none if unclear."""
    m = re.findall(r"ANSWER:\s*([A-Z](?:\s*,\s*[A-Z])*)", text.upper())
    if not m:
        return []
    picked = {ord(x.strip()) - ord("A") for x in m[-1].split(",")}
    return sorted(i for i in picked if 0 <= i < n)


def model_distinguisher(model: Model, task: str, sources: Mapping[str, str], entry: str,
                        parse_inputs: Callable[[str, str], list[str]]) -> Distinguish:
    """A ``distinguish`` callable backed by the tester model (prompt distinguish.j2);
    ``parse_inputs(text, entry)`` reads the calls out of its answer."""

    async def distinguish(groups: Sequence[Group]) -> list[str]:
        versions = [{"name": f"version {i + 1}", "code": sources.get(g.members[0], "")} for i, g in enumerate(groups)]
        prompt = render("distinguish", task=task, entry=entry, versions=versions)
        completion = await model.complete([Message(role="user", content=prompt)], temperature=0.0)
        return parse_inputs(completion.text, entry)

    return distinguish
