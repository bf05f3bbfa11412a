"""One Session behind every front door: chat, run, batch, demo and the GitHub Action.

A Session holds what one user's work on one repository needs: the validated settings, a
read-only view of the repository at a recorded base commit, one Budget shared by every
model call, the models per role (each wrapped by the budget), the sandbox pool, and the
tool registry with ``fan_out``. ``run`` turns a task into a ``RunReport``; ``apply`` and
``undo`` are the only ways bakeoff writes the user's tree, and only when asked.

Event logs, reports and history go to the state directory (``agent.config.state_dir``),
never into the user's repository.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bakeoff.agent.config import Settings, state_dir
from bakeoff.agent.events import EventBus, JsonlSink
from bakeoff.agent.seams import Completion, Message, Model, ToolContext, Workspace
from bakeoff.agent.types import Candidate, RunReport, ToolCall

ROLES = ("planner", "joiner", "editor", "tester", "judge")


class SessionError(Exception):
    """Something the user can fix (a missing repository, nothing to apply, a changed tree)."""


class CostMeter:
    """What one run spent, counted from the completions its models returned.

    The Budget may be shared by concurrent runs (a batch), so a run's own cost is counted
    here rather than read off the budget.
    """

    def __init__(self) -> None:
        self.cost_usd = 0.0
        self.tokens = 0
        self.calls = 0

    def add(self, completion: Completion) -> None:
        self.cost_usd += completion.cost_usd or 0.0
        self.tokens += completion.usage.total_tokens
        self.calls += 1


class MeteredModel:
    """A model whose completions are counted on a ``CostMeter``; streamed text becomes
    ``model.delta`` events so a door can show the model writing."""

    def __init__(self, inner: Model, meter: CostMeter, events: EventBus, role: str) -> None:
        self.inner = inner
        self.name = inner.name
        self.meter = meter
        self.events = events
        self.role = role

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int | None = None,
    ) -> Completion:
        completion = await self.inner.complete(messages, n=n, temperature=temperature, max_tokens=max_tokens)
        self._count(completion)
        return completion

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
    ) -> AsyncIterator[str | Completion]:
        async for piece in self.inner.stream(messages, temperature=temperature, max_tokens=max_tokens):
            if isinstance(piece, Completion):
                self._count(piece)
            else:
                self.events.emit("model.delta", role=self.role, text=piece)
            yield piece

    def _count(self, completion: Completion) -> None:
        self.meter.add(completion)


class LazySandbox:
    """The sandbox the planner's own tools (run, build, test, edit) work in: a copy of the
    repository at base, made from the pool only when a tool first needs it."""

    def __init__(self, pool: Any, workspace: Workspace) -> None:
        self._pool = pool
        self._workspace = workspace
        self._stack: contextlib.AsyncExitStack | None = None
        self._sandbox: Any = None
        self._lock = asyncio.Lock()
        self.backend = "lazy"

    async def _get(self) -> Any:
        async with self._lock:
            if self._sandbox is None:
                self._stack = contextlib.AsyncExitStack()
                self._sandbox = await self._stack.enter_async_context(self._pool.sandbox(self._workspace))
                self.backend = self._sandbox.backend
            return self._sandbox

    async def exec(self, cmd: Any, timeout: float | None = None, env: Any = None, cwd: str | None = None) -> Any:
        return await (await self._get()).exec(cmd, timeout=timeout, env=env, cwd=cwd)

    async def write_file(self, path: str, content: str | bytes) -> None:
        await (await self._get()).write_file(path, content)

    async def read_file(self, path: str) -> bytes:
        return await (await self._get()).read_file(path)

    async def diff(self) -> str:
        return await self._sandbox.diff() if self._sandbox is not None else ""

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack, self._sandbox = self._stack, None, None
            await stack.aclose()


def make_pool(settings: Settings) -> Any:
    """The sandbox pool for ``settings``: its kind, its size, and its image or Dockerfile."""
    from bakeoff.sandboxes.pool import SandboxPool

    image, dockerfile = settings.image, None
    if image and (image.endswith("Dockerfile") or Path(image).expanduser().is_file()):
        image, dockerfile = None, Path(image).expanduser()
    return SandboxPool(kind=settings.sandbox, max_concurrent=settings.max_sandboxes, image=image, dockerfile=dockerfile)


def git(repo: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise SessionError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def head_commit(repo: Path) -> str | None:
    """The commit checked out in ``repo``, or None when it is not a git repository (or empty)."""
    proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "-q", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary name, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _uncommitted(repo: Path) -> list[str]:
    """Tracked files with changes not committed yet."""
    proc = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "-z", "--untracked-files=no"],
                          capture_output=True, text=True)
    # -z: "XY path\0", paths unquoted; a rename adds its old path as the next entry.
    entries = proc.stdout.split("\0") if proc.returncode == 0 else []
    return [e[3:] for e in entries if len(e) > 3 and e[2] == " "]


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


class Session:
    """Shared by every front door. Construction validates everything a run needs.

    ``model_override`` replaces every role's model (the demo's scripted model). ``budget``
    and ``pool`` may be passed in to share one of each between sessions (a batch).
    Raises ``SessionError`` for a missing repository and ``ModelNotConfigured`` when no
    model is configured and none is given.
    """

    def __init__(
        self,
        settings: Settings,
        repo: Path,
        *,
        events: EventBus,
        model_override: Model | None = None,
        budget: Any = None,
        pool: Any = None,
        state: Path | None = None,
    ) -> None:
        repo = Path(repo).expanduser()
        if not repo.is_dir():
            raise SessionError(f"repository {repo} does not exist: pass --repo PATH to a checkout")
        self.repo = repo.resolve()
        self.events = events
        self.state = state or state_dir()
        self.base_commit = head_commit(self.repo)
        self._shared_pool = pool
        self._pool = pool
        self.history: list[RunReport] = []
        self.applied: list[Any] = []  # AppliedChange, newest last
        self.cost_usd = 0.0
        self.tokens = 0
        self.sandbox_choice: Any = None
        self._retired_pools: list[Any] = []
        self._configure(settings, model_override, budget)
        if pool is None:
            self.check_sandbox()

    # ------------------------------------------------------------------ configuration

    def _configure(self, settings: Settings, override: Model | None, shared_budget: Any) -> None:
        from bakeoff.agent.models.budget import Budget, BudgetedModel

        models = self._models_per_role(settings, override)  # raises before anything changes
        self.settings = settings
        self.model_override = override
        self._shared_budget = shared_budget
        self.budget = shared_budget or Budget(max_usd=settings.budget_usd, max_tokens=settings.budget_tokens)
        self._raw_models = models
        self._budgeted = {
            role: BudgetedModel(model, self.budget, role=role, events=self.events)
            for role, model in self._raw_models.items()
        }

    @staticmethod
    def _models_per_role(settings: Settings, override: Model | None) -> dict[str, Model]:
        """One model per role. Roles naming the same spec share one model object, so a
        scripted model's responses are shared between roles as its file intends."""
        models: dict[str, Model] = {}
        by_spec: dict[str, Model] = {}
        for role in ROLES:
            if override is not None:
                base = override
            else:
                # The joiner is the planner's second half; it uses the planner's model.
                config_role = "planner" if role == "joiner" else role
                spec = settings.model.for_role(config_role)
                if spec not in by_spec:
                    by_spec[spec] = settings.model.resolve(config_role)
                base = by_spec[spec]
            for_role = getattr(base, "for_role", None)
            models[role] = for_role(role) if callable(for_role) else base
        return models

    def update(self, **changes: Any) -> Settings:
        """Change settings between runs (chat's /model, /n, /budget, /sandbox), validated again.
        ``model`` names one model for every role. Nothing changes when the new settings are
        invalid, their model cannot be made, or their sandbox cannot run here."""
        from bakeoff.sandboxes import choose_backend

        data = self.settings.model_dump()
        for key, value in changes.items():
            if key == "model":
                data["model"].update(default=value, planner=None, editor=None, tester=None, judge=None)
            else:
                data[key] = value
        settings = Settings.model_validate(data)
        choice = choose_backend(settings.sandbox) if "sandbox" in changes else self.sandbox_choice
        budget_changed = "budget_usd" in changes or "budget_tokens" in changes
        self._configure(
            settings,
            None if "model" in changes else self.model_override,
            None if budget_changed else self._shared_budget,
        )
        self.sandbox_choice = choice
        if {"sandbox", "max_sandboxes", "image"} & changes.keys() and self._pool is not self._shared_pool:
            if self._pool is not None:
                self._retired_pools.append(self._pool)  # closed with the session: runs are over
            self._pool = self._shared_pool
        return settings

    @property
    def model_names(self) -> dict[str, str]:
        return {role: model.name for role, model in self._raw_models.items()}

    @property
    def pool(self) -> Any:
        if self._pool is None:
            self._pool = make_pool(self.settings)
        return self._pool

    def check_sandbox(self) -> Any:
        """Which sandbox backend runs the candidates, and why; raises ``SandboxUnavailable``
        (the user can fix it: start Docker, or choose another kind) when it cannot run here."""
        from bakeoff.sandboxes import choose_backend

        choice = choose_backend(self.settings.sandbox)
        self.sandbox_choice = choice
        return choice

    # ------------------------------------------------------------------ running

    def registry(self) -> Any:
        from bakeoff.agent.fanout.trajectory import FanOut
        from bakeoff.tools.registry import default_registry

        registry = default_registry()
        if registry.get(FanOut.name) is None:
            registry.register(FanOut())
        return registry

    def _context(self) -> str:
        s = self.settings
        lines = [
            f"Repository: {self.repo} at commit {self.base_commit or '(not a git repository)'}.",
            f"Candidates per fan_out: {s.n}; repair rounds: {s.rounds}.",
        ]
        if s.build:
            lines.append(f"Build command: {s.build}")
        if s.test:
            lines.append(f"Test command: {s.test}")
        return "\n".join(lines)

    async def run(self, task: str, *, run_id: str | None = None) -> RunReport:
        """Plan, fan out, select and join one task; the user's tree is not touched.

        The run is saved as it goes under ``<state>/runs/<id>/`` (events.jsonl, report.json).
        A cancelled run (Ctrl-C) re-raises ``CancelledError`` after recording that it stopped.
        """
        from bakeoff.agent.models.budget import BudgetExceeded

        self.base_commit = head_commit(self.repo)  # the user may have committed since the last run
        run_id = run_id or new_run_id()
        run_dir = self.state / "runs" / run_id
        sink = JsonlSink(run_dir / "events.jsonl")
        unsubscribe = self.events.subscribe(sink)
        meter = CostMeter()
        started = time.monotonic()
        dirty = _uncommitted(self.repo) if self.base_commit else []
        self.events.emit(
            "run.start",
            run_id=run_id,
            task=task,
            repo=str(self.repo),
            base_commit=self.base_commit,
            models=self.model_names,
            n=self.settings.n,
            sandbox=self.sandbox_choice.backend if self.sandbox_choice else self.settings.sandbox,
            run_dir=str(run_dir),
        )
        if dirty:
            # Candidates copy the base commit: edits not committed yet are not part of the run.
            self.events.emit("repo.uncommitted", paths=dirty[:20], count=len(dirty))
        report = RunReport(task=task, status="error", base_commit=self.base_commit, run_id=run_id)
        try:
            try:
                report = await self._run(task, run_id, meter)
            except BudgetExceeded as exc:
                report.status = "budget-exhausted"
                report.error = str(exc)
            except BaseException as exc:
                # Recorded, then raised on: a cancelled step (Ctrl-C), an unreachable model.
                report.error = "cancelled" if isinstance(exc, asyncio.CancelledError) else f"{type(exc).__name__}: {exc}"
                self._finish(report, meter, started, run_dir)
                raise
            self._finish(report, meter, started, run_dir)
        finally:
            unsubscribe()
            sink.close()
        return report

    async def _run(self, task: str, run_id: str, meter: CostMeter) -> RunReport:
        models = {role: MeteredModel(m, meter, self.events, role) for role, m in self._budgeted.items()}
        workspace = Workspace(path=self.repo, commit=self.base_commit)
        scratch = LazySandbox(self.pool, workspace)
        try:
            return await self._plan_and_run(task, run_id, models, workspace, scratch)
        finally:
            await scratch.close()

    async def _plan_and_run(self, task: str, run_id: str, models: dict[str, Any], workspace: Workspace,
                            scratch: LazySandbox) -> RunReport:
        ctx = ToolContext(
            workspace=self.repo,
            sandbox=scratch,
            extras={
                "models": models,
                "pool": self.pool,
                "workspace": workspace,
                "budget": self.budget,
                "events": self.events,
                "settings": self.settings,
            },
        )
        if self.settings.planner == "react":
            from bakeoff.agent.planning.react import ReActAgent

            # One tool call per model turn: the baseline, and the fallback for weak planners.
            agent: Any = ReActAgent(models["planner"], self.registry(), ctx, events=self.events)
        else:
            from bakeoff.agent.planning.compiler import LLMCompiler

            agent = LLMCompiler(
                models["planner"], models["joiner"], self.registry(), ctx,
                events=self.events, max_replans=self.settings.max_replans,
            )
        result = await agent.run(task, context=self._context())

        fan_outs = [_fan_out_result(r) for r in _values(result.results)]
        fan_outs = [r for r in fan_outs if r is not None]
        fan = fan_outs[-1] if fan_outs else None
        trace = [_light(t if isinstance(t, ToolCall) else ToolCall.model_validate(t)) for t in result.trace]
        report = RunReport(task=task, status="success", answer=result.answer or "", trace=trace,
                           base_commit=self.base_commit, run_id=run_id)
        if fan is not None:
            report.verdict = fan.verdict
            report.candidates = list(fan.candidates)
            report.winner = fan.winner
            report.patch = fan.patch or ""
            if fan.winner is None:
                report.status = "no-correct-candidate"
                if _budget_ran_out(self.budget, fan.candidates):
                    report.status = "budget-exhausted"
                    report.error = "the budget ran out before a candidate was verified"
        else:
            report.patch = await scratch.diff()  # edits the planner made itself, unverified
        failed_fan_outs = [t for t in trace if t.tool == "fan_out" and t.status != "ok"]
        if fan is None and failed_fan_outs:
            report.status = "error"
            report.error = f"fan_out failed: {failed_fan_outs[-1].error}"
        elif fan is None and not result.finished:
            report.status = "error"
            report.error = "the planner stopped without finishing (replans used up)"
            if _budget_ran_out(self.budget, []):
                report.status = "budget-exhausted"
        if report.status == "budget-exhausted" and not report.error:
            report.error = f"budget exhausted: {self.budget.describe()}"
        return report

    def _finish(self, report: RunReport, meter: CostMeter, started: float, run_dir: Path) -> None:
        report.cost_usd = meter.cost_usd
        report.tokens = meter.tokens
        report.duration_s = time.monotonic() - started
        self.cost_usd += meter.cost_usd
        self.tokens += meter.tokens
        self.history.append(report)
        write_atomic(run_dir / "report.json", report.model_dump_json(indent=2))
        self.events.emit(
            "run.end",
            run_id=report.run_id,
            status=report.status,
            winner=report.winner.id if report.winner else None,
            cost_usd=report.cost_usd,
            tokens=report.tokens,
            session_cost_usd=self.cost_usd,
            duration_s=report.duration_s,
            error=report.error,
        )

    # ------------------------------------------------------------------ delivering

    def candidate(self, report: RunReport, candidate_id: str | None = None) -> Candidate:
        """The winner, or the candidate named ``candidate_id``."""
        if candidate_id is None:
            if report.winner is not None:
                return report.winner
            if report.patch.strip():
                return Candidate(id="plan", patch=report.patch)  # the planner's own edits, unverified
            raise SessionError("no verified winner in this run: name a candidate (see /candidates)")
        for cand in report.candidates:
            if cand.id == candidate_id:
                return cand
        known = ", ".join(c.id for c in report.candidates) or "none"
        raise SessionError(f"no candidate {candidate_id!r} in this run (candidates: {known})")

    def apply(self, report: RunReport, branch: str | None = None, yes: bool = False,
              candidate_id: str | None = None) -> Any:
        """Commit the winner's patch (or ``candidate_id``'s) to the user's repository.

        One commit on the current branch, or on a new ``branch``. Refuses when the
        repository moved since the run's base commit. A candidate that is not the verified
        winner is applied only with ``yes=True``. Returns the ``AppliedChange`` for ``undo``.
        """
        from bakeoff.agent.patches import apply_patch

        cand = self.candidate(report, candidate_id)
        verified = report.winner is not None and cand.id == report.winner.id
        if not verified and not yes:
            raise SessionError(f"candidate {cand.id} was not chosen as correct; apply it anyway with --yes")
        patch = cand.patch or (report.patch if verified else "")
        if not patch.strip():
            raise SessionError(f"candidate {cand.id} changed nothing: nothing to apply")
        if report.base_commit is None:
            raise SessionError(f"{self.repo} is not a git repository: save the patch with --patch FILE instead")
        current = head_commit(self.repo)
        if current != report.base_commit:
            raise SessionError(
                f"the repository moved since the run (base {report.base_commit[:10]}, now {str(current)[:10]}): "
                "run the task again on the new state"
            )
        change = apply_patch(
            self.repo, patch, base_commit=report.base_commit,
            message=f"bakeoff: {report.task.splitlines()[0][:60]}\n\ncandidate {cand.id}, run {report.run_id}",
            branch=branch,
        )
        self.applied.append(change)
        self.base_commit = head_commit(self.repo)
        self.events.emit("apply", candidate=cand.id, branch=branch, run_id=report.run_id,
                         change=_dump(change))
        return change

    def undo(self) -> Any:
        """Restore exactly the state before the last apply of this session."""
        from bakeoff.agent.patches import undo

        if not self.applied:
            raise SessionError("nothing to undo: no change was applied in this session")
        change = self.applied[-1]
        undo(self.repo, change)
        self.applied.pop()
        self.base_commit = head_commit(self.repo)
        self.events.emit("undo", change=_dump(change))
        return change

    async def close(self) -> None:
        """Close the sandboxes this session made (a shared pool is its owner's to close)."""
        pools = self._retired_pools + ([self._pool] if self._pool is not None and self._pool is not self._shared_pool else [])
        self._retired_pools = []
        if self._pool is not self._shared_pool:
            self._pool = None
        for pool in pools:
            await pool.close()


