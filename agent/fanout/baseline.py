"""The base version: how the repository builds, tests and benchmarks, and what it does.

The baseline is the reference point of the gate (which of the repository's tests passed
before any edit) and of timing (its sandbox stays open for interleaved runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel

from bakeoff.agent.fanout.settings import FanOutSettings
from bakeoff.agent.seams import ExecResult, Sandbox, ToolContext
from bakeoff.tools.errors import ToolError

TAIL_CHARS = 3000  # of failing output sent back to the model


class FanOutError(ToolError):
    """A fan_out call the planner can fix (a file that does not exist, nothing to edit)."""


class Commands(BaseModel):
    build: str | None = None
    test: str | None = None
    profile: str | None = None


@dataclass
class Baseline:
    """What the base version does: the reference point of the gate and of timing."""

    commands: Commands
    built: bool = True
    tests_ok: bool = True
    tests_failed: int | None = None
    profile_output: str | None = None
    sandbox: Sandbox | None = None  # kept open for interleaved timing; None: nothing to time against
    files: dict[str, str] = field(default_factory=dict)


def tail(text: str, limit: int = TAIL_CHARS) -> str:
    return text if len(text) <= limit else "[... cut ...]\n" + text[-limit:]


def test_counts(result: ExecResult) -> tuple[int | None, int | None]:
    """(passed, failed) as the test runner reported them; (None, None) when it did not say."""
    from bakeoff.tools.exec import parse_test_counts

    counts = parse_test_counts(result.stdout + "\n" + result.stderr)
    if counts is None:
        return None, None
    return counts.passed, counts.failed + counts.errors


async def time_command(sandbox: Sandbox, cmd: str, timeout: float) -> float:
    from bakeoff.tools.profile import time_command as timed

    return await timed(sandbox, cmd, timeout=timeout)


async def detect_commands(sb: Sandbox, settings: FanOutSettings) -> Commands:
    """The build, test and benchmark commands: configured ones, else what the repository has.

    Build and test come from the build and test tools' own detection (make, CMake, plain
    gcc/g++, nvcc, pytest, ctest); a Python project needs no build step here, its tests
    import it. The benchmark is a Makefile target named like one, or a ``bench.py``.
    """
    from bakeoff.tools.exec import plan_build, plan_tests
    from bakeoff.tools.probe import probe

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


async def measure_baseline(sb: Sandbox, files: Sequence[str], settings: FanOutSettings) -> Baseline:
    """Read ``files`` at base, detect the commands, and build, test and benchmark the base once."""
    contents: dict[str, str] = {}
    for path in files:
        try:
            contents[path] = (await sb.read_file(path)).decode("utf-8", "replace")
        except (FileNotFoundError, ValueError) as exc:
            raise FanOutError(f"fan_out: cannot read {path!r} in the repository ({exc}): pass paths relative to its root") from exc
    cmds = await detect_commands(sb, settings)
    base = Baseline(commands=cmds, files=contents, sandbox=sb)
    timeout = settings.command_timeout_s
    if cmds.build:
        base.built = (await sb.exec(cmds.build, timeout=timeout)).ok
    if cmds.test and base.built:
        res = await sb.exec(cmds.test, timeout=timeout)
        base.tests_ok = res.ok
        base.tests_failed = test_counts(res)[1]
    if cmds.profile and base.built:
        res = await sb.exec(cmds.profile, timeout=timeout)  # also the warm-up run
        base.profile_output = res.stdout.strip() if res.ok else None
        if not res.ok:
            base.sandbox = None  # a benchmark that fails at base cannot time anyone
    else:
        base.sandbox = None
    return base
