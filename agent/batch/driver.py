"""The batch's driver: what is left to run, a runner that runs it (here or on a Ray cluster),
and the one writer of ``--out`` (``store``)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from rich.console import Console

from bakeoff.agent.batch import EXIT_HELP  # noqa: F401 - the batch's exit codes live with it
from bakeoff.agent.batch.board import BatchBoard
from bakeoff.agent.batch.execute import TaskOutcome
from bakeoff.agent.batch.store import BatchStore
from bakeoff.agent.batch.tasks import BatchTask
from bakeoff.agent.patches import PatchRejected



class Batch:
    """``runner`` is a ``LocalRunner`` or a ``RayRunner``; the batch records what it reports."""

    def __init__(self, tasks: list[BatchTask], out: Path, runner: Any, *, branch: str | None = None,
                 retry_failed: bool = False, jsonl=None, console: Console | None = None) -> None:
        self.tasks = {t.id: t for t in tasks}
        self.store = BatchStore(out, tasks, retry_failed=retry_failed)
        self.runner = runner
        self.branch = branch
        self.console = console or Console(stderr=True)
        self.jsonl = jsonl

    async def run(self) -> int:
        todo = self.store.to_run()
        skipped = len(self.store.results)
        self.board = BatchBoard(len(self.tasks), self.runner.slots if todo else 0, console=self.console,
                                jsonl=self.jsonl)
        self.board.results.update(self.store.results)
        self.say(f"batch: {len(self.tasks)} tasks, {skipped} already finished, {len(todo)} to run, "
                 f"{self.runner.describe()}")
        self.board.start()
        try:
            if todo:
                await self.runner.run(todo, self)
        finally:
            self.board.stop()
        self.store.write_results()
        self.print_summary()
        return self.exit_code()

    # ------------------------------------------------------------------ the runner's hooks

    def started(self, task: BatchTask, node: str, attempt: int) -> None:
        self.board.started_on(task.id, node, attempt)

    def retried(self, task: BatchTask, attempt: int, why: str) -> None:
        self.board.retried(task.id, attempt, why)

    def finished(self, task: BatchTask, outcome: TaskOutcome) -> None:
        result = outcome.result
        if self.branch and result.get("status") == "success" and outcome.patch:
            try:
                self.store.commit_on_branch(task, outcome, self.branch)
            except (PatchRejected, OSError) as exc:
                result["branch_error"] = f"not committed on {self.branch}: {exc}"
        if self.store.record(task, outcome):
            self.board.finished(task.id, result, outcome.events_jsonl)

    def say(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False)

    # ------------------------------------------------------------------ the end

    def summary_table(self):
        from rich.table import Table

        table = Table(title="batch", title_justify="left")
        for col in ("task", "status", "winner", "node", "cost", "tokens", "time", "reason"):
            table.add_column(col, overflow="fold")
        for tid in self.tasks:
            r = self.store.results.get(tid)
            if r is None:
                table.add_row(tid, "not run", "-", "-", "-", "-", "-", "")
                continue
            reason = "" if r.get("status") == "success" else str(r.get("error") or "")
            table.add_row(tid, r.get("status", "?"), r.get("winner") or "-", str(r.get("node") or "-"),
                          f"${r.get('cost_usd') or 0.0:.4f}", str(r.get("tokens", 0)),
                          f"{r.get('duration_s', 0):.1f}s", reason[:200])
        return table

    def exit_code(self) -> int:
        """0 every task succeeded; 2 every task failed for a reason the user must fix (a missing
        repository, an unknown base, bad settings); 3 the budget ran out; else 1."""
        results = list(self.store.results.values())
        statuses = [r.get("status") for r in results]
        if results and all(r.get("status") == "error" and r.get("cause") == "user" for r in results):
            return 2
        if "budget-exhausted" in statuses:
            return 3
        return 0 if all(s == "success" for s in statuses) else 1

    def print_summary(self) -> None:
        buf = io.StringIO()
        Console(file=buf, width=120, no_color=True).print(self.summary_table())
        self.store.write_summary(buf.getvalue())
        out = Console(stderr=self.jsonl is not None)  # --jsonl owns stdout
        if len(self.tasks) <= 200:
            out.print(self.summary_table())
        results = self.store.results
        total = sum(r.get("cost_usd") or 0.0 for r in results.values())
        out.print(f"total cost ${total:.4f} · results in {self.store.out / 'results.jsonl'}"
                  + ("" if len(self.tasks) <= 200 else f" · the table is in {self.store.out / 'summary.txt'}"),
                  markup=False)
        failed = [tid for tid, r in results.items() if r.get("status") == "error"]
        if failed:
            out.print(f"{len(failed)} task(s) failed ({', '.join(failed[:20])}{' ...' if len(failed) > 20 else ''}): "
                      "the reasons are above; fix them and run the same command with --retry-failed to run those "
                      "again", markup=False)
