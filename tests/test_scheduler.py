"""The scheduler on real tool objects whose work is a sleep: concurrency, dependencies,
limits, timeouts, failures as data, references that keep their type, traces and events."""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

from pydantic import BaseModel

from bakeoff.agent.events import EventBus, JsonlSink, read_events
from bakeoff.agent.planning.results import summarize_result
from bakeoff.agent.planning.scheduler import Scheduler, resolve_args
from bakeoff.agent.seams import ExecResult, ToolContext
from bakeoff.agent.types import Task, ToolCall
from bakeoff.tools.registry import Registry


class NapArgs(BaseModel):
    seconds: float = 0.2
    label: str = ""
    count: int = 0
    items: list[str] = []


class NapResult(BaseModel):
    label: str
    count: int
    items: list[str]
    started: float
    ended: float


class Nap:
    """Sleeps; counts how many naps run at once."""

    name: ClassVar[str] = "nap"
    description: ClassVar[str] = "Sleep for a while and echo the arguments."
    Args: ClassVar[type[BaseModel]] = NapArgs
    Result: ClassVar[type[BaseModel]] = NapResult
    time_limit_s: ClassVar[float | None] = None

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0

    async def __call__(self, args: NapArgs, ctx: ToolContext) -> NapResult:
        self.active += 1
        self.peak = max(self.peak, self.active)
        started = time.monotonic()
        try:
            await asyncio.sleep(args.seconds)
        finally:
            self.active -= 1
        return NapResult(label=args.label, count=args.count, items=args.items, started=started, ended=time.monotonic())


class BoomArgs(BaseModel):
    why: str = "disk on fire"


class Boom:
    name: ClassVar[str] = "boom"
    description: ClassVar[str] = "Always fails."
    Args: ClassVar[type[BaseModel]] = BoomArgs
    Result: ClassVar[type[BaseModel]] = NapResult
    time_limit_s: ClassVar[float | None] = None

    async def __call__(self, args: BoomArgs, ctx: ToolContext) -> NapResult:
        await asyncio.sleep(0.01)
        raise RuntimeError(args.why)


class Spend(BaseModel):
    text: str
    tokens: int
    cost_usd: float


class Ask:
    """A tool that calls a model inside (fan-out does): its result reports tokens and cost."""

    name: ClassVar[str] = "ask"
    description: ClassVar[str] = "Ask a model something."
    Args: ClassVar[type[BaseModel]] = BoomArgs
    Result: ClassVar[type[BaseModel]] = Spend
    time_limit_s: ClassVar[float | None] = None

    async def __call__(self, args: BoomArgs, ctx: ToolContext) -> Spend:
        return Spend(text="x" * 5000, tokens=1234, cost_usd=0.05)


def setup(**kw) -> tuple[Scheduler, Nap]:
    nap = Nap()
    return Scheduler(Registry([nap, Boom(), Ask()]), ToolContext(), **kw), nap


async def test_independent_tasks_run_at_once():
    scheduler, nap = setup()
    started = time.monotonic()
    calls = await scheduler.run([Task(id=i, tool="nap", args={"seconds": 0.2}) for i in range(1, 5)])
    assert time.monotonic() - started < 0.6  # sequential would take 0.8 s
    assert nap.peak == 4 and all(c.status == "ok" for c in calls.values())


async def test_dependents_start_after_their_dependencies_end():
    scheduler, _ = setup()
    tasks = [
        Task(id=1, tool="nap", args={"seconds": 0.1, "label": "a"}),
        Task(id=2, tool="nap", args={"seconds": 0.3, "label": "b"}),
        Task(id=3, tool="nap", args={"seconds": 0.05, "label": "$1.label"}, deps=[1]),
        Task(id=4, tool="nap", args={"seconds": 0.05, "label": "$1.label+$2.label"}, deps=[1, 2]),
    ]
    calls = await scheduler.run(tasks)
    r = {i: c.result for i, c in calls.items()}
    assert r[3].started >= r[1].ended and r[3].ended < r[2].ended  # 3 did not wait for 2
    assert r[4].started >= r[2].ended
    assert r[3].label == "a" and r[4].label == "a+b"


async def test_references_keep_their_type():
    scheduler, _ = setup()
    tasks = [
        Task(id=1, tool="nap", args={"seconds": 0, "count": 7, "items": ["x", "y"]}),
        Task(id=2, tool="nap", args={"seconds": 0, "count": "$1.count", "items": "$1.items", "label": "${1}.items[1]"}, deps=[1]),
    ]
    calls = await scheduler.run(tasks)
    assert calls[2].status == "ok", calls[2].error
    assert calls[2].result.count == 7 and calls[2].result.items == ["x", "y"] and calls[2].result.label == "y"
    assert resolve_args({"a": "$1", "b": "n=$1.count"}, {1: calls[1].result})["a"]["count"] == 7
    assert resolve_args({"b": "n=$1.count, cost $$3, awk $9"}, {1: calls[1].result}) == {"b": "n=7, cost $3, awk $9"}


async def test_failure_is_data_and_dependents_are_skipped():
    scheduler, _ = setup()
    tasks = [
        Task(id=1, tool="boom"),
        Task(id=2, tool="nap", args={"seconds": 0.05}, deps=[1]),
        Task(id=3, tool="nap", args={"seconds": 0.05, "label": "$2.label"}, deps=[2]),
        Task(id=4, tool="nap", args={"seconds": 0.05}),
        Task(id=5, tool="nap", args={"seconds": 0.05, "label": "$4.nope"}, deps=[4]),
        Task(id=6, tool="nap", args={"seconds": 0.05, "count": "$4.label"}, deps=[4]),
    ]
    calls = await scheduler.run(tasks)
    assert calls[1].status == "error" and "RuntimeError: disk on fire" in calls[1].error
    assert calls[2].status == "skipped" and "task 1 (boom) error" in calls[2].error
    assert calls[3].status == "skipped" and "task 2" in calls[3].error
    assert calls[4].status == "ok"
    assert calls[5].status == "error" and "$4 has no 'nope'" in calls[5].error and "label" in calls[5].error
    assert calls[6].status == "error" and "count" in calls[6].error  # "" is not an int: schema checked after resolving


