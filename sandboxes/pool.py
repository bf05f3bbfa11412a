"""Many sandboxes at once, under one concurrency limit, with no way to deadlock.

Everything above the sandboxes (trajectories, the execution matrix, profiling) runs its
candidates through a pool, so the number of live sandboxes, processes and captured outputs
stays bounded however many candidates a run asks for.

Two kinds of sandbox, so that no wait can last for ever:

- a *working* sandbox (a candidate's) takes one of ``max_concurrent`` slots, waiting for one
  when all are taken; its user never asks the pool for another sandbox while it holds one;
- a *held* sandbox (``hold=True``: the planner's scratch copy, a fan-out's base) stays open
  while the work it waits on runs in working sandboxes. It takes no slot, so a run can never
  hold the slots its own candidates wait for. Each run holds at most two (its scratch copy and
  its current fan-out's base), so a batch of K tasks at once keeps at most ``2 K`` held
  sandboxes beside the ``max_concurrent`` working ones.

Every wait for a slot is a plain ``asyncio`` wait: cancelling it (Ctrl-C, SIGTERM) ends it at
once, and ``close`` waits for sandboxes still being made or closed, so nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import TypeVar

from bakeoff.agent.events import EventBus
from bakeoff.agent.seams import Sandbox, SandboxLimits, Workspace
from bakeoff.sandboxes import choose_backend, create_sandbox
from bakeoff.sandboxes.docker_host import DockerHost

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
        docker_host: DockerHost | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.kind = kind
        self.limits = limits
        self.max_concurrent = max_concurrent
        self.image = image
        self.dockerfile = dockerfile
        self.docker_host = docker_host  # the Docker engine (None: the environment's)
        self.workspace = workspace  # what ``map`` copies when it is given no workspace
        self._slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        self._live: set[Sandbox] = set()
        self._held: set[Sandbox] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._creating: set[asyncio.Future[Sandbox]] = set()
        self._backend: str | None = None
        self._closed = False

    @property
    def backend(self) -> str:
        """The backend this pool's sandboxes run on (resolved once, on first use)."""
        if self._backend is None:
            self._backend = choose_backend(self.kind, self.docker_host).backend
        return self._backend

    @property
    def live(self) -> int:
        """Sandboxes open now, working and held."""
        return len(self._live)

    @property
    def held(self) -> int:
        """Held sandboxes open now (they take no slot)."""
        return len(self._held)

    async def prepare(self, events: EventBus | None = None) -> None:
        """Get the backend ready before any sandbox is asked for, as a step of its own: for
        Docker, connect, reap what a killed run left, and build the image the first time
        (minutes), with ``sandbox.prepare`` events around it; for local sandboxes, nothing."""
        if self.backend != "docker":
            return
        from bakeoff.sandboxes.docker_backend import DockerBackend

        backend = DockerBackend.shared(image=self.image, dockerfile=self.dockerfile, docker_host=self.docker_host)
        if backend.image is not None:
            return
        started = time.monotonic()
        emit = events.emit if events is not None else (lambda *a, **k: None)
        emit("sandbox.prepare", backend="docker", state="start")
        unsubscribe = backend.events.subscribe(lambda e: emit(e.kind, **e.data)) if events is not None else None
        try:
            image = await asyncio.to_thread(backend.ensure_image)
        finally:
            if unsubscribe is not None:
                unsubscribe()
        emit("sandbox.prepare", backend="docker", state="ready", image=image,
             duration_s=round(time.monotonic() - started, 3))

    @contextlib.asynccontextmanager
    async def sandbox(self, workspace: Workspace, *, hold: bool = False) -> AsyncIterator[Sandbox]:
        """A sandbox holding a copy of ``workspace``, closed on exit (also on cancellation).

        ``hold``: a sandbox kept open while other sandboxes of the pool do the work it waits
        for; it takes no slot (see the module's docstring). A user of a working sandbox must
        not ask for another one while it holds it.
        """
        if self._closed:
            raise RuntimeError("the sandbox pool is closed")
        async with contextlib.nullcontext() if hold else self._semaphore():
            sb = await self._create(workspace)
            self._live.add(sb)
            if hold:
                self._held.add(sb)
            try:
                yield sb
            finally:
                self._live.discard(sb)
                self._held.discard(sb)
                await self._close_one(sb)

    async def _create(self, workspace: Workspace) -> Sandbox:
        # Made in a task of its own and shielded: a sandbox half made when its user is
        # cancelled is finished, then closed, never left behind (``close`` waits for it).
        if self._closed:  # closed while its user waited for a slot
            raise RuntimeError("the sandbox pool is closed")
        job = asyncio.ensure_future(create_sandbox(workspace, self.backend, self.limits, image=self.image,
                                                   dockerfile=self.dockerfile, docker_host=self.docker_host))
        self._creating.add(job)
        job.add_done_callback(self._creating.discard)
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(self._close_orphan)
            raise

    def _close_orphan(self, job: asyncio.Future[Sandbox]) -> None:
        if not job.cancelled() and job.exception() is None:
            self._track_close(job.result())

    def _track_close(self, sb: Sandbox) -> asyncio.Task[None]:
        closing = asyncio.ensure_future(sb.close())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        return closing

    async def _close_one(self, sb: Sandbox) -> None:
        # Closing must finish even when the task using the sandbox is cancelled; ``close``
        # waits for it too.
        await asyncio.shield(self._track_close(sb))

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
        """Close every sandbox still alive (those of cancelled or abandoned users), and wait
        for those already being closed, and for those still being made (then closed)."""
        self._closed = True
        while self._live or self._creating or self._closing:
            live, self._live, self._held = list(self._live), set(), set()
            for sb in live:
                self._track_close(sb)
            await asyncio.gather(*self._creating, *self._closing, return_exceptions=True)

    async def __aenter__(self) -> SandboxPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SandboxPerKey:
    """One sandbox per key (a candidate's source, say), each a fresh copy of ``workspace``,
    made on first use and kept until ``close``: what one key's code does to its sandbox (a
    fork bomb holding every process slot) cannot touch another key's."""

    def __init__(self, workspace: Workspace, kind: str = "auto", limits: SandboxLimits | None = None, *,
                 image: str | None = None, dockerfile: Path | None = None,
                 docker_host: DockerHost | None = None) -> None:
        self.workspace = workspace
        self.kind = kind
        self.limits = limits
        self.image = image
        self.dockerfile = dockerfile
        self.docker_host = docker_host
        self._made: dict[str, asyncio.Task[Sandbox]] = {}
        self._closed = False

    async def __call__(self, key: str) -> Sandbox:
        if self._closed:
            raise RuntimeError("these sandboxes are closed")
        task = self._made.get(key)
        if task is None:
            task = asyncio.ensure_future(create_sandbox(self.workspace, self.kind, self.limits, image=self.image,
                                                        dockerfile=self.dockerfile, docker_host=self.docker_host))
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
