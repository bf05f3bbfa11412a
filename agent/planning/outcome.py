"""What a planner loop (LLMCompiler or ReAct) hands back: the answer and the calls behind it.

Cost and tokens are not here: a run has one account of them, kept by the session over every
model call it makes (the planner's, the joiner's and those made inside tools).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from bakeoff.agent.types import ToolCall


class AgentResult(BaseModel):
    """What an agent run produced: the answer and everything behind it."""

    answer: str
    finished: bool  # False: out of replans or steps; ``answer`` then says what is missing
    trace: list[ToolCall] = Field(default_factory=list)
    results: dict[int, Any] = Field(default_factory=dict)  # task id -> result of each ok task
    replans: int = 0
    plan_errors: list[str] = Field(default_factory=list)

    @classmethod
    def from_calls(
        cls, answer: str, finished: bool, calls: Mapping[int, ToolCall], *, replans: int = 0,
        plan_errors: list[str] | None = None,
    ) -> AgentResult:
        """The result of a run that made ``calls``: the trace in start order, the ok results by id."""
        return cls(
            answer=answer, finished=finished,
            trace=sorted(calls.values(), key=lambda c: (c.started_at, c.task_id)),
            results={i: c.result for i, c in sorted(calls.items()) if c.status == "ok"},
            replans=replans, plan_errors=list(plan_errors or []),
        )
