"""``bakeoff batch TASKS``: many tasks over git repositories, resumable.

TASKS is JSONL, JSON or YAML: a list of ``{id, repo, base, instruction, test?, build?}``
(``repo`` a path or a URL; ``base`` a ref, HEAD by default). Tasks run ``--workers`` at a
time, sharing one sandbox pool and one budget. Under ``--out DIR`` each task gets
``tasks/<id>/``: ``patch.diff``, ``report.json``, ``events.jsonl`` and ``result.json``
(written last: a task with it is finished); with ``--branch`` the winning patch is
committed on that branch in ``tasks/<id>/clone``. ``results.jsonl`` and ``summary.txt``
cover the whole batch; ``state/`` keeps each run's saved log as the Session writes it.
The batch's own settings (flags, environment, the current directory's config) choose the
sandbox kind, the worker count and the one budget; each task's repository config adds its
models and build and test commands, and the task's own ``test``/``build`` come last. Every file is written to a temporary name and renamed, so an
interrupted batch never leaves half a file; re-running it skips finished tasks and
restarts unfinished ones from a fresh clone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import typer

EXIT_HELP = (
    "Exit codes: 0 every task succeeded; 1 some task found no correct candidate or failed; "
    "2 usage or configuration error, or every task failed for a reason you must fix (a missing repository, "
    "an unknown base); 3 the budget ran out; 130, 143, 129 stopped by INT, TERM, HUP."
)


def register(app: typer.Typer) -> None:
    app.command("batch", help=f"Run many tasks over git repositories (JSONL or YAML), resumably.\n\n{EXIT_HELP}")(
        batch_command
    )


def batch_command(
    tasks: Path = typer.Argument(..., help="JSONL, JSON or YAML file of {id, repo, base, instruction, test?, build?}."),
    out: Path = typer.Option(Path("bakeoff-out"), "--out", help="Directory for per-task results, results.jsonl and summary.txt."),
    workers: int | None = typer.Option(None, "--workers", help="Tasks run at once (they share the sandbox pool and the budget)."),
    branch: str | None = typer.Option(None, "--branch", help="Commit each winning patch on this branch in a clone under --out."),
    model: str | None = typer.Option(None, "--model", help="Model for every role (litellm model string or scripted:PATH)."),
    n: int | None = typer.Option(None, "--n", help="Candidates per task."),
    budget: float | None = typer.Option(None, "--budget", help="Dollars the whole batch may spend."),
    budget_tokens: int | None = typer.Option(None, "--budget-tokens", help="Tokens the whole batch may spend."),
    sandbox: str | None = typer.Option(None, "--sandbox", help="auto (docker when an engine answers, else bubblewrap), docker, local (bubblewrap) or unsafe-local (no isolation)."),
    docker_host: str | None = typer.Option(None, "--docker-host", help="The Docker engine sandboxes run on: tcp://HOST:PORT, ssh://USER@HOST, unix:///PATH or a docker context name (default: DOCKER_HOST, else this machine's)."),
    docker_cert_path: Path | None = typer.Option(None, "--docker-cert-path", metavar="DIR", help="Folder of ca.pem, cert.pem and key.pem: TLS to a tcp:// --docker-host."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run again the tasks that ended in an error."),
    time_limit: float | None = typer.Option(None, "--time-limit", metavar="SECONDS", help="Wall-clock seconds each task may take (default 3600)."),
) -> None:
    from bakeoff.agent.cli.checks import read_text, writable_dir
    from bakeoff.agent.cli.run import fail, load, user_errors
    from bakeoff.agent.cli.stopping import Stopped, leave_now, run_stoppable
    from bakeoff.agent.storage import claimed

    try:
        items = read_tasks(tasks, read_text(tasks, "task file"))
    except ValueError as exc:
        fail(str(exc))
    flags = {"model.default": model, "n": n, "budget_usd": budget, "budget_tokens": budget_tokens,
             "sandbox": sandbox, "workers": workers, "time_limit_s": time_limit,
             "docker_host": docker_host, "docker_cert_path": str(docker_cert_path) if docker_cert_path else None}
    settings, _ = load(Path.cwd(), flags)
    from bakeoff.agent.models import model_for_role

    try:
        for role in ("planner", "editor", "tester", "judge"):
            if settings.model.for_role(role).startswith("scripted:"):
                model_for_role(settings.model, role)  # its file is read and checked now, not in every task
    except user_errors() as exc:
        fail(str(exc))
    writable_dir(out, "--out")
    batch = Batch(items, out, flags=flags, settings=settings, branch=branch, retry_failed=retry_failed)
    try:
        with claimed(out, "batch"):  # a second batch on the same --out is refused before it touches anything
            code = run_stoppable(batch.run())
    except user_errors() as exc:
        fail(str(exc))
    except Stopped as stop:
        leave_now(stop, f"stopped by {stop.name}: sandboxes removed; finished tasks are kept, "
                        "run the same command again to resume")
    raise typer.Exit(code)


# --------------------------------------------------------------------------- task file


def _task_model():
    from pydantic import BaseModel, ConfigDict, Field, field_validator

    class BatchTask(BaseModel):
        model_config = ConfigDict(extra="forbid", populate_by_name=True)

        id: str
        repo: str
        base: str = Field("HEAD", alias="base_ref")
        instruction: str
        test: str | None = None
        build: str | None = None

        @field_validator("id")
        @classmethod
        def _safe_id(cls, value: str) -> str:
            # The id names a directory under --out: keep it one plain path component.
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", value):
                raise ValueError("use letters, digits, '.', '_' and '-' (it names a directory)")
            return value

    return BatchTask


def read_tasks(path: Path, text: str | None = None) -> list[Any]:
    """The tasks of a JSONL, JSON or YAML file (``text``: its contents, already read);
    ``ValueError`` says which entry is wrong and why."""
    from pydantic import ValidationError

    BatchTask = _task_model()
    text = path.read_text(encoding="utf-8") if text is None else text
    if path.suffix == ".jsonl":
        raw = []
        for no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    raw.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{no}: not JSON ({exc.msg})") from None
    else:
        import yaml  # YAML reads JSON too

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML or JSON ({exc})") from None
        if isinstance(raw, dict) and "tasks" in raw:
            raw = raw["tasks"]
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{path}: expected a non-empty list of tasks")
    tasks, seen = [], set()
    for i, entry in enumerate(raw, 1):
        try:
            task = BatchTask.model_validate(entry)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"{path}: task {i}: {problems}") from None
        if task.id in seen:
            raise ValueError(f"{path}: task id {task.id!r} appears twice; ids name output directories")
        seen.add(task.id)
        if "://" not in task.repo and not task.repo.startswith("git@"):
            local = Path(task.repo).expanduser()
            if not local.is_absolute():
                local = (path.parent / local).resolve()
            task.repo = str(local)
        tasks.append(task)
    return tasks


# --------------------------------------------------------------------------- files


def write_atomic(path: Path, text: str) -> None:
    from bakeoff.agent.storage import write_atomic as write

    write(path, text)


def clone(task: Any, dest: Path) -> None:
    """A fresh clone of the task's repository at its base, HEAD detached."""
    from bakeoff.agent import repository
    from bakeoff.agent.session import SessionError

    if "://" not in task.repo and not task.repo.startswith("git@") and not Path(task.repo).is_dir():
        raise SessionError(f"task {task.id}: repository {task.repo} does not exist")
    try:
        repository.clone(task.repo, dest)
    except repository.GitError as exc:
        raise SessionError(f"task {task.id}: {exc}") from None
    for ref in (task.base, f"origin/{task.base}"):
        sha = repository.resolve_commit(dest, ref)
        if sha:
            repository.checkout_detached(dest, sha)
            return
    raise SessionError(f"task {task.id}: base {task.base!r} is not a commit of {task.repo}")


