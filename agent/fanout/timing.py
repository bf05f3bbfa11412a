"""Step 6's measurements: the vote's winners timed against the base, interleaved (A B A B),
once no candidate is being developed any more."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bakeoff.agent.events import EventBus
from bakeoff.agent.fanout.baseline import Baseline, time_command
from bakeoff.agent.fanout.settings import FanOutSettings
from bakeoff.agent.harness.protocol import DifferentialHarness
from bakeoff.agent.seams import Workspace
from bakeoff.agent.types import Timing
from bakeoff.sandboxes.pool import SandboxPool


async def time_winners(
    winners: Sequence[str], harness: DifferentialHarness | None, sources: Mapping[str, str],
    files: Mapping[str, Mapping[str, str]], baseline: Baseline, pool: SandboxPool, workspace: Workspace,
    settings: FanOutSettings, events: EventBus,
) -> dict[str, Timing]:
    """Timings of ``winners``: by the differential harness on its timing input when there is
    one, else by the repository's benchmark (only worth it when there is a choice to make)."""
    if harness is not None and winners:
        chosen = {c: sources[c] for c in winners if c in sources}
        return await harness.time(chosen, repeats=settings.timing_repeats)
    if baseline.sandbox is not None and len(winners) > 1:
        return await retime({c: files[c] for c in winners}, pool, workspace, baseline, settings, events)
    return {}


async def retime(
    files: Mapping[str, Mapping[str, str]], pool: SandboxPool, workspace: Workspace, baseline: Baseline,
    settings: FanOutSettings, events: EventBus,
) -> dict[str, Timing]:
    """Time each candidate (its edited files, rebuilt in a fresh sandbox) against the base's
    sandbox with the repository's benchmark, one at a time."""
    from bakeoff.agent.stats import interleaved
    from bakeoff.tools.profile import CommandFailed

    cmd, timeout, out = baseline.commands.profile or "", settings.command_timeout_s, {}
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
                    lambda: time_command(base_sb, cmd, timeout), lambda sb=sb: time_command(sb, cmd, timeout),
                    repeats=settings.timing_repeats, warmup=1,
                )
            except CommandFailed:
                continue  # a run failed only now: its first timing stands, the next vote will see it
    return out
