"""The Docker sandbox: a hardened container per candidate, taken from a warm pool.

Each sandbox is a container of the sandbox image (``sandboxes/Dockerfile``, built once and
tagged ``bakeoff-sandbox:<hash of the Dockerfile>``; users may name their own image or
Dockerfile) with no network, no capabilities, no privilege gain, a non-root user, limits on
processes and threads, memory (swap included) and CPU, a read-only root file system and two
size-capped tmpfs file systems: ``/tmp`` and the workspace ``/work``. The workspace is a tmpfs
*volume* rather than a tmpfs mount because the engine's archive calls (how files go in and
out) cannot reach tmpfs mounts of a read-only container.

Every container is labelled with the pid of the process that owns it and an expiry time, and
its main process (under the engine's init, which reaps orphans) is ``sleep <expiry>``, so a
leaked container ends and removes itself, and the next start removes what a killed
orchestrator left (``DockerBackend.reap_leftovers``).

Commands run through ``docker exec`` under ``timeout -k`` inside the container and a
wall-clock deadline outside it; when the command ends, everything in its process group is
killed so background children cannot hold its output open. The docker SDK blocks, so every
call runs in the backend's own thread pool and many sandboxes run at once.

``import docker`` happens only inside functions: ``bakeoff --help`` never pays for it.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import hashlib
import io
import json
import os
import posixpath
import secrets
import shutil
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from bakeoff.agent.events import EventBus
from bakeoff.agent.seams import ExecResult, SandboxLimits, Workspace
from bakeoff.sandboxes.output import OutputCapture
from bakeoff.sandboxes import SandboxUnavailable
from bakeoff.sandboxes.workspace import UnsafeArchive, WorkspaceError, safe_extract

T = TypeVar("T")

DEFAULT_DOCKERFILE = Path(__file__).with_name("Dockerfile")
IMAGE_REPOSITORY = "bakeoff-sandbox"
WORKDIR = "/work"
HOME = "/home/sandbox"  # exists in the image, owned by root: reading works, writing does not
USER = "1000:1000"
UID = GID = 1000
DEFAULT_EXPIRY_S = 6 * 3600

LABEL = "bakeoff.sandbox"
LABEL_OWNER = "bakeoff.owner-pid"
LABEL_HOST = "bakeoff.owner-host"
LABEL_EXPIRES = "bakeoff.expires"
LABEL_BACKEND = "bakeoff.backend"  # which DockerBackend object made it (for diagnostics and tests)

KILL_AFTER_S = 1  # between the inside timeout's TERM and its KILL
OUTSIDE_GRACE_S = 3.0  # the outside deadline trails the inside one by this much
GIVE_UP_S = 5.0  # after killing everything, how long the output stream may still take
AUTO_WARM_MAX = 4  # spares the pool grows to by itself; warm(n) may ask for more
MIN_POOL_LIFE_S = 600  # a warm container closer than this to its expiry is not handed out
                      # (or than half the expiry, for short-lived backends)

# Runs the command in its own process group (``timeout`` makes one), then kills whatever of
# that group is left, so a background child that keeps stdout open cannot hold up the call.
# A child that left the group (setsid) still carries this command's BAKEOFF_EXEC token in its
# environment; the scan for it runs only when processes beyond init, the keeper and this shell
# remain, so the common case costs no extra process. The last line on stderr carries the exit
# status (taken off before the caller sees it), which spares a round trip to the engine.
_RUN = r"""t=$1; d=$2; shift 2
cd -- "$d" || exit 126
timeout -k %d "$t" "$@" </dev/null &
p=$!
wait "$p"; rc=$?
kill -9 "-$p" 2>/dev/null
set -- /proc/[0-9]*
if [ "$#" -gt 3 ]; then
  for d in "$@"; do
    [ "${d#/proc/}" = "$$" ] && continue
    grep -qsz "^BAKEOFF_EXEC=$BAKEOFF_EXEC\$" "$d/environ" && kill -9 "${d#/proc/}" 2>/dev/null
  done
fi
printf '\n%%s:%%d\n' "$BAKEOFF_EXEC" "$rc" >&2
exit "$rc"
""" % KILL_AFTER_S

# Used only when the inside timeout failed: kill every process but init, the expiry keeper
# (the oldest process after init) and this shell.
_KILL_ALL = r"""k=$(ls /proc | grep -E '^[0-9]+$' | sort -n | sed -n 2p)
for _ in 1 2 3; do
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    case "$p" in 1|"$k"|"$$") ;; *) kill -9 "$p" 2>/dev/null ;; esac
  done
