"""The local sandbox: a private copy of the workspace, run under limits on this machine.

Each command runs in its own session and process group with rlimits (CPU time, processes
and threads, file size, open files), a scrubbed environment built from an allow-list, and a
wall-clock timeout that sends TERM and then KILL to everything the command started. Where
``bwrap`` (bubblewrap) works, the command also runs inside it: no network, the host
read-only, only the workspace, a private home and a private tmp writable, its own pid
namespace (so killing bwrap kills every descendant), no capabilities, no user namespaces.

When bakeoff runs as root each sandbox gets a user id of its own: the process limit then
counts only that sandbox's processes (root is exempt from RLIMIT_NPROC), and every leftover
process can be found by its uid. Memory is limited with a cgroup (v2, or v1's memory and pids
controllers) where one can be created. Without cgroups a watchdog samples the resident
memory of the sandbox's processes every 50 ms and kills them above the limit: weaker (a fast
allocation can overshoot between samples), but never an address-space rlimit, which breaks
sanitizers and CUDA. As root, the writable space is a tmpfs capped in bytes and files
(``limits.disk_bytes``; one inode per 8 KiB); it lives in memory, and what a command writes
there counts against that command's memory limit. Elsewhere only the per-file size limit
holds, and the host's free disk is the bound.

What stays weaker than Docker, and why: ``limits.cpus`` is not enforced here (commands share
the machine's cores); without a cgroup, commands of one sandbox run one at a time, since
cleanup finds a command's processes by the sandbox's uid; without bwrap (``isolation_warning``
says so) commands see the host's files and network, and as root they still run under their
own uid, so they cannot write the host's files or read other users' processes.
As root, bakeoff's own Python, when it lives under a directory other users cannot traverse
(pyenv under ``/root``), is exposed to sandboxes read-only through one bind mount under the
sandbox root, so ``python3 -m pytest`` inside a sandbox finds the same packages.

``LocalSandbox`` is here; the pieces it stands on, by job: ``local_isolation`` (the
environment allow-list, bwrap, sandbox user ids), ``local_processes`` (rlimits, finding and
killing a sandbox's processes) and ``cgroups`` (a memory and process limit per command).
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from bakeoff.agent.events import EventBus
from bakeoff.agent.seams import ExecResult, SandboxLimits, Workspace
from bakeoff.sandboxes.cgroups import Cgroup, cgroup_parents
from bakeoff.sandboxes.local_isolation import (
    INSIDE_HOME,
    INSIDE_WORKSPACE,
    allocate_uid,
    build_env,
    bwrap_argv,
    bwrap_status,
    looks_secret,
    sandbox_path,
)
from bakeoff.sandboxes.local_processes import SandboxBroken, SandboxProcesses, command_rlimits, drop_to
from bakeoff.sandboxes.output import OutputCapture
from bakeoff.sandboxes.workspace import (
    BaseSnapshot,
    copy_workspace,
    new_sandbox_dir,
    reap_stale,
    remove_tree,
    resolve_inside,
    sandbox_root,
)

__all__ = ["LocalSandbox", "SandboxBroken", "build_env", "bwrap_status", "looks_secret"]

TERM_GRACE_S = 1.0  # between TERM and KILL
DRAIN_S = 0.5  # how long a finished command's pipes may stay open (background children)


@functools.cache
def _reap_once(root: Path) -> int:
    """The first sandbox of a process clears what killed orchestrators left (RELIABILITY 21)."""
    return reap_stale(root)


def _chown_tree(path: Path, uid: int) -> None:
    os.lchown(path, uid, uid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, uid)


def _mount_capped_tmpfs(fs: Path, size: int) -> bool:
    """Mount a tmpfs of ``size`` bytes (one inode per 8 KiB) at ``fs``; whether that worked."""
    inodes = max(1024, size // 8192)
    opts = f"size={size},nr_inodes={inodes},mode=0755"
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "bakeoff-sandbox", str(fs)],
                          capture_output=True)
    return proc.returncode == 0


class LocalSandbox:
    """A sandbox on this machine (see the module docstring for what it enforces)."""

    def __init__(self) -> None:  # use ``await LocalSandbox.create(...)``
        self.backend = "local"
        self.limits = SandboxLimits()
        self.isolation_warning: str | None = None
        self.disk_capped = False
        self.memory_enforcement = "none"  # "cgroup" or "watchdog"
        self.dir = Path()
        self.uid: int | None = None
        self._bwrap = False
        self._use_cgroup = False
        self._snapshot: BaseSnapshot | None = None
        self.sandbox_id = ""
        self._processes = SandboxProcesses(None, "", 0)  # the real one once the uid is known
        self._events: EventBus | None = None
        self._closed = False
        self._exclusive: asyncio.Lock | None = None

    # ------------------------------------------------------------------ creation

    @classmethod
    async def create(
        cls,
        workspace: Workspace,
        limits: SandboxLimits | None = None,
        use_bwrap: bool | None = None,
        *,
        use_cgroup: bool | None = None,
        cap_disk: bool | None = None,
        events: EventBus | None = None,
    ) -> LocalSandbox:
        """Copy ``workspace`` into a fresh sandbox. ``None`` flags mean "when available"."""
        self = cls()
        self.limits = limits or SandboxLimits()
        self._events = events
        root = sandbox_root()
        await asyncio.to_thread(_reap_once, root)
        self.dir = new_sandbox_dir(root)
        try:
            await asyncio.to_thread(self._prepare, workspace, root, use_bwrap, use_cgroup, cap_disk)
        except BaseException:
            await asyncio.to_thread(self._release)
            raise
        if self.isolation_warning and events is not None:
            events.emit("sandbox.warning", backend=self.backend, message=self.isolation_warning)
        return self

    def _prepare(self, workspace: Workspace, root: Path, use_bwrap: bool | None,
                 use_cgroup: bool | None, cap_disk: bool | None) -> None:
        self.sandbox_id = f"{os.getpid()}:{self.dir.name}"
        self.uid = allocate_uid(root)
        self._processes = SandboxProcesses(self.uid, self.sandbox_id, self.limits.memory_bytes)
        fs = self.dir / "fs"
        fs.mkdir()
        if cap_disk is not False and os.geteuid() == 0:
            self.disk_capped = _mount_capped_tmpfs(fs, self.limits.disk_bytes)
            if cap_disk and not self.disk_capped:
                raise SandboxBroken(f"could not mount a size-capped tmpfs at {fs}")
        for sub in ("work", "home", "tmp"):
            (fs / sub).mkdir()
        copy_workspace(workspace, fs / "work")
        self._snapshot = BaseSnapshot.record(self.dir / "base.git", fs / "work")
        os.chmod(self.dir / "base.git", 0o700)
        if self.uid is not None:
            _chown_tree(fs, self.uid)
        os.chmod(fs, 0o700 if self.uid is not None else 0o755)

        ok, why = bwrap_status()
        if use_bwrap and not ok:
            raise SandboxBroken(f"bwrap was asked for but {why}")
        self._bwrap = ok if use_bwrap is None else use_bwrap
        self.backend = "local+bwrap" if self._bwrap else "local"
        if not self._bwrap:
            self.isolation_warning = (
                "reduced isolation: commands run without bubblewrap, so they can reach the "
                "network and read the host's files" + ("" if self.uid is not None else
                " and write wherever this user can") + f" ({why if not ok else 'bwrap turned off'})")
        have_cgroup = cgroup_parents() is not None
        if use_cgroup and not have_cgroup:
            raise SandboxBroken("a cgroup was asked for but none can be created here")
        self._use_cgroup = have_cgroup if use_cgroup is None else use_cgroup
        self.memory_enforcement = "cgroup" if self._use_cgroup else "watchdog"

    # ------------------------------------------------------------------ paths

    @property
    def work(self) -> Path:
        """The workspace copy on this machine (commands see it at ``workdir``)."""
        return self.dir / "fs" / "work"

    @property
    def workdir(self) -> str:
        return INSIDE_WORKSPACE if self._bwrap else str(self.work)

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxBroken("the sandbox is closed")

    # ------------------------------------------------------------------ exec

    async def exec(
        self,
        cmd: str | Sequence[str],
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> ExecResult:
        self._check_open()
        limits = self.limits
        timeout = limits.wall_seconds if timeout is None else timeout
        rel = "."
        if cwd not in (None, "", "."):
            resolve_inside(self.work, cwd)
            rel = os.path.normpath(cwd)
        host_cwd = self.work / rel
        if not host_cwd.is_dir():
            raise ValueError(f"cwd is not a directory in the workspace: {cwd!r}")
        argv = ["/bin/bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        fs = self.dir / "fs"
        if self._bwrap:
            home, tmpdir = INSIDE_HOME, "/tmp"
        else:
            home, tmpdir = str(fs / "home"), str(fs / "tmp")
        environment, dropped = build_env(os.environ, env, home=home, tmpdir=tmpdir,
                                         path=sandbox_path(self._bwrap), marker=self.sandbox_id)
        if dropped and self._events is not None:
            self._events.emit("sandbox.env_dropped", names=dropped)

        if not self._use_cgroup:
            # Without a cgroup a command's processes are found by the sandbox's uid (or marker),
            # so the cleanup after one command would kill another's: run them one at a time.
            if self._exclusive is None:
                self._exclusive = asyncio.Lock()
            async with self._exclusive:
                return await self._exec_in(argv, environment, host_cwd, rel, timeout)
        return await self._exec_in(argv, environment, host_cwd, rel, timeout)

    async def _exec_in(self, argv: list[str], environment: dict[str, str], host_cwd: Path, rel: str,
                       timeout: float) -> ExecResult:
        limits = self.limits
        fs = self.dir / "fs"
        cgroup = Cgroup.create(limits.memory_bytes, limits.max_processes) if self._use_cgroup else None
        if self._use_cgroup and cgroup is None:
            raise SandboxBroken("could not create a cgroup for the command")
        try:
            if self._bwrap:
                inside = INSIDE_WORKSPACE if rel == "." else f"{INSIDE_WORKSPACE}/{rel}"
                argv = bwrap_argv(work=fs / "work", home=fs / "home", tmp=fs / "tmp",
                                  chdir=inside) + ["--", *argv]
            return await self._run(argv, environment, host_cwd, timeout, cgroup)
        finally:
            if cgroup is not None:
                await asyncio.to_thread(cgroup.remove)

    async def _spawn(self, argv: list[str], environment: dict[str, str], host_cwd: Path,
                     cgroup: Cgroup | None) -> tuple[asyncio.subprocess.Process, int, int]:
        """Start the command with pipes of our own: asyncio's ``wait()`` would otherwise also
        wait for the pipes, which a background child can hold open for ever."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        cgroup_fds = [os.open(f, os.O_WRONLY | os.O_CLOEXEC) for f in (cgroup.procs_files() if cgroup else [])]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out_w, stderr=err_w, env=environment,
                cwd=host_cwd, start_new_session=True,
                preexec_fn=drop_to(self.uid, command_rlimits(self.limits, self.uid), cgroup_fds))
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in (out_w, err_w, *cgroup_fds):
                os.close(fd)
        return proc, out_r, err_r

    async def _run(self, argv: list[str], environment: dict[str, str], host_cwd: Path,
                   timeout: float, cgroup: Cgroup | None) -> ExecResult:
        limits = self.limits
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        proc, out_fd, err_fd = await self._spawn(argv, environment, host_cwd, cgroup)
        out, err = OutputCapture(limits.output_bytes), OutputCapture(limits.output_bytes)
        transports = []
        readers = []
        for fd, capture in ((out_fd, out), (err_fd, err)):
            stream = asyncio.StreamReader(limit=2**20)
            transport, _ = await loop.connect_read_pipe(
                lambda s=stream: asyncio.StreamReaderProtocol(s), os.fdopen(fd, "rb", buffering=0))
            transports.append(transport)
            readers.append(asyncio.create_task(capture.pump(stream)))
        oom = asyncio.Event()
        watchdog = None if cgroup else asyncio.create_task(self._processes.watch_memory(proc.pid, oom))
        timed_out = False
        try:
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                timed_out = True
                await self._processes.terminate(proc.pid, cgroup, TERM_GRACE_S)
                await proc.wait()
            # A background child may hold the pipes open: give it a moment, then kill it.
            _, pending = await asyncio.wait(readers, timeout=DRAIN_S)
            await self._processes.terminate(proc.pid, cgroup, 0.0)
            if pending:
                await asyncio.wait(pending, timeout=2.0)
        finally:
            for task in [*readers, *([watchdog] if watchdog else [])]:
                task.cancel()
            for transport in transports:
                transport.close()
            if proc.returncode is None or self._processes.members(proc.pid, cgroup):
                await asyncio.shield(self._processes.terminate(proc.pid, cgroup, 0.0))
        duration = time.monotonic() - start
        oom_killed = oom.is_set() or (cgroup is not None and cgroup.oom_kills() > 0)
        code = proc.returncode
        if code is not None and code < 0:
            code = 128 - code  # shell convention: killed by signal N -> 128 + N
        return ExecResult(
            exit_code=code, stdout=out.text(), stderr=err.text(), duration_s=duration,
            timed_out=timed_out and not oom_killed, oom_killed=oom_killed,
            truncated=out.truncated or err.truncated,
        )

    # ------------------------------------------------------------------ files

    async def write_file(self, path: str, content: str | bytes) -> None:
        self._check_open()
        target = resolve_inside(self.work, path)
        data = content.encode() if isinstance(content, str) else content
        missing = [p for p in reversed(target.parents) if not p.exists()]
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if self.uid is not None:
            for p in [*missing, target]:
                os.lchown(p, self.uid, self.uid)

    async def read_file(self, path: str) -> bytes:
        self._check_open()
        target = resolve_inside(self.work, path)
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    async def diff(self, include_binary: bool = False) -> str:
        """Git-format diff of the workspace against its base; new binary files left out."""
        self._check_open()
        assert self._snapshot is not None
        return await asyncio.to_thread(self._snapshot.diff, include_binary)

    # ------------------------------------------------------------------ teardown

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._processes.terminate(None, None, 0.0)
        await asyncio.to_thread(self._release)

    def _release(self) -> None:
        remove_tree(self.dir)
        if self.uid is not None:
            (self.dir.parent / f".uid-{self.uid}").unlink(missing_ok=True)

    async def __aenter__(self) -> LocalSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
