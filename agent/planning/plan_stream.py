"""Parsing a plan while the planner is still writing it.

Each line becomes a ``Task`` or a ``PlanLineError`` the moment its newline arrives, so the
scheduler can start a task before the model has written the next one. Once the plan's
``join`` line is in, the rest of the model's output is read in the background (only for its
usage), so neither the tasks nor the joiner wait for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence

from bakeoff.agent.planning.plan import JOIN, THOUGHT, PlanLineError, parse_plan_line
from bakeoff.agent.seams import Completion, Message, Model
from bakeoff.agent.types import Task
from bakeoff.tools.registry import Registry


class PlanStream:
    """The planner's output, parsed line by line as it streams.

    Iterate to get each ``Task`` or ``PlanLineError`` as soon as its line is complete.
    After the iteration: ``tasks``, ``errors``, ``joined`` (the plan ended with ``join``),
    ``text``; ``await finished()`` gives the model's final ``Completion`` (usage, cost).
    """

    def __init__(self, model: Model, messages: Sequence[Message], registry: Registry, known_ids: Iterable[int] = ()) -> None:
        self.model = model
        self.messages = list(messages)
        self.registry = registry
        self.known = set(known_ids)
        self.tasks: list[Task] = []
        self.errors: list[PlanLineError] = []
        self.joined = False
        self.text = ""
        self._completion: asyncio.Future[Completion | None] | None = None
        self._drain: asyncio.Task | None = None

    def _line(self, line: str, thought: list[str]) -> Task | PlanLineError | None:
        t = THOUGHT.match(line)
        if t is not None:
            thought[:] = [t.group(1).strip()]
            return None
        item = parse_plan_line(line, self.registry, self.known)
        if isinstance(item, Task):
            if item.tool == JOIN:
                self.joined = True
                return None
            if not item.thought and thought:
                item.thought = thought[0]
            thought.clear()
            self.known.add(item.id)
            self.tasks.append(item)
        elif isinstance(item, PlanLineError):
            self.errors.append(item)
        return item

    async def __aiter__(self) -> AsyncIterator[Task | PlanLineError]:
        loop = asyncio.get_running_loop()
        self._completion = loop.create_future()
        stream = self.model.stream(self.messages)
        buffer = ""
        thought: list[str] = []
        try:
            async for item in stream:
                if isinstance(item, Completion):
                    self._completion.set_result(item)
                    continue
                self.text += item
                buffer += item
                while "\n" in buffer and not self.joined:
                    line, buffer = buffer.split("\n", 1)
                    parsed = self._line(line, thought)
                    if parsed is not None:
                        yield parsed
                if self.joined:
                    # The plan is complete; what the model still writes is only read for its
                    # usage, in the background, so the tasks and the joiner do not wait for it.
                    self._drain = asyncio.ensure_future(self._finish(stream))
                    return
            if buffer.strip() and not self.joined:
                parsed = self._line(buffer, thought)
                if parsed is not None:
                    yield parsed
        finally:
            if self._drain is None and not self._completion.done():
                self._completion.set_result(None)

    async def _finish(self, stream: AsyncIterator[str | Completion]) -> None:
        assert self._completion is not None
        try:
            async for item in stream:
                if isinstance(item, Completion):
                    self._completion.set_result(item)
                else:
                    self.text += item
        finally:
            if not self._completion.done():
                self._completion.set_result(None)

    async def finished(self) -> Completion | None:
        """The planner call's ``Completion`` once the model has stopped (None if it gave none)."""
        if self._completion is None:
            return None
        return await self._completion



def stream_plan(model: Model, messages: Sequence[Message], registry: Registry, *, known_ids: Iterable[int] = ()) -> PlanStream:
    """Stream a plan from ``model``: ``async for item in stream_plan(...)`` yields each ``Task``
    or ``PlanLineError`` as soon as its line is complete."""
    return PlanStream(model, messages, registry, known_ids)
