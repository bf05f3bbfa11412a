"""The LLMCompiler loop: plan (streamed) → run tasks in parallel → join → finish or replan.

One screen: the planner streams tasks that the scheduler starts as soon as each line is
complete and its dependencies are done; the joiner reads the results and either answers or
says what is missing; a replan keeps every completed result and continues the task ids.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from pydantic import BaseModel, Field

from bakeoff.agent.events import EventBus
from bakeoff.agent.planning.joiner import JoinDecision, parse_join, render_errors, render_results
from bakeoff.agent.planning.plan import PlanStream, stream_plan
from bakeoff.agent.prompting import render
from bakeoff.agent.planning.scheduler import Scheduler
from bakeoff.agent.seams import Completion, Message, Model, ToolContext
from bakeoff.agent.types import Task, ToolCall
from bakeoff.tools.registry import Registry


class AgentResult(BaseModel):
    """What an agent run produced: the answer and everything behind it."""

    answer: str
    finished: bool  # False: out of replans or steps; ``answer`` then says what is missing
    trace: list[ToolCall] = Field(default_factory=list)
    results: dict[int, Any] = Field(default_factory=dict)  # task id -> result of each ok task
    replans: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    plan_errors: list[str] = Field(default_factory=list)


class _Spend:
    def __init__(self) -> None:
        self.tokens = 0
        self.cost_usd = 0.0

    def add(self, completion: Completion | None) -> None:
        if completion is not None:
            self.tokens += completion.usage.total_tokens
            self.cost_usd += completion.cost_usd or 0.0

    def result(self, answer: str, finished: bool, calls: Mapping[int, ToolCall], replans: int, errors: list[str]) -> AgentResult:
        trace = sorted(calls.values(), key=lambda c: (c.started_at, c.task_id))
        return AgentResult(
            answer=answer, finished=finished, trace=trace,
            results={i: c.result for i, c in sorted(calls.items()) if c.status == "ok"},
            replans=replans, tokens=self.tokens + sum(c.tokens for c in trace),
            cost_usd=self.cost_usd + sum(c.cost_usd for c in trace), plan_errors=errors,
        )


class LLMCompiler:
    """Planner + scheduler + joiner, with at most ``max_replans`` replans."""

    def __init__(
        self,
        planner: Model,
        joiner: Model,
        registry: Registry,
        ctx: ToolContext,
        *,
        events: EventBus | None = None,
        max_replans: int = 2,
        concurrency: Mapping[str, int] | None = None,
        default_timeout: float = 300,
    ) -> None:
        self.planner = planner
        self.joiner = joiner
        self.registry = registry
        self.events = events
        self.max_replans = max_replans
        self.scheduler = Scheduler(registry, ctx, events=events, concurrency=concurrency, default_timeout=default_timeout)

    def _emit(self, kind: str, **data: Any) -> None:
        if self.events is not None:
            self.events.emit(kind, **data)

    async def _announced(self, plan: PlanStream, round_: int) -> AsyncIterator[Task]:
        async for item in plan:
            if isinstance(item, Task):
                self._emit("plan.task", round=round_, **item.model_dump())
                yield item
            else:
                self._emit("plan.error", round=round_, **item.model_dump())

    async def run(self, task: str, context: str = "") -> AgentResult:
        calls: dict[int, ToolCall] = {}
        spend = _Spend()
        errors: list[str] = []
        feedback = ""
        decision = JoinDecision(action="finish", text="")
        for round_ in range(self.max_replans + 1):
            replans_left = self.max_replans - round_
            prompt = render(
                "planner", tools=self.registry.describe(), task=task, context=context,
                prior=render_results(calls), feedback=feedback, next_id=max(calls, default=0) + 1,
            )
            plan = stream_plan(self.planner, [Message(role="user", content=prompt)], self.registry, known_ids=calls)
            calls = await self.scheduler.run(self._announced(plan, round_), prior=calls)
            spend.add(await plan.finished())
            errors += [str(e) for e in plan.errors]
            self._emit("plan.end", round=round_, tasks=len(plan.tasks), errors=len(plan.errors), joined=plan.joined)
            if not plan.tasks and plan.errors and replans_left > 0:
                # Nothing ran: the joiner has nothing to judge, the planner has lines to fix.
                feedback = "Every line of your plan was rejected:\n" + render_errors(plan.errors)
                continue
            prompt = render(
                "joiner", task=task, context=context, results=render_results(calls) or "(no tool was called)",
                errors=render_errors(plan.errors), replans_left=replans_left,
            )
            completion = await self.joiner.complete([Message(role="user", content=prompt)])
            spend.add(completion)
            decision = parse_join(completion.text)
            self._emit("join", round=round_, **decision.model_dump())
            if decision.action == "finish":
                return spend.result(decision.text, True, calls, round_, errors)
            feedback = decision.text
            if plan.errors:
                feedback += "\nThese lines of your plan were rejected:\n" + render_errors(plan.errors)
        answer = decision.text if decision.action == "finish" else f"Not finished after {self.max_replans} replans. Missing: {feedback}"
        return spend.result(answer, False, calls, self.max_replans, errors)