done
exit 0
"""

_OOM_COUNT = "cat /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null"


class DockerUnavailable(SandboxUnavailable):
    """No Docker engine answers (or it stopped answering): start it, or use --sandbox local."""


class DockerImageError(RuntimeError):
    """The sandbox image could not be found or built: fix the Dockerfile or name another image."""


class DockerSandboxGone(RuntimeError):
    """A sandbox's container disappeared under it (expired, or removed by someone else)."""


# --------------------------------------------------------------------------- engine


def _engine_address() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def _unreachable_message(reason: object) -> str:
    return (f"no Docker engine reachable at {_engine_address()}: start it, or use --sandbox local"
            f" ({reason})")


def engine_available(timeout: float = 2.0) -> tuple[bool, str]:
    """Whether a Docker engine answers, and if not, why (in words a user can act on)."""
    try:
        import docker
        import requests
    except ImportError as exc:
        return False, f"the docker Python package is missing ({exc}): pip install docker, or use --sandbox local"
    try:
        client = docker.from_env(timeout=max(1, int(round(timeout))))
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        return False, _unreachable_message(exc)
    try:
        client.api.ping()
        version = client.api.version().get("Version", "?")
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        return False, _unreachable_message(exc)
    finally:
        client.close()
    return True, f"Docker engine {version} at {_engine_address()}"


def _looks_offline(error: str, log: list[str]) -> bool:
    text = (error + "\n" + "\n".join(log)).lower()
    return any(sign in text for sign in ("temporary failure resolving", "could not resolve",
                                         "failed to fetch", "network is unreachable"))


def _is_connection_error(exc: BaseException) -> bool:
    import requests

    return isinstance(exc, (requests.ConnectionError, ConnectionError, socket.timeout))


# --------------------------------------------------------------------------- archives


def _tarinfo_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid, info.gid, info.uname, info.gname = UID, GID, "", ""
    info.mtime = int(info.mtime)  # whole seconds keep the headers plain (no pax records to parse)
    info.pax_headers = {}
    return info


def _directory_tar(src: Path) -> bytes:
    """A tar of ``src`` as the sandbox user owns it, leaving out every ``.git`` (like copy_workspace)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for root, dirs, files in os.walk(src):
            dirs[:] = sorted(d for d in dirs if d != ".git")
            rel_root = os.path.relpath(root, src)
            for name in dirs + sorted(f for f in files if f != ".git"):
                full = os.path.join(root, name)
                arcname = name if rel_root == "." else f"{rel_root}/{name}"
                info = tar.gettarinfo(full, arcname=arcname)
                if info is None or not (info.isfile() or info.isdir() or info.issym()):
                    continue  # sockets, fifos and devices have no place in a workspace copy
                _tarinfo_owned(info)
                if info.isfile():
                    with open(full, "rb") as fh:
                        tar.addfile(info, fh)
                else:
                    tar.addfile(info)
    return buf.getvalue()


def _reowned_tar(data: bytes) -> bytes:
    """The same archive with every entry owned by the sandbox user (git archive says root)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as src, \
            tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as dst:
        for info in src:
            _tarinfo_owned(info)
            dst.addfile(info, src.extractfile(info) if info.isfile() else None)
    return out.getvalue()


