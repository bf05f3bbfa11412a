"""One run's cost and token account.

Every model call of a run goes through a ``MeteredModel`` that writes what the call cost to
the run's ``Ledger``: the report's cost and tokens are read from it and nowhere else. (The
``Budget`` is the limit, possibly shared by several runs of a batch; the ledger is one run's
account.) A stream that breaks before its usage arrives is charged an estimate, marked so.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence

from pydantic import BaseModel

from bakeoff.agent.events import EventBus
from bakeoff.agent.seams import Completion, Message, Model


class Charge(BaseModel):
    """What one model call cost."""

    role: str
    model: str
    tokens: int
    cost_usd: float | None  # None: the model's price is unknown; only tokens count
    estimated: bool = False  # a broken stream: what the provider likely billed


class Ledger:
    """Every charge of one run. Thread-safe: calls run concurrently."""

    def __init__(self) -> None:
        self.charges: list[Charge] = []
        self._lock = threading.Lock()

    def record(self, charge: Charge) -> None:
        with self._lock:
            self.charges.append(charge)

    @property
    def cost_usd(self) -> float:
        with self._lock:
            return sum(c.cost_usd or 0.0 for c in self.charges)

    @property
    def tokens(self) -> int:
        with self._lock:
            return sum(c.tokens for c in self.charges)

    @property
    def calls(self) -> int:
        return len(self.charges)

    @property
    def estimated_usd(self) -> float:
        """The share of the cost that is an estimate (streams that broke before their usage)."""
        with self._lock:
            return sum(c.cost_usd or 0.0 for c in self.charges if c.estimated)


class MeteredModel:
    """A model whose completions are charged to a run's ``Ledger``; streamed text becomes
    ``model.delta`` events so a door can show the model writing."""

    def __init__(self, inner: Model, ledger: Ledger, events: EventBus, role: str) -> None:
        self.inner = inner
        self.name = inner.name
        self.ledger = ledger
        self.events = events
        self.role = role

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int | None = None,
    ) -> Completion:
        completion = await self.inner.complete(messages, n=n, temperature=temperature, max_tokens=max_tokens)
        self._charge(completion)
        return completion

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
    ) -> AsyncIterator[str | Completion]:
        async for piece in self.inner.stream(messages, temperature=temperature, max_tokens=max_tokens):
            if isinstance(piece, Completion):
                self._charge(piece)
            else:
                self.events.emit("model.delta", role=self.role, text=piece)
            yield piece

    def _charge(self, completion: Completion) -> None:
        self.ledger.record(Charge(role=self.role, model=completion.model, tokens=completion.usage.total_tokens,
                                  cost_usd=completion.cost_usd))