def _fan_out_result(value: Any) -> Any:
    """A fan_out's result, whether the trace kept the object or its JSON form."""
    from bakeoff.agent.fanout.trajectory import FanOutResult

    if isinstance(value, FanOutResult):
        return value
    if isinstance(value, dict) and "verdict" in value and "candidates" in value:
        return FanOutResult.model_validate(value)
    return None


def _light(call: ToolCall) -> ToolCall:
    """The trace entry with its result summarized: the report keeps the candidates whole
    already, and a tool's full output (files, logs) would swell every saved report."""
    from bakeoff.agent.planning.results import summarize_result

    if call.result is None or isinstance(call.result, (int, float, bool)):
        return call
    return call.model_copy(update={"result": summarize_result(call.result, 2000)})


def _values(results: Any) -> list[Any]:
    if isinstance(results, dict):
        return list(results.values())
    return list(results or [])


def _dump(obj: Any) -> Any:
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json")
    return json.loads(json.dumps(obj, default=str))


def _budget_ran_out(budget: Any, candidates: Sequence[Candidate]) -> bool:
    """True when the budget cannot pay for another call, or every candidate died of it."""
    from bakeoff.agent.models.budget import MIN_COMPLETION_TOKENS

    left = budget.remaining
    if left.usd is not None and left.usd <= 1e-9:
        return True
    if left.tokens is not None and left.tokens < MIN_COMPLETION_TOKENS:
        return True
    return bool(candidates) and all("budget" in (c.error or "").lower() for c in candidates)
