"""The plan format: table-driven, with the ugly lines real models write."""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

import pytest
from pydantic import BaseModel, ConfigDict

from bakeoff.agent.models.scripted import ScriptedModel, ScriptedResponse
from bakeoff.agent.planning.plan import JOIN, PlanLineError, parse_plan, parse_plan_line
from bakeoff.agent.planning.plan_stream import stream_plan
from bakeoff.agent.planning.refs import pure_ref, refs_in
from bakeoff.agent.seams import Message, ToolContext
from bakeoff.agent.types import Task
from bakeoff.tools.registry import Registry


class Out(BaseModel):
    text: str = ""


class _Sleep:
    Result: ClassVar[type[BaseModel]] = Out
    time_limit_s: ClassVar[float | None] = None

    async def __call__(self, args: BaseModel, ctx: ToolContext) -> Out:
        await asyncio.sleep(0.01)
        return Out(text=str(args.model_dump()))


class PathArgs(BaseModel):
    path: str


class ReadFile(_Sleep):
    name: ClassVar[str] = "read_file"
    description: ClassVar[str] = "Read a file."
    Args: ClassVar[type[BaseModel]] = PathArgs


class SearchArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pattern: str
    path: str = "."


class Search(_Sleep):
    name: ClassVar[str] = "search"
    description: ClassVar[str] = "Regex search."
    Args: ClassVar[type[BaseModel]] = SearchArgs


class BuildArgs(BaseModel):
    target: str = "all"
    jobs: int = 2


class Build(_Sleep):
    name: ClassVar[str] = "build"
    description: ClassVar[str] = "Build."
    Args: ClassVar[type[BaseModel]] = BuildArgs


class RunTestsArgs(BaseModel):
    target: str
    names: list[str] = []


class RunTests(_Sleep):
    name: ClassVar[str] = "run_tests"
    description: ClassVar[str] = "Run tests."
    Args: ClassVar[type[BaseModel]] = RunTestsArgs


REG = Registry([ReadFile(), Search(), Build(), RunTests()])


def T(id: int, tool: str, args: dict | None = None, deps: list[int] | None = None) -> Task:
    return Task(id=id, tool=tool, args=args or {}, deps=deps or [])


GOOD = [
    ('1. read_file(path="src/a.c")', set(), T(1, "read_file", {"path": "src/a.c"})),
    ('2) search(pattern="omp", path=$1.path) deps=[1]  # where loops are', {1}, T(2, "search", {"pattern": "omp", "path": "$1.path"}, [1])),
    ('(3) search(pattern="a#b")  # a hash inside a string is not a comment', set(), T(3, "search", {"pattern": "a#b"})),
    ('$4 = build(target="all", jobs=4)', {1, 2, 3}, T(4, "build", {"target": "all", "jobs": 4})),
    ("Step 5: build()", {1}, T(5, "build")),
    ('- **read_file**(path: "b.c")', {1, 2}, T(3, "read_file", {"path": "b.c"})),
    ('`read_file("c.c")`', set(), T(1, "read_file", {"path": "c.c"})),
    ('#6: search(pattern="x") depends on 1 and 2', {1, 2}, T(6, "search", {"pattern": "x"}, [1, 2])),
    ('{"id": 6, "tool": "search", "args": {"pattern": "x"}, "deps": [1]}', {1}, T(6, "search", {"pattern": "x"}, [1])),
    ('{"name": "read_file", "arguments": "{\\"path\\": \\"d.c\\"}"}', set(), T(1, "read_file", {"path": "d.c"})),
    ('3. {"tool": "build", "args": {"jobs": 8}}', {1}, T(3, "build", {"jobs": 8})),
    ("Action: search(pattern='x', path=${1}.path)", {1}, T(2, "search", {"pattern": "x", "path": "${1}.path"}, [1])),
    ('7. run_tests(target=$4, names=["t1", "t2"])', {4}, T(7, "run_tests", {"target": "$4", "names": ["t1", "t2"]}, [4])),
    ('8. search(pattern="$1.path and $2.path")', {1, 2}, T(8, "search", {"pattern": "$1.path and $2.path"}, [1, 2])),
    ("9. run_tests(target=\"awk '{print $1}' x\")", set(), T(9, "run_tests", {"target": "awk '{print $1}' x"})),
    ("10. build(target=all, jobs=3,)", set(), T(10, "build", {"target": "all", "jobs": 3})),
    ('11. functions.read_file(path="e.c")', set(), T(11, "read_file", {"path": "e.c"})),
    ('12. Read_File(path="f.c")', set(), T(12, "read_file", {"path": "f.c"})),
    ('13. run_tests({"target": "unit"})', set(), T(13, "run_tests", {"target": "unit"})),
    ("14. search(pattern='price is $$5')", set(), T(14, "search", {"pattern": "price is $$5"})),
    ("**15.** build(jobs=1) (deps: 3, 4)", {3, 4}, T(15, "build", {"jobs": 1}, [3, 4])),
]


