"""One budget per run, in dollars and tokens, shared by every concurrent model call.

Before a call, ``BudgetedModel`` reserves the most the call can cost (prompt estimate plus
``max_tokens``, which it passes to the model so the model cannot exceed it); after the call
the real usage is charged and the reservation released. Reservations count against the
limit, so however many calls run at once, the run cannot spend more than its budget: a call
that might not fit is refused before it is made (fails closed).

Some roles may hold only a share of what is left (``ROLE_SHARE``): the tester writes tests
while the editors write candidates, and its reservations must not starve theirs.

An answer cut off at its limit is asked again with a larger one, a stream that broke or was
cut off is continued where it stopped, each time with a reservation of its own; every part
is charged, to the budget and to the run's ``Ledger`` (a broken stream's as an estimate).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing

from pydantic import BaseModel

from bakeoff.agent.events import EventBus
from bakeoff.agent.models.answers import AnswerCutOff, AnswerIncomplete, ModelCallFailed, Unfinished, continue_after
from bakeoff.agent.models.ledger import Charge, Ledger
from bakeoff.agent.seams import Completion, Message, Model, Usage

# A prompt is estimated at 3 characters per token: tokenizers give 3.5-4.5 for English and
# code, so the estimate errs on the side of the limit.
_CHARS_PER_TOKEN_ESTIMATE = 3
_MESSAGE_OVERHEAD_TOKENS = 8  # role markers and separators per message
DEFAULT_MAX_COMPLETION_TOKENS = 8192  # cap for a call that names none, under a limit
MIN_COMPLETION_TOKENS = 16  # below this a call is not worth making
# The most of what is left that one role's calls in flight may hold together.
ROLE_SHARE = {"tester": 0.25}
MAX_GROWTHS = 2  # a cut-off answer is asked again with twice the limit, at most this often
MAX_CONTINUATIONS = 4  # a stream that broke or was cut off is continued at most this often


class BudgetExceeded(Exception):
    """The run's budget cannot cover the next call. The user can raise it with --budget."""


class BudgetLeft(BaseModel):
    usd: float | None  # None: no dollar limit
    tokens: int | None  # None: no token limit


class Reservation(BaseModel):
    tokens: int
    usd: float
    role: str = ""


