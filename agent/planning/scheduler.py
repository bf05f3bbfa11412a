"""Runs a plan's tasks, each the moment its dependencies have finished.

Dispatch is event-driven: a finishing task starts its ready dependents from its own
completion (no polling, no sweeps over the plan). Tasks may arrive while the planner is
still writing (an async iterable) or all at once. Per-tool concurrency limits, per-task
timeouts; a failure is recorded as data (``ToolCall``) and its dependents are skipped.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from bakeoff.agent.events import EventBus
from bakeoff.agent.planning.plan import REF, Ref, pure_ref
from bakeoff.agent.seams import ToolContext
from bakeoff.agent.types import Task, ToolCall
from bakeoff.tools.registry import Registry

RESULT_LIMIT = 2000  # characters of one result a model sees


class UnresolvedReference(Exception):
    """An argument's ``$N.field`` does not exist in task N's result: the planner can fix it."""


# --------------------------------------------------------------------------- results as text


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def _shorten(value: Any, share: int) -> Any:
    """Cut long strings inside a structure so each field keeps some of its text."""
    if isinstance(value, str) and len(value) > share:
        keep = max(20, share - 40)
        return value[: keep * 2 // 3] + f"[... {len(value) - keep} characters cut ...]" + value[-(keep // 3) :]
    if isinstance(value, dict):
        return {k: _shorten(v, share) for k, v in value.items()}
    if isinstance(value, list):
        return [_shorten(v, share) for v in value[:50]] + ([f"[... {len(value) - 50} more items ...]"] if len(value) > 50 else [])
    return value


def result_text(result: Any) -> str:
    """The whole result as text (what ``result_chars`` measures)."""
    if isinstance(result, str):
        return result
    if isinstance(result, BaseModel):
        return result.model_dump_json()  # pydantic's serializer: several times faster than json
    plain = _plain(result)
    if isinstance(plain, (dict, list)):
        return json.dumps(plain, ensure_ascii=False, default=str)
    return str(plain)


def summarize_result(result: Any, limit: int = RESULT_LIMIT) -> str:
    """A result as a model should see it: whole when short, otherwise cut with a marker
    (``[... N characters cut ...]``) keeping the head and the tail of each long field."""
    summary = getattr(result, "summary", None)
    if isinstance(result, BaseModel) and callable(summary):
        try:
            text = summary(limit)
        except TypeError:  # a summary() that takes no limit
            text = summary()
        if isinstance(text, str):
            result = text
    text = result_text(result)
    if len(text) <= limit:
        return text
    plain = _plain(result)
    if isinstance(plain, (dict, list)):
        fields = max(1, len(plain))
        text = json.dumps(_shorten(plain, max(80, limit // fields)), ensure_ascii=False, default=str)
        if len(text) <= limit:
            return text
    head, tail = limit * 2 // 3, limit // 3
    return text[:head] + f"\n[... {len(text) - head - tail} characters cut ...]\n" + text[-tail:]


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
                return _plain(_follow(ref, values))

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


# --------------------------------------------------------------------------- scheduler


def _reported(result: Any, name: str) -> Any:
    """A field a tool's result may carry (a tool that calls models reports tokens and cost)."""
    if isinstance(result, BaseModel):
        return getattr(result, name) if name in type(result).model_fields else None
    return getattr(result, name, None)


