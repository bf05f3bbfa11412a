"""Trajectories and the ``fan_out`` tool: N candidate edits developed at once, then a vote.

A ``Trajectory`` is one candidate's loop in its own sandbox: the editor model proposes an
edit, it is applied, built, tested with the repository's own tests and profiled against the
base; on a parse error, an edit that does not apply, a build error, a test failure or no
speed-up, the feedback goes back to the model for a bounded number of repair rounds. It ends
as a ``Candidate``.

``fan_out`` starts n trajectories with diversity on purpose (strategy hints for the language,
spread temperatures, several editor models in turn), in waves: when the first wave already
agrees, the rest of the budget is not spent. Then every candidate runs every test (the
repo's suite as the gate, tests the tester model wrote, the differential harness with the
base version as reference), the vote says who is correct, the winners are timed, and the
fastest correct one wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from bakeoff.agent.events import EventBus
from bakeoff.agent.prompting import render
from bakeoff.agent.seams import ExecResult, Message, ToolContext, Workspace
from bakeoff.agent.fanout.strategies import Strategy, language_of, spread, strategies_for, temperatures
from bakeoff.agent.types import Candidate, ExecutionMatrix, TestCase, Timing, Verdict
from bakeoff.tools.errors import ToolError

STATES = ("queued", "editing", "building", "testing", "profiling", "done", "failed")
_TAIL_CHARS = 3000  # of failing output sent back to the model
REPO_TESTS = "repo-tests"  # the matrix column for the repository's own suite


class FanOutError(ToolError):
    """A fan_out call the planner can fix (a file that does not exist, nothing to edit)."""


class FanOutSettings(BaseModel):
    """How a fan-out runs. Built from the session's settings; the rest are defaults."""

    model_config = ConfigDict(extra="forbid")

    max_n: int = Field(16, ge=1)  # the user's cap on candidates, whatever n the plan asks for
    rounds: int = Field(2, ge=0)  # repair rounds after the first answer
    first_wave: float = Field(0.5, gt=0.0, le=1.0)  # share of n started before the early-stop check
    temperature_low: float = 0.2
    temperature_high: float = 1.0
    strategies: list[Strategy] = Field(default_factory=list)  # tried before the built-in hints
    build: str | None = None  # build command; detected when None
    test: str | None = None  # test command; detected when None
    profile: str | None = None  # benchmark command; detected when None
    profile_repeats: int = Field(3, ge=1)  # interleaved pairs per candidate in its trajectory
    timing_repeats: int = Field(5, ge=1)  # interleaved pairs per winner at selection
    command_timeout_s: float = 300.0
    test_samples: int = Field(1, ge=0)  # tester model samples (0: no generated tests)
    # The differential harness (Python and C/C++) runs candidates' code in the base sandbox.
    # False runs it on this machine instead (own process group, timeouts and rlimits, no
    # isolation): only for trusted candidates, e.g. benchmarks on public data.
    harness_in_sandbox: bool = True

    @classmethod
    def from_any(cls, settings: Any) -> FanOutSettings:
        """From ``None``, a dict, a ``FanOutSettings`` or the session's ``agent.config.Settings``."""
        if settings is None:
            return cls()
        if isinstance(settings, cls):
            return settings
        if isinstance(settings, Mapping):
            return cls.model_validate(dict(settings))
        known = {k: getattr(settings, k) for k in cls.model_fields if getattr(settings, k, None) is not None}
        return cls.model_validate(known)


class Commands(BaseModel):
    build: str | None = None
    test: str | None = None
    profile: str | None = None


