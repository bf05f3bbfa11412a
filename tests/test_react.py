"""The ReAct baseline: tolerant parsing of one turn, and the loop on real sleep tools."""

from __future__ import annotations

import pytest

from bakeoff.agent.models.budget import Budget, BudgetedModel
from bakeoff.agent.models.scripted import ScriptedModel, ScriptedResponse
from bakeoff.agent.planning.react import ReActAgent, parse_react
from bakeoff.agent.seams import ToolContext
from tests.test_scheduler import Boom, Nap
from bakeoff.tools.registry import Registry

REG = Registry([Nap(), Boom()])

ACTIONS = [
    ('Thought: look first.\nAction: nap(seconds=0, label="a")', {"seconds": 0, "label": "a"}),
    ("**Thought:** hmm\n**Action:** `nap(label='b')`", {"label": "b"}),
    ('Action: nap\nAction Input: {"label": "c", "count": 2}', {"label": "c", "count": 2}),
    ('{"action": "nap", "action_input": {"label": "d"}}', {"label": "d"}),
    ('```json\n{"tool": "nap", "args": {"label": "e"}}\n```', {"label": "e"}),
    ("Thought: use the earlier result\nAction: nap(label=$1.label)", {"label": "$1.label"}),
]


@pytest.mark.parametrize(("text", "args"), ACTIONS, ids=[a[0][:30] for a in ACTIONS])
def test_actions(text, args):
    step = parse_react(text, REG, 2, {1})
    assert step.kind == "act" and step.task is not None
    assert step.task.id == 2 and step.task.tool == "nap" and step.task.args == args


@pytest.mark.parametrize(("text", "answer"), [
    ("Thought: done.\nFinal Answer: 42 loops", "42 loops"),
    ("Thought: done\nAction: Finish(the loop at line 10)", "the loop at line 10"),
    ('{"action": "Final Answer", "action_input": "use reduction(+:sum)"}', "use reduction(+:sum)"),
    ("Final Answer: first\nAction: nap()", "first\nAction: nap()"),
])
def test_final_answers(text, answer):
    step = parse_react(text, REG, 1, set())
    assert step.kind == "finish" and step.answer == answer


@pytest.mark.parametrize(("text", "message"), [
    ("I think we should look at the loops.", "no action found"),
    ('Action: napp(label="x")', "Did you mean 'nap'"),
    ("Action: nap(label=$7)", "not a task defined earlier"),
    ("Action: nap\nAction Input: label=x", "Action Input must be a JSON object"),
])
def test_unusable_turns_explain_themselves(text, message):
    step = parse_react(text, REG, 1, set())
    assert step.kind == "error" and message in step.error


async def test_loop_one_tool_call_per_turn_with_feedback():
    model = ScriptedModel([
        ScriptedResponse(text='Thought: probe.\nAction: nap(seconds=0.05, label="kernel", count=3)'),
        ScriptedResponse(text="Thought: hmm, let me think about it"),
        ScriptedResponse(match=r"Observation 2: your reply could not be used: no action found", text='Action: boom(why="no gpu")'),
        ScriptedResponse(match=r"Observation 3 \(\$3\):\nerror: RuntimeError: no gpu", text="Action: nap(seconds=0, label=$1.label, count=$1.count)"),
        ScriptedResponse(match=r'Observation 4 \(\$4\):\n\{"label": ?"kernel", ?"count": ?3', text="Thought: enough.\nFinal Answer: kernel has 3 loops"),
    ])
    nap = Nap()
    budget = Budget()  # counts what the model calls used; the loop itself keeps no account
    result = await ReActAgent(BudgetedModel(model, budget), Registry([nap, Boom()]), ToolContext()).run("count loops")
    assert result.finished and result.answer == "kernel has 3 loops"
    assert [(c.task_id, c.tool, c.status) for c in result.trace] == [(1, "nap", "ok"), (3, "boom", "error"), (4, "nap", "ok")]
    assert result.results[4].label == "kernel" and result.results[4].count == 3
    assert nap.peak == 1 and budget.spent_tokens > 0


async def test_step_limit():
    model = ScriptedModel([ScriptedResponse(text="Action: nap(seconds=0)", repeat=True)])
    result = await ReActAgent(model, REG, ToolContext(), max_steps=3).run("loop forever")
    assert not result.finished and "3 steps" in result.answer and len(result.trace) == 3
