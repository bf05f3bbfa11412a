"""One Session behind every front door: chat, run, batch, demo and the GitHub Action.

A Session holds what one user's work on one repository needs: the validated settings, a
read-only view of the repository at a recorded base commit, one Budget shared by every
model call, the models per role (each wrapped by the budget), and the sandbox pool.

A run, as data flows (``Session.run``):

    models       every role's model, charged to the budget and to the run's ledger
    fan_out      the tool the planner calls to change code; each result lands in fan_outs
    agent        the planner (LLMCompiler, or ReAct) runs the plan's tools as they stream
    report       the agent's answer + every fan-out + the ledger -> RunReport (report.py)

``apply`` and ``undo`` are the only ways bakeoff writes the user's tree, and only when asked.
Event logs, reports and history go to the state directory (``storage.state_dir``), never
into the user's repository.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bakeoff.agent import repository
from bakeoff.agent.apply import AppliedChange
from bakeoff.agent.config import Settings
from bakeoff.agent.events import EventBus, JsonlSink
from bakeoff.agent.fanout.settings import FanOutServices, FanOutSettings
from bakeoff.agent.models.budget import Budget, BudgetedModel, BudgetExceeded
from bakeoff.agent.models.ledger import Ledger
from bakeoff.agent.seams import Model, ToolContext, Workspace
from bakeoff.agent.storage import new_run_dir, new_run_id, state_dir, write_atomic
from bakeoff.agent.types import Candidate, FanOutResult, RunReport
from bakeoff.sandboxes import BackendChoice
from bakeoff.sandboxes.docker_host import DockerHost
from bakeoff.sandboxes.pool import SandboxPool
from bakeoff.tools.registry import Registry

ROLES = ("planner", "joiner", "editor", "tester", "judge")


def _no_commit(repo: Path) -> str:
    """Why ``repo`` has no base commit, in words."""
    return "has no commits yet" if repository.is_repository(repo) else "is not a git repository"


class SessionError(Exception):
    """Something the user can fix (a missing repository, nothing to apply, a changed tree)."""


def format_duration(seconds: float) -> str:
    """``3600`` -> ``1h``, ``90`` -> ``1m30s``, ``45`` -> ``45s``."""
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else "", f"{secs}s" if secs else ""]
    return "".join(parts) or f"{seconds:g}s"


def announce_results(events: EventBus, result: FanOutResult) -> None:
    """Each candidate's standing after the vote: what its progress line ends with, the same
    numbers as the report's table."""
    for row in result.verdict.rows:
        events.emit(
            "candidate.result", id=row.candidate, tests_passed=row.tests_passed, tests_total=row.tests_total,
            correct=row.correct, flaky=row.flaky, speedup=row.speedup, low=row.low, high=row.high,
            winner=row.candidate == result.verdict.winner,
        )


class UsersFanOut:
    """``fan_out`` sized by the user: it develops the user's ``n`` candidates (the number the
    run's header shows, and the budget and sandboxes were set for), whatever ``n`` the plan
    wrote. A wrapper with the wrapped tool's name, schema and time limit."""

    def __init__(self, tool: Any, n: int) -> None:
        self.tool, self.n = tool, n
        self.name, self.description, self.Args, self.Result = tool.name, tool.description, tool.Args, tool.Result
        self.time_limit_s = tool.time_limit_s

    async def __call__(self, args: Any, ctx: ToolContext) -> Any:
        return await self.tool(args.model_copy(update={"n": self.n}), ctx)


