"""The LLMCompiler loop end to end with the scripted model: plan, parallel tasks, join, replan."""

from __future__ import annotations

import time
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from bakeoff.agent.models.budget import Budget, BudgetedModel
from bakeoff.agent.planning.compiler import LLMCompiler
from bakeoff.agent.events import EventBus, JsonlSink, read_events
from bakeoff.agent.models.scripted import ScriptedModel, ScriptedResponse
from bakeoff.agent.seams import ToolContext
from tests.test_scheduler import Ask, Boom, Nap, NapArgs
from bakeoff.tools.registry import Registry

SCRIPT = """\
latency: {first_token_s: 0.01, per_token_s: 0.0005, chars_per_token: 4}
responses:
  - role: planner
    text: |
      Thought: the three probes are independent; the summary needs them all.
      1. nap(seconds=0.3, label="loops in kernel.c")
      2. nap(seconds=0.3, label="no pragmas yet")
      3. nap(seconds=0.3, count=3)
      4. nap(seconds=0.05, label="$1.label; $2.label", count=$3.count)  # combine
      join()
  - role: joiner
    match: 'loops in kernel\\.c; no pragmas yet'
    text: |
      Thought: the probes answer the question.
      Finish: kernel.c has 3 loops and no OpenMP pragmas yet.
"""


class StrictNapArgs(NapArgs):
    model_config = ConfigDict(extra="forbid")


class StrictNap(Nap):
    """A nap whose schema refuses unknown arguments."""

    Args: ClassVar[type[BaseModel]] = StrictNapArgs


def registry() -> tuple[Registry, Nap]:
    nap = Nap()
    return Registry([nap, Boom(), Ask()]), nap


async def test_question_is_planned_run_in_parallel_and_answered(tmp_path):
    (tmp_path / "script.yaml").write_text(SCRIPT)
    planner = ScriptedModel.from_file(tmp_path / "script.yaml", role="planner")
    bus = EventBus()
    sink = JsonlSink(tmp_path / "events.jsonl")
    bus.subscribe(sink)
    reg, nap = registry()
    budget = Budget()  # counts what the model calls used; the loop itself keeps no account
    compiler = LLMCompiler(
        BudgetedModel(planner, budget, role="planner"), BudgetedModel(planner.for_role("joiner"), budget, role="joiner"),
        reg, ToolContext(), events=bus,
    )
    started = time.monotonic()
    result = await compiler.run("Where could kernel.c use OpenMP?", context="repo: examples/omp")
    elapsed = time.monotonic() - started
    sink.close()
    assert result.finished and result.answer == "kernel.c has 3 loops and no OpenMP pragmas yet."
    assert [c.task_id for c in result.trace] == [1, 2, 3, 4] and all(c.status == "ok" for c in result.trace)
    assert nap.peak == 3 and elapsed < 0.9  # three 0.3 s probes at once, not 0.9 s in a row
    assert result.results[4].label == "loops in kernel.c; no pragmas yet" and result.results[4].count == 3
    assert result.replans == 0 and budget.spent_tokens > 0 and result.plan_errors == []
    kinds = [e.kind for e in read_events(tmp_path / "events.jsonl")]
    assert kinds.count("plan.task") == 4 and kinds.count("task.start") == 4 and kinds.count("task.end") == 4
    assert kinds.index("task.start") < kinds.index("plan.end")  # tasks ran while the plan streamed
    assert kinds[-1] == "join"


def _models(planner: list[ScriptedResponse], joiner: list[ScriptedResponse]) -> tuple[ScriptedModel, ScriptedModel]:
    return ScriptedModel(planner), ScriptedModel(joiner)


async def test_replan_keeps_completed_results_and_continues_ids():
    planner, joiner = _models(
        [
            ScriptedResponse(text='1. nap(seconds=0.01, label="kept")\n2. boom(why="no compiler")\n3. nap(label=$2.label) deps=[2]\njoin()\n'),
            ScriptedResponse(
                match=r"(?s)\$1 = nap.*-> ok.*kept.*\$2 = boom.*error.*no compiler.*A new plan is needed because:\s+build tools are missing",
                text="4. nap(seconds=0.01, label=$1.label, count=2)\njoin()\n",
            ),
        ],
        [
            ScriptedResponse(match="skipped", text="Thought: 2 failed.\nReplan: build tools are missing; probe without them"),
            ScriptedResponse(match=r"\$4 = nap", text="Finish: done with kept"),
        ],
    )
    reg, nap = registry()
    result = await LLMCompiler(planner, joiner, reg, ToolContext()).run("probe")
    assert result.finished and result.answer == "done with kept" and result.replans == 1
    assert {c.task_id: c.status for c in result.trace} == {1: "ok", 2: "error", 3: "skipped", 4: "ok"}
    assert result.results[4].label == "kept" and result.results[4].count == 2
    assert nap.peak == 1  # task 1 ran once; the replan did not redo it


async def test_replans_are_bounded():
    planner, joiner = _models(
        [ScriptedResponse(text="nap(seconds=0)\njoin()\n", repeat=True)],
        [
            ScriptedResponse(match="No replans are left", text="Thought: still unsure.\nReplan: look again"),
            ScriptedResponse(text="Replan: look again", repeat=True),
        ],
    )
    reg, _ = registry()
    result = await LLMCompiler(planner, joiner, reg, ToolContext(), max_replans=2).run("probe")
    assert not result.finished and result.replans == 2
    assert [c.task_id for c in result.trace] == [1, 2, 3]  # one task per round, ids continued
    assert "Not finished after 2 replans" in result.answer and "look again" in result.answer


async def test_bad_plan_lines_go_back_to_the_planner():
    planner, joiner = _models(
        [
            ScriptedResponse(text='1. napp(seconds=0)\n2. nap(secs=1)\njoin()\n'),
            ScriptedResponse(
                match=r"(?s)Every line of your plan was rejected.*Did you mean 'nap'.*secs: Extra inputs are not permitted",
                text="1. nap(seconds=0, label=\"fixed\")\njoin()\n",
            ),
        ],
        [ScriptedResponse(match="fixed", text="Finish: fixed it")],
    )

    result = await LLMCompiler(planner, joiner, Registry([StrictNap()]), ToolContext()).run("probe")
    assert result.finished and result.answer == "fixed it" and result.replans == 1
    assert len(result.plan_errors) == 2 and "Did you mean 'nap'" in result.plan_errors[0]
    assert "secs" in result.plan_errors[1]


async def test_budget_pays_for_planner_and_joiner():
    budget = Budget(max_tokens=100_000)
    planner, joiner = _models(
        [ScriptedResponse(text="1. ask()\n2. nap(seconds=0)\njoin()\n")], [ScriptedResponse(text="Finish: ok")]
    )
    reg, _ = registry()
    bus = EventBus()
    paid = []
    bus.subscribe(lambda e: paid.append(e.data) if e.kind == "model.call" else None)
    compiler = LLMCompiler(
        BudgetedModel(planner, budget, role="planner", events=bus), BudgetedModel(joiner, budget, role="joiner", events=bus),
        reg, ToolContext(),
    )
    result = await compiler.run("probe")
    assert result.finished
    # one call each for the planner and the joiner, and the budget paid exactly for them
    assert [p["role"] for p in paid] == ["planner", "joiner"]
    assert budget.spent_tokens == sum(p["prompt_tokens"] + p["completion_tokens"] for p in paid) > 0
    # what the ask tool reported stays on its own trace entry
    (ask,) = [c for c in result.trace if c.tool == "ask"]
    assert ask.tokens == 1234 and ask.cost_usd == 0.05
