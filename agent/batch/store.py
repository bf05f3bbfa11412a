"""The batch's ``--out``, written by the driver alone.

Each task gets ``tasks/<id>/``: ``patch.diff``, ``report.json``, ``events.jsonl`` and
``result.json``, written last (a task with it is finished, and is never run again unless
``--retry-failed`` and it failed); with ``--branch`` the winning patch is committed on that
branch in ``tasks/<id>/clone``. ``results.jsonl`` and ``summary.txt`` cover the whole batch.
Every file is written to a temporary name and renamed, so an interrupted batch never leaves
half a file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from bakeoff.agent.batch.execute import TaskOutcome
from bakeoff.agent.batch.tasks import BatchTask, clone
from bakeoff.agent.storage import write_atomic


class BatchStore:
    def __init__(self, out: Path, tasks: list[BatchTask], *, retry_failed: bool = False) -> None:
        self.out = out
        self.tasks = tasks
        self.retry_failed = retry_failed
        self.results: dict[str, dict[str, Any]] = {}

    def task_dir(self, task: BatchTask) -> Path:
        return self.out / "tasks" / task.id

    def finished(self, task: BatchTask) -> dict[str, Any] | None:
        marker = self.task_dir(task) / "result.json"
        if not marker.is_file():
            return None
        result = json.loads(marker.read_text(encoding="utf-8"))
        if self.retry_failed and result.get("status") == "error":
            return None
        return result

    def to_run(self) -> list[BatchTask]:
        """The tasks not finished yet; whatever an unfinished one left is removed (it restarts
        from nothing), and so are the temporary files of a killed batch."""
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in self.out.glob(".*.tmp"):
            stale.unlink()
        todo = []
        for task in self.tasks:
            done = self.finished(task)
            if done is not None:
                self.results[task.id] = done
                continue
            shutil.rmtree(self.task_dir(task), ignore_errors=True)
            todo.append(task)
        return todo

    def record(self, task: BatchTask, outcome: TaskOutcome) -> bool:
        """Write a task's files, ``result.json`` last, and the batch's ``results.jsonl``. A task
        already recorded is not written again (False): a result is never duplicated."""
        if task.id in self.results:
            return False
        tdir = self.task_dir(task)
        tdir.mkdir(parents=True, exist_ok=True)
        if outcome.report_json:
            write_atomic(tdir / "events.jsonl", outcome.events_jsonl)
            write_atomic(tdir / "report.json", outcome.report_json)
            write_atomic(tdir / "patch.diff", outcome.patch)
        write_atomic(tdir / "result.json", json.dumps(outcome.result, indent=2))
        self.results[task.id] = outcome.result
        self.write_results()
        return True

    def commit_on_branch(self, task: BatchTask, outcome: TaskOutcome, branch: str) -> None:
        """The winning patch as one commit on ``branch`` in ``tasks/<id>/clone`` (a fresh clone
        at the task's base, made here, whichever node ran the task)."""
        from bakeoff.agent.apply import apply_patch

        result, repo = outcome.result, self.task_dir(task) / "clone"
        shutil.rmtree(repo, ignore_errors=True)
        clone(task, repo)
        report = json.loads(outcome.report_json)
        apply_patch(repo, outcome.patch, base_commit=result.get("base_commit"), branch=branch,
                    message=f"bakeoff: {task.instruction.splitlines()[0][:60]}\n\n"
                            f"candidate {result.get('winner')}, run {report.get('run_id')}")
        result.update(branch=branch, clone=str(repo))

    def write_results(self) -> None:
        lines = [json.dumps(self.results[t.id]) for t in self.tasks if t.id in self.results]
        write_atomic(self.out / "results.jsonl", "".join(line + "\n" for line in lines))

    def write_summary(self, text: str) -> None:
        write_atomic(self.out / "summary.txt", text)