def docker_host_of(settings: Settings) -> DockerHost:
    """The Docker engine ``settings`` name (``DockerHost()``: the environment's, as ``docker`` reads it)."""
    return DockerHost(settings.docker_host, settings.docker_cert_path)


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean the user must change something, not a bug: a model that cannot
    be reached (after retries and fallbacks), a script that does not fit the run, a sandbox kind
    that cannot run here, a patch that may not be applied. Each message says what to do."""
    from bakeoff.agent.config import ConfigError, ModelNotConfigured
    from bakeoff.agent.models.litellm import ModelCallFailed
    from bakeoff.agent.models.scripted import ScriptExhausted, ScriptFileError
    from bakeoff.agent.patches import PatchRejected
    from bakeoff.agent.storage import DirectoryBusy
    from bakeoff.sandboxes import SandboxUnavailable

    return (ConfigError, ModelNotConfigured, SessionError, ModelCallFailed, ScriptExhausted, ScriptFileError,
            SandboxUnavailable, PatchRejected, DirectoryBusy)


def make_pool(settings: Settings) -> SandboxPool:
    """The sandbox pool for ``settings``: its kind, its size, its image or Dockerfile, its Docker engine."""
    image, dockerfile = settings.image, None
    if image and (image.endswith("Dockerfile") or Path(image).expanduser().is_file()):
        image, dockerfile = None, Path(image).expanduser()
    return SandboxPool(kind=settings.sandbox, max_concurrent=settings.max_sandboxes, image=image, dockerfile=dockerfile,
                       docker_host=docker_host_of(settings), limits=settings.sandbox_limits())


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
        budget: Budget | None = None,
        pool: SandboxPool | None = None,
        state: Path | None = None,
    ) -> None:
        repo = Path(repo).expanduser()
        if not repo.is_dir():
            raise SessionError(f"repository {repo} does not exist: pass --repo PATH to a checkout")
        self.repo = repo.resolve()
        self.events = events
        self.state = state or state_dir()
        self.base_commit = repository.head_commit(self.repo)
        self._shared_pool = pool
        self._pool = pool
        self.history: list[RunReport] = []
        self.applied: list[AppliedChange] = []  # newest last
        self.cost_usd = 0.0
        self.tokens = 0
        self.sandbox_choice: BackendChoice | None = None
        self._retired_pools: list[SandboxPool] = []
        self._configure(settings, model_override, budget)
        if pool is None:
            self.check_sandbox()

    # ------------------------------------------------------------------ configuration

    def _configure(self, settings: Settings, override: Model | None, shared_budget: Budget | None) -> None:
        models, editors = self._models_per_role(settings, override)  # raises before anything changes
        self.settings = settings
        self.model_override = override
        self._shared_budget = shared_budget
        self.budget = shared_budget or Budget(max_usd=settings.budget_usd, max_tokens=settings.budget_tokens)
        self._raw_models = models
        self._editors = editors
        self._checked = False  # the models are checked with litellm at the next run's start

    def _models_per_role(self, settings: Settings, override: Model | None) -> tuple[dict[str, Model], list[Model]]:
        """One model per role, and the editor models (several with ``[model] editors``). Roles
        naming the same script share one model object, so a scripted model's responses are
        shared between roles as its file intends; litellm models share one set of circuit
        breakers, so every role sees a failing model's circuit."""
        from bakeoff.agent.models import model_for_role
        from bakeoff.agent.models.retry import Breakers
        from bakeoff.agent.models.scripted import ScriptedModel

        config = settings.model
        breakers = Breakers(config.breaker_failures, config.breaker_cooldown_s)
        scripts: dict[str, Model] = {}

        def make(role: str, spec: str | None = None) -> Model:
            if override is not None:
                base = override
            else:
                # The joiner is the planner's second half; it uses the planner's model.
                config_role = "planner" if role == "joiner" else role
                spec = spec or config.for_role(config_role)
                if spec.startswith("scripted:"):
                    if spec not in scripts:
                        scripts[spec] = model_for_role(config, config_role, spec=spec)
                    base = scripts[spec]
                else:
                    base = model_for_role(config, config_role, spec=spec, events=self.events, breakers=breakers)
            return base.for_role(role) if isinstance(base, ScriptedModel) else base

        models = {role: make(role) for role in ROLES}
        editors = [models["editor"]] if override is not None else [make("editor", s) for s in config.editor_models()]
        models["editor"] = editors[0]
        return models, editors

    def update(self, **changes: Any) -> Settings:
        """Change settings between runs (chat's /model, /n, /budget, /sandbox), validated again.
        ``model`` names one model for every role. Nothing changes when the new settings are
        invalid, their model cannot be made, or their sandbox cannot run here."""
        from bakeoff.sandboxes import choose_backend

        data = self.settings.model_dump()
        for key, value in changes.items():
            if key == "model":
                data["model"].update(default=value, planner=None, editor=None, tester=None, judge=None, editors=[])
            else:
                data[key] = value
        settings = Settings.model_validate(data)
        engine_changed = {"sandbox", "docker_host", "docker_cert_path"} & changes.keys()
        choice = choose_backend(settings.sandbox, docker_host_of(settings)) if engine_changed else self.sandbox_choice
        budget_changed = "budget_usd" in changes or "budget_tokens" in changes
        self._configure(
            settings,
            None if "model" in changes else self.model_override,
            None if budget_changed else self._shared_budget,
        )
        self.sandbox_choice = choice
        if {"sandbox", "max_sandboxes", "image", "docker_host", "docker_cert_path"} & changes.keys() \
                and self._pool is not self._shared_pool:
            if self._pool is not None:
                self._retired_pools.append(self._pool)  # closed with the session: runs are over
            self._pool = self._shared_pool
        return settings

    @property
    def model_names(self) -> dict[str, str]:
        """Role -> model name; several editor models are ``editor``, ``editor 2``, ..."""
        names = {role: model.name for role, model in self._raw_models.items()}
        for i, model in enumerate(self._editors[1:], start=2):
            names[f"editor {i}"] = model.name
        return names

    @property
    def pool(self) -> SandboxPool:
        if self._pool is None:
            self._pool = make_pool(self.settings)
        return self._pool

    def check_sandbox(self) -> BackendChoice:
        """Which sandbox backend runs the candidates, and why; raises ``SandboxUnavailable``
        (the user can fix it: start Docker, or choose another kind) when it cannot run here."""
        from bakeoff.sandboxes import choose_backend

        choice = choose_backend(self.settings.sandbox, docker_host_of(self.settings))
        if choice.backend != "docker":
            from bakeoff.sandboxes.workspace import sandbox_root

            sandbox_root()  # where local sandboxes live must be usable: say so now, not mid-run
        self.sandbox_choice = choice
        return choice

    # ------------------------------------------------------------------ running

    def check_can_apply(self) -> None:
        """``SessionError`` when no result could be applied here: there is no commit to apply it on."""
        if repository.head_commit(self.repo) is None:
            fix = "commit your files first (git add -A && git commit), then run again, or " * repository.is_repository(self.repo)
            raise SessionError(f"{self.repo} {_no_commit(self.repo)}: {fix}save the patch with --patch FILE instead")

    def _context(self) -> str:
        s = self.settings
        lines = [
            f"Repository: {self.repo} " + (f"at commit {self.base_commit}." if self.base_commit
                                           else f"(it {_no_commit(self.repo)})."),
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
        A model that cannot be used (see ``models.check_models``) raises ``ModelSetupError``
        before the run starts.
        """
        await self._check_models()  # a model that cannot be used is a configuration error, before the run starts
        self.base_commit = repository.head_commit(self.repo)  # the user may have committed since the last run
        run_id = run_id or new_run_id()
        run_dir = new_run_dir(self.state, run_id)  # its own folder: runs may share a state directory
        sink = JsonlSink(run_dir / "events.jsonl")
        unsubscribe = self.events.subscribe(sink)
        ledger = Ledger()
        started = time.monotonic()
        self._announce(task, run_id, run_dir)
        report = RunReport(task=task, status="error", base_commit=self.base_commit, run_id=run_id)
        limit = self.settings.time_limit_s
        try:
            try:
                async with asyncio.timeout(limit) as clock:
                    report = await self._run(task, run_id, ledger)
            except BudgetExceeded as exc:
                report.status = "budget-exhausted"
                report.error = str(exc)
            except TimeoutError as exc:
                if not clock.expired():
                    raise
                report.error = (f"the run's time limit ({format_duration(limit)}) ran out before it finished: "
                                "raise it with --time-limit SECONDS (or time_limit_s in bakeoff.toml), or lower n")
                self.events.emit("run.time_limit", run_id=run_id, time_limit_s=limit)
            except BaseException as exc:
                # Recorded, then raised on: a cancelled step (Ctrl-C), an unreachable model.
                report.error = "cancelled" if isinstance(exc, asyncio.CancelledError) else f"{type(exc).__name__}: {exc}"
                self._finish(report, ledger, started, run_dir)
                raise
            self._finish(report, ledger, started, run_dir)
        finally:
            unsubscribe()
            sink.close()
        return report

    def _announce(self, task: str, run_id: str, run_dir: Path) -> None:
        self.events.emit(
            "run.start", run_id=run_id, task=task, repo=str(self.repo), base_commit=self.base_commit,
            models=self.model_names, n=self.settings.n,
            sandbox=self.sandbox_choice.backend if self.sandbox_choice else self.settings.sandbox,
            run_dir=str(run_dir), time_limit_s=self.settings.time_limit_s,
        )
        if self.sandbox_choice is not None and self.sandbox_choice.warning:  # unsafe-local: say what it allows
            self.events.emit("sandbox.warning", backend=self.sandbox_choice.backend, message=self.sandbox_choice.warning)
        if self.base_commit is None and repository.is_repository(self.repo):
            self.events.emit("repo.no_commits", repo=str(self.repo))
        dirty = repository.uncommitted(self.repo) if self.base_commit else []
        if dirty:
            # Candidates copy the base commit: edits not committed yet are not part of the run.
            self.events.emit("repo.uncommitted", paths=dirty[:20], count=len(dirty))

    async def _run(self, task: str, run_id: str, ledger: Ledger) -> RunReport:
        """The data flow of one run: metered models -> the fan_out tool -> the planner -> the report."""
        from bakeoff.agent.report import run_report
        from bakeoff.sandboxes.lazy import LazySandbox

        def paid(model: Model, role: str) -> BudgetedModel:  # as this run calls it: budgeted, in its ledger
            return BudgetedModel(model, self.budget, role=role, events=self.events, ledger=ledger)

        models = {role: paid(m, role) for role, m in self._raw_models.items()}
        editors = [paid(m, "editor") for m in self._editors]
        workspace = Workspace(path=self.repo, commit=self.base_commit)
        fan_outs: list[FanOutResult] = []

        def on_fan_out(result: FanOutResult) -> None:
            fan_outs.append(result)
            announce_results(self.events, result)

        registry = self._registry(models, editors, workspace, on_fan_out)
        # The sandbox backend gets ready first, as a step of its own (Docker builds its image
        # the first time): its minutes are not charged to whichever tool happens to come first.
        await self.pool.prepare(self.events)
        scratch = LazySandbox(self.pool, workspace)  # where the planner's own tools run and edit
        try:
            ctx = ToolContext(workspace=self.repo, sandbox=scratch)
            result = await self._agent(models, registry, ctx).run(task, context=self._context())
            unverified = await scratch.diff()
        finally:
            await scratch.close()
        return run_report(task, result, fan_outs, unverified, self.budget, run_id=run_id, base_commit=self.base_commit)

    async def _check_models(self) -> None:
        """Once per configuration, before the first call: keys litellm asks for, and whether a
        dollar budget can bound every model (raises ``ModelSetupError`` when it cannot)."""
        from bakeoff.agent.models import check_models

        if self._checked:
            return
        unpriced = await asyncio.to_thread(
            check_models, [*self._raw_models.values(), *self._editors],
            budget_usd=self.budget.max_usd, budget_tokens=self.budget.max_tokens,
        )
        self._checked = True
        if unpriced:  # said once; a dollar budget without a token budget was refused above
            self.events.emit("model.status", what="unpriced", models=unpriced, message=(
                f"{', '.join(unpriced)}: no price known, so only tokens count for it against the token budget "
                "(add [model.prices] to count dollars)"))

    def _registry(self, models: dict[str, BudgetedModel], editors: list[BudgetedModel], workspace: Workspace,
                  on_fan_out) -> Registry:
        """The tools of one run: the built-in tools, and a fan_out that reports to the run."""
        from bakeoff.agent.fanout.tool import FanOut
        from bakeoff.tools.registry import default_registry

        services = FanOutServices(
            editors=list(editors), tester=models["tester"], judge=models["judge"], pool=self.pool,
            workspace=workspace, settings=FanOutSettings.from_settings(self.settings), events=self.events,
            budget=self.budget,
        )
        registry = default_registry()
        registry.register(UsersFanOut(FanOut(services, on_result=on_fan_out), self.settings.n))
        return registry

    def _agent(self, models: dict[str, BudgetedModel], registry: Registry, ctx: ToolContext):
        if self.settings.planner == "react":
            from bakeoff.agent.planning.react import ReActAgent

            # One tool call per model turn: the baseline, and the fallback for weak planners.
            return ReActAgent(models["planner"], registry, ctx, events=self.events)
        from bakeoff.agent.planning.compiler import LLMCompiler

        return LLMCompiler(models["planner"], models["joiner"], registry, ctx, events=self.events,
                           max_replans=self.settings.max_replans)

    def _finish(self, report: RunReport, ledger: Ledger, started: float, run_dir: Path) -> None:
        report.cost_usd = ledger.cost_usd
        report.tokens = ledger.tokens
        report.estimated_usd, report.estimated_tokens = ledger.estimated_usd, ledger.estimated_tokens
        report.duration_s = time.monotonic() - started
        self.cost_usd += ledger.cost_usd
        self.tokens += ledger.tokens
        self.history.append(report)
        write_atomic(run_dir / "report.json", report.model_dump_json(indent=2))
        self.events.emit(
            "run.end", run_id=report.run_id, status=report.status,
            winner=report.winner.id if report.winner else None, cost_usd=report.cost_usd, tokens=report.tokens,
            estimated_usd=report.estimated_usd, estimated_tokens=report.estimated_tokens,
            session_cost_usd=self.cost_usd, duration_s=report.duration_s, error=report.error,
        )

    # ------------------------------------------------------------------ delivering

    def candidate(self, report: RunReport, candidate_id: str | None = None) -> Candidate:
        """The winner, the best correct candidate a not-faster run offers, or the candidate named ``candidate_id``."""
        if candidate_id is None:
            if report.winner is not None:
                return report.winner
            if report.status == "not-faster" and report.verdict and report.verdict.best:
                candidate_id = report.verdict.best  # correct but not faster: offered, applied only when confirmed
            elif report.patch.strip():
                return Candidate(id="plan", patch=report.patch)  # the planner's own edits, unverified
            else:
                raise SessionError("no verified winner in this run: name a candidate (see /candidates)")
        for cand in report.candidates:
            if cand.id == candidate_id:
                return cand
        known = ", ".join(c.id for c in report.candidates) or "none"
        raise SessionError(f"no candidate {candidate_id!r} in this run (candidates: {known})")

    def apply(self, report: RunReport, branch: str | None = None, yes: bool = False,
              candidate_id: str | None = None) -> AppliedChange:
        """Commit the winner's patch (or ``candidate_id``'s) to the user's repository.

        One commit on the current branch, or on a new ``branch``. Refuses when the
        repository moved since the run's base commit. A candidate that is not the verified
        winner is applied only with ``yes=True``.
        """
        from bakeoff.agent.apply import apply_patch

        cand = self.candidate(report, candidate_id)
        verified = report.winner is not None and cand.id == report.winner.id
        if not verified and not yes:
            raise SessionError(f"candidate {cand.id} was not chosen as correct; apply it anyway with --yes")
        patch = cand.patch or (report.patch if verified else "")
        if not patch.strip():
            raise SessionError(f"candidate {cand.id} changed nothing: nothing to apply")
        if report.base_commit is None:
            self.check_can_apply()
        current = repository.head_commit(self.repo)
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
        self.base_commit = repository.head_commit(self.repo)
        self.events.emit("apply", candidate=cand.id, branch=branch, run_id=report.run_id,
                         change=change.model_dump(mode="json"))
        return change

    def undo(self) -> AppliedChange:
        """Restore exactly the state before the last apply of this session."""
        from bakeoff.agent.apply import undo

        if not self.applied:
            raise SessionError("nothing to undo: no change was applied in this session")
        change = self.applied[-1]
        undo(self.repo, change)
        self.applied.pop()
        self.base_commit = repository.head_commit(self.repo)
        self.events.emit("undo", change=change.model_dump(mode="json"))
        return change

    async def close(self) -> None:
        """Close the sandboxes this session made (a shared pool is its owner's to close)."""
        pools = self._retired_pools + ([self._pool] if self._pool is not None and self._pool is not self._shared_pool else [])
        self._retired_pools = []
        if self._pool is not self._shared_pool:
            self._pool = None
        for pool in pools:
            await pool.close()