class Baseline(BaseModel):
    """What the base version does: the reference point of the gate and of timing."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    commands: Commands
    built: bool = True
    tests_ok: bool = True
    tests_failed: int | None = None
    profile_output: str | None = None
    sandbox: Any = None  # kept open for interleaved timing
    files: dict[str, str] = Field(default_factory=dict)


class Feedback(BaseModel):
    """Why an attempt is not finished, in words the model can act on."""

    kind: str  # parse | apply | build | test | speed
    details: str
    command: str = ""


def _model_errors() -> tuple[type[BaseException], ...]:
    """Errors of one model call: they end that candidate, never the run (RELIABILITY 22)."""
    from bakeoff.agent.models.budget import BudgetExceeded
    from bakeoff.agent.models.litellm import ModelCallFailed
    from bakeoff.agent.models.scripted import ScriptExhausted

    return (BudgetExceeded, ModelCallFailed, ScriptExhausted, TimeoutError, asyncio.TimeoutError)


def _tail(text: str, limit: int = _TAIL_CHARS) -> str:
    return text if len(text) <= limit else "[... cut ...]\n" + text[-limit:]


def _test_counts(result: ExecResult) -> tuple[int | None, int | None]:
    from bakeoff.tools.exec import parse_test_counts

    counts = parse_test_counts(result.stdout + "\n" + result.stderr)
    if counts is None:
        return None, None
    return counts.passed, counts.failed + counts.errors


async def _time(sandbox: Any, cmd: str, timeout: float) -> float:
    from bakeoff.tools.profile import time_command

    return await time_command(sandbox, cmd, timeout=timeout)


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
        model: Any,
        pool: Any,
        workspace: Workspace,
        baseline: Baseline,
        settings: FanOutSettings,
        events: EventBus,
        budget: Any = None,
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
            id=cid, model=getattr(model, "name", ""), strategy=strategy.name, temperature=temperature
        )

    async def run(self) -> Candidate:
        from bakeoff.sandboxes.docker import DockerSandboxGone

        cand = self.candidate
        try:
            async with self.pool.sandbox(self.workspace) as sb:
                try:
                    await self._loop(sb, cand)
                except _model_errors() as exc:
                    # The candidate fails alone; one that already builds and passes keeps its state.
                    failure = f"model call failed: {type(exc).__name__}: {exc}"
                    if not self.passing:
                        cand.error = failure
                    self._state("editing", detail=failure)
                cand.patch = await sb.diff()
                cand.source = await self._entry_source(sb)
                self.final_files = await self._changed_files(sb)
        except DockerSandboxGone as exc:  # its container expired or was removed: this candidate only
            cand.error, cand.patch, cand.source = f"sandbox lost: {exc}", "", None
        if cand.error is None and not cand.patch.strip():
            cand.error = "no change was made"
        self._state("done" if cand.error is None else "failed", detail=cand.error or "")
        return cand

    async def _loop(self, sb: Any, cand: Candidate) -> None:
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
                self._state("editing", round=round_)
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

    async def _attempt(self, sb: Any, cand: Candidate, reply: str, contents: dict[str, str], round_: int) -> Feedback | None:
        """Apply one answer and check it; None when it is finished (or the model declined to go on)."""
        from bakeoff.tools.edit import EditError, EditParseError, apply_edit_blocks, parse_edit_blocks

        try:
            blocks = parse_edit_blocks(reply, default_path=self.files[0] if len(self.files) == 1 else None)
        except EditParseError as exc:
            if round_ > 0 and self.passing:
                return None  # a working candidate whose author sends no further edit: keep it
            return Feedback(kind="parse", details=str(exc))
        for block in blocks:
            if block.path in contents:
                continue
            refusal = await self._refuse_path(sb, block.path)
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

    async def _refuse_path(self, sb: Any, path: str) -> str | None:
        """Why an edit may not touch ``path``: only the fan-out's files, or new files, outside .git and CI."""
        from bakeoff.tools.files import check_relative_path

        try:
            clean = check_relative_path(path)
        except ToolError as exc:
            return str(exc)
        if clean.startswith((".github/", ".gitlab-ci", ".ci/")):
            return f"{path}: CI configuration is not part of this task; edit only {', '.join(self.files)}"
        try:
            await sb.read_file(clean)
        except FileNotFoundError:
            return None  # a new file: allowed
        except ValueError as exc:  # a symlink or path the sandbox refuses
            return f"{path}: {exc}"
        return f"{path} exists but is not one of the files of this task; edit only {', '.join(self.files)}"

    async def _check(self, sb: Any, cand: Candidate) -> Feedback | None:
        cmds, timeout = self.baseline.commands, self.settings.command_timeout_s
        if cmds.build:
            self._state("building")
            res = await sb.exec(cmds.build, timeout=timeout)
            cand.built, cand.build_log = res.ok, _tail(res.summary(limit=20_000), 20_000)
            if not res.ok:
                return Feedback(kind="build", details=_tail(res.summary(limit=_TAIL_CHARS)), command=cmds.build)
        else:
            cand.built = True
        if cmds.test:
            self._state("testing")
            res = await sb.exec(cmds.test, timeout=timeout)
            passed, failed = _test_counts(res)
            cand.tests_passed, cand.tests_failed = passed, (failed if failed is not None else (0 if res.ok else 1))
            base_failed = self.baseline.tests_failed
            # The gate: tests that passed at base still pass. When the base fails too, only more
            # failures count, and a suite that cannot report counts at either end is no worse.
            worse = self.baseline.tests_ok or (base_failed is not None and (failed is None or failed > base_failed))
            if not res.ok and worse:
                return Feedback(kind="test", details=_tail(res.summary(limit=_TAIL_CHARS)), command=cmds.test)
        if cmds.profile and self.baseline.sandbox is not None:
            return await self._profile(sb, cand, cmds.profile)
        return None

    async def _profile(self, sb: Any, cand: Candidate, cmd: str) -> Feedback | None:
        from bakeoff.agent.stats import interleaved
        from bakeoff.tools.profile import CommandFailed

        timeout = self.settings.command_timeout_s
        async with self.timing_lock:  # one timing at a time: candidates must not slow each other down
            self._state("profiling")
            res = await sb.exec(cmd, timeout=timeout)  # also the warm-up run
            self.profile_output = res.stdout.strip() if res.ok else None
            if not res.ok:
                return Feedback(kind="test", command=cmd, details=_tail(res.summary(limit=_TAIL_CHARS)))
            try:
                cand.timing = await interleaved(
                    lambda: _time(self.baseline.sandbox, cmd, timeout), lambda: _time(sb, cmd, timeout),
                    repeats=self.settings.profile_repeats, warmup=0,
                )
            except CommandFailed as exc:  # a run that fails only sometimes: the model can look into it
                return Feedback(kind="test", command=cmd, details=_tail(str(exc)))
        if cand.timing.faster:
            return None
        t = cand.timing
        return Feedback(kind="speed", command=cmd, details=(
            f"median {min(t.candidate_s):.3f}-{max(t.candidate_s):.3f}s against the base's "
            f"{min(t.baseline_s):.3f}-{max(t.baseline_s):.3f}s: speedup {t.speedup:.2f}x "
            f"(interval {t.low:.2f}-{t.high:.2f}), which does not exclude 1"
        ))

    async def _changed_files(self, sb: Any) -> dict[str, str]:
        changed = re.findall(r"^diff --git a/(\S+) b/", self.candidate.patch, re.M)
        out = {}
        for path in changed:
            try:
                out[path] = (await sb.read_file(path)).decode("utf-8", "replace")
            except FileNotFoundError:
                continue  # deleted by the edit
        return out

    async def _entry_source(self, sb: Any) -> str | None:
        path = _file_of(self.entry, self.baseline.files) if self.entry else None
        path = path or (self.files[0] if len(self.files) == 1 else None)
        return (await sb.read_file(path)).decode("utf-8", "replace") if path else None

    def _check_budget(self) -> None:
        from bakeoff.agent.models.budget import BudgetExceeded

        left = getattr(self.budget, "remaining", None)
        if left is not None and ((left.tokens is not None and left.tokens <= 0) or (left.usd is not None and left.usd <= 0)):
            raise BudgetExceeded(f"budget exhausted before candidate {self.cid}'s next model call: {self.budget.describe()}")

    def _state(self, state: str, **extra: Any) -> None:
        c = self.candidate
        t = c.timing
        self.events.emit(
            "candidate.state", id=c.id, state=state, strategy=c.strategy, model=c.model,
            temperature=c.temperature, round=extra.pop("round", c.rounds), built=c.built,
            tests_passed=c.tests_passed, tests_failed=c.tests_failed,
            speedup=t.speedup if t else None, cost_usd=c.cost_usd, **extra,
        )


