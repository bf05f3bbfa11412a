"""Many sandboxes at once, under one concurrency limit.

Everything above the sandboxes (trajectories, the execution matrix, profiling) runs its
candidates through a pool, so the number of live sandboxes, processes and captured outputs
stays bounded however many candidates a run asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import TypeVar

from bakeoff.agent.seams import Sandbox, SandboxLimits, Workspace
from bakeoff.sandboxes import choose_backend, create_sandbox

T = TypeVar("T")
R = TypeVar("R")


class SandboxPool:
    """Hands out sandboxes, at most ``max_concurrent`` alive at a time; always closes them."""

    def __init__(
        self,
        kind: str = "auto",
        limits: SandboxLimits | None = None,
        max_concurrent: int = 4,
        image: str | None = None,
        dockerfile: Path | None = None,
        *,
        workspace: Workspace | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.kind = kind
        self.limits = limits
        self.max_concurrent = max_concurrent
        self.image = image
        self.dockerfile = dockerfile
        self.workspace = workspace  # what ``map`` copies when it is given no workspace
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        self._live: set[Sandbox] = set()
        self._backend: str | None = None
        self._closed = False

    @property
    def backend(self) -> str:
        """The backend this pool's sandboxes run on (resolved once, on first use)."""
        if self._backend is None:
            self._backend = choose_backend(self.kind).backend
        return self._backend

    @contextlib.asynccontextmanager
    async def sandbox(self, workspace: Workspace) -> AsyncIterator[Sandbox]:
        """A sandbox holding a copy of ``workspace``, closed on exit (also on cancellation)."""
        if self._closed:
            raise RuntimeError("the sandbox pool is closed")
        async with self._semaphore():
            sb = await create_sandbox(workspace, self.backend, self.limits,
                                      image=self.image, dockerfile=self.dockerfile)
            self._live.add(sb)
            try:
                yield sb
            finally:
                self._live.discard(sb)
                # Closing must finish even when the task using the sandbox is cancelled.
                await asyncio.shield(sb.close())

    def _semaphore(self) -> asyncio.Semaphore:
        # One per event loop: a pool may outlive the loop that first used it (batch runs).
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots[0] is not loop:
            self._slots = (loop, asyncio.Semaphore(self.max_concurrent))
        return self._slots[1]

    async def map(
        self,
        fn: Callable[[T, Sandbox], Awaitable[R]],
        items: Iterable[T],
        workspace: Workspace | Callable[[T], Workspace] | None = None,
    ) -> list[R | BaseException]:
        """Run ``fn(item, sandbox)`` for every item, concurrently under the pool's limit.

        Each item gets a fresh sandbox from ``workspace`` (one for all, or a function of the
        item; by default the pool's workspace, or the item itself when it is a ``Workspace``).
        Results come back in the
        items' order; an exception raised for one item is that item's result and does not
        stop the others.
        """

        async def one(item: T) -> R | BaseException:
            ws = _workspace_for(item, workspace, self.workspace)
            try:
                async with self.sandbox(ws) as sb:
                    return await fn(item, sb)
            except Exception as exc:  # recorded as the item's result, per the contract above
                return exc

        return list(await asyncio.gather(*(one(item) for item in items)))

    async def close(self) -> None:
        """Close every sandbox still alive (those of cancelled or abandoned users)."""
        self._closed = True
        live, self._live = list(self._live), set()
        await asyncio.gather(*(sb.close() for sb in live))

    async def __aenter__(self) -> SandboxPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SandboxPerKey:
    """One sandbox per key (a candidate's source, say), each a fresh copy of ``workspace``,
    made on first use and kept until ``close``: what one key's code does to its sandbox (a
    fork bomb holding every process slot) cannot touch another key's."""

    def __init__(self, workspace: Workspace, kind: str = "auto", limits: SandboxLimits | None = None, *,
                 image: str | None = None, dockerfile: Path | None = None) -> None:
        self.workspace = workspace
        self.kind = kind
        self.limits = limits
        self.image = image
        self.dockerfile = dockerfile
        self._made: dict[str, asyncio.Task[Sandbox]] = {}
        self._closed = False

    async def __call__(self, key: str) -> Sandbox:
        if self._closed:
            raise RuntimeError("these sandboxes are closed")
        task = self._made.get(key)
        if task is None:
            task = asyncio.ensure_future(create_sandbox(self.workspace, self.kind, self.limits,
                                                        image=self.image, dockerfile=self.dockerfile))
            self._made[key] = task
        return await asyncio.shield(task)  # a cancelled caller does not cancel a shared creation

    async def close(self) -> None:
        """Close every sandbox made (also those still being made)."""
        self._closed = True
        made, self._made = list(self._made.values()), {}
        for task in made:
            try:
                sb = await task
            except (Exception, asyncio.CancelledError):  # its creation failed: nothing to close (the caller saw why)
                continue
            await asyncio.shield(sb.close())

    async def __aenter__(self) -> SandboxPerKey:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _workspace_for(item: T, explicit: Workspace | Callable[[T], Workspace] | None,
                   default: Workspace | None) -> Workspace:
    if isinstance(explicit, Workspace):
        return explicit
    if explicit is not None:
        return explicit(item)
    if isinstance(item, Workspace):
        return item
    if default is None:
        raise TypeError("map() needs a workspace: pass one, give the pool one, or map over Workspaces")
    return default