class Budget:
    """Limits for one run. ``None`` means no limit of that kind. Thread- and task-safe."""

    def __init__(self, max_usd: float | None = None, max_tokens: int | None = None) -> None:
        self.max_usd = max_usd
        self.max_tokens = max_tokens
        self._spent_usd = 0.0
        self._spent_tokens = 0
        self._reserved_usd = 0.0
        self._reserved_tokens = 0
        self._by_role: dict[str, tuple[int, float]] = {}  # reservations in flight per role
        self._unpriced_calls = 0
        # A threading lock: nothing awaits while holding it, and callers may be in threads.
        self._lock = threading.Lock()

    @property
    def spent_usd(self) -> float:
        return self._spent_usd

    @property
    def spent_tokens(self) -> int:
        return self._spent_tokens

    @property
    def unpriced_calls(self) -> int:
        """Calls whose price was unknown: only their tokens were counted."""
        return self._unpriced_calls

    @property
    def remaining(self) -> BudgetLeft:
        """What is left after spending and after the reservations of calls in flight."""
        with self._lock:
            return BudgetLeft(
                usd=None if self.max_usd is None else max(0.0, self.max_usd - self._spent_usd - self._reserved_usd),
                tokens=None if self.max_tokens is None else max(0, self.max_tokens - self._spent_tokens - self._reserved_tokens),
            )

    def left_for(self, role: str) -> BudgetLeft:
        """What a new call of ``role`` may reserve: everything left, or for a role with a share
        (``ROLE_SHARE``), what keeps all its calls in flight within that share of what is left."""
        left = self.remaining
        share = ROLE_SHARE.get(role)
        if share is None:
            return left
        with self._lock:
            held_tokens, held_usd = self._by_role.get(role, (0, 0.0))
        # held + new <= share * (left + held)  <=>  new <= share * left - (1 - share) * held
        return BudgetLeft(
            usd=None if left.usd is None else max(0.0, share * left.usd - (1 - share) * held_usd),
            tokens=None if left.tokens is None else max(0, int(share * left.tokens - (1 - share) * held_tokens)),
        )

    def describe(self) -> str:
        parts = [f"spent ${self._spent_usd:.4f}" + (f" of ${self.max_usd:.4f}" if self.max_usd is not None else "")]
        parts.append(f"{self._spent_tokens} tokens" + (f" of {self.max_tokens}" if self.max_tokens is not None else ""))
        if self._reserved_tokens or self._reserved_usd:
            parts.append(f"{self._reserved_tokens} tokens / ${self._reserved_usd:.4f} reserved by calls in flight")
        return ", ".join(parts)

    def _exceeded(self, need: str) -> BudgetExceeded:
        return BudgetExceeded(
            f"budget exhausted: the next call needs up to {need}, but the run has {self.describe()}. "
            "Raise it with --budget (dollars) or --budget-tokens, or in the config file."
        )

    def reserve(self, tokens: int, usd: float = 0.0, role: str = "") -> Reservation:
        """Hold ``tokens`` and ``usd`` for a call about to start, or raise ``BudgetExceeded``."""
        with self._lock:
            if self.max_tokens is not None and self._spent_tokens + self._reserved_tokens + tokens > self.max_tokens:
                raise self._exceeded(f"{tokens} tokens")
            if self.max_usd is not None and self._spent_usd + self._reserved_usd + usd > self.max_usd:
                raise self._exceeded(f"${usd:.4f}")
            self._reserved_tokens += tokens
            self._reserved_usd += usd
            held = self._by_role.get(role, (0, 0.0))
            self._by_role[role] = (held[0] + tokens, held[1] + usd)
            return Reservation(tokens=tokens, usd=usd, role=role)

    def settle(self, reservation: Reservation, tokens: int, usd: float | None) -> None:
        """Release ``reservation`` and charge what the call really used (``usd=None``: unpriced)."""
        with self._lock:
            self._reserved_tokens -= reservation.tokens
            self._reserved_usd -= reservation.usd
            held = self._by_role.get(reservation.role, (0, 0.0))
            self._by_role[reservation.role] = (held[0] - reservation.tokens, held[1] - reservation.usd)
            self._spent_tokens += tokens
            if usd is None:
                self._unpriced_calls += 1
            else:
                self._spent_usd += usd

    def release(self, reservation: Reservation) -> None:
        """Give a reservation back unspent (the call failed before it cost anything)."""
        self.settle(reservation, 0, 0.0)

    def completion_cap(self, prompt_tokens: int, wanted: int, n: int, price, role: str = "") -> int:
        """The largest ``max_tokens`` (<= ``wanted``) the budget left to ``role`` can pay for ``n`` samples.

        ``price(prompt_tokens, completion_tokens) -> usd | None`` prices a call.
        """
        left = self.left_for(role)
        cap = wanted
        if left.tokens is not None:
            cap = min(cap, (left.tokens - prompt_tokens) // max(1, n))
        if left.usd is not None and cap > 0:
            full = price(prompt_tokens, cap * n)
            if full is not None and full > left.usd:
                # Price is linear in tokens: scale down to what the dollars left can pay for.
                base = price(prompt_tokens, 0) or 0.0
                per = (full - base) / (cap * n) if cap * n else 0.0
                cap = min(cap, int((left.usd - base) / per / n) if per > 0 else cap)
        return cap


def estimate_prompt_tokens(messages: Sequence[Message]) -> int:
    chars = sum(len(m.content) for m in messages)
    return math.ceil(chars / _CHARS_PER_TOKEN_ESTIMATE) + _MESSAGE_OVERHEAD_TOKENS * len(messages)


def combined(parts: Sequence[Completion], text: str | None = None) -> Completion:
    """One call's answer from its parts (cut-off answers asked again, continued streams): the
    last part's texts (or ``text``), every part's usage, cost and time."""
    last = parts[-1]
    costs = [p.cost_usd for p in parts]
    return Completion(
        model=last.model, texts=[text] if text is not None else last.texts,
        usage=Usage(prompt_tokens=sum(p.usage.prompt_tokens for p in parts),
                    completion_tokens=sum(p.usage.completion_tokens for p in parts)),
        cost_usd=None if any(c is None for c in costs) else sum(costs), latency_s=sum(p.latency_s for p in parts),
        estimated=any(p.estimated for p in parts),
    )


class BudgetedModel:
    """A model whose every call is paid from a shared ``Budget`` and, when a ``ledger`` is
    given, written to the run's account.

    Emits ``model.call`` with role, model, tokens, cost and latency for each part of a call,
    ``model.delta`` for streamed text, and ``model.status`` when it asks again.
    """

    def __init__(self, model: Model, budget: Budget, *, role: str = "", events: EventBus | None = None,
                 ledger: Ledger | None = None) -> None:
        self.model = model
        self.budget = budget
        self.role = role
        self.events = events
        self.ledger = ledger
        self.name = model.name

    @property
    def spent_usd(self) -> float:
        return self.budget.spent_usd

    @property
    def spent_tokens(self) -> int:
        return self.budget.spent_tokens

    @property
    def remaining(self) -> BudgetLeft:
        return self.budget.remaining

    def _price(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        estimate = getattr(self.model, "estimate_cost", None)
        return estimate(prompt_tokens, completion_tokens) if estimate is not None else None

    def _reserve(self, messages: Sequence[Message], n: int, max_tokens: int | None) -> tuple[Reservation, int | None]:
        prompt = estimate_prompt_tokens(messages)
        if self.budget.max_tokens is None and self.budget.max_usd is None:
            # Nothing to bound: keep the caller's max_tokens (None lets the model decide).
            return self.budget.reserve(0, 0.0, self.role), max_tokens
        wanted = max_tokens if max_tokens is not None else DEFAULT_MAX_COMPLETION_TOKENS
        cap = self.budget.completion_cap(prompt, wanted, n, self._price, self.role)
        if cap < min(wanted, MIN_COMPLETION_TOKENS):
            raise self.budget._exceeded(f"{prompt + MIN_COMPLETION_TOKENS * n} tokens (a {prompt}-token prompt)")
        usd = self._price(prompt, cap * n)
        return self.budget.reserve(prompt + cap * n, usd or 0.0, self.role), cap

    def _charge(self, reservation: Reservation, completion: Completion, n: int, streamed: bool) -> None:
        """Charge one part of a call: the budget, the ledger, and a ``model.call`` event."""
        self.budget.settle(reservation, completion.usage.total_tokens, completion.cost_usd)
        if self.ledger is not None:
            self.ledger.record(Charge(role=self.role, model=completion.model, tokens=completion.usage.total_tokens,
                                      cost_usd=completion.cost_usd, estimated=completion.estimated))
        if self.events is not None:
            self.events.emit(
                "model.call", role=self.role, model=completion.model, n=n, stream=streamed,
                prompt_tokens=completion.usage.prompt_tokens, completion_tokens=completion.usage.completion_tokens,
                cost_usd=completion.cost_usd, latency_s=round(completion.latency_s, 4), estimated=completion.estimated,
                spent_usd=self.budget.spent_usd, spent_tokens=self.budget.spent_tokens,
            )

    def _grown(self, cut: AnswerCutOff, cap: int | None, n: int, growths: int, messages: Sequence[Message]) -> int:
        """The larger limit to ask a cut-off answer again with, or ``AnswerIncomplete``."""
        written = cut.completion.usage.completion_tokens // max(1, n)
        limit = cap if cap is not None else written
        grown = 2 * max(limit, MIN_COMPLETION_TOKENS)
        who = f"{cut.completion.model} ({self.role})" if self.role else cut.completion.model
        if growths >= MAX_GROWTHS:
            raise AnswerIncomplete(f"the answer of {who} was cut off at {limit} tokens after {growths + 1} tries with "
                                   "growing limits: ask for less, or use a model with a larger output limit") from cut
        if self.budget.max_tokens is not None or self.budget.max_usd is not None:
            room = self.budget.completion_cap(estimate_prompt_tokens(messages), grown, n, self._price, self.role)
            if room <= limit:
                raise AnswerIncomplete(f"the answer of {who} was cut off at {limit} tokens and the budget leaves room "
                                       f"for no longer one ({self.budget.describe()}): raise --budget or --budget-tokens") from cut
            grown = room
        if self.events is not None:
            self.events.emit("model.status", what="cut-off", model=cut.completion.model, role=self.role, limit=limit,
                             message=f"{who}: answer cut off at {limit} tokens; asking again with up to {grown}")
        return grown

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int | None = None,
    ) -> Completion:
        parts: list[Completion] = []
        wanted = max_tokens
        for growths in itertools.count():
            reservation, cap = self._reserve(messages, n, wanted)
            try:
                completion = await self.model.complete(messages, n=n, temperature=temperature, max_tokens=cap)
            except AnswerCutOff as cut:
                self._charge(reservation, cut.completion, n, streamed=False)
                parts.append(cut.completion)
                wanted = self._grown(cut, cap, n, growths, messages)
                continue
            except BaseException:
                self.budget.release(reservation)
                raise
            self._charge(reservation, completion, n, streamed=False)
            return combined([*parts, completion])
        raise AssertionError("unreachable")

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
    ) -> AsyncIterator[str | Completion]:
        """The model's stream; one that breaks or is cut off is continued where it stopped."""
        parts: list[Completion] = []
        text, wanted, growths, broke = "", max_tokens, 0, []
        for _ in range(MAX_CONTINUATIONS + 1):
            asked = continue_after(messages, text) if text else list(messages)
            async with aclosing(self._one_stream(asked, temperature, wanted, broke)) as one:
                async for item in one:
                    if isinstance(item, Unfinished):
                        parts.append(item.completion)
                        if isinstance(item, AnswerCutOff):
                            wanted = self._grown(item, item.limit, 1, growths, asked)
                            growths += 1
                    elif isinstance(item, Completion):
                        parts.append(item)
                        yield combined(parts, text)
                        return
                    else:
                        text += item
                        yield item
        raise ModelCallFailed(f"the stream of {self.name} did not finish after {MAX_CONTINUATIONS + 1} tries: "
                              + "; ".join(broke))

    async def _one_stream(self, messages: Sequence[Message], temperature: float, wanted: int | None,
                          broke: list[str]) -> AsyncIterator[str | Completion | Unfinished]:
        """One streamed call: its deltas, then its ``Completion``, or the ``Unfinished`` error
        when it broke or was cut off. Whatever ends it, what it cost is charged."""
        reservation, cap = self._reserve(messages, 1, wanted)
        started, streamed, final = time.monotonic(), 0, None
        try:
            async with aclosing(self.model.stream(messages, temperature=temperature, max_tokens=cap)) as answer:
                async for item in answer:
                    if isinstance(item, Completion):
                        self._charge(reservation, item, 1, streamed=True)
                        final = item
                        continue
                    streamed += len(item)
                    if self.events is not None:
                        self.events.emit("model.delta", role=self.role, text=item)
                    yield item
        except Unfinished as u:
            self._charge(reservation, u.completion, 1, streamed=True)
            final = u
            broke.append(str(u))
        except ModelCallFailed as e:
            if broke:  # earlier parts broke: say so, with what this last try found
                raise ModelCallFailed("; ".join(broke) + f"; then {e}") from e
            raise
        finally:
            if final is None:
                self._abandoned(reservation, messages, streamed, started)
        if final is None:
            raise ModelCallFailed(f"the stream of {self.name} ended without its final usage")
        yield final

    def _abandoned(self, reservation: Reservation, messages: Sequence[Message], streamed_chars: int, started: float) -> None:
        """A stream abandoned (or failed) before its usage arrived: the provider bills what it
        sent, so charge an estimate of it (prompt plus text so far), at most the reservation."""
        used = min(
            reservation.tokens,
            estimate_prompt_tokens(messages) + math.ceil(streamed_chars / _CHARS_PER_TOKEN_ESTIMATE),
        ) if streamed_chars else 0
        usd = self._price(used, 0) if used else 0.0
        usd = min(reservation.usd, usd) if usd is not None else None
        self.budget.settle(reservation, used, usd)
        if used and self.ledger is not None:
            self.ledger.record(Charge(role=self.role, model=self.name, tokens=used, cost_usd=usd, estimated=True))
        if self.events is not None:
            self.events.emit(
                "model.call", role=self.role, model=self.name, n=1, stream=True, aborted=True,
                tokens_estimated=used, cost_usd=usd, estimated=True, latency_s=round(time.monotonic() - started, 4),
            )