def _git_bytes(cwd: Path, *args: str) -> bytes:
    proc = subprocess.run(["git", "-c", "safe.directory=*", *args], cwd=cwd, capture_output=True)
    if proc.returncode != 0:
        raise WorkspaceError(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def _file_tar(rel: str, content: bytes) -> bytes:
    """A tar placing ``content`` at ``rel``, with entries for its parent directories (which
    replaces any symlink a command left where a parent directory should be)."""
    buf = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        parts = PurePosixPath(rel).parts
        for i in range(1, len(parts)):
            d = tarfile.TarInfo("/".join(parts[:i]))
            d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, now
            tar.addfile(_tarinfo_owned(d))
        f = tarfile.TarInfo(rel)
        f.size, f.mode, f.mtime = len(content), 0o644, now
        tar.addfile(_tarinfo_owned(f), io.BytesIO(content))
    return buf.getvalue()


def _inside_path(rel: str) -> str:
    """``rel`` normalised under the workspace; ``ValueError`` when it is absolute or escapes."""
    if not rel or rel.startswith("/") or "\0" in rel:
        raise ValueError(f"path must be relative to the workspace: {rel!r}")
    norm = posixpath.normpath(rel)
    if norm == ".." or norm.startswith("../"):
        raise ValueError(f"path escapes the workspace: {rel!r}")
    return norm


def _oom_kills(text: str) -> int:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "oom_kill" and parts[1].isdigit():
            return int(parts[1])
    return 0


# --------------------------------------------------------------------------- backend


def _limits_key(limits: SandboxLimits) -> str:
    # Only what shapes the container itself; per-command limits do not split the pool.
    fields = ("max_processes", "memory_bytes", "disk_bytes", "cpus", "max_file_bytes",
              "max_open_files", "cpu_seconds")
    return json.dumps({f: getattr(limits, f) for f in fields}, sort_keys=True)


class _Base:
    """A workspace snapshot as a tar, shared by every sandbox made from it."""

    def __init__(self, tar: bytes) -> None:
        self.tar = tar
        self._index: dict[str, tuple] | None = None

    @property
    def index(self) -> dict[str, tuple]:
        """Each file's and link's signature (computed once, on the first diff)."""
        if self._index is None:
            self._index = _index_tar(self.tar)
        return self._index


class DockerBackend:
    """Makes Docker sandboxes: resolves (or builds) the image, keeps a warm pool, reaps leftovers.

    One per process per image (``DockerBackend.shared``). Thread-safe, and independent of any
    one event loop: its blocking work runs in its own thread pool.
    """

    _shared: dict[tuple[str, str | None, str | None], DockerBackend] = {}
    _shared_lock = threading.Lock()

    def __init__(
        self,
        image: str | None = None,
        dockerfile: Path | None = None,
        *,
        base_url: str | None = None,
        expiry_s: int = DEFAULT_EXPIRY_S,
        events: EventBus | None = None,
        max_threads: int = 64,
    ) -> None:
        if image and dockerfile:
            raise ValueError("name an image or a Dockerfile, not both")
        self.requested_image = image
        self.dockerfile = Path(dockerfile) if dockerfile else (None if image else DEFAULT_DOCKERFILE)
        self.base_url = base_url
        self.expiry_s = int(expiry_s)
        self.events = events or EventBus()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_threads, thread_name_prefix="bakeoff-docker")
        self._lock = threading.Lock()
        self._ready_lock = threading.Lock()
        self._client: Any = None
        self._image: str | None = None
        self._reaped = False
        self._pool: dict[str, list[tuple[str, float]]] = {}  # limits key -> [(container id, expires at)]
        self._targets: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        self._refills: set[concurrent.futures.Future] = set()
        self._live: dict[str, DockerSandbox] = {}
        self._orphans: set[str] = set()  # containers we failed to remove while the engine was away
        self._bases: dict[tuple[str, str], _Base] = {}
        self._closed = False
        self._shut_down = False
        self.id = secrets.token_hex(6)
        atexit.register(self._remove_all_blocking)

    # ------------------------------------------------------------------ construction

    @classmethod
    def shared(cls, image: str | None = None, dockerfile: Path | None = None) -> DockerBackend:
        """The process's backend for this image (and this engine address)."""
        key = (_engine_address(), image, str(Path(dockerfile).resolve()) if dockerfile else None)
        with cls._shared_lock:
            backend = cls._shared.get(key)
            if backend is None or backend._closed:
                backend = cls(image=image, dockerfile=dockerfile)
                cls._shared[key] = backend
            return backend

    @property
    def image(self) -> str | None:
        """The image tag in use, once resolved."""
        return self._image

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One blocking engine call, with an engine that went away turned into DockerUnavailable."""
        import docker

        try:
            return fn(*args, **kwargs)
        except docker.errors.APIError:
            raise
        except docker.errors.DockerException as exc:
            raise DockerUnavailable(_unreachable_message(exc)) from exc
        except Exception as exc:
            if _is_connection_error(exc):
                raise DockerUnavailable(
                    f"the Docker engine at {self.base_url or _engine_address()} stopped answering: {exc}. "
                    "Start it again, or use --sandbox local") from exc
            raise

    @property
    def api(self) -> Any:
        """The low-level docker API client (connects on first use)."""
        if self._client is None:
            import docker

            with self._lock:
                if self._client is None:
                    kwargs: dict[str, Any] = {"timeout": 60, "max_pool_size": 128}
                    try:
                        if self.base_url:
                            self._client = docker.DockerClient(base_url=self.base_url, **kwargs)
                        else:
                            self._client = docker.from_env(**kwargs)
                    except docker.errors.DockerException as exc:
                        raise DockerUnavailable(_unreachable_message(exc)) from exc
        return self._client.api

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: self._call(fn, *args))

    def ensure_image(self) -> str:
        """Connect, reap what a dead orchestrator left, and resolve (or build) the image, once.
        Blocking; returns the image tag. ``create`` and ``warm`` call it themselves."""
        return self._ensure_ready_blocking()

    def _ensure_ready_blocking(self) -> str:
        if self._closed:
            raise RuntimeError("this DockerBackend is closed")
        if self._image is not None:
            return self._image
        with self._ready_lock:
            if self._image is None:
                self._call(self.api.ping)
                if not self._reaped:
                    self.reap_leftovers()
                    self._reaped = True
                self._image = self._resolve_image()
        return self._image

    def _resolve_image(self) -> str:
        import docker

        if self.requested_image:
            try:
                self._call(self.api.inspect_image, self.requested_image)
            except docker.errors.ImageNotFound as exc:
                raise DockerImageError(
                    f"image {self.requested_image} not found on the engine: pull or build it first") from exc
            return self.requested_image
        assert self.dockerfile is not None
        try:
            recipe = self.dockerfile.read_bytes()
        except OSError as exc:
            raise DockerImageError(f"cannot read the sandbox Dockerfile {self.dockerfile}: {exc}") from exc
        tag = f"{IMAGE_REPOSITORY}:{hashlib.sha256(recipe).hexdigest()[:12]}"
        try:
            self._call(self.api.inspect_image, tag)
            return tag
        except docker.errors.ImageNotFound:
            pass
        self._build(tag)
        return tag

    def _build(self, tag: str) -> None:
        assert self.dockerfile is not None
        started = time.monotonic()
        self.events.emit("sandbox.image.build", image=tag, dockerfile=str(self.dockerfile))
        error, log = self._build_once(tag, network_mode=None)
        if error is not None and _looks_offline(error, log):
            # Some engines give build containers no route out; the host's network often has one.
            self.events.emit("sandbox.image.build_retry", image=tag, network_mode="host")
            error, log = self._build_once(tag, network_mode="host")
        if error is not None:
            raise DockerImageError(
                f"building the sandbox image from {self.dockerfile} failed: {error.strip()}\n"
                + "\n".join(log[-20:]))
        self.events.emit("sandbox.image.built", image=tag, seconds=round(time.monotonic() - started, 1))

    def _build_once(self, tag: str, network_mode: str | None) -> tuple[str | None, list[str]]:
        assert self.dockerfile is not None
        log: list[str] = []
        error = None
        for chunk in self._call(self.api.build, path=str(self.dockerfile.parent),
                                dockerfile=self.dockerfile.name, tag=tag, rm=True, forcerm=True,
                                decode=True, labels={LABEL + ".image": "1"}, network_mode=network_mode):
            if "stream" in chunk:
                log.extend(chunk["stream"].splitlines())
                del log[:-40]
            if "error" in chunk:
                error = chunk["error"]
        return error, log

    # ------------------------------------------------------------------ containers

    def _start_container(self, limits: SandboxLimits) -> tuple[str, float]:
        """Create and start one hardened container; on any failure nothing is left behind."""
        from docker.types import DriverConfig, Mount, Ulimit

        image = self._ensure_ready_blocking()
        expires = time.time() + self.expiry_s
        labels = {LABEL: "1", LABEL_OWNER: str(os.getpid()), LABEL_HOST: socket.gethostname(),
                  LABEL_EXPIRES: str(int(expires)), LABEL_BACKEND: self.id}
        inodes = max(4096, limits.disk_bytes // 4096)
        workspace = Mount(
            target=WORKDIR, source=None, type="volume", labels=labels,
            driver_config=DriverConfig("local", {
                "type": "tmpfs", "device": "tmpfs",
                "o": f"size={limits.disk_bytes},nr_inodes={inodes},uid={UID},gid={GID},mode=0755",
            }),
        )
        host_config = self.api.create_host_config(
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
            init=True,  # an init reaps orphans, so killed children do not pile up as zombies
            auto_remove=True,  # when the expiry keeper ends, the container and its volume go
        )
        created = self._call(
            self.api.create_container, image, command=["sleep", str(self.expiry_s)], user=USER,
            working_dir=WORKDIR, labels=labels, host_config=host_config, network_disabled=True,
            environment={"HOME": HOME, "TMPDIR": "/tmp"},
        )
        cid = created["Id"]
        try:
            self._call(self.api.start, cid)
        except BaseException:
            self._remove_blocking(cid)
            raise
        self.events.emit("sandbox.container.start", container=cid[:12])
        return cid, expires

    def _remove_blocking(self, cid: str) -> None:
        import docker

        try:
            self._call(self.api.remove_container, cid, force=True, v=True)
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

    def _take_warm(self, key: str) -> str | None:
        with self._lock:
            pool = self._pool.get(key, [])
            while pool:
                cid, expires = pool.pop(0)
                if expires - time.time() > min(MIN_POOL_LIFE_S, self.expiry_s / 2):
                    return cid
                self._executor.submit(self._remove_quietly, cid)
        return None

    def _remove_quietly(self, cid: str) -> None:
        try:
            self._remove_blocking(cid)
        except DockerUnavailable:
            pass  # recorded in _orphans; removed by the next reap_leftovers

    def _schedule_refill(self, key: str, limits: SandboxLimits) -> None:
        with self._lock:
            if self._closed:
                return
            missing = self._targets.get(key, 0) - len(self._pool.get(key, [])) - self._pending.get(key, 0)
            for _ in range(max(0, missing)):
                self._pending[key] = self._pending.get(key, 0) + 1
                fut = self._executor.submit(self._refill_one, key, limits)
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

    # ------------------------------------------------------------------ workspace

    def _workspace_base(self, workspace: Workspace) -> _Base:
        src = Path(workspace.path)
        if not src.is_dir():
            raise WorkspaceError(f"workspace {src} is not a directory")
        if workspace.commit is None:
            return _Base(_directory_tar(src))
        sha = _git_bytes(src, "rev-parse", "--verify", f"{workspace.commit}^{{commit}}").decode().strip()
        key = (str(src.resolve()), sha)
        with self._lock:
            base = self._bases.get(key)
        if base is None:
            base = _Base(_reowned_tar(_git_bytes(src, "archive", "--format=tar", sha)))
            with self._lock:
                self._bases[key] = base
        return base

    # ------------------------------------------------------------------ public

    async def warm(self, n: int, limits: SandboxLimits | None = None) -> None:
        """Keep ``n`` started containers ready for these limits; returns once they are."""
        limits = limits or SandboxLimits()
        key = _limits_key(limits)
        await self._run(self._ensure_ready_blocking)
        with self._lock:
            self._targets[key] = n
        self._schedule_refill(key, limits)
        with self._lock:
            waiting = list(self._refills)
        if waiting:
            await asyncio.gather(*(asyncio.wrap_future(f) for f in waiting))

    async def create(self, workspace: Workspace, limits: SandboxLimits | None = None) -> DockerSandbox:
        """A sandbox holding a copy of ``workspace``: a warm container if one is ready."""
        limits = limits or SandboxLimits()
        key = _limits_key(limits)
        await self._run(self._ensure_ready_blocking)
        base = await self._run(self._workspace_base, workspace)
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
            cid, _ = await self._run(self._start_container, limits)
        self._schedule_refill(key, limits)
        try:
            await self._put_workspace(cid, base)
        except BaseException:
            await asyncio.shield(self._run(self._remove_quietly, cid))
            raise
        sandbox = DockerSandbox(self, cid, limits, base, warm_start=warm_start)
        with self._lock:
            self._live[cid] = sandbox
        self.events.emit("sandbox.create", backend="docker", container=cid[:12], warm=warm_start,
                         seconds=round(time.monotonic() - started, 3))
        return sandbox

    async def _put_workspace(self, cid: str, base: _Base) -> None:
        import docker

        try:
            await self._run(self.api.put_archive, cid, WORKDIR, base.tar)
        except docker.errors.APIError as exc:
            raise WorkspaceError(f"copying the workspace into the sandbox failed: {exc.explanation or exc}") from exc

    def reap_leftovers(self) -> int:
        """Remove containers (and their volumes) whose owner process is dead or whose expiry
        passed. Returns how many containers were removed. Called once at start-up."""
        import docker

        now = time.time()
        host = socket.gethostname()
        removed = 0
        with self._lock:
            orphans = list(self._orphans)
        for cid in orphans:
            self._remove_blocking(cid)
            removed += 1
        for c in self._call(self.api.containers, all=True, filters={"label": LABEL}):
            labels = c.get("Labels") or {}
            owner = labels.get(LABEL_OWNER, "")
            try:
                expires = float(labels.get(LABEL_EXPIRES, "0"))
            except ValueError:
                expires = 0.0
            dead_owner = labels.get(LABEL_HOST) == host and owner.isdigit() and not _pid_alive(int(owner))
            if dead_owner or expires < now:
                self._remove_blocking(c["Id"])
                removed += 1
        for v in self._call(self.api.volumes, filters={"label": LABEL, "dangling": True}).get("Volumes") or []:
            try:
                self._call(self.api.remove_volume, v["Name"])
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
        await self._run(self._remove_all_blocking)
        self._executor.shutdown(wait=False)
        atexit.unregister(self._remove_all_blocking)

    def _remove_all_blocking(self) -> None:
        with self._lock:
            self._closed = True
            ids = [cid for pool in self._pool.values() for cid, _ in pool] + list(self._live)
            self._pool.clear()
            self._live.clear()
        if not ids or self._client is None:
            return
        for cid in ids:
            try:
                self._remove_blocking(cid)
            except DockerUnavailable:
                return  # the engine is gone; its containers went with it or will expire


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------- sandbox


class DockerSandbox:
    """A Sandbox (agent.seams) in a hardened container. Paths are relative to ``/work``."""

    backend = "docker"

    def __init__(self, owner: DockerBackend, container_id: str, limits: SandboxLimits, base: _Base,
                 *, warm_start: bool = False) -> None:
        self._owner = owner
        self.container_id = container_id
        self.limits = limits
        self._base = base
        self.warm_start = warm_start  # it came from the warm pool
        self._oom_seen = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"DockerSandbox({self.container_id[:12]})"

    # ------------------------------------------------------------------ exec

    async def exec(
        self,
        cmd: str | Sequence[str],
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> ExecResult:
        """Run ``cmd`` (a shell string, or an argv) in the workspace; a failing command is data."""
        import docker

        self._check_open()
        limit = float(timeout if timeout is not None else self.limits.wall_seconds)
        if limit <= 0:
            raise ValueError(f"timeout must be positive, not {limit}")
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if not argv:
            raise ValueError("empty command")
        workdir = WORKDIR if cwd in (None, "", ".") else f"{WORKDIR}/{_inside_path(cwd)}"
        token = secrets.token_hex(8)
        environment = {**_exec_env(env), "BAKEOFF_EXEC": token}
        wrapped = ["sh", "-c", _RUN, "bakeoff-run", f"{limit:.3f}", workdir, *argv]
        owner = self._owner
        api = owner.api
        out, err = OutputCapture(self.limits.output_bytes), OutputCapture(self.limits.output_bytes)
        held: dict[str, Any] = {}

        def run_and_pump() -> None:
            # Create, start and read in one thread hop: each hop costs latency on a busy machine.
            held["id"] = owner._call(api.exec_create, self.container_id, wrapped, stdout=True,
                                     stderr=True, user=USER, environment=environment)["Id"]
            held["stream"] = owner._call(api.exec_start, held["id"], stream=True, demux=True)
            for o, e in held["stream"]:
                if o:
                    out.feed(o)
                if e:
                    err.feed(e)

        started = time.monotonic()
        loop = asyncio.get_running_loop()
        reader = loop.run_in_executor(owner._executor, run_and_pump)
        gave_up = False
        try:
            # asyncio.wait neither raises the reader's error nor cancels it on a timeout.
            done, _ = await asyncio.wait({reader}, timeout=limit + KILL_AFTER_S + OUTSIDE_GRACE_S)
            if not done:
                # The inside timeout did not end it (a process escaped its group): kill everything.
                await owner._run(self._kill_all_blocking)
                done, _ = await asyncio.wait({reader}, timeout=GIVE_UP_S)
                if not done:
                    gave_up = True
                    if "stream" in held:
                        held["stream"].close()
                    await asyncio.gather(reader, return_exceptions=True)
        except BaseException:
            # Cancelled (or the loop is going away): stop reading and end what the command began.
            if "stream" in held:
                held["stream"].close()
            with contextlib.suppress(DockerUnavailable):  # the original error is what matters
                await owner._run(self._kill_all_blocking)
            raise
        exc = reader.exception() if reader.done() and not reader.cancelled() else None
        if isinstance(exc, docker.errors.APIError) and "stream" not in held:
            raise self._gone(exc) from exc
        if exc is not None and not gave_up:
            if _is_connection_error(exc):
                raise DockerUnavailable(
                    f"the Docker engine stopped answering while {self!r} ran a command: {exc}. "
                    "Start it again, or use --sandbox local") from exc
            raise exc
        duration = time.monotonic() - started
        code = None if gave_up else err.take_trailer(token)
        if code is None and "id" in held:
            code = await self._exit_status(held["id"], gave_up)
        oom = False
        if code in (137, -9) or gave_up:
            oom = await owner._run(self._new_oom_kill_blocking)
        timed_out = not oom and (gave_up or (code in (124, 137) and duration >= limit * 0.95))
        return ExecResult(
            exit_code=code, stdout=out.text(), stderr=err.text(), duration_s=duration,
            timed_out=timed_out, oom_killed=oom, truncated=out.truncated or err.truncated,
        )

    async def _exit_status(self, exec_id: str, gave_up: bool) -> int | None:
        """The exit status from the engine (when the wrapper's trailer did not arrive)."""
        owner = self._owner
        info = await owner._run(owner.api.exec_inspect, exec_id)
        for _ in range(20):  # the exit status may trail the end of the stream by a moment
            if gave_up or not info.get("Running"):
                return None if info.get("Running") else info.get("ExitCode")
            await asyncio.sleep(0.05)
            info = await owner._run(owner.api.exec_inspect, exec_id)
        await owner._run(self._kill_all_blocking)
        raise DockerUnavailable(
            f"the output stream of a command in {self!r} broke while the command still ran: "
            "the connection to the Docker engine was cut. Check the engine, or use --sandbox local")

    def _exec_blocking(self, argv: list[str]) -> tuple[int | None, bytes]:
        """A short internal command (no limits beyond the container's), its exit code and output."""
        api = self._owner.api
        exec_id = self._owner._call(api.exec_create, self.container_id, argv, user=USER)["Id"]
        output = self._owner._call(api.exec_start, exec_id)
        code = self._owner._call(api.exec_inspect, exec_id).get("ExitCode")
        return code, output

    def _kill_all_blocking(self) -> None:
        import docker

        try:
            self._exec_blocking(["sh", "-c", _KILL_ALL])
        except docker.errors.APIError:
            pass  # the container is already gone: nothing left to kill

    def _new_oom_kill_blocking(self) -> bool:
        import docker

        try:
            _, text = self._exec_blocking(["sh", "-c", _OOM_COUNT])
        except docker.errors.APIError:
            text = b""
        count = _oom_kills(text.decode(errors="replace"))
        if count > self._oom_seen:
            self._oom_seen = count
            return True
        try:
            state = self._owner._call(self._owner.api.inspect_container, self.container_id)["State"]
        except docker.errors.NotFound:
            return False
        return bool(state.get("OOMKilled"))

    # ------------------------------------------------------------------ files

    async def write_file(self, path: str, content: str | bytes) -> None:
        import docker

        self._check_open()
        rel = _inside_path(path)
        data = content.encode() if isinstance(content, str) else bytes(content)
        try:
            await self._owner._run(self._owner.api.put_archive, self.container_id, WORKDIR, _file_tar(rel, data))
        except docker.errors.APIError as exc:
            raise self._gone(exc) from exc

    async def read_file(self, path: str) -> bytes:
        """The file's bytes; symlinks are followed only while they stay inside the workspace."""
        self._check_open()
        import docker

        rel = _inside_path(path)
        for _ in range(16):
            try:
                chunks, _stat = await self._owner._run(
                    self._owner.api.get_archive, self.container_id, f"{WORKDIR}/{rel}")
                data = await self._owner._run(lambda: b"".join(chunks))
            except docker.errors.NotFound as exc:
                if isinstance(self._gone(exc), DockerSandboxGone):
                    raise self._gone(exc) from exc
                raise FileNotFoundError(f"{path}: no such file in the sandbox") from exc
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                member = tar.next()
                if member is None:
                    raise FileNotFoundError(f"{path}: no such file in the sandbox")
                if member.isfile():
                    fh = tar.extractfile(member)
                    assert fh is not None
                    return fh.read()
                if member.isdir():
                    raise IsADirectoryError(f"{path} is a directory")
                if not member.issym():
                    raise ValueError(f"{path} is not a regular file")
                target = member.linkname
            if target.startswith("/"):
                raise ValueError(f"{path} is a symlink leaving the workspace ({target})")
            rel = _inside_path(posixpath.join(posixpath.dirname(rel), target))
        raise ValueError(f"{path}: too many levels of symlinks")

    async def diff(self) -> str:
        """Git-format diff of the workspace against its base; new binary files (build products)
        are left out. Raises ``UnsafeArchive`` when the workspace holds a link leaving it."""
        import docker

        self._check_open()
        try:
            chunks, _ = await self._owner._run(self._owner.api.get_archive, self.container_id, f"{WORKDIR}/.")
        except docker.errors.APIError as exc:
            raise self._gone(exc) from exc
        changed, a_tar, b_tar = await self._owner._run(_changed_entries, self._base.tar, self._base.index, chunks)
        if not changed:
            return ""
        return await self._owner._run(_diff_changed, a_tar, b_tar)

    # ------------------------------------------------------------------ life

    async def close(self) -> None:
        """Remove the container and its workspace. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._owner._lock:
            self._owner._live.pop(self.container_id, None)
        try:
            await asyncio.shield(self._owner._run(self._owner._remove_blocking, self.container_id))
        except DockerUnavailable as exc:
            # Recorded as an orphan: the next reap_leftovers removes it once the engine answers.
            self._owner.events.emit("sandbox.close_failed", backend="docker",
                                    container=self.container_id[:12], error=str(exc))
            return
        self._owner.events.emit("sandbox.close", backend="docker", container=self.container_id[:12])

    def _gone(self, exc: Exception) -> Exception:
        """The error to raise when the engine refuses a call about this container."""
        status = getattr(exc, "status_code", None)
        text = str(getattr(exc, "explanation", None) or exc)
        if status == 409 or (status == 404 and "no such container" in text.lower()):
            return DockerSandboxGone(
                f"the container of {self!r} is gone (its {self._owner.expiry_s} s expiry passed, "
                f"or it was removed): {getattr(exc, 'explanation', None) or exc}")
        return exc

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

    async def __aenter__(self) -> DockerSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _exec_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """The caller's variables, minus any that look like secrets; the rest comes from the image."""
    from bakeoff.sandboxes.local import looks_secret

    out = {"HOME": HOME, "TMPDIR": "/tmp"}
    for name, value in (env or {}).items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise ValueError(f"bad environment variable name or value: {name!r}")
        if not looks_secret(name):
            out[name] = value
    return out


class _ChunkReader(io.RawIOBase):
    """A file over an iterator of byte chunks, so a tar can be read as it streams in."""

    def __init__(self, chunks: Any) -> None:
        self._chunks = iter(chunks)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buf), len(self._pending))
        buf[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _entry_name(info: tarfile.TarInfo) -> str:
    name = info.name
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def _looks_binary(data: bytes) -> bool:
    return b"\0" in data[:8000]  # git's own test


def _signature(info: tarfile.TarInfo, data: bytes | None) -> tuple:
    # What git sees of an entry: its kind, its executable bit, and its content or target.
    if info.issym():
        return ("l", info.linkname)
    return ("f", bool(info.mode & 0o100), hashlib.sha1(data or b"").digest())


def _index_tar(tar_bytes: bytes) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
        for info in tar:
            if info.isfile():
                fh = tar.extractfile(info)
                out[_entry_name(info)] = _signature(info, fh.read() if fh else b"")
            elif info.issym():
                out[_entry_name(info)] = _signature(info, None)
    return out


def _changed_entries(base_tar: bytes, base: dict[str, tuple], chunks: Any) -> tuple[list[str], bytes, bytes]:
    """Compare the base with the streamed current tree without keeping more than the changes.

    Returns the changed names, and two small tars (base side, current side) of just those
    entries. New binary files are dropped here: they are build products, not edits.
    """
    seen: set[str] = set()
    changed: list[str] = []
    b_side = io.BytesIO()
    with tarfile.open(fileobj=io.BufferedReader(_ChunkReader(chunks), 1 << 16), mode="r|") as cur, \
            tarfile.open(fileobj=b_side, mode="w", format=tarfile.GNU_FORMAT) as out:
        for info in cur:
            name = _entry_name(info)
            if not name or info.isdir():
                continue
            if name.startswith("/") or ".." in PurePosixPath(name).parts:
                raise UnsafeArchive(f"unsafe name in the sandbox's archive: {info.name}")
            if not (info.isfile() or info.issym()):
                raise UnsafeArchive(f"device or special file in the sandbox's archive: {info.name}")
            data = None
            if info.isfile():
                fh = cur.extractfile(info)
                data = fh.read() if fh else b""
            seen.add(name)
            if base.get(name) == _signature(info, data):
                continue
            if name not in base and data is not None and _looks_binary(data):
                continue
            changed.append(name)
            info.name = name
            out.addfile(info, io.BytesIO(data) if data is not None else None)
    changed += [n for n in base if n not in seen]
    wanted = set(changed)
    a_side = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(base_tar), mode="r:") as src, \
            tarfile.open(fileobj=a_side, mode="w", format=tarfile.GNU_FORMAT) as out:
        for info in src:
            if _entry_name(info) in wanted and (info.isfile() or info.issym()):
                out.addfile(info, src.extractfile(info) if info.isfile() else None)
    return sorted(changed), a_side.getvalue(), b_side.getvalue()


