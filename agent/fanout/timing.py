"""Step 6's measurements: the vote's winners timed against the base, interleaved (A B A B),
once no candidate is being developed any more, at the target parallelism."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bakeoff.agent.events import EventBus
from bakeoff.agent.fanout.baseline import Baseline
from bakeoff.agent.fanout.settings import FanOutSettings
from bakeoff.agent.harness.protocol import DifferentialHarness
from bakeoff.agent.seams import Sandbox, Workspace
from bakeoff.agent.types import TargetParallelism, Timing, TimingSetup
from bakeoff.sandboxes.pool import SandboxPool


async def target_of(settings: FanOutSettings, sandbox: Sandbox) -> TargetParallelism:
    """The parallelism to time at: the user's setting, else the CPUs the sandbox may use."""
    from bakeoff.agent.harness.parallelism import target_parallelism

    return await target_parallelism(settings.threads, sandbox=sandbox)


async def time_winners(
    winners: Sequence[str], harness: DifferentialHarness | None, sources: Mapping[str, str],
    files: Mapping[str, Mapping[str, str]], baseline: Baseline, base_sandbox: Sandbox, pool: SandboxPool,
    workspace: Workspace, settings: FanOutSettings, events: EventBus,
) -> tuple[dict[str, Timing], TimingSetup | None]:
    """Timings of ``winners`` and what they mean: by the differential harness on its sized
    timing input when there is one, else by the repository's benchmark (only worth it when
    there is a choice to make: a single winner keeps the timing its trajectory measured).
    The target parallelism is the user's setting, else what ``base_sandbox`` may use."""
    if not winners or (harness is None and baseline.sandbox is None):
        return {}, None
    target = await target_of(settings, base_sandbox)
    if harness is not None:
        chosen = {c: sources[c] for c in winners if c in sources}
        timings = await harness.time(chosen, repeats=settings.timing_repeats, target=target)
        return timings, harness.timing_setup
    if baseline.sandbox is not None and baseline.commands.profile and len(winners) > 1:
        setup = TimingSetup(threads=target.threads, threads_source=target.source, curve_threads=[target.threads],
                            sizing="the repository's benchmark command, with OMP_NUM_THREADS set to the target")
        return await retime({c: files[c] for c in winners}, pool, workspace, baseline, settings, events, target), setup
    return {}, None


async def retime(
    files: Mapping[str, Mapping[str, str]], pool: SandboxPool, workspace: Workspace, baseline: Baseline,
    settings: FanOutSettings, events: EventBus, target: TargetParallelism,
) -> dict[str, Timing]:
    """Time each candidate (its edited files, rebuilt in a fresh sandbox) against the base's
    sandbox with the repository's benchmark, one at a time, at ``target`` OpenMP threads."""
    from bakeoff.agent.stats import interleaved
    from bakeoff.tools.profile import CommandFailed, time_command

    cmd, timeout, out = baseline.commands.profile or "", settings.command_timeout_s, {}
    env = {"OMP_NUM_THREADS": str(target.threads)}
    base_sb = baseline.sandbox
    assert base_sb is not None
    for cid, contents in files.items():
        async with pool.sandbox(workspace) as sb:
            for path, text in contents.items():
                await sb.write_file(path, text)
            if baseline.commands.build and not (await sb.exec(baseline.commands.build, timeout=timeout)).ok:
                continue  # it built in its own sandbox; a rebuild failing here leaves its first timing
            events.emit("candidate.state", id=cid, state="profiling", detail="timing the winners")
            try:
                out[cid] = await interleaved(
                    lambda: time_command(base_sb, cmd, env=env, timeout=timeout),
                    lambda sb=sb: time_command(sb, cmd, env=env, timeout=timeout),
                    repeats=settings.timing_repeats, warmup=1, threads=target.threads,
                )
            except CommandFailed:
                continue  # a run failed only now: its first timing stands, the next vote will see it
    return out
