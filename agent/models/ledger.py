"""One run's cost and token account.

Every model call of a run goes through a ``BudgetedModel`` that writes what each part of the
call cost to the run's ``Ledger``: the report's cost and tokens are read from it and nowhere
else. (The ``Budget`` is the limit, possibly shared by several runs of a batch; the ledger is
one run's account.) A stream that breaks before its usage arrives is charged an estimate,
marked so, and the report says how much of the cost is estimated.
"""

from __future__ import annotations

import threading

from pydantic import BaseModel


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

    @property
    def estimated_tokens(self) -> int:
        """The share of the tokens that is an estimate."""
        with self._lock:
            return sum(c.tokens for c in self.charges if c.estimated)
