"""The sandbox pool: concurrency limit, cleanup on errors and cancellation, item 23."""

from __future__ import annotations

import asyncio
import os
import resource
from pathlib import Path

import pytest

from bakeoff.agent.seams import Sandbox, SandboxLimits, Workspace
from bakeoff.sandboxes.local import LocalSandbox
from bakeoff.sandboxes.pool import SandboxPool
from bakeoff.sandboxes.workspace import sandbox_root

LIMITS = SandboxLimits(wall_seconds=20, max_processes=64)


def our_sandbox_dirs() -> set[Path]:
    mine = f"{os.getpid()}\n"
    return {d for d in sandbox_root().glob("bakeoff-sb-*")
            if (d / ".bakeoff-owner").exists() and (d / ".bakeoff-owner").read_text() == mine}


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    (tmp_path / "n.txt").write_text("7\n")
    return Workspace(path=tmp_path)


async def test_concurrency_never_exceeds_the_limit(workspace: Workspace) -> None:
    pool = SandboxPool("local", LIMITS, max_concurrent=3, workspace=workspace)
    live = peak = 0

    async def job(i: int, sb: Sandbox) -> str:
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        try:
            r = await sb.exec(f"sleep 0.2; echo {i}")
            return r.stdout.strip()
        finally:
            live -= 1

    results = await pool.map(job, range(9))
    await pool.close()
    assert results == [str(i) for i in range(9)]
    assert peak == 3
    assert pool.backend in ("local", "local+bwrap")
    assert our_sandbox_dirs() == set()


async def test_an_exception_is_that_items_result_and_the_others_finish(workspace: Workspace) -> None:
    async def job(i: int, sb: Sandbox) -> int:
        if i == 2:
            raise RuntimeError("candidate 2 broke")
        return int((await sb.read_file("n.txt")).decode()) + i

    async with SandboxPool("local", LIMITS, max_concurrent=2) as pool:
        results = await pool.map(job, range(5), workspace)
    assert results[:2] == [7, 8] and results[3:] == [10, 11]
    assert isinstance(results[2], RuntimeError) and "candidate 2" in str(results[2])
    assert our_sandbox_dirs() == set()


async def test_a_cancelled_user_still_closes_its_sandbox(workspace: Workspace) -> None:
    pool = SandboxPool("local", LIMITS, max_concurrent=2)
    entered = asyncio.Event()
    seen: list[LocalSandbox] = []

    async def user() -> None:
        async with pool.sandbox(workspace) as sb:
            seen.append(sb)
            entered.set()
            await sb.exec("sleep 30")

    task = asyncio.create_task(user())
    await entered.wait()
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not seen[0].dir.exists()
    # The slot came back: two more sandboxes fit at once.
    async with pool.sandbox(workspace), pool.sandbox(workspace):
        pass
    await pool.close()
    assert our_sandbox_dirs() == set()


@pytest.mark.slow
async def test_23_sixty_four_candidates_at_once(workspace: Workspace) -> None:
    """64 candidates, each printing a lot: no deadlock, bounded memory, all finish."""
    limits = LIMITS.model_copy(update={"output_bytes": 16 * 1024})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    async def job(i: int, sb: Sandbox) -> tuple[int, bool]:
        r = await sb.exec(f"seq 1 200000; exit $(( {i} % 3 == 0 ))")
        return r.exit_code, r.truncated

    async with SandboxPool("local", limits, max_concurrent=8) as pool:
        results = await asyncio.wait_for(pool.map(job, range(64), workspace), timeout=120)
    assert results == [(int(i % 3 == 0), True) for i in range(64)]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024
    assert our_sandbox_dirs() == set()


async def test_held_sandboxes_take_no_slot_and_a_wait_for_a_slot_cancels_at_once(workspace: Workspace) -> None:
    """A run holds its base (held) while its candidates take the slots: with one slot, the base
    and a candidate are open at once, and a second candidate waits; cancelling that wait (Ctrl-C)
    ends it at once and leaves nothing."""
    pool = SandboxPool("local", LIMITS, max_concurrent=1)
    async with pool.sandbox(workspace, hold=True) as base:
        async with pool.sandbox(workspace) as candidate:
            assert pool.live == 2 and pool.held == 1
            assert (await candidate.exec("cat n.txt")).stdout.strip() == "7"
            waiting = asyncio.create_task(pool.map(lambda i, sb: sb.exec("true"), [1], workspace))
            await asyncio.sleep(0.2)
            assert not waiting.done() and pool.live == 2  # it waits for the slot, holding nothing
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(waiting, timeout=2)
        assert (await base.exec("true")).ok
    await pool.close()
    assert pool.live == 0 and our_sandbox_dirs() == set()
