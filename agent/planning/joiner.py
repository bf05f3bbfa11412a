"""The joiner: reads what the plan's tasks produced and finishes with an answer, or replans.

``parse_join`` is pure and tolerant: ``Finish: ...`` / ``Replan: ...`` lines, LLMCompiler's
``Action: Finish(...)``, ``Final Answer:``, a JSON object, markdown around the marker. A reply
without any marker is taken as the answer itself (weak models often just answer).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Literal

from pydantic import BaseModel

from bakeoff.agent.planning.plan import PlanLineError
from bakeoff.agent.planning.results import RESULT_LIMIT, summarize_result
from bakeoff.agent.types import ToolCall


class JoinDecision(BaseModel):
    action: Literal["finish", "replan"]
    text: str  # the answer, or what is missing and why
    thought: str = ""


_MARKER = re.compile(
    r"^[\s>*_#\-]*(?:action\s*:\s*)?(?P<word>final\s+answer|finish(?:ed)?|answer|re-?plan)\b[\s*_]*"
    r"(?P<sep>[:\-]|\()\s*(?P<body>.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_BARE_REPLAN = re.compile(r"^[\s*_#]*re-?plan[\s*_.!]*$", re.IGNORECASE | re.MULTILINE)
_THOUGHT = re.compile(r"^[\s*_]*thought[\s*_]*:\s*(.*)$", re.IGNORECASE | re.MULTILINE)
_FENCE = re.compile(r"```(?:json)?\s*(\{.*?\})\s*```", re.DOTALL)


def _from_json(text: str) -> JoinDecision | None:
    candidates = [m.group(1) for m in _FENCE.finditer(text)]
    stripped = text.strip()
    if stripped.startswith("{"):
        candidates.append(stripped)
    for raw in candidates:
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        action = str(obj.get("action") or obj.get("decision") or "").lower()
        body = obj.get("answer") or obj.get("text") or obj.get("reason") or obj.get("missing") or ""
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        thought = str(obj.get("thought", ""))
        if action.startswith("re"):
            return JoinDecision(action="replan", text=str(body), thought=thought)
        if action in ("finish", "answer", "final", "final_answer", "final answer", "done"):
            return JoinDecision(action="finish", text=str(body), thought=thought)
    return None


def parse_join(text: str) -> JoinDecision:
    """The joiner's decision in ``text``; never raises."""
    decided = _from_json(text)
    if decided is not None:
        return decided
    thought_m = _THOUGHT.search(text)
    thought = thought_m.group(1).strip() if thought_m else ""
    m = _MARKER.search(text)
    if m is None:
        body = _THOUGHT.sub("", text).strip()
        if _BARE_REPLAN.search(text):
            return JoinDecision(action="replan", text=_BARE_REPLAN.sub("", body).strip() or thought, thought=thought)
        return JoinDecision(action="finish", text=body, thought=thought)
    body = (m.group("body") + text[m.end() :]).strip()
    if m.group("sep") == "(" and body.endswith(")"):
        body = body[:-1]  # LLMCompiler's Action: Finish(answer)
    body = body.strip().strip('"').strip()
    action: Literal["finish", "replan"] = "replan" if m.group("word").lower().startswith("re") else "finish"
    return JoinDecision(action=action, text=body, thought=thought)


def render_results(calls: Mapping[int, ToolCall], limit: int = RESULT_LIMIT) -> str:
    """Each task's outcome as the joiner and the planner see it: id, call, status, result."""
    lines = []
    for task_id in sorted(calls):
        c = calls[task_id]
        args = ", ".join(f"{k}={json.dumps(v, default=str)[:120]}" for k, v in c.args.items())
        head = f"${task_id} = {c.tool}({args})"
        if c.status == "ok":
            lines.append(f"{head}  -> ok\n{summarize_result(c.result, limit)}")
        else:
            lines.append(f"{head}  -> {c.status}: {c.error or ''}")
    return "\n\n".join(lines)


def render_errors(errors: Sequence[PlanLineError]) -> str:
    return "\n".join(f"- {e}" for e in errors)