# --------------------------------------------------------------------------- helpers


_DEF_PY = re.compile(r"^(?:async\s+)?def\s+([A-Za-z_]\w*)\s*\(", re.M)
_DEF_C = re.compile(r"^[A-Za-z_][\w\s\*]*?\b([A-Za-z_]\w*)\s*\([^;{)]*\)\s*\{", re.M)


def functions_in(source: str, language: str, *, public: bool = False) -> list[str]:
    """Names of the top-level functions a source defines; ``public``: not ``static``, not ``_private``."""
    if language == "python":
        return [f for f in _DEF_PY.findall(source) if not (public and f.startswith("_"))]
    names = []
    for m in _DEF_C.finditer(source):
        if m.group(1) in ("if", "for", "while", "switch", "return"):
            continue
        if public and re.match(r"\s*static\b", m.group(0)):
            continue
        names.append(m.group(1))
    return names


def _file_of(entry: str, files: Mapping[str, str]) -> str | None:
    for path, text in files.items():
        if entry in functions_in(text, language_of([path])):
            return path
    return None


def guess_entry(goal: str, files: Mapping[str, str]) -> str | None:
    """The function a goal is about: one it names, else the only public function of the files."""
    found: list[str] = []
    public: list[str] = []
    for path, text in files.items():
        found.extend(functions_in(text, language_of([path])))
        public.extend(f for f in functions_in(text, language_of([path]), public=True) if f != "main")
    named = [f for f in found if re.search(rf"\b{re.escape(f)}\b", goal)]
    if named:
        return named[0]
    public = list(dict.fromkeys(public))
    return public[0] if len(public) == 1 else None


