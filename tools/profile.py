"""Timing: ``profile`` and the reusable ``time_command``.

Speed claims need statistics: the candidate and the baseline run interleaved (A B A B, via
``agent.stats.interleaved``) so machine noise hits both, and the speedup comes with a
bootstrap interval. A thread sweep repeats that for each ``OMP_NUM_THREADS``. For Python
commands, ``hotspots`` runs the command once under cProfile inside the sandbox and returns
the top functions by cumulative time.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from bakeoff.agent.seams import ExecResult, Sandbox, ToolContext
from bakeoff.agent.stats import interleaved, median
from bakeoff.agent.types import Timing
from bakeoff.tools.errors import ToolError
from bakeoff.tools.exec import need_sandbox
from bakeoff.tools.limits import LONGEST_COMMAND_S


class CommandFailed(RuntimeError):
    """A timed command did not succeed; ``result`` says how it failed."""

    def __init__(self, cmd: str, result: ExecResult) -> None:
        super().__init__(f"{cmd!r} failed while being timed: {result.summary(1500)}")
        self.cmd = cmd
        self.result = result


async def time_command(
    sandbox: Sandbox, cmd: str, *, env: Mapping[str, str] | None = None, timeout: float | None = None
) -> float:
    """Wall seconds of one successful run of ``cmd`` in ``sandbox``; raises ``CommandFailed``."""
    res = await sandbox.exec(cmd, timeout=timeout, env=dict(env) if env else None)
    if not res.ok:
        raise CommandFailed(cmd, res)
    return res.duration_s


class HotSpot(BaseModel):
    """One function of a cProfile run."""

    function: str
    file: str
    line: int
    calls: int
    own_s: float  # time in the function itself (tottime)
    cumulative_s: float  # time including callees (cumtime)


_PSTATS_SCRIPT = """
import json, os, pstats, sys
stats = pstats.Stats(sys.argv[1]).stats
root = os.getcwd() + os.sep
rows = []
for (file, line, func), (_cc, calls, own, cum, _callers) in stats.items():
    if func in ("<built-in method builtins.exec>", "<module>") and file in ("~", "<string>"):
        continue  # the profiler's own entry points
    rows.append([func, file[len(root):] if file.startswith(root) else file, line, calls, own, cum])
rows.sort(key=lambda r: -r[5])
print("BAKEOFF-HOTSPOTS " + json.dumps(rows[: int(sys.argv[2])]))
"""

_PYTHON = re.compile(r"^(?:.*/)?python(?:\d+(?:\.\d+)?)?$")


def cprofile_command(command: str, top: int) -> str:
    """A shell command that runs a Python ``command`` under cProfile and prints its top functions."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ToolError(f"cannot parse command {command!r}: {exc}") from exc
    if not argv or not _PYTHON.match(argv[0]) or len(argv) < 2:
        raise ToolError(
            "hotspots need a Python command such as 'python3 bench.py 1000' or 'python3 -m pkg.main'; "
            f"got {command!r}. For compiled code, time it without hotspots."
        )
    rest = argv[1:]
    while rest and rest[0] in ("-u", "-O", "-OO", "-B", "-E", "-s", "-I"):
        rest = rest[1:]  # interpreter flags that cProfile's command line does not take
    if not rest:
        raise ToolError(f"no script or module to profile in {command!r}")
    profiled = shlex.join([argv[0], "-m", "cProfile", "-o", "@@PROF@@"] + rest).replace("@@PROF@@", '"$prof"', 1)
    stats = shlex.join([argv[0], "-c", _PSTATS_SCRIPT, "@@PROF@@", str(top)]).replace("@@PROF@@", '"$prof"', 1)
    return f'prof=$(mktemp) && {profiled}; status=$?; {stats}; rm -f "$prof"; exit $status'


def parse_hotspots(output: str) -> list[HotSpot]:
    """The hot spots the pstats script printed (its last marked line)."""
    for line in reversed(output.splitlines()):
        if line.startswith("BAKEOFF-HOTSPOTS "):
            rows = json.loads(line[len("BAKEOFF-HOTSPOTS "):])
            return [
                HotSpot(function=f, file=file, line=ln, calls=calls, own_s=own, cumulative_s=cum)
                for f, file, ln, calls, own, cum in rows
            ]
    return []