@pytest.mark.parametrize(("line", "known", "want"), GOOD, ids=[g[0][:40] for g in GOOD])
def test_good_lines(line, known, want):
    got = parse_plan_line(line, REG, known)
    assert isinstance(got, Task), got
    assert (got.id, got.tool, got.args, got.deps) == (want.id, want.tool, want.args, want.deps)


BAD = [
    ('4. reed_file(path="x")', set(), "unknown tool 'reed_file'. Did you mean 'read_file'"),
    ('4. compile(path="x")', set(), "Available tools: build, read_file, run_tests, search"),
    ('5. search(patern="x")', set(), "pattern: Field required"),
    ('5. search(pattern="x", recursive=true)', set(), "recursive: Extra inputs are not permitted"),
    ('6. search(pattern=$9)', {1}, "refers to $9, which is not a task defined earlier"),
    ("2. search(pattern=$2)", {1}, "the task itself (a cycle)"),
    ("3. build() deps=[5]", {1, 2}, "depends on task 5, which is not defined before this line"),
    ("3. build() deps=[3]", {1, 2}, "cannot depend on itself"),
    ('1. read_file(path="a")', {1, 2}, "task id 1 is already used; number new tasks from 3"),
    ('7. read_file(path="a"', set(), "unbalanced brackets"),
    ('8. build(jobs="many")', set(), "jobs: Input should be a valid integer"),
    ('9. search(pattern=open("x"))', set(), "must be literals"),
    ("10. build(**opts)", set(), "`**` arguments are not supported"),
    ('11. read_file("a", "b")', set(), "read_file takes 1 arguments (path), got 2"),
    ('{"id": 3, "tool": "build", "args": [1]}', set(), "\"args\" must be an object"),
    ('{"tool": "build", ', set(), "not valid JSON"),
    ('{"id": "three", "tool": "build"}', set(), "must be task numbers"),
]


@pytest.mark.parametrize(("line", "known", "message"), BAD, ids=[b[0][:40] for b in BAD])
def test_bad_lines_become_messages(line, known, message):
    got = parse_plan_line(line, REG, known)
    assert isinstance(got, PlanLineError), got
    assert message in got.message
    assert line.strip()[:50] in str(got)  # the planner sees which line


@pytest.mark.parametrize("line", [
    "", "   ", "```", "```python", "Here is my plan:", "Thought: I should read the files first",
    "1. Read the main file to understand it.", "Note (important): nothing", "The build (if any) comes later.",
    "**Plan**", "> quoting myself",
])
def test_prose_is_ignored(line):
    assert parse_plan_line(line, REG, {1}) is None


@pytest.mark.parametrize("line", ["join()", "10. join()", "JOIN", "<END_OF_PLAN>", '{"tool": "join"}', "`join()`", "- join"])
def test_join_lines(line):
    got = parse_plan_line(line, REG, {1, 2})
    assert isinstance(got, Task) and got.tool == JOIN