async def _detect_commands(sb: Any, settings: FanOutSettings) -> Commands:
    """The build, test and benchmark commands: configured ones, else what the repository has.

    Build and test come from the build and test tools' own detection (make, CMake, plain
    gcc/g++, nvcc, pytest, ctest); a Python project needs no build step here, its tests
    import it. The benchmark is a Makefile target named like one, or a ``bench.py``.
    """
    from bakeoff.tools.exec import plan_build, plan_tests
    from bakeoff.tools.files import probe

    found = await probe(ToolContext(sandbox=sb), {"mode": "detect"})
    plan = plan_build(found, settings.build)
    build = plan.command if plan is not None and plan.system != "python" else None
    tests = plan_tests(found, settings.test)
    test = tests[1] if tests is not None else None
    profile = settings.profile
    if profile is None:
        bench = next((t for t in ("bench-run", "run-bench", "benchmark", "bench") if t in found["make_targets"]), None)
        if bench is not None:
            profile = f"make -s {bench}"
        elif "bench.py" in found["python"]:
            profile = "python3 bench.py"
    return Commands(build=build, test=test, profile=profile)


async def _baseline(sb: Any, files: Sequence[str], settings: FanOutSettings) -> Baseline:
    contents: dict[str, str] = {}
    for path in files:
        try:
            contents[path] = (await sb.read_file(path)).decode("utf-8", "replace")
        except (FileNotFoundError, ValueError) as exc:
            raise FanOutError(f"fan_out: cannot read {path!r} in the repository ({exc}): pass paths relative to its root") from exc
    cmds = await _detect_commands(sb, settings)
    base = Baseline(commands=cmds, files=contents, sandbox=sb)
    timeout = settings.command_timeout_s
    if cmds.build:
        base.built = (await sb.exec(cmds.build, timeout=timeout)).ok
    if cmds.test and base.built:
        res = await sb.exec(cmds.test, timeout=timeout)
        base.tests_ok = res.ok
        base.tests_failed = _test_counts(res)[1]
    if cmds.profile and base.built:
        res = await sb.exec(cmds.profile, timeout=timeout)  # also the warm-up run
        base.profile_output = res.stdout.strip() if res.ok else None
        if not res.ok:
            base.sandbox = None  # a benchmark that fails at base cannot time anyone
    else:
        base.sandbox = None
    return base


