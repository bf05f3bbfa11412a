"""One budget per run, in dollars and tokens, shared by every concurrent model call.

Before a call, ``BudgetedModel`` reserves the most the call can cost (prompt estimate plus
``max_tokens``, which it passes to the model so the model cannot exceed it); after the call
the real usage is charged and the reservation released. Reservations count against the
limit, so however many calls run at once, the run cannot spend more than its budget: a call
that might not fit is refused before it is made (fails closed).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import AsyncIterator, Sequence

from pydantic import BaseModel

from bakeoff.agent.events import EventBus
from bakeoff.agent.seams import Completion, Message, Model

# A prompt is estimated at 3 characters per token: tokenizers give 3.5-4.5 for English and
# code, so the estimate errs on the side of the limit.
_CHARS_PER_TOKEN_ESTIMATE = 3
_MESSAGE_OVERHEAD_TOKENS = 8  # role markers and separators per message
DEFAULT_MAX_COMPLETION_TOKENS = 8192  # cap for a call that names none, under a limit
MIN_COMPLETION_TOKENS = 16  # below this a call is not worth making


class BudgetExceeded(Exception):
    """The run's budget cannot cover the next call. The user can raise it with --budget."""


class BudgetLeft(BaseModel):
    usd: float | None  # None: no dollar limit
    tokens: int | None  # None: no token limit


class Reservation(BaseModel):
    tokens: int
    usd: float


class Budget:
    """Limits for one run. ``None`` means no limit of that kind. Thread- and task-safe."""

    def __init__(self, max_usd: float | None = None, max_tokens: int | None = None) -> None:
        self.max_usd = max_usd
        self.max_tokens = max_tokens
        self._spent_usd = 0.0
        self._spent_tokens = 0
        self._reserved_usd = 0.0
        self._reserved_tokens = 0
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

    def reserve(self, tokens: int, usd: float = 0.0) -> Reservation:
        """Hold ``tokens`` and ``usd`` for a call about to start, or raise ``BudgetExceeded``."""
        with self._lock:
            if self.max_tokens is not None and self._spent_tokens + self._reserved_tokens + tokens > self.max_tokens:
                raise self._exceeded(f"{tokens} tokens")
            if self.max_usd is not None and self._spent_usd + self._reserved_usd + usd > self.max_usd:
                raise self._exceeded(f"${usd:.4f}")
            self._reserved_tokens += tokens
            self._reserved_usd += usd
            return Reservation(tokens=tokens, usd=usd)

    def settle(self, reservation: Reservation, tokens: int, usd: float | None) -> None:
        """Release ``reservation`` and charge what the call really used (``usd=None``: unpriced)."""
        with self._lock:
            self._reserved_tokens -= reservation.tokens
            self._reserved_usd -= reservation.usd
            self._spent_tokens += tokens
            if usd is None:
                self._unpriced_calls += 1
            else:
                self._spent_usd += usd

    def release(self, reservation: Reservation) -> None:
        """Give a reservation back unspent (the call failed before it cost anything)."""
        self.settle(reservation, 0, 0.0)

    def completion_cap(self, prompt_tokens: int, wanted: int, n: int, price) -> int:
        """The largest ``max_tokens`` (<= ``wanted``) the remaining budget can pay for ``n`` samples.

        ``price(prompt_tokens, completion_tokens) -> usd | None`` prices a call.
        """
        left = self.remaining
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


class BudgetedModel:
    """A model whose every call is paid from a shared ``Budget`` and reported as an event.

    Emits ``model.call`` with role, model, tokens, cost and latency after each call.
    """

    def __init__(self, model: Model, budget: Budget, *, role: str = "", events: EventBus | None = None) -> None:
        self.model = model
        self.budget = budget
        self.role = role
        self.events = events
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
            return self.budget.reserve(0, 0.0), max_tokens
        wanted = max_tokens if max_tokens is not None else DEFAULT_MAX_COMPLETION_TOKENS
        cap = self.budget.completion_cap(prompt, wanted, n, self._price)
        if cap < min(wanted, MIN_COMPLETION_TOKENS):
            raise self.budget._exceeded(f"{prompt + MIN_COMPLETION_TOKENS * n} tokens (a {prompt}-token prompt)")
        usd = self._price(prompt, cap * n)
        return self.budget.reserve(prompt + cap * n, usd or 0.0), cap

    def _report(self, completion: Completion, n: int, streamed: bool) -> None:
        if self.events is not None:
            self.events.emit(
                "model.call",
                role=self.role,
                model=completion.model,
                n=n,
                stream=streamed,
                prompt_tokens=completion.usage.prompt_tokens,
                completion_tokens=completion.usage.completion_tokens,
                cost_usd=completion.cost_usd,
                latency_s=round(completion.latency_s, 4),
                spent_usd=self.budget.spent_usd,
                spent_tokens=self.budget.spent_tokens,
            )

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int | None = None,
    ) -> Completion:
        reservation, cap = self._reserve(messages, n, max_tokens)
        try:
            completion = await self.model.complete(messages, n=n, temperature=temperature, max_tokens=cap)
        except BaseException:
            self.budget.release(reservation)
            raise
        self.budget.settle(reservation, completion.usage.total_tokens, completion.cost_usd)
        self._report(completion, n, streamed=False)
        return completion

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
    ) -> AsyncIterator[str | Completion]:
        reservation, cap = self._reserve(messages, 1, max_tokens)
        started = time.monotonic()
        settled = False
        streamed_chars = 0
        try:
            async for item in self.model.stream(messages, temperature=temperature, max_tokens=cap):
                if isinstance(item, Completion):
                    self.budget.settle(reservation, item.usage.total_tokens, item.cost_usd)
                    settled = True
                    self._report(item, 1, streamed=True)
                else:
                    streamed_chars += len(item)
                yield item
        finally:
            if not settled:
                # Abandoned or broken mid-stream: the provider bills what it sent, so charge an
                # estimate of it (prompt plus text so far), at most the reservation.
                used = min(
                    reservation.tokens,
                    estimate_prompt_tokens(messages) + math.ceil(streamed_chars / _CHARS_PER_TOKEN_ESTIMATE),
                ) if streamed_chars else 0
                usd = self._price(used, 0) if used else 0.0
                self.budget.settle(reservation, used, min(reservation.usd, usd) if usd is not None else None)
                if self.events is not None:
                    self.events.emit(
                        "model.call", role=self.role, model=self.name, n=1, stream=True, aborted=True,
                        tokens_estimated=used, latency_s=round(time.monotonic() - started, 4),
                    )
