"""One task, run where it lands (this process, or a Ray worker on any node).

``run_task`` clones the task's repository into a scratch folder, runs a session there and
returns a ``TaskOutcome``: the result line, the report, the patch and the run's events. It
writes nothing under the batch's ``--out``: the driver alone does (``store``), so a task
that runs on another machine, or runs twice because its node died, cannot leave half a
result there.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from bakeoff.agent.batch.tasks import BatchTask, clone
from bakeoff.agent.config import ConfigError, load_settings
from bakeoff.agent.events import EventBus
from bakeoff.agent.models.budget import Budget
from bakeoff.agent.session import Session, SessionError, user_errors
from bakeoff.sandboxes.pool import SandboxPool


class TaskOutcome(BaseModel):
    """What one task made: ``result`` is its line of ``results.jsonl``."""

    result: dict[str, Any]
    report_json: str = ""
    patch: str = ""
    events_jsonl: str = ""


def node_name() -> str:
    """This machine, as the batch board and ``--jsonl`` name it."""
    return socket.gethostname()


async def run_task(task: BatchTask, flags: dict[str, Any], environ: dict[str, str], *, budget: Budget,
                   pool: SandboxPool, scratch: Path, node: str | None = None) -> TaskOutcome:
    """Run ``task`` in ``scratch`` (removed after), its model calls paid from ``budget``, its
    sandboxes from ``pool``. Errors the task's author must fix end as status ``error`` with
    ``cause: user``; a cancelled task re-raises once its sandboxes are closed."""
    started = time.monotonic()
    result: dict[str, Any] = {"id": task.id, "repo": task.repo, "base": task.base, "status": "error",
                              "node": node or node_name()}
    made: dict[str, str] = {}
    repo = scratch / "clone"
    shutil.rmtree(scratch, ignore_errors=True)  # what a killed batch left of this task
    try:
        result["base_commit"] = await asyncio.to_thread(clone, task, repo)
        try:
            settings, _ = load_settings(repo, environ, {**flags, "build": task.build, "test": task.test})
        except ConfigError as exc:
            raise SessionError(f"task {task.id}: {exc}") from None
        session = Session(settings, repo, events=EventBus(), budget=budget, pool=pool, state=scratch / "state")
        try:
            report = await session.run(task.instruction, run_id=f"{task.id}-{int(time.time())}")
        finally:
            await session.close()
        log = scratch / "state" / "runs" / str(report.run_id) / "events.jsonl"
        made.update(events_jsonl=log.read_text(encoding="utf-8") if log.is_file() else "",
                    report_json=report.model_dump_json(indent=2), patch=report.patch)
        result.update(status=report.status, winner=report.winner.id if report.winner else None,
                      cost_usd=report.cost_usd, tokens=report.tokens, error=report.error,
                      patch_lines=len(report.patch.splitlines()))
    except user_errors() as exc:
        # The task's repository, base or settings: the user fixes it (then --retry-failed).
        result.update(error=str(exc), cause="user")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # the clone was only the run's read-only view
    result["duration_s"] = round(time.monotonic() - started, 3)
    return TaskOutcome(result=result, **made)