def _numbers(text: str) -> list[str]:
    return re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf", text or "")


def same_output(a: str | None, b: str | None, rel: float = 1e-6) -> bool:
    """Two benchmark outputs agree: same text around the numbers, integers exact, floats within ``rel``."""
    if a is None or b is None:
        return a == b
    if re.sub(r"[-+\d.eE]+", "#", a) != re.sub(r"[-+\d.eE]+", "#", b):
        return False
    for x, y in zip(_numbers(a), _numbers(b)):
        if x == y:
            continue
        if re.fullmatch(r"[-+]?\d+", x) and re.fullmatch(r"[-+]?\d+", y):
            return False
        try:
            fx, fy = float(x), float(y)
        except ValueError:
            return False
        if not math.isclose(fx, fy, rel_tol=rel, abs_tol=1e-12):
            return False
    return True


# --------------------------------------------------------------------------- fan_out


class FanOutResult(BaseModel):
    """What a fan-out produced: the verdict, every candidate, the winner and its patch, the table."""

    verdict: Verdict
    candidates: list[Candidate] = Field(default_factory=list)
    winner: Candidate | None = None
    patch: str = ""
    report_table: str = ""


def _editors(models: Mapping[str, Any]) -> list[Any]:
    """The editor models, used in turn: ``models["editors"]`` or ``models["editor"]`` (one or a list)."""
    found = models.get("editors") or models.get("editor")
    if found is None:
        raise FanOutError("fan_out needs an editor model: configure one (--model, or [model] editor = ...)")
    return list(found) if isinstance(found, (list, tuple)) else [found]


def _harness(language: str, entry: str | None, source: str | None, sandbox: Any, events: EventBus) -> Any:
    """The differential harness for the entry function, with the base version as reference.

    None when there is no entry function or no harness for the language: the vote then
    rests on the repo's tests, the benchmark's output and the generated tests. The harness
    compiles and runs candidates in ``sandbox`` when one is given, else on this machine in a
    temporary directory of its own (see ``FanOutSettings.harness_in_sandbox``).
    """
    if entry is None or source is None:
        return None
    if language == "python":
        from bakeoff.agent.harness.pyexec import SandboxRunner

        return _testgen().PythonHarness(source, entry, runner=SandboxRunner(sandbox) if sandbox is not None else None)
    if language in ("c", "cpp"):
        from bakeoff.agent.harness.c_harness import CHarness

        return CHarness(source, entry, language="c++" if language == "cpp" else "c", sandbox=sandbox, events=events)
    return None


_LOCAL_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[ \t]*$', re.M)


def inline_includes(source: str, files: Mapping[str, str], depth: int = 4) -> str:
    """``source`` with each ``#include "x.h"`` of a repository file replaced by its text.

    The differential harness compiles a function's file on its own, away from the repository,
    so the local headers it needs travel inside it.
    """
    if depth == 0:
        return source

    def one(m: re.Match) -> str:
        text = files.get(m.group(1))
        return m.group(0) if text is None else inline_includes(text, files, depth - 1)

    return _LOCAL_INCLUDE.sub(one, source)


def _testgen() -> Any:
    from bakeoff.agent.harness import python_harness

    return python_harness


class _Tests(BaseModel):
    tests: list[TestCase] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    harness_failed: bool = False