class Profile:
    name: ClassVar[str] = "profile"
    description: ClassVar[str] = (
        "Time a command in the sandbox, interleaved with a baseline (the original code in its own "
        "sandbox, or 'baseline_command'), giving the median speedup and its 95% interval; optionally "
        "for each OMP_NUM_THREADS in 'threads' (without a baseline the sweep compares against 1 thread), "
        "and for Python commands the hot spots by cProfile."
    )
    # Every timed run has its own timeout, but how many there are grows with the arguments
    # (warmup and repeats, both sides, each thread count): the caller bounds the whole.
    time_limit_s: ClassVar[float | None] = None

    class Args(BaseModel):
        model_config = ConfigDict(extra="forbid")

        command: str = Field(description="command to time, e.g. './prog 1000000' or 'python3 bench.py'")
        baseline_command: str | None = Field(
            default=None, description="command to compare against; default: the same command in the baseline sandbox"
        )
        repeats: int = Field(default=5, ge=1, le=50, description="timed runs of each side")
        warmup: int = Field(default=1, ge=0, le=5, description="untimed runs of each side first")
        threads: list[int] = Field(default_factory=list, description="OMP_NUM_THREADS values to sweep, e.g. [1, 2, 4]")
        hotspots: bool = Field(default=False, description="also run a Python command once under cProfile")
        top: int = Field(default=15, ge=1, le=100, description="hot spots to return")
        timeout: float = Field(default=120.0, gt=0, le=LONGEST_COMMAND_S, description="seconds allowed for each run")

    class Result(BaseModel):
        ok: bool
        command: str
        baseline: Literal["baseline_sandbox", "baseline_command", "one_thread", "none"]
        baseline_command: str | None = None
        timing: Timing | None = None  # without a sweep: the only timing; with one: the fastest setting
        sweep: list[Timing] = Field(default_factory=list)
        median_s: float | None = None
        hotspots: list[HotSpot] = Field(default_factory=list)
        error: str | None = None

    async def __call__(self, args: Args, ctx: ToolContext) -> Result:
        sandbox = need_sandbox(ctx, self.name)
        if any(t < 1 for t in args.threads):
            raise ToolError("thread counts must be at least 1")
        other = ctx.baseline_sandbox
        base_sandbox = other or sandbox
        if other is not None:
            kind, base_cmd = "baseline_sandbox", args.baseline_command or args.command
        elif args.baseline_command:
            kind, base_cmd = "baseline_command", args.baseline_command
        elif args.threads:
            kind, base_cmd = "one_thread", args.command
        else:
            kind, base_cmd = "none", None
        result = self.Result(ok=True, command=args.command, baseline=kind, baseline_command=base_cmd)
        try:
            if args.threads:
                for count in args.threads:
                    env = {"OMP_NUM_THREADS": str(count)}
                    base_env = {"OMP_NUM_THREADS": "1"} if kind == "one_thread" else env
                    result.sweep.append(
                        await self._compare(args, sandbox, base_sandbox, base_cmd or args.command, env, base_env, count)
                    )
                result.timing = min(result.sweep, key=lambda t: median(t.candidate_s))
            elif base_cmd is not None:
                result.timing = await self._compare(args, sandbox, base_sandbox, base_cmd, None, None, None)
            else:
                for _ in range(args.warmup):
                    await time_command(sandbox, args.command, timeout=args.timeout)
                samples = [await time_command(sandbox, args.command, timeout=args.timeout) for _ in range(args.repeats)]
                result.timing = Timing(candidate_s=samples)
        except CommandFailed as exc:
            result.ok, result.error = False, str(exc)
            return result
        if result.timing is not None and result.timing.candidate_s:
            result.median_s = median(result.timing.candidate_s)
        if args.hotspots:
            res = await sandbox.exec(cprofile_command(args.command, args.top), timeout=args.timeout * 3)
            result.hotspots = parse_hotspots(res.stdout)
            if not res.ok or not result.hotspots:
                result.ok, result.error = False, "profiling under cProfile failed: " + res.summary(1500)
        return result

    @staticmethod
    async def _compare(
        args: Profile.Args, sandbox: Sandbox, base_sandbox: Sandbox, base_cmd: str,
        env: dict[str, str] | None, base_env: dict[str, str] | None, threads: int | None,
    ) -> Timing:
        async def run_baseline() -> float:
            return await time_command(base_sandbox, base_cmd, env=base_env, timeout=args.timeout)

        async def run_candidate() -> float:
            return await time_command(sandbox, args.command, env=env, timeout=args.timeout)

        return await interleaved(run_baseline, run_candidate, repeats=args.repeats, warmup=args.warmup, threads=threads)
