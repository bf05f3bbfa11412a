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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from bakeoff.agent.events import EventBus
from bakeoff.agent.seams import ExecResult, SandboxLimits, Workspace
from bakeoff.sandboxes.output import OutputCapture
from bakeoff.sandboxes.workspace import (
    ENV_MARKER,
    BaseSnapshot,
    copy_workspace,
    new_sandbox_dir,
    processes_with_marker,
    reap_stale,
    remove_tree,
    resolve_inside,
    sandbox_root,
)

UID_BASE = 3_000_000  # far above the ranges distributions hand out (subuids start at 100000)
UID_COUNT = 4096
TERM_GRACE_S = 1.0  # between TERM and KILL
DRAIN_S = 0.5  # how long a finished command's pipes may stay open (background children)
INSIDE_WORKSPACE = "/workspace"
INSIDE_HOME = "/home/sandbox"

_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
_HOST_NAMES = ("LANG", "LC_ALL", "TERM")
_HOST_PREFIXES = ("LC_", "OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_")
_EXTRA_HOST_NAMES = ("NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
_STANDARD_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
_HOST_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")


class SandboxBroken(RuntimeError):
    """The sandbox itself failed (not the command in it): a bug or a broken host setup."""


# --------------------------------------------------------------------------- environment


def looks_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def build_env(
    host_env: Mapping[str, str],
    caller_env: Mapping[str, str] | None,
    *,
    home: str,
    tmpdir: str,
    path: str,
    marker: str,
) -> tuple[dict[str, str], list[str]]:
    """The environment of a sandboxed command, from an allow-list, never a copy.

    Returns the environment and the names dropped from ``caller_env`` because they look like
    secrets (``*KEY*``, ``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``, ``*CREDENTIAL*``).
    """
    env: dict[str, str] = {}
    for name, value in host_env.items():
        if name in _HOST_NAMES or name in _EXTRA_HOST_NAMES or name.startswith(_HOST_PREFIXES):
            if not looks_secret(name):
                env[name] = value
    env.update(PATH=path, HOME=home, TMPDIR=tmpdir)
    dropped = []
    for name, value in (caller_env or {}).items():
        if looks_secret(name):
            dropped.append(name)
        else:
            env[name] = value
    env[ENV_MARKER] = marker
    return env, dropped


def _sandbox_path(bwrap: bool) -> str:
    # The interpreter bakeoff runs on comes first so `python3 -m pytest` finds the same packages.
    entries = [str(Path(sys.executable).parent if bwrap else _python_bin_for_host())]
    entries += [p for p in _STANDARD_PATH if p not in entries]
    return ":".join(entries)


# --------------------------------------------------------------------------- cgroups


def _mounts() -> list[tuple[str, str, str]]:
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4:
            out.append((parts[1], parts[2], parts[3]))
    return out


def _own_cgroups() -> dict[str, str]:
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            own[c] = path
    return own


@functools.cache
def _cgroup_parents() -> tuple[int, dict[str, Path]] | None:
    """Where this process may create child cgroups: (version, {controller: directory})."""
    try:
        mounts, own = _mounts(), _own_cgroups()
    except OSError:
        return None
    v1: dict[str, Path] = {}
    for point, fstype, options in mounts:
        if fstype == "cgroup":
            for c in ("memory", "pids"):
                if c in options.split(",") and c in own:
                    v1[c] = Path(point) / own[c].lstrip("/")
    if "memory" in v1 and all(os.access(p, os.W_OK) for p in v1.values()):
        return 1, v1
    for point, fstype, _ in mounts:
        if fstype != "cgroup2" or "" not in own:
            continue
        parent = Path(point) / own[""].lstrip("/")
        try:
            controllers = (parent / "cgroup.controllers").read_text().split()
            if "memory" not in controllers:
                continue
            enabled = (parent / "cgroup.subtree_control").read_text().split()
            for c in ("memory", "pids"):
                if c in controllers and c not in enabled:
                    (parent / "cgroup.subtree_control").write_text(f"+{c}")
            return 2, {"memory": parent, "pids": parent}
        except OSError:
            continue
    return None


class _Cgroup:
    """One command's cgroup: a memory limit, a process limit, its OOM count."""

    _serial = itertools.count()

    def __init__(self, version: int, dirs: dict[str, Path]) -> None:
        self.version = version
        self.dirs = dirs  # controller -> directory (one directory for both under v2)

    @classmethod
    def create(cls, memory_bytes: int, max_pids: int) -> _Cgroup | None:
        found = _cgroup_parents()
        if found is None:
            return None
        version, parents = found
        name = f"bakeoff-{os.getpid()}-{next(cls._serial)}"
        dirs: dict[str, Path] = {}
        try:
            for controller, parent in parents.items():
                d = parent / name
                if d not in dirs.values():
                    d.mkdir()
                dirs[controller] = d
            group = cls(version, dirs)
            if version == 2:
                d = dirs["memory"]
                (d / "memory.max").write_text(str(memory_bytes))
                with contextlib.suppress(OSError):
                    (d / "memory.swap.max").write_text("0")
                with contextlib.suppress(OSError):
                    (d / "pids.max").write_text(str(max_pids))
            else:
                d = dirs["memory"]
                (d / "memory.limit_in_bytes").write_text(str(memory_bytes))
                with contextlib.suppress(OSError):
                    (d / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
                if "pids" in dirs:
                    (dirs["pids"] / "pids.max").write_text(str(max_pids))
            return group
        except OSError:
            for d in set(dirs.values()):
                with contextlib.suppress(OSError):
                    d.rmdir()
            return None

    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in set(self.dirs.values())]

    def oom_kills(self) -> int:
        d = self.dirs["memory"]
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            for line in (d / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except OSError:
            return 0
        return 0

    def pids(self) -> set[int]:
        found: set[int] = set()
        for f in self.procs_files():
            with contextlib.suppress(OSError):
                found.update(int(x) for x in f.read_text().split())
        return found

    def remove(self) -> None:
        for d in set(self.dirs.values()):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


# --------------------------------------------------------------------------- processes


def _uid_of(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def _stat_fields(pid: int) -> tuple[str, int] | None:
    """(state, process group) of a process, None when it is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            raw = os.read(fd, 1024)
        finally:
            os.close(fd)
        fields = raw.rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[2])
    except (OSError, ValueError, IndexError):
        return None


def _in_other_cgroup(pid: int, cgroup: _Cgroup) -> bool:
    """Whether ``pid`` sits in a bakeoff cgroup other than ``cgroup`` (another command's)."""
    mine = {d.name for d in cgroup.dirs.values()}
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return False
    names = {line.rsplit("/", 1)[-1] for line in lines}
    return any(n.startswith("bakeoff-") and n not in mine for n in names)


def _rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _all_pids() -> list[int]:
    return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]


def _signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


# --------------------------------------------------------------------------- bwrap


def _traversable_by_others(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


@functools.cache
def _python_binds() -> tuple[tuple[Path, Path], ...]:
    """(host source, path inside) for bakeoff's interpreter where the system dirs miss it.

    A sandbox user may not traverse the parents of a Python kept under ``/root`` (pyenv), and
    bwrap resolves bind sources with the sandbox user's rights; as root we then expose the
    prefix through a read-only bind mount under the sandbox root, which anyone may traverse.
    """
    prefixes = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    binds = []
    for prefix in sorted(prefixes):
        if any(prefix == Path(d) or Path(d) in prefix.parents for d in _HOST_DIRS):
            continue
        if _traversable_by_others(prefix) or os.geteuid() != 0:
            binds.append((prefix, prefix))
            continue
        view = sandbox_root() / (".python-" + hashlib.sha256(str(prefix).encode()).hexdigest()[:12])
        view.mkdir(exist_ok=True)
        if not os.path.ismount(view):
            for args in (["--bind", str(prefix), str(view)], ["-o", "remount,bind,ro", str(view)]):
                proc = subprocess.run(["mount", *args], capture_output=True)
                if proc.returncode != 0:
                    raise SandboxBroken(f"cannot expose {prefix} to sandboxes: {proc.stderr.decode().strip()}")
        binds.append((view, prefix))
    return tuple(binds)


def _python_bin_for_host() -> Path:
    """The interpreter's bin directory as a sandboxed user without bwrap can reach it."""
    exe_dir = Path(sys.executable).parent
    for source, dest in _python_binds():
        if exe_dir == dest / "bin":
            return source / "bin"
    return exe_dir


def _bwrap_argv(*, work: Path, home: Path, tmp: Path, chdir: str) -> list[str]:
    argv = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
            "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox"]
    for d in _HOST_DIRS:
        p = Path(d)
        if p.is_symlink():
            argv += ["--symlink", os.readlink(p), d]
        elif p.is_dir():
            argv += ["--ro-bind", d, d]
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--bind", str(work), INSIDE_WORKSPACE,
             "--bind", str(home), INSIDE_HOME,
             "--bind", str(tmp), "/tmp"]
    # After /tmp: an interpreter living under /tmp (a virtualenv in a clone there) must not be
    # hidden by the sandbox's private /tmp.
    for source, dest in _python_binds():
        argv += ["--ro-bind", str(source), str(dest)]
    # The new root holds only mount points; nothing may be written beside them.
    argv += ["--remount-ro", "/", "--chdir", chdir]
    return argv


def _drop_to(uid: int | None, rlimits: list[tuple[int, int]], cgroup_fds: list[int]):
    """The child's last steps before exec: join the cgroup, lower limits, drop privileges."""

    def preexec() -> None:
        pid = str(os.getpid()).encode()
        for fd in cgroup_fds:
            os.write(fd, pid)
        for which, value in rlimits:
            resource.setrlimit(which, (value, value))
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    return preexec


@functools.cache
def bwrap_status() -> tuple[bool, str]:
    """Whether bwrap really works here (it may exist and still fail inside a container).

    Probed once, as the kind of user sandboxes run as: a dedicated uid when bakeoff is root
    (the last of the range, handed out only when all others are taken), else bakeoff's own.
    """
    uid = UID_BASE + UID_COUNT - 1 if os.geteuid() == 0 else None
    exe = shutil.which("bwrap")
    if exe is None:
        return False, "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    probe = new_sandbox_dir()
    try:
        for sub in ("work", "home", "tmp"):
            (probe / sub).mkdir()
            if uid is not None:
                os.chown(probe / sub, uid, uid)
        argv = _bwrap_argv(work=probe / "work", home=probe / "home", tmp=probe / "tmp",
                           chdir=INSIDE_WORKSPACE) + ["--", "/bin/sh", "-c", "echo ok > /workspace/ok"]
        proc = subprocess.run(argv, capture_output=True, timeout=10, env={"PATH": "/usr/bin:/bin"},
                              preexec_fn=_drop_to(uid, [], []))
        if proc.returncode == 0 and (probe / "work" / "ok").exists():
            return True, f"bwrap works ({exe})"
        return False, f"bwrap is installed but fails here: {proc.stderr.decode(errors='replace').strip()[:300]}"
    except subprocess.TimeoutExpired:
        return False, "bwrap is installed but hung when probed"
    finally:
        remove_tree(probe)


# --------------------------------------------------------------------------- uids


@functools.cache
def _reap_once(root: Path) -> int:
    """The first sandbox of a process clears what killed orchestrators left (RELIABILITY 21)."""
    return reap_stale(root)



def _allocate_uid(root: Path) -> int | None:
    if os.geteuid() != 0:
        return None
    # A uid whose processes are still dying (a fork bomb's, say) would start the next sandbox
    # already at its process limit: hand out only uids that own no process.
    busy = {_uid_of(pid) for pid in _all_pids()}
    for uid in range(UID_BASE, UID_BASE + UID_COUNT):
        if uid in busy:
            continue
        try:
            fd = os.open(root / f".uid-{uid}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            continue
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)
        return uid
    raise SandboxBroken(f"all {UID_COUNT} sandbox user ids under {root} are taken; run reap_stale()")


def _chown_tree(path: Path, uid: int) -> None:
    os.lchown(path, uid, uid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, uid)


# --------------------------------------------------------------------------- sandbox


class LocalSandbox:
    """A sandbox on this machine (see the module docstring for what it enforces)."""

    _serial = itertools.count()

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
        self.uid = _allocate_uid(root)
        fs = self.dir / "fs"
        fs.mkdir()
        if cap_disk is not False and os.geteuid() == 0:
            self.disk_capped = self._mount_tmpfs(fs)
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
        have_cgroup = _cgroup_parents() is not None
        if use_cgroup and not have_cgroup:
            raise SandboxBroken("a cgroup was asked for but none can be created here")
        self._use_cgroup = have_cgroup if use_cgroup is None else use_cgroup
        self.memory_enforcement = "cgroup" if self._use_cgroup else "watchdog"

    def _mount_tmpfs(self, fs: Path) -> bool:
        size = self.limits.disk_bytes
        inodes = max(1024, size // 8192)
        opts = f"size={size},nr_inodes={inodes},mode=0755"
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "bakeoff-sandbox", str(fs)],
                              capture_output=True)
        return proc.returncode == 0

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
                                         path=_sandbox_path(self._bwrap), marker=self.sandbox_id)
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
        cgroup = _Cgroup.create(limits.memory_bytes, limits.max_processes) if self._use_cgroup else None
        if self._use_cgroup and cgroup is None:
            raise SandboxBroken("could not create a cgroup for the command")
        try:
            if self._bwrap:
                inside = INSIDE_WORKSPACE if rel == "." else f"{INSIDE_WORKSPACE}/{rel}"
                argv = _bwrap_argv(work=fs / "work", home=fs / "home", tmp=fs / "tmp",
                                   chdir=inside) + ["--", *argv]
            return await self._run(argv, environment, host_cwd, timeout, cgroup)
        finally:
            if cgroup is not None:
                await asyncio.to_thread(cgroup.remove)

    def _rlimits(self) -> list[tuple[int, int]]:
        lim = self.limits
        nproc = lim.max_processes
        if self.uid is None:
            # Not root: the limit counts every process of this user, so leave room for them.
            nproc += sum(1 for p in _all_pids() if _uid_of(p) == os.getuid()) + 64
        return [
            (resource.RLIMIT_CPU, lim.cpu_seconds),
            (resource.RLIMIT_NPROC, nproc),
            (resource.RLIMIT_FSIZE, lim.max_file_bytes),
            (resource.RLIMIT_NOFILE, lim.max_open_files),
            (resource.RLIMIT_CORE, 0),
        ]

    async def _spawn(self, argv: list[str], environment: dict[str, str], host_cwd: Path,
                     cgroup: _Cgroup | None):
        """Start the command with pipes of our own: asyncio's ``wait()`` would otherwise also
        wait for the pipes, which a background child can hold open for ever."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        cgroup_fds = [os.open(f, os.O_WRONLY | os.O_CLOEXEC) for f in (cgroup.procs_files() if cgroup else [])]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out_w, stderr=err_w, env=environment,
                cwd=host_cwd, start_new_session=True,
                preexec_fn=_drop_to(self.uid, self._rlimits(), cgroup_fds))
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in (out_w, err_w, *cgroup_fds):
                os.close(fd)
        return proc, out_r, err_r

    async def _run(self, argv: list[str], environment: dict[str, str], host_cwd: Path,
                   timeout: float, cgroup: _Cgroup | None) -> ExecResult:
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
        watchdog = None if cgroup else asyncio.create_task(self._watch_memory(proc.pid, oom))
        timed_out = False
        try:
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                timed_out = True
                await self._terminate(proc.pid, cgroup, TERM_GRACE_S)
                await proc.wait()
            # A background child may hold the pipes open: give it a moment, then kill it.
            _, pending = await asyncio.wait(readers, timeout=DRAIN_S)
            await self._terminate(proc.pid, cgroup, 0.0)
            if pending:
                await asyncio.wait(pending, timeout=2.0)
        finally:
            for task in [*readers, *([watchdog] if watchdog else [])]:
                task.cancel()
            for transport in transports:
                transport.close()
            if proc.returncode is None or self._members(proc.pid, cgroup):
                await asyncio.shield(self._terminate(proc.pid, cgroup, 0.0))
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

    async def _watch_memory(self, leader: int, oom: asyncio.Event) -> None:
        limit = self.limits.memory_bytes
        while True:
            members = self._members(leader, None)
            if sum(_rss_bytes(p) for p in members) > limit:
                oom.set()
                _signal_all(members, signal.SIGKILL)
            await asyncio.sleep(0.05)

    def _members(self, leader: int | None, cgroup: _Cgroup | None) -> set[int]:
        """Every live process this sandbox started.

        Found by its cgroup when it has one (a sandboxed user cannot leave it), else by the
        sandbox's own uid, else by process group and the marker in the environment. Zombies
        are left out: they hold nothing and wait for their reaper, not for us.
        """
        me = os.getpid()
        if cgroup is not None:
            candidates = cgroup.pids()
            if self.uid is not None:
                # A process that already left the cgroup on its way out (bwrap's pid 1 while it
                # reaps the namespace) is still ours to wait for; other commands' are not.
                candidates |= {pid for pid in _all_pids()
                               if _uid_of(pid) == self.uid and not _in_other_cgroup(pid, cgroup)}
        elif self.uid is not None:
            candidates = {pid for pid in _all_pids() if _uid_of(pid) == self.uid}
        else:
            candidates = set()
            if leader is not None:
                for pid in _all_pids():
                    info = _stat_fields(pid)
                    if info is not None and info[1] == leader:
                        candidates.add(pid)
            needle = self.sandbox_id
            candidates.update(processes_with_marker(lambda v: v == needle))
        live = set()
        for pid in candidates:
            info = _stat_fields(pid)
            if pid != me and info is not None and info[0] not in ("Z", "X"):
                live.add(pid)
        return live

    async def _terminate(self, leader: int | None, cgroup: _Cgroup | None, grace: float) -> None:
        """TERM, then after ``grace`` KILL, everything the sandbox runs, until nothing is left."""
        if grace > 0:
            _signal_all(self._members(leader, cgroup), signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self._members(leader, cgroup):
                await asyncio.sleep(0.05)
        for _ in range(200):
            members = self._members(leader, cgroup)
            if not members:
                return
            _signal_all(members, signal.SIGKILL)
            await asyncio.sleep(0.01)
        raise SandboxBroken(f"processes of sandbox {self.sandbox_id} survive SIGKILL: {sorted(members)}")

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
        await self._terminate(None, None, 0.0)
        await asyncio.to_thread(self._release)

    def _release(self) -> None:
        remove_tree(self.dir)
        if self.uid is not None:
            (self.dir.parent / f".uid-{self.uid}").unlink(missing_ok=True)

    async def __aenter__(self) -> LocalSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
