"""Runs a plan's tasks, each the moment its dependencies have finished.

Dispatch is event-driven: a finishing task starts its ready dependents from its own
completion (no polling, no sweeps over the plan). Tasks may arrive while the planner is
still writing (an async iterable) or all at once. Per-tool concurrency limits; each call is
bounded by its tool's own ``time_limit_s``. A failure is recorded as data (``ToolCall``) and
its dependents are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from bakeoff.agent.events import EventBus
from bakeoff.agent.planning.refs import REF, Ref, pure_ref
from bakeoff.agent.planning.results import plain, result_text, summarize_result
from bakeoff.agent.seams import Tool, ToolContext
from bakeoff.agent.types import Task, ToolCall
from bakeoff.tools.registry import Registry


class UnresolvedReference(Exception):
    """An argument's ``$N.field`` does not exist in task N's result: the planner can fix it."""


# --------------------------------------------------------------------------- references


def _follow(ref: Ref, values: Mapping[int, Any]) -> Any:
    if ref.task_id not in values:
        raise UnresolvedReference(f"${ref.task_id} has no result (task {ref.task_id} did not succeed)")
    value = values[ref.task_id]
    where = f"${ref.task_id}"
    for part in ref.path:
        try:
            if isinstance(part, int):
                value = value[part]
            elif isinstance(value, dict):
                value = value[part]
            else:
                value = getattr(value, part)
        except (KeyError, IndexError, AttributeError, TypeError):
            fields = list(type(value).model_fields) if isinstance(value, BaseModel) else list(value) if isinstance(value, dict) else []
            known = f"; it has {', '.join(map(str, fields))}" if fields else ""
            raise UnresolvedReference(f"{where} has no {part!r}{known}") from None
        where += f"[{part}]" if isinstance(part, int) else f".{part}"
    return value


def resolve_args(args: Mapping[str, Any], values: Mapping[int, Any]) -> dict[str, Any]:
    """Replace references by results: a whole-value reference keeps the value's type; one
    inside text becomes text (summarized when long)."""

    def resolve(v: Any) -> Any:
        if isinstance(v, str):
            ref = pure_ref(v)
            if ref is not None:
                return plain(_follow(ref, values))

            def sub(m) -> str:
                if m.group(0) == "$$":
                    return "$"
                ref = pure_ref(m.group(0))
                assert ref is not None
                if ref.task_id not in values:
                    return m.group(0)  # not a reference to a result: text like awk's $1
                found = _follow(ref, values)
                return found if isinstance(found, str) else summarize_result(found)

            return REF.sub(sub, v)
        if isinstance(v, dict):
            return {k: resolve(x) for k, x in v.items()}
        if isinstance(v, list):
            return [resolve(x) for x in v]
        return v

    return {k: resolve(v) for k, v in args.items()}


# --------------------------------------------------------------------------- one call


def _reported(result: Any, name: str) -> Any:
    """A field a tool's result may carry (a tool that calls models reports tokens and cost)."""
    if isinstance(result, BaseModel):
        return getattr(result, name) if name in type(result).model_fields else None
    return getattr(result, name, None)


def _traced(task: Task, status: str, started: float, *, result: Any = None, error: str | None = None) -> ToolCall:
    return ToolCall(
        task_id=task.id, tool=task.tool, args=task.args, status=status, started_at=started,
        ended_at=time.time(), result=result, error=error,
        result_chars=len(result_text(result)) if result is not None else 0,
        tokens=int(_reported(result, "tokens") or 0),
        cost_usd=float(_reported(result, "cost_usd") or 0.0),
    )


def _arguments(task: Task, tool: Tool, values: Mapping[int, Any]) -> BaseModel | str:
    """The task's arguments with references resolved, validated by the tool; a str says why not."""
    try:
        return tool.Args.model_validate(resolve_args(task.args, values))
    except UnresolvedReference as e:
        return f"bad reference: {e}"
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'arguments'}: {x['msg']}" for x in e.errors())
        return f"arguments do not fit {tool.name}'s schema once references were resolved: {problems}"