class Scheduler:
    """Runs tasks concurrently as their dependencies finish. One per run; reusable across plans."""

    def __init__(
        self,
        registry: Registry,
        ctx: ToolContext,
        *,
        events: EventBus | None = None,
        concurrency: Mapping[str, int] | None = None,
        default_timeout: float = 300,
        timeouts: Mapping[str, float] | None = None,
    ) -> None:
        self.registry = registry
        self.ctx = ctx
        self.events = events
        self.default_timeout = default_timeout
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
        calls: dict[int, ToolCall] = dict(prior or {})
        values: dict[int, Any] = {i: c.result for i, c in calls.items() if c.status == "ok"}
        waiting: dict[int, tuple[Task, set[int]]] = {}  # task id -> (task, deps not finished)
        dependents: dict[int, list[int]] = {}
        seen: set[int] = set(calls)
        running: set[asyncio.Task] = set()
        bugs: list[BaseException] = []
        idle = asyncio.Event()
        idle.set()

        def record(call: ToolCall) -> None:
            calls[call.task_id] = call
            if call.status == "ok":
                values[call.task_id] = call.result
            self._emit(
                "task.end", task_id=call.task_id, tool=call.tool, args=call.args, status=call.status,
                started_at=call.started_at, ended_at=call.ended_at,
                duration_s=round(call.ended_at - call.started_at, 6), result_chars=call.result_chars,
                tokens=call.tokens, cost_usd=call.cost_usd, error=call.error,
            )
            for child_id in dependents.pop(call.task_id, []):
                if child_id not in waiting:
                    continue  # already skipped through another failed dependency
                child, pending = waiting[child_id]
                if call.status != "ok":
                    del waiting[child_id]
                    skip(child, f"skipped: task {call.task_id} ({call.tool}) {call.status}: {call.error or ''}".rstrip(": "))
                    continue
                pending.discard(call.task_id)
                if not pending:
                    del waiting[child_id]
                    launch(child)

        def skip(task: Task, why: str) -> None:
            now = time.time()
            record(ToolCall(task_id=task.id, tool=task.tool, args=task.args, status="skipped", started_at=now, ended_at=now, error=why))

        def launch(task: Task) -> None:
            job = asyncio.ensure_future(self._execute(task, values))
            running.add(job)
            idle.clear()

            def done(job: asyncio.Task) -> None:
                running.discard(job)
                if job.cancelled():
                    pass
                elif job.exception() is not None:
                    bugs.append(job.exception())  # raised by bakeoff itself, not by a tool
                else:
                    record(job.result())
                if not running:
                    idle.set()

            job.add_done_callback(done)

        def submit(task: Task) -> None:
            if task.id in seen:
                raise ValueError(f"task id {task.id} submitted twice (the plan parser should have refused it)")
            seen.add(task.id)
            missing = [d for d in task.deps if d not in seen]
            if missing:
                return skip(task, f"skipped: depends on unknown task(s) {missing}")
            failed = [d for d in task.deps if d in calls and calls[d].status != "ok"]
            if failed:
                d = calls[failed[0]]
                return skip(task, f"skipped: task {d.task_id} ({d.tool}) {d.status}: {d.error or ''}".rstrip(": "))
            pending = {d for d in task.deps if d not in calls}
            if not pending:
                return launch(task)
            waiting[task.id] = (task, pending)
            for d in pending:
                dependents.setdefault(d, []).append(task.id)

        try:
            if isinstance(tasks, AsyncIterable):
                async for task in tasks:
                    submit(task)
            else:
                for task in tasks:
                    submit(task)
            # Completions launch their dependents from their own callbacks; idle is set only
            # when nothing runs any more.
            await idle.wait()
        except BaseException:
            for job in running:
                job.cancel()
            raise
        if bugs:
            raise bugs[0]
        for task_id, (task, _) in list(waiting.items()):
            skip(task, "skipped: its dependencies never finished")
        return calls

    async def _execute(self, task: Task, values: Mapping[int, Any]) -> ToolCall:
        tool = self.registry.get(task.tool)
        started = time.time()

        def call(status: str, *, result: Any = None, error: str | None = None, at: float = started) -> ToolCall:
            return ToolCall(
                task_id=task.id, tool=task.tool, args=task.args, status=status, started_at=at,
                ended_at=time.time(), result=result, error=error,
                result_chars=len(result_text(result)) if result is not None else 0,
                tokens=int(_reported(result, "tokens") or 0),
                cost_usd=float(_reported(result, "cost_usd") or 0.0),
            )

        if tool is None:
            return call("error", error=f"unknown tool {task.tool!r}")
        try:
            args = tool.Args.model_validate(resolve_args(task.args, values))
        except UnresolvedReference as e:
            return call("error", error=f"bad reference: {e}")
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'arguments'}: {x['msg']}" for x in e.errors())
            return call("error", error=f"arguments do not fit {tool.name}'s schema once references were resolved: {problems}")
        limit = self._limits.get(task.tool)
        if limit is not None:
            await limit.acquire()
        try:
            started = time.time()
            self._emit("task.start", task_id=task.id, tool=task.tool, args=task.args, deps=task.deps, at=started)
            timeout = self.timeouts.get(task.tool, self.default_timeout)
            try:
                async with asyncio.timeout(timeout):
                    result = await tool(args, self.ctx)
            except TimeoutError:
                return call("timeout", error=f"{task.tool} took longer than {timeout:g}s", at=started)
            except Exception as e:  # a tool's failure is data for the joiner, not a crash of the run
                return call("error", error=f"{type(e).__name__}: {e}", at=started)
            return call("ok", result=result, at=started)
        finally:
            if limit is not None:
                limit.release()
