"""Where Docker sandboxes come from: hardened containers, a warm pool of them, and reaping.

Every container is labelled with the pid of the process that owns it and an expiry time, and
its main process (under the engine's init, which reaps orphans) is ``sleep <expiry>``, so a
leaked container ends and removes itself, and the next start removes what a killed
orchestrator left (``DockerBackend.reap_leftovers``).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bakeoff.agent.events import EventBus
from bakeoff.agent.seams import SandboxLimits, Workspace
from bakeoff.sandboxes.archive import GID, UID, WorkspaceTar, WorkspaceTars
from bakeoff.sandboxes.docker_engine import (
    DEFAULT_DOCKERFILE,
    LABEL,
    DockerEngine,
    DockerImageError,
    DockerUnavailable,
    resolve_image,
)
from bakeoff.sandboxes.docker_host import DockerHost
from bakeoff.sandboxes.docker_sandbox import HOME, USER, WORKDIR, DockerSandbox
from bakeoff.sandboxes.workspace import WorkspaceError

if TYPE_CHECKING:
    from docker import APIClient
    from docker.types import HostConfig

DEFAULT_EXPIRY_S = 6 * 3600

LABEL_OWNER = "bakeoff.owner-pid"
LABEL_HOST = "bakeoff.owner-host"
LABEL_EXPIRES = "bakeoff.expires"
LABEL_BACKEND = "bakeoff.backend"  # which DockerBackend object made it (for diagnostics and tests)
# Containers made for one group of work (a batch on a Ray cluster) carry its id, so the whole
# group can be removed at once when it is stopped, whichever worker made them.
LABEL_GROUP = "bakeoff.group"
GROUP_ENV = "BAKEOFF_SANDBOX_GROUP"

AUTO_WARM_MAX = 4  # spares the pool grows to by itself; warm(n) may ask for more
MIN_POOL_LIFE_S = 600  # a warm container closer than this to its expiry is not handed out
                      # (or than half the expiry, for short-lived backends)


def _limits_key(limits: SandboxLimits) -> str:
    # Only what shapes the container itself; per-command limits do not split the pool.
    fields = ("max_processes", "memory_bytes", "disk_bytes", "cpus", "max_file_bytes",
              "max_open_files", "cpu_seconds", "gpus")
    return json.dumps({f: getattr(limits, f) for f in fields}, sort_keys=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _copy_in(engine: DockerEngine, cid: str, base: WorkspaceTar) -> None:
    """Put the workspace snapshot into the container's ``/work``."""
    import docker

    try:
        await engine.run(engine.api.put_archive, cid, WORKDIR, base.tar)
    except docker.errors.APIError as exc:
        raise WorkspaceError(f"copying the workspace into the sandbox failed: {exc.explanation or exc}") from exc


