"""One candidate's trajectory: edit, apply, build, test, profile, repair, in its own sandbox.

The editor model proposes an edit; it is applied, built, tested with the repository's own
tests and profiled against the base. On a parse error, an edit that does not apply, a build
error, a test failure or no speed-up, the feedback goes back to the model for a bounded
number of repair rounds. The loop ends as a ``Candidate``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from bakeoff.agent.events import EventBus
from bakeoff.agent.fanout.baseline import TAIL_CHARS, Baseline, tail, test_counts, time_command
from bakeoff.agent.fanout.settings import FanOutSettings
from bakeoff.agent.fanout.source import file_of
from bakeoff.agent.fanout.strategies import Strategy
from bakeoff.agent.models.budget import Budget
from bakeoff.agent.prompting import render
from bakeoff.agent.seams import Message, Model, Sandbox, Workspace
from bakeoff.agent.types import Candidate
from bakeoff.sandboxes.pool import SandboxPool
from bakeoff.tools.errors import ToolError

STATES = ("queued", "editing", "building", "testing", "profiling", "done", "failed")


class Feedback(BaseModel):
    """Why an attempt is not finished, in words the model can act on."""

    kind: str  # parse | apply | build | test | speed
    details: str
    command: str = ""


def model_errors() -> tuple[type[BaseException], ...]:
    """Errors of one model call: they end that candidate, never the run (RELIABILITY 22)."""
    from bakeoff.agent.models.budget import BudgetExceeded
    from bakeoff.agent.models.litellm import ModelCallFailed
    from bakeoff.agent.models.scripted import ScriptExhausted

    return (BudgetExceeded, ModelCallFailed, ScriptExhausted, TimeoutError, asyncio.TimeoutError)


class Trajectory:
    """One candidate: edit, apply, build, test, profile, repair; ends as a ``Candidate``."""

    def __init__(
        self,
        cid: str,
        *,
        goal: str,
        files: Sequence[str],
        language: str,
        entry: str | None,
        strategy: Strategy,
        temperature: float,
        model: Model,
        pool: SandboxPool,
        workspace: Workspace,
        baseline: Baseline,
        settings: FanOutSettings,
        events: EventBus,
        budget: Budget | None = None,
        timing_lock: asyncio.Lock | None = None,
    ) -> None:
        self.cid, self.goal, self.files, self.language, self.entry = cid, goal, list(files), language, entry
        self.strategy, self.temperature, self.model = strategy, temperature, model
        self.pool, self.workspace, self.baseline, self.settings = pool, workspace, baseline, settings
        self.events, self.budget = events, budget
        self.timing_lock = timing_lock or asyncio.Lock()
        self.profile_output: str | None = None  # what the benchmark printed: a cheap behaviour check
        self.passing = False  # the sandbox holds an edit that builds and passes the repo's tests
        self.final_files: dict[str, str] = {}  # the edited files' final contents, to rebuild the candidate
        self.candidate = Candidate(
            id=cid, model=model.name, strategy=strategy.name, temperature=temperature
        )

    async def run(self) -> Candidate:
        from bakeoff.sandboxes.docker import DockerSandboxGone

        cand = self.candidate
        try:
            async with self.pool.sandbox(self.workspace) as sb:
                try:
                    await self._loop(sb, cand)
                except model_errors() as exc:
                    # The candidate fails alone; one that already builds and passes keeps its state.
                    failure = f"model call failed: {type(exc).__name__}: {exc}"
                    if not self.passing:
                        cand.error = failure
                    self.announce("editing", detail=failure)
                cand.patch = await sb.diff()
                cand.source = await self._entry_source(sb)
                self.final_files = await self._changed_files(sb)
        except DockerSandboxGone as exc:  # its container expired or was removed: this candidate only
            cand.error, cand.patch, cand.source = f"sandbox lost: {exc}", "", None
        if cand.error is None and not cand.patch.strip():
            cand.error = "no change was made"
        self.announce("done" if cand.error is None else "failed", detail=cand.error or "")
        return cand

    async def _loop(self, sb: Sandbox, cand: Candidate) -> None:
        contents = {p: self.baseline.files[p] for p in self.files}
        prompt = render(
            "editor", goal=self.goal, language=self.language, entry=self.entry or "",
            strategy_name=self.strategy.name, strategy_hint=self.strategy.hint,
            files=[{"path": p, "content": c} for p, c in contents.items()],
        )
        messages = [Message(role="user", content=prompt)]
        try:
            for round_ in range(self.settings.rounds + 1):
                self._check_budget()  # limits are checked before each model call
                self.announce("editing", round=round_)
                completion = await self.model.complete(messages, temperature=self.temperature)
                cand.cost_usd += completion.cost_usd or 0.0
                cand.tokens += completion.usage.total_tokens
                messages.append(Message(role="assistant", content=completion.text))
                problem = await self._attempt(sb, cand, completion.text, contents, round_)
                if problem is None or problem.kind == "speed":
                    self.passing = True
                elif problem.kind not in ("parse", "apply"):
                    self.passing = False  # a failed parse or apply leaves the files as they were
                kept = problem is None or problem.kind == "speed" or (problem.kind in ("parse", "apply") and self.passing)
                cand.error = None if kept else f"{problem.kind}: {problem.details[:300]}"
                if problem is None or round_ == self.settings.rounds:
                    break
                cand.rounds = round_ + 1
                messages.append(Message(role="user", content=render(
                    "repair", round=round_ + 1, rounds=self.settings.rounds, strategy_name=self.strategy.name,
                    kind=problem.kind, details=problem.details, command=problem.command,
                )))
        finally:
            cand.messages = [m.model_dump() for m in messages]

    async def _attempt(self, sb: Sandbox, cand: Candidate, reply: str, contents: dict[str, str], round_: int) -> Feedback | None:
        """Apply one answer and check it; None when it is finished (or the model declined to go on)."""
        from bakeoff.tools.edit import EditError, apply_edit_blocks
        from bakeoff.tools.edit_blocks import EditParseError, parse_edit_blocks

        try:
            blocks = parse_edit_blocks(reply, default_path=self.files[0] if len(self.files) == 1 else None)
        except EditParseError as exc:
            if round_ > 0 and self.passing:
                return None  # a working candidate whose author sends no further edit: keep it
            return Feedback(kind="parse", details=str(exc))
        for block in blocks:
            refusal = await self._refuse_path(sb, block.path, known=block.path in contents)
            if refusal:
                return Feedback(kind="apply", details=refusal)
        try:
            updated = apply_edit_blocks(contents, blocks)
        except EditError as exc:
            return Feedback(kind="apply", details=str(exc))
        for path, text in updated.items():
            if contents.get(path) != text:
                try:
                    await sb.write_file(path, text)
                except ValueError as exc:  # a path outside the workspace
                    return Feedback(kind="apply", details=f"{path}: {exc}")
        contents.update(updated)
        return await self._check(sb, cand)

    async def _refuse_path(self, sb: Sandbox, path: str, *, known: bool) -> str | None:
        """Why an edit may not touch ``path``: the rules every patch obeys (``path_rules``: inside
        the repository, not .git, CI or repository configuration, however spelled), and only the
        fan-out's files or new ones."""
        from bakeoff.agent.path_rules import shown
        from bakeoff.tools.files import check_relative_path

        try:
            clean = check_relative_path(path, writing=True)
        except ToolError as exc:
            return f"{exc}; edit only {', '.join(self.files)}"
        if known:
            return None
        try:
            await sb.read_file(clean)
        except FileNotFoundError:
            return None  # a new file: allowed
        except ValueError as exc:  # a symlink or path the sandbox refuses
            return f"{shown(path)}: {exc}"
        return f"{shown(path)} exists but is not one of the files of this task; edit only {', '.join(self.files)}"

    async def _check(self, sb: Sandbox, cand: Candidate) -> Feedback | None:
        cmds, timeout = self.baseline.commands, self.settings.command_timeout_s
        if cmds.build:
            self.announce("building")
            res = await sb.exec(cmds.build, timeout=timeout)
            cand.built, cand.build_log = res.ok, tail(res.summary(limit=20_000), 20_000)
            if not res.ok:
                return Feedback(kind="build", details=tail(res.summary(limit=TAIL_CHARS)), command=cmds.build)
        else:
            cand.built = True
        if cmds.test:
            self.announce("testing")
            res = await sb.exec(cmds.test, timeout=timeout)
            passed, failed = test_counts(res)
            cand.tests_passed, cand.tests_failed = passed, (failed if failed is not None else (0 if res.ok else 1))
            base_failed = self.baseline.tests_failed
            # The gate: tests that passed at base still pass. When the base fails too, only more
            # failures count, and a suite that cannot report counts at either end is no worse.
            worse = self.baseline.tests_ok or (base_failed is not None and (failed is None or failed > base_failed))
            if not res.ok and worse:
                return Feedback(kind="test", details=tail(res.summary(limit=TAIL_CHARS)), command=cmds.test)
        if cmds.profile and self.baseline.sandbox is not None:
            return await self._profile(sb, cand, cmds.profile)
        return None

    async def _profile(self, sb: Sandbox, cand: Candidate, cmd: str) -> Feedback | None:
        from bakeoff.agent.stats import interleaved
        from bakeoff.tools.profile import CommandFailed

        timeout = self.settings.command_timeout_s
        async with self.timing_lock:  # one timing at a time: candidates must not slow each other down
            self.announce("profiling")
            res = await sb.exec(cmd, timeout=timeout)  # also the warm-up run
            self.profile_output = res.stdout.strip() if res.ok else None
            if not res.ok:
                return Feedback(kind="test", command=cmd, details=tail(res.summary(limit=TAIL_CHARS)))
            try:
                cand.timing = await interleaved(
                    lambda: time_command(self.baseline.sandbox, cmd, timeout), lambda: time_command(sb, cmd, timeout),
                    repeats=self.settings.profile_repeats, warmup=0,
                )
            except CommandFailed as exc:  # a run that fails only sometimes: the model can look into it
                return Feedback(kind="test", command=cmd, details=tail(str(exc)))
        if cand.timing.faster:
            return None
        t = cand.timing
        return Feedback(kind="speed", command=cmd, details=(
            f"median {min(t.candidate_s):.3f}-{max(t.candidate_s):.3f}s against the base's "
            f"{min(t.baseline_s):.3f}-{max(t.baseline_s):.3f}s: speedup {t.speedup:.2f}x "
            f"(interval {t.low:.2f}-{t.high:.2f}), which does not exclude 1"
        ))

    async def _changed_files(self, sb: Sandbox) -> dict[str, str]:
        from bakeoff.agent.patches import parse_patch

        out = {}
        for path in (f.new_path for f in parse_patch(self.candidate.patch).files if f.new_path):
            try:
                out[path] = (await sb.read_file(path)).decode("utf-8", "replace")
            except FileNotFoundError:
                continue  # deleted by the edit
        return out

    async def _entry_source(self, sb: Sandbox) -> str | None:
        path = file_of(self.entry, self.baseline.files) if self.entry else None
        path = path or (self.files[0] if len(self.files) == 1 else None)
        return (await sb.read_file(path)).decode("utf-8", "replace") if path else None

    def _check_budget(self) -> None:
        from bakeoff.agent.models.budget import BudgetExceeded

        left = self.budget.remaining if self.budget is not None else None
        if left is not None and ((left.tokens is not None and left.tokens <= 0) or (left.usd is not None and left.usd <= 0)):
            raise BudgetExceeded(f"budget exhausted before candidate {self.cid}'s next model call: {self.budget.describe()}")

    def announce(self, state: str, **extra: Any) -> None:
        c = self.candidate
        t = c.timing
        self.events.emit(
            "candidate.state", id=c.id, state=state, strategy=c.strategy, model=c.model,
            temperature=c.temperature, round=extra.pop("round", c.rounds), built=c.built,
            tests_passed=c.tests_passed, tests_failed=c.tests_failed,
            speedup=t.speedup if t else None, cost_usd=c.cost_usd, **extra,
        )