def _time_limit(tool: Tool) -> float | None:
    # None (fan_out's, for one) is no limit here: the run bounds such a tool, by its budget and
    # its time limit (``Session.run``, ``--time-limit``), never the scheduler by a flat default.
    return getattr(tool, "time_limit_s", None)


def _failed(call: ToolCall) -> str:
    """Why a dependent of ``call`` is skipped."""
    return f"skipped: task {call.task_id} ({call.tool}) {call.status}: {call.error or ''}".rstrip(": ")


# --------------------------------------------------------------------------- dispatch


class _Dispatch:
    """One ``Scheduler.run``: what finished, what waits on what, what runs. A task is
    submitted once; it launches when its last dependency records its call, from that call's
    own completion callback."""

    def __init__(
        self,
        execute: Callable[[Task, Mapping[int, Any]], Awaitable[ToolCall]],
        emit: Callable[..., None],
        prior: Mapping[int, ToolCall] | None,
    ) -> None:
        self.execute = execute
        self.emit = emit
        self.calls: dict[int, ToolCall] = dict(prior or {})
        self.values: dict[int, Any] = {i: c.result for i, c in self.calls.items() if c.status == "ok"}
        self.waiting: dict[int, tuple[Task, set[int]]] = {}  # task id -> (task, deps not finished)
        self.dependents: dict[int, list[int]] = {}
        self.seen: set[int] = set(self.calls)
        self.running: set[asyncio.Task[ToolCall]] = set()
        self.bugs: list[BaseException] = []
        self.idle = asyncio.Event()  # set while nothing runs
        self.idle.set()

    def submit(self, task: Task) -> None:
        if task.id in self.seen:
            raise ValueError(f"task id {task.id} submitted twice (the plan parser should have refused it)")
        self.seen.add(task.id)
        missing = [d for d in task.deps if d not in self.seen]
        if missing:
            return self.skip(task, f"skipped: depends on unknown task(s) {missing}")
        failed = [d for d in task.deps if d in self.calls and self.calls[d].status != "ok"]
        if failed:
            return self.skip(task, _failed(self.calls[failed[0]]))
        pending = {d for d in task.deps if d not in self.calls}
        if not pending:
            return self.launch(task)
        self.waiting[task.id] = (task, pending)
        for d in pending:
            self.dependents.setdefault(d, []).append(task.id)

    def launch(self, task: Task) -> None:
        job = asyncio.ensure_future(self.execute(task, self.values))
        self.running.add(job)
        self.idle.clear()
        job.add_done_callback(self._done)

    def _done(self, job: asyncio.Task[ToolCall]) -> None:
        self.running.discard(job)
        if job.cancelled():
            pass
        elif job.exception() is not None:
            self.bugs.append(job.exception())  # raised by bakeoff itself, not by a tool
        else:
            self.record(job.result())
        if not self.running:
            self.idle.set()

    def record(self, call: ToolCall) -> None:
        """Keep ``call``, then start or skip the tasks that were waiting for it."""
        self.calls[call.task_id] = call
        if call.status == "ok":
            self.values[call.task_id] = call.result
        self.emit(
            "task.end", task_id=call.task_id, tool=call.tool, args=call.args, status=call.status,
            started_at=call.started_at, ended_at=call.ended_at,
            duration_s=round(call.ended_at - call.started_at, 6), result_chars=call.result_chars,
            tokens=call.tokens, cost_usd=call.cost_usd, error=call.error,
        )
        for child_id in self.dependents.pop(call.task_id, []):
            if child_id not in self.waiting:
                continue  # already skipped through another failed dependency
            child, pending = self.waiting[child_id]
            if call.status != "ok":
                del self.waiting[child_id]
                self.skip(child, _failed(call))
                continue
            pending.discard(call.task_id)
            if not pending:
                del self.waiting[child_id]
                self.launch(child)

    def skip(self, task: Task, why: str) -> None:
        now = time.time()
        self.record(ToolCall(task_id=task.id, tool=task.tool, args=task.args, status="skipped", started_at=now, ended_at=now, error=why))

    def cancel(self) -> None:
        for job in self.running:
            job.cancel()

    def finish(self) -> dict[int, ToolCall]:
        """Every call by task id, once nothing runs; a bug in bakeoff raises here."""
        if self.bugs:
            raise self.bugs[0]
        for task, _ in list(self.waiting.values()):
            self.skip(task, "skipped: its dependencies never finished")
        return self.calls