def _hardened_host_config(api: APIClient, limits: SandboxLimits, labels: dict[str, str]) -> HostConfig:
    """No network, no capabilities, no privilege gain, limits on processes, memory (swap
    included), CPU and files, a read-only root and two size-capped tmpfs file systems.

    The workspace is a tmpfs *volume* rather than a tmpfs mount because the engine's archive
    calls (how files go in and out) cannot reach tmpfs mounts of a read-only container.
    """
    from docker.types import DeviceRequest, DriverConfig, Mount, Ulimit

    inodes = max(4096, limits.disk_bytes // 4096)
    workspace = Mount(
        target=WORKDIR, source=None, type="volume", labels=labels,
        driver_config=DriverConfig("local", {
            "type": "tmpfs", "device": "tmpfs",
            "o": f"size={limits.disk_bytes},nr_inodes={inodes},uid={UID},gid={GID},mode=0755",
        }),
    )
    return api.create_host_config(
        network_mode="none",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        pids_limit=limits.max_processes,
        mem_limit=limits.memory_bytes,
        memswap_limit=limits.memory_bytes,
        nano_cpus=int(limits.cpus * 1e9) if limits.cpus else None,
        read_only=True,
        tmpfs={"/tmp": f"size={limits.disk_bytes},nr_inodes={inodes},mode=1777,exec,nosuid,nodev"},
        mounts=[workspace],
        ulimits=[
            Ulimit(name="fsize", soft=limits.max_file_bytes, hard=limits.max_file_bytes),
            Ulimit(name="nofile", soft=limits.max_open_files, hard=limits.max_open_files),
            Ulimit(name="cpu", soft=limits.cpu_seconds, hard=limits.cpu_seconds + 5),
            Ulimit(name="core", soft=0, hard=0),
        ],
        ipc_mode="private",
        # The engine's ``--gpus all``, only when asked for: it needs the NVIDIA container toolkit.
        device_requests=[DeviceRequest(count=-1, capabilities=[["gpu"]])] if limits.gpus else None,
        init=True,  # an init reaps orphans, so killed children do not pile up as zombies
        auto_remove=True,  # when the expiry keeper ends, the container and its volume go
    )


class DockerBackend:
    """Makes Docker sandboxes: resolves (or builds) the image, keeps a warm pool, reaps leftovers.

    One per process per image (``DockerBackend.shared``). Thread-safe, and independent of any
    one event loop: its blocking work runs in its own thread pool.
    """

    _shared: dict[tuple[str, DockerHost, str | None, str | None], DockerBackend] = {}
    _shared_lock = threading.Lock()

    def __init__(
        self,
        image: str | None = None,
        dockerfile: Path | None = None,
        *,
        docker_host: DockerHost | None = None,
        expiry_s: int = DEFAULT_EXPIRY_S,
        events: EventBus | None = None,
        max_threads: int = 64,
    ) -> None:
        if image and dockerfile:
            raise ValueError("name an image or a Dockerfile, not both")
        self.requested_image = image
        self.dockerfile = Path(dockerfile) if dockerfile else (None if image else DEFAULT_DOCKERFILE)
        self.docker_host = docker_host or DockerHost()
        self.expiry_s = int(expiry_s)
        self.events = events or EventBus()
        self.engine = DockerEngine(self.docker_host, max_threads)
        self._lock = threading.Lock()
        self._ready_lock = threading.Lock()
        self._image: str | None = None
        self._reaped = False
        self._pool: dict[str, list[tuple[str, float]]] = {}  # limits key -> [(container id, expires at)]
        self._targets: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        self._refills: set[concurrent.futures.Future[None]] = set()
        self._live: dict[str, DockerSandbox] = {}
        self._orphans: set[str] = set()  # containers we failed to remove while the engine was away
        self._workspaces = WorkspaceTars()
        self._closed = False
        self._shut_down = False
        self.id = secrets.token_hex(6)
        atexit.register(self._remove_all_blocking)

    @classmethod
    def shared(cls, image: str | None = None, dockerfile: Path | None = None,
               docker_host: DockerHost | None = None) -> DockerBackend:
        """The process's backend for this image on this engine."""
        docker_host = docker_host or DockerHost()
        key = (docker_host.address, docker_host, image, str(Path(dockerfile).resolve()) if dockerfile else None)
        with cls._shared_lock:
            backend = cls._shared.get(key)
            if backend is None or backend._closed:
                backend = cls(image=image, dockerfile=dockerfile, docker_host=docker_host)
                cls._shared[key] = backend
            return backend

    @classmethod
    async def close_shared(cls) -> None:
        """Close every backend this process shared (their warm containers go too): for a
        process that outlives its runs, such as a Ray worker."""
        with cls._shared_lock:
            backends, cls._shared = list(cls._shared.values()), {}
        for backend in backends:
            await backend.close()

    @property
    def image(self) -> str | None:
        """The image tag in use, once resolved."""
        return self._image

    @property
    def api(self) -> APIClient:
        """The low-level docker API client (connects on first use)."""
        return self.engine.api

    def ensure_image(self) -> str:
        """Connect, reap what a dead orchestrator left, and resolve (or build) the image, once.
        Blocking; returns the image tag. ``create`` and ``warm`` call it themselves."""
        if self._closed:
            raise RuntimeError("this DockerBackend is closed")
        if self._image is not None:
            return self._image
        with self._ready_lock:
            if self._image is None:
                self.engine.call(self.api.ping)
                if not self._reaped:
                    self.reap_leftovers()
                    self._reaped = True
                self._image = resolve_image(self.engine, self.requested_image, self.dockerfile, self.events)
        return self._image

    # ------------------------------------------------------------------ containers

    def _start_container(self, limits: SandboxLimits) -> tuple[str, float]:
        """Create and start one hardened container; on any failure nothing is left behind."""
        image = self.ensure_image()
        expires = time.time() + self.expiry_s
        labels = {LABEL: "1", LABEL_OWNER: str(os.getpid()), LABEL_HOST: socket.gethostname(),
                  LABEL_EXPIRES: str(int(expires)), LABEL_BACKEND: self.id}
        if os.environ.get(GROUP_ENV):
            labels[LABEL_GROUP] = os.environ[GROUP_ENV]
        created = self.engine.call(
            self.api.create_container, image, command=["sleep", str(self.expiry_s)], user=USER,
            working_dir=WORKDIR, labels=labels, host_config=_hardened_host_config(self.api, limits, labels),
            network_disabled=True, environment={"HOME": HOME, "TMPDIR": "/tmp"},
        )
        cid = created["Id"]
        try:
            self.engine.call(self.api.start, cid)
        except BaseException as exc:
            self._remove_blocking(cid)
            if limits.gpus and "device driver" in str(exc):
                from bakeoff.sandboxes import SandboxUnavailable

                raise SandboxUnavailable(
                    "gpus = true, but this Docker engine cannot hand GPUs to a container (it needs the NVIDIA "
                    "container toolkit: nvidia-ctk runtime configure --runtime=docker): install it, or use "
                    "--sandbox local+bwrap, or set gpus = false to build CUDA candidates only") from exc
            raise
        self.events.emit("sandbox.container.start", container=cid[:12])
        return cid, expires

    def _remove_blocking(self, cid: str) -> None:
        import docker

        try:
            self.engine.call(self.api.remove_container, cid, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: its removal is already under way (auto-remove)
                raise
        except DockerUnavailable:
            with self._lock:
                self._orphans.add(cid)
            raise
        with self._lock:
            self._orphans.discard(cid)

    def _remove_quietly(self, cid: str) -> None:
        try:
            self._remove_blocking(cid)
        except DockerUnavailable:
            pass  # recorded in _orphans; removed by the next reap_leftovers

    # ------------------------------------------------------------------ warm pool

    def _take_warm(self, key: str) -> str | None:
        with self._lock:
            pool = self._pool.get(key, [])
            while pool:
                cid, expires = pool.pop(0)
                if expires - time.time() > min(MIN_POOL_LIFE_S, self.expiry_s / 2):
                    return cid
                self.engine.executor.submit(self._remove_quietly, cid)
        return None

    def _schedule_refill(self, key: str, limits: SandboxLimits) -> None:
        with self._lock:
            if self._closed:
                return
            missing = self._targets.get(key, 0) - len(self._pool.get(key, [])) - self._pending.get(key, 0)
            for _ in range(max(0, missing)):
                self._pending[key] = self._pending.get(key, 0) + 1
                fut = self.engine.executor.submit(self._refill_one, key, limits)
                self._refills.add(fut)
                fut.add_done_callback(self._refills.discard)

    def _refill_one(self, key: str, limits: SandboxLimits) -> None:
        try:
            if self._closed:
                return  # close() began after this refill was asked for
            cid, expires = self._start_container(limits)
        except (DockerUnavailable, DockerImageError) as exc:
            self.events.emit("sandbox.pool.refill_failed", error=str(exc))
            return
        finally:
            with self._lock:
                self._pending[key] -= 1
        with self._lock:
            if not self._closed:
                self._pool.setdefault(key, []).append((cid, expires))
                return
        self._remove_quietly(cid)

    def pool_size(self, limits: SandboxLimits | None = None) -> int:
        """How many warm containers are ready for these limits right now."""
        with self._lock:
            return len(self._pool.get(_limits_key(limits or SandboxLimits()), []))

    def containers(self) -> dict[str, list[str]]:
        """The containers this backend holds: ``warm`` (ready in the pool) and ``live`` (handed out)."""
        with self._lock:
            return {"warm": [cid for pool in self._pool.values() for cid, _ in pool],
                    "live": list(self._live)}

    async def warm(self, n: int, limits: SandboxLimits | None = None) -> None:
        """Keep ``n`` started containers ready for these limits; returns once they are."""
        limits = limits or SandboxLimits()
        key = _limits_key(limits)
        await self.engine.run(self.ensure_image)
        with self._lock:
            self._targets[key] = n
        self._schedule_refill(key, limits)
        with self._lock:
            waiting = list(self._refills)
        if waiting:
            await asyncio.gather(*(asyncio.wrap_future(f) for f in waiting))

    # ------------------------------------------------------------------ sandboxes

    async def create(self, workspace: Workspace, limits: SandboxLimits | None = None) -> DockerSandbox:
        """A sandbox holding a copy of ``workspace``: a warm container if one is ready."""
        limits = limits or SandboxLimits()
        key = _limits_key(limits)
        await self.engine.run(self.ensure_image)
        if self.engine.endpoint is not None:
            self.engine.endpoint.refuse_copying(workspace.path)
        base = await self.engine.run(self._workspaces.get, workspace)
        started = time.monotonic()
        cid = self._take_warm(key)
        warm_start = cid is not None
        with self._lock:
            # Once used, keep a spare ready; a cold start means the spares were too few for how
            # many sandboxes are made at once, so keep one more (up to a bound).
            target = self._targets.get(key, 0)
            if target == 0 or (not warm_start and target < AUTO_WARM_MAX):
                self._targets[key] = target + 1
        if cid is None:
            cid, _ = await self.engine.run(self._start_container, limits)
        self._schedule_refill(key, limits)
        try:
            await _copy_in(self.engine, cid, base)
        except BaseException:
            await asyncio.shield(self.engine.run(self._remove_quietly, cid))
            raise
        sandbox = DockerSandbox(self, cid, limits, base, warm_start=warm_start)
        with self._lock:
            self._live[cid] = sandbox
        self.events.emit("sandbox.create", backend="docker", container=cid[:12], warm=warm_start,
                         seconds=round(time.monotonic() - started, 3))
        return sandbox

    async def release(self, cid: str) -> None:
        """Remove a sandbox's container and its workspace (``DockerSandbox.close`` calls it)."""
        with self._lock:
            self._live.pop(cid, None)
        try:
            await asyncio.shield(self.engine.run(self._remove_blocking, cid))
        except DockerUnavailable as exc:
            # Recorded as an orphan: the next reap_leftovers removes it once the engine answers.
            self.events.emit("sandbox.close_failed", backend="docker", container=cid[:12], error=str(exc))
            return
        self.events.emit("sandbox.close", backend="docker", container=cid[:12])

    # ------------------------------------------------------------------ cleanup

    def reap_leftovers(self, group: str | None = None) -> int:
        """Remove containers (and their volumes) whose owner process is dead or whose expiry
        passed, and with ``group`` every container of that group, whoever made it. Returns how
        many containers were removed. Called once at start-up."""
        import docker

        now = time.time()
        host = socket.gethostname()
        removed = 0
        with self._lock:
            orphans = list(self._orphans)
        for cid in orphans:
            self._remove_blocking(cid)
            removed += 1
        for c in self.engine.call(self.api.containers, all=True, filters={"label": LABEL}):
            labels = c.get("Labels") or {}
            owner = labels.get(LABEL_OWNER, "")
            try:
                expires = float(labels.get(LABEL_EXPIRES, "0"))
            except ValueError:
                expires = 0.0
            dead_owner = labels.get(LABEL_HOST) == host and owner.isdigit() and not _pid_alive(int(owner))
            if dead_owner or expires < now or (group is not None and labels.get(LABEL_GROUP) == group):
                self._remove_blocking(c["Id"])
                removed += 1
        for v in self.engine.call(self.api.volumes, filters={"label": LABEL, "dangling": True}).get("Volumes") or []:
            try:
                self.engine.call(self.api.remove_volume, v["Name"])
            except docker.errors.APIError as exc:
                if exc.status_code not in (404, 409):  # gone already, or still being released
                    raise
        if removed:
            self.events.emit("sandbox.reaped", backend="docker", containers=removed)
        return removed

    async def close(self) -> None:
        """Remove the warm pool and every sandbox still open; the backend is unusable after.
        Idempotent."""
        with self._lock:
            if self._shut_down:
                return
            self._shut_down = True
            self._closed = True
            refills = list(self._refills)
        for fut in refills:
            await asyncio.wrap_future(fut)
        await self.engine.run(self._remove_all_blocking)
        self.engine.executor.shutdown(wait=False)
        atexit.unregister(self._remove_all_blocking)

    def _remove_all_blocking(self) -> None:
        with self._lock:
            self._closed = True
            ids = [cid for pool in self._pool.values() for cid, _ in pool] + list(self._live)
            self._pool.clear()
            self._live.clear()
        if not ids or not self.engine.connected:
            return
        for cid in ids:
            try:
                self._remove_blocking(cid)
            except DockerUnavailable:
                return  # the engine is gone; its containers went with it or will expire
