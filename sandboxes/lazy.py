"""A sandbox made only when first used: the planner's own tools (run, build, test, edit)
work in a copy of the repository at base that many runs never need.

It is a *held* sandbox of the pool (``SandboxPool.sandbox(hold=True)``): it stays open for
the whole run while fan-outs run candidates in working sandboxes, so it takes no slot they
could wait for."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence

from bakeoff.agent.seams import ExecResult, Sandbox, Workspace
from bakeoff.sandboxes.pool import SandboxPool


class LazySandbox:
    """A ``Sandbox`` made by ``pool`` (held, taking no slot) on the first command or file access."""

    def __init__(self, pool: SandboxPool, workspace: Workspace) -> None:
        self._pool = pool
        self._workspace = workspace
        self._stack: contextlib.AsyncExitStack | None = None
        self._sandbox: Sandbox | None = None
        self._lock = asyncio.Lock()
        self.backend = "lazy"

    async def _get(self) -> Sandbox:
        async with self._lock:
            if self._sandbox is None:
                self._stack = contextlib.AsyncExitStack()
                self._sandbox = await self._stack.enter_async_context(self._pool.sandbox(self._workspace, hold=True))
                self.backend = self._sandbox.backend
            return self._sandbox

    async def exec(self, cmd: str | Sequence[str], timeout: float | None = None, env: Mapping[str, str] | None = None,
                   cwd: str | None = None) -> ExecResult:
        return await (await self._get()).exec(cmd, timeout=timeout, env=env, cwd=cwd)

    async def write_file(self, path: str, content: str | bytes) -> None:
        await (await self._get()).write_file(path, content)

    async def read_file(self, path: str) -> bytes:
        return await (await self._get()).read_file(path)

    async def diff(self) -> str:
        return await self._sandbox.diff() if self._sandbox is not None else ""

    async def close(self) -> None:
        """Close the sandbox if one was made; waits for one being made (a cancelled run's)."""
        async with self._lock:
            stack, self._stack, self._sandbox = self._stack, None, None
        if stack is not None:
            await stack.aclose()
