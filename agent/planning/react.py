"""The ReAct loop: one tool call per model turn. bakeoff's baseline, and the fallback for
models that cannot write a plan. Same ``run`` interface and result as ``LLMCompiler``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel

from bakeoff.agent.events import EventBus
from bakeoff.agent.planning.joiner import parse_join
from bakeoff.agent.planning.outcome import AgentResult
from bakeoff.agent.planning.plan import JOIN, PlanLineError, parse_plan_line
from bakeoff.agent.planning.results import summarize_result
from bakeoff.agent.planning.scheduler import Scheduler
from bakeoff.agent.prompting import render
from bakeoff.agent.seams import Message, Model, ToolContext
from bakeoff.agent.types import Task, ToolCall
from bakeoff.tools.registry import Registry

_ACTION = re.compile(r"^[\s*_]*action[\s*_]*:\s*(.*)$", re.IGNORECASE | re.MULTILINE)
_ACTION_INPUT = re.compile(r"^[\s*_]*action\s+input[\s*_]*:\s*(.*)", re.IGNORECASE | re.MULTILINE | re.DOTALL)
_FINAL = re.compile(r"^[\s*_#]*(?:final\s+answer|finish)[\s*_]*[:(]", re.IGNORECASE | re.MULTILINE)


class ReActStep(BaseModel):
    """What one model turn asked for: a tool call, an answer, or something unreadable."""

    kind: Literal["act", "finish", "error"]
    task: Task | None = None
    answer: str = ""
    error: str = ""


def _json_turn(text: str, step_id: int) -> ReActStep | str | None:
    """A turn written as a JSON object (``{"action": ..., "action_input": ...}``): its final
    answer, or its call as a JSON plan line; None when the turn is not such an object."""
    stripped = text.strip()
    if not (stripped.startswith("{") or stripped.startswith("```")):
        return None
    body = re.sub(r"^```(?:json)?|```$", "", stripped).strip()
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    if str(obj.get("action", "")).lower() in ("finish", "final answer", "final_answer"):
        return ReActStep(kind="finish", answer=str(obj.get("answer") or obj.get("action_input") or ""))
    obj = {**obj, "id": step_id}
    if "action" in obj and "tool" not in obj:
        obj["tool"] = obj.pop("action")
    if "action_input" in obj and "args" not in obj:
        obj["args"] = obj.pop("action_input")
    return json.dumps(obj)


def _action_turn(action: re.Match[str], text: str, step_id: int) -> ReActStep | str:
    """An ``Action:`` turn as a plan line (or the error in its ``Action Input``)."""
    head = action.group(1).strip()
    given = _ACTION_INPUT.search(text)
    if given is None or "(" in head:
        return f"{step_id}. {head}"
    # LangChain style: "Action: read_file" then "Action Input: {...}".
    raw = given.group(1).strip().strip("`")
    try:
        args = json.loads(raw)
    except json.JSONDecodeError:
        return ReActStep(kind="error", error="Action Input must be a JSON object of arguments")
    return json.dumps({"id": step_id, "tool": head, "args": args})


def parse_react(text: str, registry: Registry, step_id: int, known_ids: set[int]) -> ReActStep:
    """One ReAct turn → the tool call it asks for (as task ``step_id``), its final answer, or
    an error message for the model. Pure."""
    action = _ACTION.search(text)
    final = _FINAL.search(text)
    if final is not None and (action is None or final.start() < action.start()):
        return ReActStep(kind="finish", answer=parse_join(text[final.start() :]).text)
    if action is not None and action.group(1).strip().lower().startswith(("finish", "final answer")):
        # LLMCompiler's "Action: Finish(answer)"
        return ReActStep(kind="finish", answer=parse_join(text[action.start() :]).text)
    line = _action_turn(action, text, step_id) if action is not None else _json_turn(text, step_id)
    if isinstance(line, ReActStep):
        return line
    if line is None:
        return ReActStep(
            kind="error",
            error="no action found: reply with 'Action: tool_name(arg=\"value\")' or 'Final Answer: ...'",
        )
    parsed = parse_plan_line(line, registry, known_ids)
    if isinstance(parsed, PlanLineError):
        return ReActStep(kind="error", error=parsed.message)
    if parsed is None or parsed.tool == JOIN:
        return ReActStep(kind="error", error="the action is not a tool call: write 'Action: tool_name(arg=\"value\")'")
    return ReActStep(kind="act", task=parsed.model_copy(update={"id": step_id}))


class ReActAgent:
    """A sequential agent: think, call one tool, observe, repeat, at most ``max_steps`` times."""

    def __init__(
        self,
        model: Model,
        registry: Registry,
        ctx: ToolContext,
        *,
        events: EventBus | None = None,
        max_steps: int = 20,
    ) -> None:
        self.model = model
        self.registry = registry
        self.events = events
        self.max_steps = max_steps
        self.scheduler = Scheduler(registry, ctx, events=events)

    def _emit(self, kind: str, **data: Any) -> None:
        if self.events is not None:
            self.events.emit(kind, **data)

    async def run(self, task: str, context: str = "") -> AgentResult:
        prompt = render("react", tools=self.registry.describe(), task=task, context=context, max_steps=self.max_steps)
        messages = [Message(role="user", content=prompt)]
        calls: dict[int, ToolCall] = {}
        for step in range(1, self.max_steps + 1):
            completion = await self.model.complete(messages)
            turn = parse_react(completion.text, self.registry, step, set(calls))
            self._emit("react.step", step=step, outcome=turn.kind, error=turn.error or None)
            messages.append(Message(role="assistant", content=completion.text))
            if turn.kind == "finish":
                return AgentResult.from_calls(turn.answer, True, calls)
            if turn.kind == "error":
                messages.append(Message(role="user", content=f"Observation {step}: your reply could not be used: {turn.error}"))
                continue
            assert turn.task is not None
            calls = await self.scheduler.run([turn.task], prior=calls)
            call = calls[step]
            seen = summarize_result(call.result) if call.status == "ok" else f"{call.status}: {call.error}"
            messages.append(Message(role="user", content=f"Observation {step} (${step}):\n{seen}"))
        return AgentResult.from_calls(f"Not finished within {self.max_steps} steps.", False, calls)
