"""Planner latency: bakeoff's streamed plan + parallel scheduler against a sequential ReAct loop.

Synthetic but honest: the real planner parser, scheduler, joiner and ReAct loop run real
tool objects whose work is a 1 s sleep, driven by the scripted model streaming at a fixed,
realistic pace. Fixed parameters (change them only by adding a second table):

  0.5 s before the first token of every call, then 20 ms per output token, 4 characters per
  token; a plan line is ~25 tokens, a ReAct turn (short thought + one action) ~50 tokens,
  the joiner's answer ~40 tokens; every tool sleeps 1 s.

Shapes: width 1, 2, 4, 8, 16 x depth 1-3 (each task of layer k uses the result of one task
of layer k-1), and a coding task (read 6 files, search, build; tests and profile after the
build; one step using all of it). For each: the wall time of (a) bakeoff (LLMCompiler:
streamed plan, scheduler, joiner), (b) ReAct on the same tools, (c) the ideal: time to
stream the plan + the critical path of tool latencies + the joiner. Streaming dispatch may
beat the ideal (tasks start while the plan is still being written).

Scheduler overhead per task is measured separately: thousands of tasks whose tool returns
at once, through the scheduler (with a JSONL event log) against the same calls made directly.

    python3 bench/planner_latency.py [--quick] [--repeat N] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bakeoff.agent.planning.compiler import LLMCompiler  # noqa: E402
from bakeoff.agent.events import EventBus, JsonlSink  # noqa: E402
from bakeoff.agent.models.scripted import ScriptedModel, ScriptedResponse  # noqa: E402
from bakeoff.agent.planning.refs import pure_ref  # noqa: E402
from bakeoff.agent.planning.react import ReActAgent  # noqa: E402
from bakeoff.agent.planning.scheduler import Scheduler  # noqa: E402
from bakeoff.agent.seams import ToolContext  # noqa: E402
from bakeoff.agent.types import Task  # noqa: E402
from bakeoff.tools.registry import Registry  # noqa: E402

FIRST_TOKEN_S = 0.5
PER_TOKEN_S = 0.020
CHARS_PER_TOKEN = 4
PLAN_LINE_TOKENS = 25
REACT_TURN_TOKENS = 50
JOIN_TOKENS = 40
TOOL_S = 1.0

WIDTHS = (1, 2, 4, 8, 16)
DEPTHS = (1, 2, 3)

# --------------------------------------------------------------------------- tools


class Done(BaseModel):
    item: str
    ok: bool = True


class _SleepTool:
    """A real tool (the Tool protocol) whose work is a sleep."""

    seconds: ClassVar[float] = TOOL_S
    Result: ClassVar[type[BaseModel]] = Done

    async def __call__(self, args: BaseModel, ctx: ToolContext) -> Done:
        await asyncio.sleep(self.seconds)
        first = next(iter(args.model_dump().values()), "")
        return Done(item=str(first))


class ProbeArgs(BaseModel):
    item: str
    after: str = ""


class Probe(_SleepTool):
    name: ClassVar[str] = "probe"
    description: ClassVar[str] = "Inspect one shard of the work; `after` names what it builds on."
    Args: ClassVar[type[BaseModel]] = ProbeArgs


class PathArgs(BaseModel):
    path: str


class ReadFile(_SleepTool):
    name: ClassVar[str] = "read_file"
    description: ClassVar[str] = "Read one file of the repository."
    Args: ClassVar[type[BaseModel]] = PathArgs


class SearchArgs(BaseModel):
    pattern: str
    path: str = "."


class Search(_SleepTool):
    name: ClassVar[str] = "search"
    description: ClassVar[str] = "Search the repository for a regex."
    Args: ClassVar[type[BaseModel]] = SearchArgs


class TargetArgs(BaseModel):
    target: str = "all"


class Build(_SleepTool):
    name: ClassVar[str] = "build"
    description: ClassVar[str] = "Build the project."
    Args: ClassVar[type[BaseModel]] = TargetArgs


class RunTests(_SleepTool):
    name: ClassVar[str] = "run_tests"
    description: ClassVar[str] = "Run the test suite against a build."
    Args: ClassVar[type[BaseModel]] = TargetArgs


class CommandArgs(BaseModel):
    command: str


class Profile(_SleepTool):
    name: ClassVar[str] = "profile"
    description: ClassVar[str] = "Time a command and report its hot spots."
    Args: ClassVar[type[BaseModel]] = CommandArgs


class NoteArgs(BaseModel):
    findings: str


class Analyze(_SleepTool):
    name: ClassVar[str] = "analyze"
    description: ClassVar[str] = "Combine findings into a proposal."
    Args: ClassVar[type[BaseModel]] = NoteArgs


def registry() -> Registry:
    return Registry([Probe(), ReadFile(), Search(), Build(), RunTests(), Profile(), Analyze()])


# --------------------------------------------------------------------------- shapes

_FILLER = (
    "this shows how the loops and the data layout of the kernel behave, which the later steps "
    "need before anything is changed or measured again"
).split()


def _pad(text: str, chars: int) -> str:
    """``text`` lengthened with plain words to exactly ``chars`` characters (if shorter)."""
    words = iter(_FILLER * 20)
    padded = text
    while len(padded) < chars:
        padded += " " + next(words)
    return padded if len(text) >= chars else padded[:chars]


class Shape(BaseModel):
    name: str
    tasks: list[Task]
    critical_path: int  # tool latencies on the longest dependency chain


def _call(task: Task) -> str:
    args = ", ".join(f"{k}={v}" if pure_ref(v) else f"{k}={json.dumps(v)}" for k, v in task.args.items())
    return f"{task.tool}({args})"


def grid(width: int, depth: int) -> Shape:
    tasks = []
    for layer in range(depth):
        for i in range(width):
            tid = layer * width + i + 1
            args = {"item": f"shard-{i}-{layer}"}
            deps = []
            if layer:
                dep = (layer - 1) * width + i + 1
                args["after"] = f"${dep}.item"
                deps = [dep]
            tasks.append(Task(id=tid, tool="probe", args=args, deps=deps))
    return Shape(name=f"w{width} x d{depth}", tasks=tasks, critical_path=depth)


def coding_task() -> Shape:
    files = ["src/kernel.c", "src/kernel.h", "src/main.c", "src/io.c", "Makefile", "tests/test_kernel.c"]
    tasks = [Task(id=i + 1, tool="read_file", args={"path": f}) for i, f in enumerate(files)]
    tasks += [
        Task(id=7, tool="search", args={"pattern": "#pragma omp", "path": "src"}),
        Task(id=8, tool="build", args={"target": "all"}),
        Task(id=9, tool="run_tests", args={"target": "$8.item"}, deps=[8]),
        Task(id=10, tool="profile", args={"command": "./bench_kernel"}, deps=[8]),
        Task(
            id=11, tool="analyze",
            args={"findings": "$1.item $2.item $3.item $4.item $5.item $6.item $7.item $9.item $10.item"},
            deps=[1, 2, 3, 4, 5, 6, 7, 9, 10],
        ),
    ]
    return Shape(name="coding task", tasks=tasks, critical_path=3)


def plan_text(shape: Shape) -> str:
    lines = []
    for t in shape.tasks:
        head = f"{t.id}. {_call(t)}" + (f" deps={t.deps}" if t.deps else "") + "  # why:"
        lines.append(_pad(head, PLAN_LINE_TOKENS * CHARS_PER_TOKEN - 1))  # + the newline
    return "\n".join(lines) + "\njoin()\n"


ANSWER = "the work is done: every shard was checked and builds on the one before it, as planned;"


def join_text() -> str:
    return _pad(f"Thought: every step succeeded.\nFinish: {ANSWER}", JOIN_TOKENS * CHARS_PER_TOKEN)


def react_turns(shape: Shape) -> list[str]:
    turn = REACT_TURN_TOKENS * CHARS_PER_TOKEN
    turns = []
    for t in shape.tasks:
        action = f"\nAction: {_call(t)}"
        turns.append(_pad("Thought: next I need to look at this, because", turn - len(action)) + action)
    turns.append(_pad(f"Thought: I have what I need.\nFinal Answer: {ANSWER}", turn))
    return turns


def tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def ideal_s(shape: Shape) -> float:
    plan = FIRST_TOKEN_S + tokens(plan_text(shape)) * PER_TOKEN_S
    join = FIRST_TOKEN_S + tokens(join_text()) * PER_TOKEN_S
    return plan + shape.critical_path * TOOL_S + join


def _model(texts: list[str]) -> ScriptedModel:
    return ScriptedModel(
        [ScriptedResponse(text=t) for t in texts],
        first_token_s=FIRST_TOKEN_S, per_token_s=PER_TOKEN_S, chars_per_token=CHARS_PER_TOKEN,
    )


async def run_bakeoff(shape: Shape) -> float:
    compiler = LLMCompiler(_model([plan_text(shape)]), _model([join_text()]), registry(), ToolContext())
    started = time.perf_counter()
    result = await compiler.run("check every shard")
    elapsed = time.perf_counter() - started
    bad = [c for c in result.trace if c.status != "ok"]
    if not result.finished or bad or len(result.trace) != len(shape.tasks) or result.plan_errors:
        raise SystemExit(f"{shape.name}: bakeoff run went wrong: {result.plan_errors or bad or result.answer}")
    return elapsed


async def run_react(shape: Shape) -> float:
    agent = ReActAgent(_model(react_turns(shape)), registry(), ToolContext(), max_steps=len(shape.tasks) + 1)
    started = time.perf_counter()
    result = await agent.run("check every shard")
    elapsed = time.perf_counter() - started
    bad = [c for c in result.trace if c.status != "ok"]
    if not result.finished or bad or len(result.trace) != len(shape.tasks):
        raise SystemExit(f"{shape.name}: ReAct run went wrong: {bad or result.answer}")
    return elapsed


# --------------------------------------------------------------------------- overhead


class Instant(Probe):
    name: ClassVar[str] = "instant"

    async def __call__(self, args: BaseModel, ctx: ToolContext) -> Done:
        return Done(item=args.item)


async def scheduler_overhead(n: int = 2000, repeat: int = 5) -> dict:
    """Per task: scheduler wall time minus the same tool calls made directly, in ms."""
    reg = Registry([Instant()])
    tool = Instant()
    independent = [Task(id=i, tool="instant", args={"item": f"x{i}"}) for i in range(1, n + 1)]
    chain = [Task(id=1, tool="instant", args={"item": "x"})] + [
        Task(id=i, tool="instant", args={"item": f"x{i}", "after": f"${i - 1}.item"}, deps=[i - 1]) for i in range(2, n + 1)
    ]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, tasks in (("independent", independent), ("chain", chain)):
            per = []
            for r in range(repeat):
                bus = EventBus()
                sink = JsonlSink(Path(tmp) / f"{label}{r}.jsonl")
                bus.subscribe(sink)
                scheduler = Scheduler(reg, ToolContext(), events=bus)
                started = time.perf_counter()
                calls = await scheduler.run(tasks)
                through = time.perf_counter() - started
                sink.close()
                assert all(c.status == "ok" for c in calls.values()), "overhead run failed"
                started = time.perf_counter()
                for t in tasks:
                    await tool(ProbeArgs(item=t.args["item"]), ToolContext())
                direct = time.perf_counter() - started
                per.append((through - direct) / n * 1000)
            out[label] = statistics.median(per)
            out[f"{label}_min"] = min(per)  # the least disturbed run, on a busy machine
    out["per_task_ms"] = max(out["independent"], out["chain"])
    return out


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="widths 1 and 8 at depth 1, and the coding task")
    ap.add_argument("--repeat", type=int, default=1, help="runs per shape and agent (median reported)")
    ap.add_argument("--json", type=Path, help="also write the figures here as JSON")
    opts = ap.parse_args()

    shapes = [grid(w, d) for w, d in ((1, 1), (8, 1))] if opts.quick else [grid(w, d) for d in DEPTHS for w in WIDTHS]
    shapes.append(coding_task())
    print(
        f"planner latency: {FIRST_TOKEN_S}s to first token, {PER_TOKEN_S * 1000:.0f} ms/token, "
        f"{CHARS_PER_TOKEN} chars/token, plan line ~{PLAN_LINE_TOKENS} tokens, ReAct turn ~{REACT_TURN_TOKENS}, "
        f"joiner ~{JOIN_TOKENS}, tools sleep {TOOL_S:g}s; median of {opts.repeat} run(s)",
        flush=True,
    )
    header = f"{'shape':<12} {'tasks':>5} {'bakeoff s':>10} {'ReAct s':>9} {'ideal s':>8} {'speedup':>8} {'efficiency':>10}"
    print(header)
    print("-" * len(header), flush=True)
    rows = []
    for shape in shapes:
        ours = statistics.median(asyncio.run(run_bakeoff(shape)) for _ in range(opts.repeat))
        react = statistics.median(asyncio.run(run_react(shape)) for _ in range(opts.repeat))
        ideal = ideal_s(shape)
        row = {
            "shape": shape.name, "tasks": len(shape.tasks), "bakeoff_s": round(ours, 3), "react_s": round(react, 3),
            "ideal_s": round(ideal, 3), "speedup_vs_react": round(react / ours, 3), "efficiency": round(ideal / ours, 3),
        }
        rows.append(row)
        print(
            f"{shape.name:<12} {row['tasks']:>5} {ours:>10.2f} {react:>9.2f} {ideal:>8.2f} "
            f"{row['speedup_vs_react']:>7.2f}x {row['efficiency']:>10.3f}",
            flush=True,
        )
    overhead = asyncio.run(scheduler_overhead())
    print(
        f"\nscheduler overhead per task (2000 instant tasks, JSONL event log, median of 5): "
        f"independent {overhead['independent']:.3f} ms, chain {overhead['chain']:.3f} ms "
        f"(least disturbed run: {overhead['independent_min']:.3f} / {overhead['chain_min']:.3f} ms)"
    )
    width8 = [r for r in rows if r["shape"].startswith("w8 ")]
    summary = {
        # The worst width-8 shape (over depths), not the best.
        "width8_speedup_vs_react": min(r["speedup_vs_react"] for r in width8),
        "width8_efficiency": min(r["efficiency"] for r in width8),
        "overhead_ms_per_task": round(overhead["per_task_ms"], 4),
    }
    print(
        f"width 8 (worst depth): {summary['width8_speedup_vs_react']:.2f}x vs ReAct (target >= 3), "
        f"efficiency {summary['width8_efficiency']:.3f} (target >= 0.9); overhead "
        f"{summary['overhead_ms_per_task']:.3f} ms/task (target < 1)"
    )
    if opts.json:
        params = {
            "first_token_s": FIRST_TOKEN_S, "per_token_s": PER_TOKEN_S, "chars_per_token": CHARS_PER_TOKEN,
            "plan_line_tokens": PLAN_LINE_TOKENS, "react_turn_tokens": REACT_TURN_TOKENS,
            "join_tokens": JOIN_TOKENS, "tool_s": TOOL_S, "repeat": opts.repeat, "quick": opts.quick,
        }
        opts.json.write_text(json.dumps({**summary, "overhead": overhead, "params": params, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