# --------------------------------------------------------------------------- scheduler


class Scheduler:
    """Runs tasks concurrently as their dependencies finish. One per run; reusable across plans.

    Each call is bounded by its tool's ``time_limit_s`` (none when the tool declares None);
    ``timeouts`` (tool name -> seconds) overrides a tool's own limit.
    """

    def __init__(
        self,
        registry: Registry,
        ctx: ToolContext,
        *,
        events: EventBus | None = None,
        concurrency: Mapping[str, int] | None = None,
        timeouts: Mapping[str, float] | None = None,
    ) -> None:
        self.registry = registry
        self.ctx = ctx
        self.events = events
        self.timeouts = dict(timeouts or {})
        # Semaphores are shared by every plan this scheduler runs: limits hold across replans.
        self._limits = {name: asyncio.Semaphore(n) for name, n in (concurrency or {}).items()}

    def _emit(self, kind: str, **data: Any) -> None:
        if self.events is not None:
            self.events.emit(kind, **data)

    async def run(
        self,
        tasks: AsyncIterable[Task] | Iterable[Task],
        prior: Mapping[int, ToolCall] | None = None,
    ) -> dict[int, ToolCall]:
        """Run ``tasks`` (as they arrive) on top of ``prior`` results; returns every call,
        prior ones included, by task id. Failures are data; only a bug raises."""
        dispatch = _Dispatch(self._execute, self._emit, prior)
        try:
            if isinstance(tasks, AsyncIterable):
                async for task in tasks:
                    dispatch.submit(task)
            else:
                for task in tasks:
                    dispatch.submit(task)
            # Completions launch their dependents from their own callbacks; idle is set only
            # when nothing runs any more.
            await dispatch.idle.wait()
        except BaseException:
            dispatch.cancel()
            raise
        return dispatch.finish()

    async def _execute(self, task: Task, values: Mapping[int, Any]) -> ToolCall:
        tool = self.registry.get(task.tool)
        started = time.time()
        if tool is None:
            return _traced(task, "error", started, error=f"unknown tool {task.tool!r}")
        args = _arguments(task, tool, values)
        if isinstance(args, str):
            return _traced(task, "error", started, error=args)
        async with self._limits.get(task.tool) or contextlib.nullcontext():
            return await self._call(task, tool, args)

    async def _call(self, task: Task, tool: Tool, args: BaseModel) -> ToolCall:
        started = time.time()
        self._emit("task.start", task_id=task.id, tool=task.tool, args=task.args, deps=task.deps, at=started)
        limit = self.timeouts.get(task.tool, _time_limit(tool))
        try:
            async with asyncio.timeout(limit) as deadline:
                result = await tool(args, self.ctx)
        except TimeoutError as e:
            if not deadline.expired():  # raised by the tool itself: a failure like any other
                return _traced(task, "error", started, error=f"{type(e).__name__}: {e}")
            return _traced(task, "timeout", started, error=f"{task.tool} took longer than {limit:g}s")
        except Exception as e:  # a tool's failure is data for the joiner, not a crash of the run
            return _traced(task, "error", started, error=f"{type(e).__name__}: {e}")
        return _traced(task, "ok", started, result=result)