async def _make_tests(harness: Any, tester: Any, goal: str, source: str | None, entry: str | None,
                      language: str, settings: FanOutSettings) -> _Tests:
    """Generated tests (tester model) and differential cases (harness), made while candidates develop."""
    out = _Tests()
    if tester is not None and entry and source and language == "python" and settings.test_samples:
        from bakeoff.agent.harness.testgen import generate_tests

        try:
            out.tests.extend(await generate_tests(tester, goal, source, entry, n=settings.test_samples))
        except _model_errors() as exc:
            out.notes.append(f"no generated tests: {type(exc).__name__}: {exc}")
    if harness is not None:
        from bakeoff.agent.harness.edge_inputs import make_tests_with, propose_inputs

        edge: list = []
        if tester is not None and entry and source and settings.test_samples:
            try:
                edge, notes = await propose_inputs(tester, goal=goal, source=source, entry=entry, language=language,
                                                   harness=harness)
                out.notes.extend(notes)
            except _model_errors() as exc:
                out.notes.append(f"no model-proposed edge inputs: {type(exc).__name__}: {exc}"[:200])
        try:
            made, notes = await make_tests_with(harness, edge)
            out.tests.extend(made)
            out.notes.extend(notes)
        except RuntimeError as exc:  # the harness could not build its driver for this function
            out.notes.append(f"no differential tests: {exc}"[:500])
            out.harness_failed = True
    return out


def _early_stop(trajectories: Sequence[Trajectory], results: Sequence[Candidate]) -> bool:
    """A clear, tested majority: at least 3 candidates, all through the gate, all giving the same output."""
    if len(results) < 3 or any(c.error is not None or not c.patch for c in results):
        return False
    outputs = [t.profile_output for t in trajectories]
    return all(same_output(outputs[0], o) for o in outputs[1:])


async def _matrix(
    candidates: Sequence[Candidate], tests: list[TestCase], harness: Any, sources: Mapping[str, str],
    trajectories: Mapping[str, Trajectory], baseline: Baseline,
) -> ExecutionMatrix:
    """Every candidate on every test: the repo's suite, the benchmark's output, then the harness.

    ``sources`` holds each candidate's version of the entry file and the base's as ``"base"``;
    a test the base fails is marked invalid (the reference is right by definition).
    """
    matrix = ExecutionMatrix()
    for c in candidates:
        gate = c.error is None and bool(c.patch)
        matrix.set(c.id, REPO_TESTS, "pass" if gate else "fail")
        if baseline.profile_output is not None:
            out = trajectories[c.id].profile_output
            ok = gate and same_output(out, baseline.profile_output)
            matrix.set(c.id, "bench-output", "pass" if ok else ("error" if out is None else "fail"), output=out)
    if harness is None or not tests:
        return matrix
    run = await harness.run_matrix(sources, tests)
    for t in tests:
        if "base" in run.cells and t.valid is None:
            t.valid = run.cells["base"].get(t.id) == "pass"
    for c in candidates:
        for t in tests:
            outcome = run.cells.get(c.id, {}).get(t.id, "error")
            matrix.set(c.id, t.id, outcome, output=run.outputs.get(c.id, {}).get(t.id))
    return matrix


async def _local_headers(sb: Any, source: str, path: str | None) -> dict[str, str]:
    """The repository headers ``source`` includes with quotes, by the name it includes them by."""
    folder = path.rsplit("/", 1)[0] + "/" if path and "/" in path else ""
    found: dict[str, str] = {}
    for name in _LOCAL_INCLUDE.findall(source):
        try:
            found[name] = (await sb.read_file(folder + name)).decode("utf-8", "replace")
        except (FileNotFoundError, ValueError):
            continue  # a system header included with quotes, or one outside the repository
    return found


async def _close(harness: Any) -> None:
    """Remove what a harness left on disk (the C harness's build directory)."""
    close = getattr(harness, "close", None)
    if close is not None:
        await close()