def test_references():
    assert pure_ref("$3").task_id == 3 and pure_ref("$3").path == []
    assert pure_ref("${2}.files[0].name").path == ["files", 0, "name"]
    assert pure_ref("${2.path}").path == ["path"]
    assert pure_ref("$2 and $3") is None and pure_ref(3) is None
    assert [r.task_id for r in refs_in({"a": ["$1", {"b": "x $2.y"}], "c": "$$4"})] == [1, 2]


UGLY_PLAN = '''Sure! Here's the plan to parallelize the loop:

```
Thought: first look at the sources and the build.
1. read_file(path="src/kernel.c")
2) read_file(path='src/kernel.h')  # header
3. search(pattern="for \\\\(", path="src")
- 4. build(target=all)
5. run_tests(target=$4.text, names=["smoke"]) deps=[4]
6. reed_file(path="Makefile")
7. search(pattern="$1.text $3.text")
join()
```
I hope this helps! 8. build()
'''


def test_whole_ugly_plan():
    tasks, errors, joined = parse_plan(UGLY_PLAN, REG)
    assert joined
    assert [t.id for t in tasks] == [1, 2, 3, 4, 5, 7]
    assert tasks[0].thought == "" and tasks[1].thought == "header"
    assert tasks[2].args == {"pattern": "for \\(", "path": "src"}
    assert tasks[4].deps == [4] and tasks[5].deps == [1, 3]
    assert len(errors) == 1 and "Did you mean 'read_file'" in errors[0].message and errors[0].task_id == 6


async def test_stream_yields_each_task_before_the_plan_is_written():
    plan = "".join(f'{i}. read_file(path="src/file_{i:02d}.c")  # look at it\n' for i in range(1, 6)) + "join()\nthat is all\n"
    # 3 characters a token: chunks end in the middle of lines.
    model = ScriptedModel([ScriptedResponse(text=plan)], first_token_s=0.05, per_token_s=0.004, chars_per_token=3)
    stream = stream_plan(model, [Message(role="user", content="plan it")], REG)
    started = time.monotonic()
    arrivals = []
    async for item in stream:
        assert isinstance(item, Task)
        arrivals.append((item.id, time.monotonic() - started))
    ended = time.monotonic() - started
    assert [i for i, _ in arrivals] == [1, 2, 3, 4, 5]
    # The first task came out while four more lines (~60 tokens, 0.24 s) were still to be written.
    assert ended - arrivals[0][1] > 0.15
    assert arrivals[0][1] < arrivals[2][1] < arrivals[4][1]
    assert stream.joined and not stream.errors and [t.args["path"] for t in stream.tasks][0] == "src/file_01.c"
    completion = await stream.finished()
    assert completion is not None and completion.text == plan  # drained after join(), for the usage
    assert completion.usage.completion_tokens == -(-len(plan) // 3)


async def test_stream_reports_bad_lines_and_keeps_going():
    plan = '1. read_file(path="a")\n2. reed_file(path="b")\n3. search(pattern=$2)\n4. search(pattern=$1.text)'
    model = ScriptedModel([ScriptedResponse(text=plan)])
    items = [i async for i in stream_plan(model, [Message(role="user", content="p")], REG, known_ids=[])]
    kinds = [type(i).__name__ for i in items]
    assert kinds == ["Task", "PlanLineError", "PlanLineError", "Task"]  # last line has no newline
    assert "Did you mean" in items[1].message and "not a task defined earlier" in items[2].message


async def test_replan_ids_continue_after_prior_tasks():
    model = ScriptedModel([ScriptedResponse(text='search(pattern=$2.text)\n9. build()\n')])
    items = [i async for i in stream_plan(model, [Message(role="user", content="p")], REG, known_ids=[1, 2, 3])]
    assert [(t.id, t.deps) for t in items] == [(4, [2]), (9, [])]
