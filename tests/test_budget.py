"""One budget per run: reservations before calls, charges after, failing closed under concurrency."""

from __future__ import annotations

import asyncio

import pytest

from bakeoff.agent.models.budget import Budget, BudgetedModel, BudgetExceeded, estimate_prompt_tokens
from bakeoff.agent.events import EventBus
from bakeoff.agent.models.scripted import ScriptedModel, ScriptedResponse
from bakeoff.agent.seams import Completion, Message, Model

PROMPT = [Message(role="user", content="p" * 40)]  # 10 real tokens; estimated 14 + 8 overhead
ANSWER = "a" * 80  # 20 tokens


def scripted(**kw) -> ScriptedModel:
    return ScriptedModel([ScriptedResponse(text=ANSWER, repeat=True)], first_token_s=0.02, **kw)


class Watch:
    """Records the budget's spending after every model call."""

    def __init__(self, budget: Budget, bus: EventBus) -> None:
        self.peaks_tokens: list[int] = []
        self.peaks_usd: list[float] = []
        bus.subscribe(lambda e: (self.peaks_tokens.append(budget.spent_tokens), self.peaks_usd.append(budget.spent_usd)))


async def _fire(model: BudgetedModel, calls: int, stream: bool = False) -> tuple[int, int]:
    async def one():
        if stream:
            final = None
            async for item in model.stream(PROMPT, max_tokens=30):
                if isinstance(item, Completion):
                    final = item
            return final
        return await model.complete(PROMPT, max_tokens=30)

    results = await asyncio.gather(*(one() for _ in range(calls)), return_exceptions=True)
    ok = sum(isinstance(r, Completion) for r in results)
    refused = sum(isinstance(r, BudgetExceeded) for r in results)
    others = [r for r in results if not isinstance(r, (Completion, BudgetExceeded))]
    assert not others, others
    return ok, refused


@pytest.mark.parametrize("stream", [False, True])
async def test_32_concurrent_calls_never_exceed_the_token_limit(stream):
    budget = Budget(max_tokens=500)
    bus = EventBus()
    watch = Watch(budget, bus)
    model = BudgetedModel(scripted(), budget, role="editor", events=bus)
    assert isinstance(model, Model)
    ok, refused = await _fire(model, 32, stream)
    assert ok + refused == 32
    assert ok >= 5 and refused >= 16  # each call reserves 22 + 30 = 52 tokens: at most 9 fit
    assert budget.spent_tokens <= 500 and max(watch.peaks_tokens) <= 500
    assert budget.spent_tokens == ok * 30  # real usage charged: 10 prompt + 20 completion tokens
    assert budget.remaining.tokens == 500 - budget.spent_tokens  # every reservation released


async def test_32_concurrent_calls_never_exceed_the_dollar_limit():
    budget = Budget(max_usd=0.01)
    bus = EventBus()
    watch = Watch(budget, bus)
    model = BudgetedModel(scripted(usd_per_token=0.0001), budget, events=bus)  # $0.003 a call
    ok, refused = await _fire(model, 32)
    assert ok >= 1 and refused >= 28
    assert budget.spent_usd <= 0.01 + 1e-12 and max(watch.peaks_usd) <= 0.01 + 1e-12
    assert budget.spent_usd == pytest.approx(ok * 30 * 0.0001)


async def test_message_says_what_was_spent_and_how_to_raise_it():
    budget = Budget(max_usd=1.0, max_tokens=30)
    model = BudgetedModel(scripted(), budget)
    with pytest.raises(BudgetExceeded) as e:
        await model.complete(PROMPT, max_tokens=30)  # 22 prompt tokens leave 8 of 30: too few
    text = str(e.value)
    assert "--budget" in text and "of 30" in text and "spent $0.0000 of $1.0000" in text
    assert budget.spent_tokens == 0 and budget.remaining.tokens == 30


