"""The LLMCompiler loop: plan (streamed) → run tasks in parallel → join → finish or replan.

One screen: the planner streams tasks that the scheduler starts as soon as each line is
complete and its dependencies are done; the joiner reads the results and either answers or
says what is missing; a replan keeps every completed result and continues the task ids.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from bakeoff.agent.events import EventBus
from bakeoff.agent.planning.joiner import JoinDecision, parse_join, render_errors, render_results
from bakeoff.agent.planning.outcome import AgentResult
from bakeoff.agent.planning.plan_stream import PlanStream, stream_plan
from bakeoff.agent.planning.scheduler import Scheduler
from bakeoff.agent.prompting import render
from bakeoff.agent.seams import Message, Model, ToolContext
from bakeoff.agent.types import Task, ToolCall
from bakeoff.tools.registry import Registry


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
    ) -> None:
        self.planner = planner
        self.joiner = joiner
        self.registry = registry
        self.events = events
        self.max_replans = max_replans
        self.scheduler = Scheduler(registry, ctx, events=events, concurrency=concurrency)

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
            await plan.finished()  # the planner's call ends (and is paid for) before the joiner's starts
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
            decision = parse_join(completion.text)
            self._emit("join", round=round_, **decision.model_dump())
            if decision.action == "finish":
                return AgentResult.from_calls(decision.text, True, calls, replans=round_, plan_errors=errors)
            feedback = decision.text
            if plan.errors:
                feedback += "\nThese lines of your plan were rejected:\n" + render_errors(plan.errors)
        answer = decision.text if decision.action == "finish" else f"Not finished after {self.max_replans} replans. Missing: {feedback}"
        return AgentResult.from_calls(answer, False, calls, replans=self.max_replans, plan_errors=errors)