# --------------------------------------------------------------------------- running


class Batch:
    def __init__(self, tasks: list[Any], out: Path, *, flags: dict[str, Any], settings: Any,
                 branch: str | None, retry_failed: bool) -> None:
        self.tasks = tasks
        self.out = out
        self.flags = flags
        self.settings = settings
        self.branch = branch
        self.retry_failed = retry_failed
        self.results: dict[str, dict[str, Any]] = {}
        self.running: set[str] = set()
        self.durations: list[float] = []

    def task_dir(self, task: Any) -> Path:
        return self.out / "tasks" / task.id

    def finished(self, task: Any) -> dict[str, Any] | None:
        marker = self.task_dir(task) / "result.json"
        if not marker.is_file():
            return None
        result = json.loads(marker.read_text(encoding="utf-8"))
        if self.retry_failed and result.get("status") == "error":
            return None
        return result

    async def run(self) -> int:
        import asyncio
        import shutil

        from rich.console import Console

        from bakeoff.agent.models.budget import Budget

        self.out.mkdir(parents=True, exist_ok=True)
        for stale in self.out.glob(".*.tmp"):
            stale.unlink()  # a temp file of a killed batch; its real file is whole or absent
        self.console = Console(stderr=True)
        todo = []
        for task in self.tasks:
            done = self.finished(task)
            if done is not None:
                self.results[task.id] = done
                continue
            # An unfinished task restarts from nothing: whatever it left is removed.
            shutil.rmtree(self.task_dir(task), ignore_errors=True)
            todo.append(task)
        skipped = len(self.results)
        self.console.print(
            f"batch: {len(self.tasks)} tasks, {skipped} already finished, {len(todo)} to run, "
            f"{self.settings.workers} at a time"
        )
        self.budget = Budget(max_usd=self.settings.budget_usd, max_tokens=self.settings.budget_tokens)
        self.pool = None
        if todo:
            from bakeoff.sandboxes import choose_backend

            from bakeoff.agent.session import docker_host_of, make_pool

            choice = choose_backend(self.settings.sandbox, docker_host_of(self.settings))
            self.console.print(f"sandboxes: {choice.backend} ({choice.reason})", markup=False)
            if choice.warning:
                self.console.print(f"warning: {choice.warning}", style="yellow", markup=False)
            self.pool = make_pool(self.settings)
        self.started = asyncio.get_running_loop().time()
        gate = asyncio.Semaphore(self.settings.workers)
        self._start_panel()
        try:
            async def guarded(task: Any) -> None:
                async with gate:
                    await self.run_task(task)

            await asyncio.gather(*(guarded(t) for t in todo))
        finally:
            self._stop_panel()
            if self.pool is not None:
                await self.pool.close()
        self.write_results()
        self.print_summary()
        return self.exit_code()

    async def run_task(self, task: Any) -> None:
        import asyncio
        import shutil
        import time

        from bakeoff.agent.cli.run import user_errors
        from bakeoff.agent.config import ConfigError, load_settings
        from bakeoff.agent.events import EventBus
        from bakeoff.agent.session import Session, SessionError

        tdir = self.task_dir(task)
        tdir.mkdir(parents=True, exist_ok=True)
        self.running.add(task.id)
        self._refresh()
        started = time.monotonic()
        result: dict[str, Any] = {"id": task.id, "repo": task.repo, "base": task.base, "status": "error"}
        repo = tdir / "clone"
        try:
            await asyncio.to_thread(clone, task, repo)
            result["base_commit"] = (await asyncio.to_thread(_head, repo))
            flags = {**self.flags, "build": task.build, "test": task.test}
            try:
                settings, _ = load_settings(repo, _environ(), flags)
            except ConfigError as exc:
                raise SessionError(f"task {task.id}: {exc}") from None
            events = EventBus()
            session = Session(settings, repo, events=events, budget=self.budget, pool=self.pool,
                              state=self.out / "state")
            report = await session.run(task.instruction, run_id=f"{task.id}-{int(time.time())}")
            log = self.out / "state" / "runs" / str(report.run_id) / "events.jsonl"
            if log.is_file():
                write_atomic(tdir / "events.jsonl", log.read_text(encoding="utf-8"))
            write_atomic(tdir / "report.json", report.model_dump_json(indent=2))
            write_atomic(tdir / "patch.diff", report.patch)
            result.update(status=report.status, winner=report.winner.id if report.winner else None,
                          cost_usd=report.cost_usd, tokens=report.tokens, error=report.error,
                          patch_lines=len(report.patch.splitlines()))
            if self.branch and report.status == "success" and report.patch:
                await asyncio.to_thread(session.apply, report, self.branch)
                result["branch"] = self.branch
                result["clone"] = str(repo)
        except user_errors() as exc:
            # The task's repository, base or settings: the user fixes it (then --retry-failed).
            result.update(error=str(exc), cause="user")
        if result["status"] == "error":
            self.say(f"task {task.id} failed: {result.get('error') or 'unknown error'}")
        if not result.get("branch"):
            shutil.rmtree(repo, ignore_errors=True)  # the clone was only the run's read-only view
        result["duration_s"] = round(time.monotonic() - started, 3)
        self.durations.append(result["duration_s"])
        write_atomic(tdir / "result.json", json.dumps(result, indent=2))
        self.results[task.id] = result
        self.running.discard(task.id)
        self.write_results()
        self._refresh()

    # ------------------------------------------------------------------ output

    def write_results(self) -> None:
        lines = [json.dumps(self.results[t.id]) for t in self.tasks if t.id in self.results]
        write_atomic(self.out / "results.jsonl", "".join(line + "\n" for line in lines))

    def summary_table(self):
        from rich.table import Table

        table = Table(title="batch", title_justify="left")
        for col in ("task", "status", "winner", "cost", "tokens", "time", "reason"):
            table.add_column(col, overflow="fold")
        for t in self.tasks:
            r = self.results.get(t.id)
            if r is None:
                table.add_row(t.id, "not run", "-", "-", "-", "-", "")
                continue
            reason = "" if r.get("status") == "success" else str(r.get("error") or "")
            table.add_row(
                t.id, r.get("status", "?"), r.get("winner") or "-", f"${r.get('cost_usd', 0.0):.4f}",
                str(r.get("tokens", 0)), f"{r.get('duration_s', 0):.1f}s", reason[:200],
            )
        return table

    def exit_code(self) -> int:
        """0 every task succeeded; 2 every task failed for a reason the user must fix (a missing
        repository, an unknown base, bad settings); 3 the budget ran out; else 1."""
        results = list(self.results.values())
        statuses = [r.get("status") for r in results]
        if results and all(r.get("status") == "error" and r.get("cause") == "user" for r in results):
            return 2
        if "budget-exhausted" in statuses:
            return 3
        return 0 if all(s == "success" for s in statuses) else 1

    def say(self, line: str) -> None:
        """A line above the live panel (or in the log)."""
        self.console.print(line, markup=False, highlight=False)

    def print_summary(self) -> None:
        import io

        from rich.console import Console

        buf = io.StringIO()
        Console(file=buf, width=100, no_color=True).print(self.summary_table())
        write_atomic(self.out / "summary.txt", buf.getvalue())
        Console().print(self.summary_table())
        total = sum(r.get("cost_usd", 0.0) for r in self.results.values())
        Console().print(f"total cost ${total:.4f} · results in {self.out / 'results.jsonl'}", markup=False)
        failed = [tid for tid, r in self.results.items() if r.get("status") == "error"]
        if failed:
            Console().print(f"{len(failed)} task(s) failed ({', '.join(failed)}): the reasons are above; fix them "
                            "and run the same command with --retry-failed to run those again", markup=False)

    def panel(self):
        from rich.text import Text

        done = [r for r in self.results.values()]
        failed = sum(1 for r in done if r.get("status") != "success")
        remaining = len(self.tasks) - len(done)
        cost = sum(r.get("cost_usd", 0.0) for r in done)
        eta = "-"
        if self.durations:
            per = sum(self.durations) / len(self.durations)
            eta = f"{per * remaining / max(1, self.settings.workers):.0f}s"
        return Text(
            f"done {len(done) - failed} · failed {failed} · running {len(self.running)} · "
            f"waiting {remaining - len(self.running)} · cost ${cost:.4f} · ETA {eta}"
        )

    def _start_panel(self) -> None:
        from rich.live import Live

        self._live = None
        if self.console.is_terminal:
            self._live = Live(self.panel(), console=self.console, refresh_per_second=4)
            self._live.start()

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.panel())
        else:
            self.console.print(self.panel())

    def _stop_panel(self) -> None:
        if self._live is not None:
            self._live.stop()


def _head(repo: Path) -> str | None:
    from bakeoff.agent.repository import head_commit

    return head_commit(repo)


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)
