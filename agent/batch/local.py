"""Tasks on this machine: ``workers`` at a time, sharing one sandbox pool and one budget."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bakeoff.agent.batch.execute import TaskOutcome, node_name, run_task
from bakeoff.agent.batch.tasks import BatchTask
from bakeoff.agent.config import Settings
from bakeoff.agent.models.budget import Budget


class Hooks(Protocol):
    """What a runner tells the batch: a task started on a node, was retried, or finished."""

    def started(self, task: BatchTask, node: str, attempt: int) -> None: ...

    def retried(self, task: BatchTask, attempt: int, why: str) -> None: ...

    def finished(self, task: BatchTask, outcome: TaskOutcome) -> None: ...

    def say(self, line: str) -> None: ...


@dataclass
class LocalRunner:
    settings: Settings
    flags: dict[str, Any]
    scratch: Path  # each task clones under scratch/<id>

    @property
    def slots(self) -> int:
        return self.settings.workers

    def describe(self) -> str:
        return f"on this machine, {self.settings.workers} at a time"

    async def run(self, todo: list[BatchTask], hooks: Hooks) -> None:
        from bakeoff.agent.session import docker_host_of, make_pool
        from bakeoff.sandboxes import choose_backend

        choice = choose_backend(self.settings.sandbox, docker_host_of(self.settings))
        hooks.say(f"sandboxes: {choice.backend} ({choice.reason})")
        if choice.warning:
            hooks.say(f"warning: {choice.warning}")
        budget = Budget(max_usd=self.settings.budget_usd, max_tokens=self.settings.budget_tokens)
        pool = make_pool(self.settings)
        gate = asyncio.Semaphore(self.settings.workers)
        node, environ = node_name(), dict(os.environ)

        async def one(task: BatchTask) -> None:
            async with gate:
                hooks.started(task, node, 1)
                outcome = await run_task(task, self.flags, environ, budget=budget, pool=pool,
                                         scratch=self.scratch / task.id, node=node)
                hooks.finished(task, outcome)

        try:
            await asyncio.gather(*(one(t) for t in todo))
        finally:
            await pool.close()