async def test_cap_shrinks_to_what_is_left():
    budget = Budget(max_tokens=60)
    model = BudgetedModel(ScriptedModel([ScriptedResponse(text="b" * 400)]), budget)
    c = await model.complete(PROMPT)  # asks for no limit; gets what the budget can pay for
    assert c.usage.completion_tokens == 60 - estimate_prompt_tokens(PROMPT)
    assert budget.spent_tokens <= 60


async def test_failed_call_releases_its_reservation():
    budget = Budget(max_tokens=1000)
    model = BudgetedModel(ScriptedModel([]), budget)  # an empty script: every call fails
    with pytest.raises(Exception, match="no response left"):
        await model.complete(PROMPT)
    assert budget.spent_tokens == 0 and budget.remaining.tokens == 1000


async def test_abandoned_stream_is_charged_an_estimate_and_releases_the_rest():
    budget = Budget(max_tokens=10_000)
    bus = EventBus()
    events = []
    bus.subscribe(events.append)
    model = BudgetedModel(ScriptedModel([ScriptedResponse(text="c" * 400)], per_token_s=0.001), budget, events=bus)
    stream = model.stream(PROMPT)
    async for item in stream:
        break  # the caller stops reading
    await stream.aclose()
    assert 0 < budget.spent_tokens < 200
    assert budget.remaining.tokens == 10_000 - budget.spent_tokens
    assert events[-1].data.get("aborted") is True


async def test_model_call_events_carry_tokens_cost_latency():
    budget = Budget()
    bus = EventBus()
    events = []
    bus.subscribe(events.append)
    model = BudgetedModel(scripted(usd_per_token=0.5), budget, role="judge", events=bus)
    await model.complete(PROMPT, n=2)
    (event,) = events
    assert event.kind == "model.call" and event.data["role"] == "judge" and event.data["n"] == 2
    assert event.data["prompt_tokens"] == 10 and event.data["completion_tokens"] == 40
    assert event.data["cost_usd"] == pytest.approx(25.0) and event.data["latency_s"] >= 0.02
    assert model.spent_usd == pytest.approx(25.0) and model.spent_tokens == 50
    assert model.remaining.usd is None and model.remaining.tokens is None


async def test_tester_reservations_leave_room_for_the_editors():
    budget = Budget(max_tokens=4000)
    slow_tester = ScriptedModel([ScriptedResponse(text="t" * 40_000, repeat=True)], first_token_s=0.3)
    tester = BudgetedModel(slow_tester, budget, role="tester")
    editor = BudgetedModel(scripted(), budget, role="editor")
    writing_tests = asyncio.create_task(tester.complete(PROMPT))  # asks for no limit: as much as it may
    await asyncio.sleep(0.05)
    # A quarter of what is left is the most the tester holds (1000 of 4000 tokens), not all of it.
    assert budget.remaining.tokens == 3000
    assert budget.left_for("tester").tokens == 0  # a second tester call would have to wait its turn
    ok, refused = await _fire(editor, 8)  # 8 editor calls of 52 tokens each all fit beside it
    assert (ok, refused) == (8, 0)
    tests = await writing_tests
    assert tests.usage.completion_tokens == 1000 - estimate_prompt_tokens(PROMPT)
    assert budget.spent_tokens <= 4000 and budget.remaining.tokens == 4000 - budget.spent_tokens


async def test_every_part_of_a_call_is_on_the_ledger():
    from bakeoff.agent.models.ledger import Ledger

    budget, ledger = Budget(), Ledger()
    model = BudgetedModel(scripted(usd_per_token=0.001), budget, role="editor", ledger=ledger)
    await model.complete(PROMPT)
    async for _ in model.stream(PROMPT):
        pass
    assert [(c.role, c.tokens, c.estimated) for c in ledger.charges] == [("editor", 30, False), ("editor", 30, False)]
    assert ledger.cost_usd == pytest.approx(budget.spent_usd) and ledger.tokens == budget.spent_tokens == 60