async def _all(coros: Sequence[Any]) -> list[Any]:
    """Run ``coros`` at once; if one raises, the others are cancelled before it propagates."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _develop(
    trajectories: Mapping[str, Trajectory], order: list[str], first: int, tests_job: asyncio.Task, events: EventBus,
) -> tuple[list[Candidate], _Tests]:
    """The first wave; the rest only when the first did not already agree (adaptive n)."""
    candidates = await _all([trajectories[c].run() for c in order[:first]])
    if first < len(order) and _early_stop([trajectories[c] for c in order[:first]], candidates):
        events.emit("fanout.early_stop", started=first, skipped=len(order) - first)
        for c in order[first:]:
            trajectories[c]._state("failed", detail="not started: the first wave already agreed")
    elif first < len(order):
        events.emit("fanout.wave", started=len(order) - first)
        candidates += await _all([trajectories[c].run() for c in order[first:]])
    return candidates, await tests_job


async def _retime(
    files: Mapping[str, Mapping[str, str]], pool: Any, workspace: Workspace, baseline: Baseline,
    settings: FanOutSettings, events: EventBus,
) -> dict[str, Timing]:
    """Time the winners again, one at a time, once no candidate is being developed any more."""
    from bakeoff.agent.stats import interleaved
    from bakeoff.tools.profile import CommandFailed

    cmd, timeout, out = baseline.commands.profile or "", settings.command_timeout_s, {}
    for cid, contents in files.items():
        async with pool.sandbox(workspace) as sb:
            for path, text in contents.items():
                await sb.write_file(path, text)
            if baseline.commands.build and not (await sb.exec(baseline.commands.build, timeout=timeout)).ok:
                continue  # it built in its own sandbox; a rebuild failing here leaves its first timing
            events.emit("candidate.state", id=cid, state="profiling", detail="timing the winners")
            try:
                out[cid] = await interleaved(
                    lambda: _time(baseline.sandbox, cmd, timeout), lambda sb=sb: _time(sb, cmd, timeout),
                    repeats=settings.timing_repeats, warmup=1,
                )
            except CommandFailed:
                continue  # a run failed only now: its first timing stands, the next vote will see it
    return out


def _table_text(verdict: Verdict) -> str:
    from rich.console import Console

    from bakeoff.agent.selection.vote import render_table

    buf = io.StringIO()
    Console(file=buf, width=140, force_terminal=False, color_system=None).print(render_table(verdict))
    return buf.getvalue()


async def fan_out(
    goal: str,
    files: Sequence[str],
    n: int,
    *,
    services: Mapping[str, Any],
    entry: str | None = None,
    language: str | None = None,
) -> FanOutResult:
    """Develop ``n`` candidates for ``goal`` on ``files`` at once, test them all, ship the fastest correct one.

    ``services``: ``models`` (role -> Model), ``pool`` (SandboxPool), ``workspace``
    (the repo at base), and optionally ``budget``, ``events``, ``settings``.
    """
    from bakeoff.agent.selection.vote import choose, vote

    settings = FanOutSettings.from_any(services.get("settings"))
    events: EventBus = services.get("events") or EventBus()
    models, pool, workspace = services.get("models") or {}, services["pool"], services["workspace"]
    if not files:
        raise FanOutError("fan_out needs at least one file to edit: pass files=[...] relative to the repository root")
    editors = _editors(models)
    if getattr(pool, "max_concurrent", 2) < 2:
        raise FanOutError("fan_out needs at least 2 sandboxes at once (the base stays open for timing): raise max_sandboxes")
    language = language or language_of(files)
    n = max(1, min(n, settings.max_n))
    hints = spread(strategies_for(language, goal, settings.strategies), n)
    temps = temperatures(n, settings.temperature_low, settings.temperature_high)
    events.emit("fanout.start", goal=goal, files=list(files), n=n, language=language)
    async with contextlib.AsyncExitStack() as cleanup:
        base_sb = await cleanup.enter_async_context(pool.sandbox(workspace))
        baseline = await _baseline(base_sb, files, settings)
        entry = entry or guess_entry(goal, baseline.files)
        entry_path = _file_of(entry, baseline.files) if entry else None
        base_source = baseline.files.get(entry_path) if entry_path else None
        headers = await _local_headers(base_sb, base_source, entry_path) if base_source else {}
        harness = _harness(
            language_of([entry_path]) if entry_path else language, entry,
            inline_includes(base_source, headers) if base_source else None,
            base_sb if settings.harness_in_sandbox else None, events,
        )
        cleanup.push_async_callback(_close, harness)
        tests_job = asyncio.create_task(
            _make_tests(harness, models.get("tester"), goal, base_source, entry, language, settings)
        )
        lock = asyncio.Lock()
        trajectories = {
            f"c{i + 1}": Trajectory(
                f"c{i + 1}", goal=goal, files=files, language=language, entry=entry, strategy=hints[i],
                temperature=temps[i], model=editors[i % len(editors)], pool=pool, workspace=workspace,
                baseline=baseline, settings=settings, events=events, budget=services.get("budget"),
                timing_lock=lock,
            )
            for i in range(n)
        }
        order = list(trajectories)
        for t in trajectories.values():
            t._state("queued")
        first = max(1, min(n, math.ceil(n * settings.first_wave)))
        try:
            candidates, made = await _develop(trajectories, order, first, tests_job, events)
        finally:
            if not tests_job.done():  # cancelled, or a sandbox failure: no orphaned work
                tests_job.cancel()
                await asyncio.gather(tests_job, return_exceptions=True)
        tests = [*made.tests]
        if made.harness_failed:
            harness = None
        sources = {
            c.id: inline_includes(c.source, {**headers, **trajectories[c.id].final_files})
            for c in candidates if c.source and c.error is None and c.patch
        }
        if base_source is not None:
            sources["base"] = inline_includes(base_source, headers)
        matrix = await _matrix(candidates, tests, harness, sources, trajectories, baseline)
        gate = {c.id: c.error is None and bool(c.patch) for c in candidates}
        all_tests = [
            TestCase(id=REPO_TESTS, kind="given", valid=True),
            *([TestCase(id="bench-output", kind="differential", expected=baseline.profile_output, valid=True)]
              if baseline.profile_output is not None else []),
            *tests,
        ]
        ballot = vote(matrix, all_tests, reference=True, gate=gate)
        timings: dict[str, Timing] = {}
        if harness is not None and ballot.winners:
            winners = {c: sources[c] for c in ballot.winners if c in sources}
            timings = await harness.time(winners, repeats=settings.timing_repeats)
        elif baseline.sandbox is not None and len(ballot.winners) > 1:
            timings = await _retime(
                {c: trajectories[c].final_files for c in ballot.winners}, pool, workspace, baseline, settings, events
            )
    verdict = choose(ballot, candidates, matrix, all_tests, timings=timings or None)
    if made.notes:
        verdict.reason += " " + " ".join(made.notes)
    by_id = {c.id: c for c in candidates}
    for cid, timing in timings.items():
        by_id[cid].timing = timing
    winner = by_id.get(verdict.winner) if verdict.winner else None
    events.emit("fanout.end", winner=verdict.winner, reason=verdict.reason, correct=verdict.correct)
    return FanOutResult(
        verdict=verdict, candidates=candidates, winner=winner,
        patch=winner.patch if winner else "", report_table=_table_text(verdict),
    )


class FanOutArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    goal: str = Field(description="what the candidates must achieve, e.g. 'make f in a.c parallel and faster'")
    files: list[str] = Field(description="files the candidates may edit, relative to the repository root")
    n: int = Field(4, ge=1, le=64, description="candidates developed in parallel")
    entry: str | None = Field(None, description="the function the goal is about (guessed from the goal when omitted)")
    language: str | None = Field(None, description="c, cpp, cuda or python (from the file names when omitted)")


class FanOut:
    """The ``fan_out`` tool: n candidate edits at once, tested, voted, and the fastest correct one chosen."""

    name: ClassVar[str] = "fan_out"
    description: ClassVar[str] = (
        "Develop n candidate edits for a goal in parallel, each in its own sandbox (edit, build, test, profile, "
        "repair), run every candidate on every test, and return the fastest one the vote says is correct."
    )
    Args: ClassVar[type[BaseModel]] = FanOutArgs
    Result: ClassVar[type[BaseModel]] = FanOutResult

    async def __call__(self, args: FanOutArgs, ctx: ToolContext) -> FanOutResult:
        services = dict(ctx.extras)
        for needed in ("models", "pool", "workspace"):
            if needed not in services:
                raise FanOutError(f"fan_out needs the session's {needed!r}; it runs inside a bakeoff session")
        return await fan_out(args.goal, args.files, args.n, services=services, entry=args.entry, language=args.language)