def _diff_changed(a_tar: bytes, b_tar: bytes) -> str:
    """``git diff --no-index`` of the changed entries extracted side by side as ``a`` and ``b``,
    which yields the ``a/`` and ``b/`` prefixes of a repository diff."""
    tmp = Path(tempfile.mkdtemp(prefix="bakeoff-docker-diff-"))
    try:
        safe_extract(a_tar, tmp / "a")
        safe_extract(b_tar, tmp / "b")  # refuses links that leave the workspace
        env = {**{k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL")},
               "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "HOME": str(tmp)}
        proc = subprocess.run(
            ["git", "diff", "--no-index", "--no-prefix", "--no-renames", "--no-color", "--no-ext-diff",
             "a", "b"], cwd=tmp, env=env, capture_output=True)
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"git diff failed: {proc.stderr.decode(errors='replace').strip()}")
        return _repository_headers(proc.stdout.decode("utf-8", errors="replace"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _repository_headers(text: str) -> str:
    """A file only on one side reads ``diff --git b/x b/x`` (or ``a/x a/x``) in a no-index diff;
    a repository diff says ``a/x b/x``."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if not line.startswith("diff --git "):
            continue
        rest = line[len("diff --git "):].rstrip("\n")
        half = (len(rest) - 1) // 2
        if len(rest) % 2 == 1 and rest[half] == " " and rest[:half] == rest[half + 1:]:
            name = rest[:half]
            quoted = name.startswith('"')
            path = name[3:-1] if quoted else name[2:]
            lines[i] = (f'diff --git "a/{path}" "b/{path}"\n' if quoted else f"diff --git a/{path} b/{path}\n")
    return "".join(lines)