async def test_timeout_and_per_tool_concurrency_limit():
    scheduler, nap = setup(concurrency={"nap": 2}, timeouts={"nap": 0.3})
    started = time.monotonic()
    calls = await scheduler.run(
        [Task(id=i, tool="nap", args={"seconds": 0.1}) for i in range(1, 7)] + [Task(id=7, tool="nap", args={"seconds": 5})]
    )
    assert nap.peak == 2
    assert calls[7].status == "timeout" and "longer than 0.3s" in calls[7].error
    assert time.monotonic() - started < 2.0
    assert sum(c.status == "ok" for c in calls.values()) == 6


class Doze(Nap):
    """A nap that declares its own time limit."""

    name: ClassVar[str] = "doze"
    time_limit_s: ClassVar[float | None] = 0.2


class Stall(Boom):
    """A tool whose own work gives up with a TimeoutError: a failure, not the scheduler's limit."""

    name: ClassVar[str] = "stall"

    async def __call__(self, args: BoomArgs, ctx: ToolContext) -> NapResult:
        raise TimeoutError("the license server did not answer")


async def test_each_tool_is_bounded_by_its_own_time_limit():
    scheduler = Scheduler(Registry([Doze(), Nap(), Stall()]), ToolContext())
    started = time.monotonic()
    calls = await scheduler.run([
        Task(id=1, tool="doze", args={"seconds": 5}),
        Task(id=2, tool="nap", args={"seconds": 0.4}),  # declares None: the scheduler sets no limit
        Task(id=3, tool="stall"),
    ])
    assert calls[1].status == "timeout" and calls[1].error == "doze took longer than 0.2s"
    assert calls[2].status == "ok" and time.monotonic() - started < 2.0
    assert calls[3].status == "error" and calls[3].error == "TimeoutError: the license server did not answer"
    # An explicit ``timeouts`` entry overrides the tool's own limit.
    longer = Scheduler(Registry([Doze()]), ToolContext(), timeouts={"doze": 2.0})
    assert (await longer.run([Task(id=1, tool="doze", args={"seconds": 0.4})]))[1].status == "ok"


async def test_tasks_start_while_the_plan_still_streams():
    scheduler, _ = setup()
    arrived: dict[int, float] = {}

    async def planner():
        for i in range(1, 4):
            await asyncio.sleep(0.15)
            arrived[i] = time.monotonic()
            yield Task(id=i, tool="nap", args={"seconds": 0.1})

    calls = await scheduler.run(planner())
    # Each task started on arrival, before the next one was even written (0.15 s later).
    assert arrived[1] <= calls[1].result.started < arrived[2]
    assert arrived[2] <= calls[2].result.started < arrived[3]
    assert calls[1].result.ended < arrived[3]


async def test_prior_results_are_kept_and_used():
    scheduler, nap = setup()
    first = await scheduler.run([Task(id=1, tool="nap", args={"seconds": 0, "label": "kept"}), Task(id=2, tool="boom")])
    second = await scheduler.run(
        [Task(id=3, tool="nap", args={"seconds": 0, "label": "$1.label"}, deps=[1]), Task(id=4, tool="nap", deps=[2])],
        prior=first,
    )
    assert second[1] is first[1] and second[3].result.label == "kept"
    assert second[4].status == "skipped"


async def test_trace_and_events_go_to_the_jsonl_log(tmp_path):
    bus = EventBus()
    sink = JsonlSink(tmp_path / "run.jsonl")
    bus.subscribe(sink)
    scheduler, _ = setup(events=bus)
    calls = await scheduler.run([Task(id=1, tool="ask"), Task(id=2, tool="nap", args={"seconds": 0.05}, deps=[1])])
    sink.close()
    c = calls[1]
    assert c.tokens == 1234 and c.cost_usd == 0.05 and c.result_chars > 5000 and c.ended_at >= c.started_at
    assert calls[2].started_at >= calls[1].ended_at
    events = read_events(tmp_path / "run.jsonl")
    assert [(e.kind, e.data["task_id"]) for e in events] == [("task.start", 1), ("task.end", 1), ("task.start", 2), ("task.end", 2)]
    end = events[1].data
    assert end["tokens"] == 1234 and end["cost_usd"] == 0.05 and end["status"] == "ok" and end["result_chars"] > 5000
    assert ToolCall.model_validate_json(calls[2].model_dump_json()).result["label"] == ""  # the trace serializes


def test_long_results_are_cut_with_a_marker():
    long = Spend(text="head " + "x" * 20_000 + " tail", tokens=1, cost_usd=0.0)
    text = summarize_result(long, limit=1000)
    assert len(text) <= 1000 and "characters cut" in text and text.count("head") == 1 and "tail" in text
    assert "tokens" in text  # small fields survive
    assert summarize_result("short") == "short"
    plain = summarize_result("y" * 5000, limit=300)
    assert len(plain) < 400 and "characters cut" in plain
    # ExecResult has its own summary (status line + tail of the output): it is used.
    run = ExecResult(exit_code=1, stdout="line\n" * 5000, duration_s=0.5)
    assert summarize_result(run, limit=500).startswith("[exit 1 in 0.50s]")
