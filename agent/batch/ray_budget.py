"""One budget across a Ray cluster: an actor holds the batch's ``Budget``; every node's model
calls reserve through it before they start, and settle after.

The actor runs its methods one at a time, so reservations from any number of nodes and calls
at once are checked against the same totals: the same reserve-before-call rule as on one
machine. It fails closed: when the actor cannot be reached in time, the call is refused
(``BudgetExceeded``), never made unaccounted. The actor lives on the driver's node, so losing
a worker node never loses the budget.
"""

from __future__ import annotations

from typing import Any

from bakeoff.agent.models.budget import Budget, BudgetExceeded, BudgetLeft, Reservation

ACTOR_TIMEOUT_S = 10.0  # a reservation waits this long for the budget's keeper, then refuses


class BudgetKeeper:
    """The actor's body: the batch's one ``Budget``. Plain Python; ``ray.remote`` wraps it."""

    def __init__(self, max_usd: float | None, max_tokens: int | None) -> None:
        self.budget = Budget(max_usd=max_usd, max_tokens=max_tokens)

    def reserve(self, tokens: int, usd: float, role: str) -> Reservation | str:
        try:
            return self.budget.reserve(tokens, usd, role)
        except BudgetExceeded as exc:
            return str(exc)  # carried back as data: the caller raises it

    def settle(self, reservation: Reservation, tokens: int, usd: float | None) -> None:
        self.budget.settle(reservation, tokens, usd)

    def left_for(self, role: str) -> BudgetLeft:
        return self.budget.left_for(role)

    def state(self) -> dict[str, Any]:
        return {"remaining": self.budget.remaining, "spent_usd": self.budget.spent_usd,
                "spent_tokens": self.budget.spent_tokens, "unpriced_calls": self.budget.unpriced_calls,
                "describe": self.budget.describe()}


class ClusterBudget(Budget):
    """A ``Budget`` whose totals live in a ``BudgetKeeper`` actor shared by every node."""

    def __init__(self, keeper: Any, max_usd: float | None, max_tokens: int | None,
                 timeout_s: float = ACTOR_TIMEOUT_S) -> None:
        super().__init__(max_usd=max_usd, max_tokens=max_tokens)
        self.keeper = keeper
        self.timeout_s = timeout_s

    def _call(self, method: str, *args: Any) -> Any:
        import ray

        try:
            return ray.get(getattr(self.keeper, method).remote(*args), timeout=self.timeout_s)
        except (ray.exceptions.RayError, TimeoutError) as exc:
            raise BudgetExceeded(
                f"the batch's budget cannot be checked: its keeper on the Ray cluster did not answer "
                f"({type(exc).__name__}), and no model call starts without it"
            ) from None

    def reserve(self, tokens: int, usd: float = 0.0, role: str = "") -> Reservation:
        answer = self._call("reserve", tokens, usd, role)
        if isinstance(answer, str):
            raise BudgetExceeded(answer)
        return answer

    def settle(self, reservation: Reservation, tokens: int, usd: float | None) -> None:
        self._call("settle", reservation, tokens, usd)

    def left_for(self, role: str) -> BudgetLeft:
        return self._call("left_for", role)

    @property
    def remaining(self) -> BudgetLeft:
        return self._call("state")["remaining"]

    @property
    def spent_usd(self) -> float:
        return float(self._call("state")["spent_usd"])

    @property
    def spent_tokens(self) -> int:
        return int(self._call("state")["spent_tokens"])

    @property
    def unpriced_calls(self) -> int:
        return int(self._call("state")["unpriced_calls"])

    def describe(self) -> str:
        try:
            return str(self._call("state")["describe"])
        except BudgetExceeded as exc:
            return str(exc)


def start_keeper(max_usd: float | None, max_tokens: int | None, name: str) -> Any:
    """The batch's budget keeper, on this (the driver's) node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(num_cpus=0, max_restarts=0)(BudgetKeeper)
    return actor.options(name=name, scheduling_strategy=here).remote(max_usd, max_tokens)
