"""The local sandbox: a private copy of the workspace, run under limits on this machine.

Each command runs in its own session and process group with rlimits (CPU time, processes
and threads, file size, open files), a scrubbed environment built from an allow-list, and a
wall-clock timeout that sends TERM and then KILL to everything the command started. Where
``bwrap`` (bubblewrap) works, the command also runs inside it: no network, the host
read-only, only the workspace, a private home and a private tmp writable, its own pid
namespace (so killing bwrap kills every descendant), no capabilities, no user namespaces.
Without bwrap (the ``unsafe-local`` mode, chosen only by name) a command still cannot gain
privileges (no-new-privileges), but sees the host: ``isolation_warning`` says what it can do.

When bakeoff runs as root each sandbox gets a user id of its own: the process limit then
counts only that sandbox's processes (root is exempt from RLIMIT_NPROC), and every leftover
process can be found by its uid. Memory and processes are limited per command with a cgroup
(v2, or v1's memory and pids controllers) where one can be created; the first refused fork
or OOM kill stops the whole command, reported as ``ExecResult.limit``. Without cgroups a
watchdog samples the sandbox's processes every 50 ms and kills them above the memory or
process limit: weaker (a fast allocation can overshoot between samples), but never an
address-space rlimit, which breaks sanitizers and CUDA. As root, the writable space is a
tmpfs capped in bytes and files (``limits.disk_bytes``; one inode per 8 KiB); it lives in
memory, and what a command writes there counts against that command's memory limit.
Elsewhere only the per-file size limit holds, and the host's free disk is the bound.

The host touches the sandbox's files only from a descriptor of the workspace opened at
creation, one component at a time (``beneath``), so a command swapping a directory for a
symlink while the host reads or writes cannot point it outside; a command's working
directory is entered by the command's own user; the diff is taken while no command runs.

What stays weaker than Docker, and why: ``limits.cpus`` is not enforced here (commands share
the machine's cores); without a cgroup, commands of one sandbox run one at a time, since
cleanup finds a command's processes by the sandbox's uid.
As root, bakeoff's own Python, when it lives under a directory other users cannot traverse
(pyenv under ``/root``), is exposed to sandboxes read-only through one bind mount under the
sandbox root, so ``python3 -m pytest`` inside a sandbox finds the same packages.

``LocalSandbox`` is here; the pieces it stands on, by job: ``local_isolation`` (the
environment allow-list, bwrap, sandbox user ids), ``local_processes`` (rlimits, finding and
killing a sandbox's processes), ``cgroups`` (a memory and process limit per command) and
``beneath`` (race-free file access).
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from bakeoff.agent.events import EventBus
from bakeoff.agent.seams import ExecResult, SandboxLimits, Workspace
from bakeoff.sandboxes import limits as limit_words
from bakeoff.sandboxes.base_template import prepare_copy_and_base
from bakeoff.sandboxes.beneath import check_relative, open_dir_beneath, read_beneath, write_beneath
from bakeoff.sandboxes.cgroups import Cgroup, cgroup_parents
from bakeoff.sandboxes.local_isolation import (
    INSIDE_HOME,
    INSIDE_WORKSPACE,
    allocate_uid,
    build_env,
    bwrap_argv,
    bwrap_status,
    gpu_devices,
    looks_secret,
    sandbox_path,
    unsafe_local_warning,
)
from bakeoff.sandboxes.local_processes import SandboxBroken, SandboxProcesses, command_rlimits, drop_to
from bakeoff.sandboxes.output import OutputCapture
from bakeoff.sandboxes.workspace import (
    BaseSnapshot,
    new_sandbox_dir,
    reap_stale,
    remove_tree,
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
        self.backend = "unsafe-local"
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
        self._work_fd: int | None = None  # every host-side file access starts from it
        self._running = 0  # commands running now: the diff waits for none
        self._idle: asyncio.Event | None = None

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
        # The copy runs on in its thread when the creation is cancelled (a stopped run): the
        # thread itself then removes what it made, or the cancelled side does if it finished.
        lock, state = threading.Lock(), {"done": False, "abandoned": False}

        def build() -> None:
            try:
                self._prepare(workspace, root, use_bwrap, use_cgroup, cap_disk)
            except BaseException:
                self._release()
                raise
            with lock:
                state["done"] = True
                abandoned = state["abandoned"]
            if abandoned:
                self._release()

        try:
            await asyncio.to_thread(build)
        except asyncio.CancelledError:
            with lock:
                state["abandoned"] = True
                finished = state["done"]
            if finished:
                self._release()  # inline: a second cancellation cannot cut it short
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
        self._snapshot = prepare_copy_and_base(workspace, fs / "work", self.dir / "base.git", root)
        if self.uid is not None:
            _chown_tree(fs, self.uid)
            # ``fs`` itself stays root's: the sandbox's user may not swap ``work`` for a link.
            os.chown(fs, 0, 0)
        os.chmod(fs, 0o711 if self.uid is not None else 0o755)
        self._work_fd = os.open(fs / "work", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)

        ok, why = bwrap_status()
        if use_bwrap and not ok:
            raise SandboxBroken(f"bwrap was asked for but {why}")
        self._bwrap = ok if use_bwrap is None else use_bwrap
        self.backend = "local+bwrap" if self._bwrap else "unsafe-local"
        if not self._bwrap:
            self.isolation_warning = unsafe_local_warning(why if not ok else "bwrap turned off")
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

    @property
    def _root_fd(self) -> int:
        self._check_open()
        assert self._work_fd is not None
        return self._work_fd

    # ------------------------------------------------------------------ exec

    async def exec(
        self,
        cmd: str | Sequence[str],
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> ExecResult:
        self._check_open()
        timeout = self.limits.wall_seconds if timeout is None else timeout
        rel = "." if cwd in (None, "", ".") else check_relative(cwd)
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
        self._running += 1
        try:
            if self._use_cgroup:
                return await self._exec_in(argv, environment, rel, timeout)
            # Without a cgroup a command's processes are found by the sandbox's uid (or marker),
            # so the cleanup after one command would kill another's: run them one at a time.
            if self._exclusive is None:
                self._exclusive = asyncio.Lock()
            async with self._exclusive:
                return await self._exec_in(argv, environment, rel, timeout)
        finally:
            self._running -= 1
            if self._running == 0 and self._idle is not None:
                self._idle.set()

    async def _exec_in(self, argv: list[str], environment: dict[str, str], rel: str,
                       timeout: float) -> ExecResult:
        limits = self.limits
        fs = self.dir / "fs"
        try:
            cwd_fd = open_dir_beneath(self._root_fd, rel)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ValueError(f"cwd is not a directory in the workspace: {rel!r}") from exc
        cgroup = None
        try:
            cgroup = Cgroup.create(limits.memory_bytes, limits.max_processes) if self._use_cgroup else None
            if self._use_cgroup and cgroup is None:
                raise SandboxBroken("could not create a cgroup for the command")
            if self._bwrap:
                inside = INSIDE_WORKSPACE if rel == "." else f"{INSIDE_WORKSPACE}/{rel}"
                argv = bwrap_argv(work=fs / "work", home=fs / "home", tmp=fs / "tmp", chdir=inside,
                                  gpus=gpu_devices() if limits.gpus else ()) + ["--", *argv]
            return await self._run(argv, environment, cwd_fd, timeout, cgroup)
        finally:
            os.close(cwd_fd)
            if cgroup is not None:
                await asyncio.to_thread(cgroup.remove)

    async def _spawn(self, argv: list[str], environment: dict[str, str], cwd_fd: int,
                     cgroup: Cgroup | None) -> tuple[asyncio.subprocess.Process, int, int]:
        """Start the command with pipes of our own: asyncio's ``wait()`` would otherwise also
        wait for the pipes, which a background child can hold open for ever."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        cgroup_fds = [os.open(f, os.O_WRONLY | os.O_CLOEXEC) for f in (cgroup.procs_files() if cgroup else [])]
        rlimits = command_rlimits(self.limits, self.uid, pids_cgroup=cgroup is not None and "pids" in cgroup.dirs)
        preexec = drop_to(self.uid, rlimits, cgroup_fds, cwd_fd=cwd_fd,
                          no_new_privileges=not self._bwrap)  # bwrap forbids privilege gains itself
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out_w, stderr=err_w, env=environment,
                start_new_session=True, preexec_fn=preexec)
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in (out_w, err_w, *cgroup_fds):
                os.close(fd)
        return proc, out_r, err_r

    async def _run(self, argv: list[str], environment: dict[str, str], cwd_fd: int,
                   timeout: float, cgroup: Cgroup | None) -> ExecResult:
        limits = self.limits
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        proc, out_fd, err_fd = await self._spawn(argv, environment, cwd_fd, cgroup)
        out, err = OutputCapture(limits.output_bytes), OutputCapture(limits.output_bytes)
        transports = []
        readers = []
        for fd, capture in ((out_fd, out), (err_fd, err)):
            stream = asyncio.StreamReader(limit=2**20)
            transport, _ = await loop.connect_read_pipe(
                lambda s=stream: asyncio.StreamReaderProtocol(s), os.fdopen(fd, "rb", buffering=0))
            transports.append(transport)
            readers.append(asyncio.create_task(capture.pump(stream)))
        watch = asyncio.create_task(self._processes.watch(proc.pid, cgroup, limits.max_processes))
        timed_out = False
        try:
            waiting = asyncio.ensure_future(proc.wait())
            done, _ = await asyncio.wait({waiting, watch}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                timed_out = True
                await self._processes.terminate(proc.pid, cgroup, TERM_GRACE_S)
            elif watch in done:  # a limit was hit: everything it runs is being killed
                await self._processes.terminate(proc.pid, cgroup, 0.0)
            await waiting
            # A background child may hold the pipes open: give it a moment, then kill it.
            _, pending = await asyncio.wait(readers, timeout=DRAIN_S)
            await self._processes.terminate(proc.pid, cgroup, 0.0)
            if pending:
                await asyncio.wait(pending, timeout=2.0)
        finally:
            for task in [*readers, watch]:
                task.cancel()
            for transport in transports:
                transport.close()
            if proc.returncode is None or self._processes.members(proc.pid, cgroup):
                await asyncio.shield(self._processes.terminate(proc.pid, cgroup, 0.0))
        hit = watch.result() if watch.done() and not watch.cancelled() else None
        return self._result(proc.returncode, out, err, time.monotonic() - start, timeout, timed_out, hit, cgroup)

    def _result(self, code: int | None, out: OutputCapture, err: OutputCapture, duration: float, timeout: float,
                timed_out: bool, hit: str | None, cgroup: Cgroup | None) -> ExecResult:
        oom = hit == "memory" or (cgroup is not None and cgroup.oom_kills() > 0)
        pids = hit == "processes" or (cgroup is not None and code != 0 and cgroup.pids_max_hits() > 0)
        if code is not None and code < 0:
            code = 128 - code  # shell convention: killed by signal N -> 128 + N
        return ExecResult(
            exit_code=code, stdout=out.text(), stderr=err.text(), duration_s=duration,
            timed_out=timed_out and not oom, oom_killed=oom, truncated=out.truncated or err.truncated,
            limit=limit_words.tripped(self.limits, timeout, pids=pids, oom=oom, timed_out=timed_out),
        )

    # ------------------------------------------------------------------ files

    async def write_file(self, path: str, content: str | bytes) -> None:
        """Write beneath the workspace, race-free against a command changing it (``beneath``)."""
        data = content.encode() if isinstance(content, str) else content
        write_beneath(self._root_fd, path, data, owner=self.uid)

    async def read_file(self, path: str) -> bytes:
        """Read beneath the workspace; symlinks are followed only while they stay inside it."""
        return read_beneath(self._root_fd, path)

    async def diff(self, include_binary: bool = False) -> str:
        """Git-format diff of the workspace against its base; new binary files left out.

        Taken while no command runs (git reads the tree by path), and after every command
        nothing of the sandbox is left running."""
        self._check_open()
        assert self._snapshot is not None
        while self._running:
            if self._idle is None or self._idle.is_set():
                self._idle = asyncio.Event()
            await self._idle.wait()
        return await asyncio.to_thread(self._snapshot.diff, include_binary)

    # ------------------------------------------------------------------ teardown

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._processes.terminate(None, None, 0.0)
        await asyncio.to_thread(self._release)

    def _release(self) -> None:
        if self._work_fd is not None:
            os.close(self._work_fd)
            self._work_fd = None
        remove_tree(self.dir)
        if self.uid is not None:
            (self.dir.parent / f".uid-{self.uid}").unlink(missing_ok=True)

    async def __aenter__(self) -> LocalSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
