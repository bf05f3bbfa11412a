"""What a local sandbox's commands can see and touch: their environment, bubblewrap's view of
the host, and a user id of their own.

The environment is built from an allow-list, never copied, and drops whatever looks like a
secret. Under bwrap a command sees the host read-only, no network, and as writable only the
workspace, a private home and a private tmp. As root, each sandbox gets a uid of its own, and
bakeoff's Python, when it lives under a directory other users cannot traverse (pyenv under
``/root``), is exposed read-only through one bind mount under the sandbox root.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from bakeoff.sandboxes.local_processes import SandboxBroken, all_pids, drop_to, uid_of
from bakeoff.sandboxes.workspace import ENV_MARKER, new_sandbox_dir, remove_tree, sandbox_root

UID_BASE = 3_000_000  # far above the ranges distributions hand out (subuids start at 100000)
UID_COUNT = 4096
INSIDE_WORKSPACE = "/workspace"
INSIDE_HOME = "/home/sandbox"

_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
_HOST_NAMES = ("LANG", "LC_ALL", "TERM")
_HOST_PREFIXES = ("LC_", "OMP_", "GOMP_", "KMP_", "MKL_", "OPENBLAS_")
_EXTRA_HOST_NAMES = ("NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
_STANDARD_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
_HOST_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")


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


def sandbox_path(bwrap: bool) -> str:
    # The interpreter bakeoff runs on comes first so `python3 -m pytest` finds the same packages.
    entries = [str(Path(sys.executable).parent if bwrap else _python_bin_for_host())]
    entries += [p for p in _STANDARD_PATH if p not in entries]
    return ":".join(entries)


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
    if os.geteuid() == 0:
        drop_deleted_views(sandbox_root())
    binds = []
    for prefix in sorted(prefixes):
        if any(prefix == Path(d) or Path(d) in prefix.parents for d in _HOST_DIRS):
            continue
        if _traversable_by_others(prefix) or os.geteuid() != 0:
            binds.append((prefix, prefix))
            continue
        view = sandbox_root() / (".python-" + hashlib.sha256(str(prefix).encode()).hexdigest()[:12])
        view.mkdir(exist_ok=True)
        with _locked(view.with_name(view.name + ".lock")):  # runs starting at once mount it once
            if not is_mount_point(view):  # once per machine: every later run finds it mounted
                for args in (["--bind", str(prefix), str(view)], ["-o", "remount,bind,ro", str(view)]):
                    proc = subprocess.run(["mount", *args], capture_output=True)
                    if proc.returncode != 0:
                        raise SandboxBroken(f"cannot expose {prefix} to sandboxes: {proc.stderr.decode().strip()}")
        binds.append((view, prefix))
    return tuple(binds)


def drop_deleted_views(root: Path) -> list[Path]:
    """Unmount the interpreter views under ``root`` whose interpreter was deleted (a throwaway
    venv's): nothing can use them any more, and each would otherwise hold a mount until reboot."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    prefix = os.path.realpath(root) + "/.python-"
    dropped = []
    for fields in (line.split(" ") for line in lines):
        if len(fields) > 4 and fields[3].endswith("//deleted") and _unescape(fields[4]).startswith(prefix):
            view = Path(_unescape(fields[4]))
            with _locked(view.with_name(view.name + ".lock")):
                if subprocess.run(["umount", "-l", str(view)], capture_output=True).returncode == 0:
                    with contextlib.suppress(OSError):
                        view.rmdir()
                    dropped.append(view)
    return dropped


def is_mount_point(path: Path) -> bool:
    """Whether something is mounted at ``path`` (bind mounts included), from /proc/self/mountinfo."""
    wanted = os.path.realpath(path)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return os.path.ismount(path)
    return any(len(f) > 4 and _unescape(f[4]) == wanted for f in (line.split(" ") for line in lines))


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes (\040 ...).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` between processes; the kernel drops it if one dies."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _python_bin_for_host() -> Path:
    """The interpreter's bin directory as a sandboxed user without bwrap can reach it."""
    exe_dir = Path(sys.executable).parent
    for source, dest in _python_binds():
        if exe_dir == dest / "bin":
            return source / "bin"
    return exe_dir


def unsafe_local_warning(why: str) -> str:
    """What a command may do in the unsafe-local mode, said plainly (README, "Security")."""
    who = ("under a user id of its own, so it cannot write your files or signal your processes"
           if os.geteuid() == 0 else
           "as you: it can read and write your files and kill your processes, bakeoff's included")
    return ("reduced isolation (unsafe-local): commands run without bubblewrap or Docker, so they can "
            "reach the network (this host's loopback servers included), read the host's files and other "
            "processes' command lines, and leave files in /tmp, /dev/shm and /var/tmp; each runs "
            f"{who}; no privilege gain (setuid) is allowed ({why})")


def gpu_devices(dev: Path = Path("/dev")) -> list[str]:
    """This machine's NVIDIA device files (``nvidia0``, ``nvidiactl``, ``nvidia-uvm``, ...),
    which a CUDA program needs to reach its GPU; none where there is no driver."""
    return sorted(str(p) for p in dev.glob("nvidia*") if not p.is_dir())


def bwrap_argv(*, work: Path, home: Path, tmp: Path, chdir: str, gpus: Sequence[str] = ()) -> list[str]:
    argv = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
            "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox"]
    for d in _HOST_DIRS:
        p = Path(d)
        if p.is_symlink():
            argv += ["--symlink", os.readlink(p), d]
        elif p.is_dir():
            argv += ["--ro-bind", d, d]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    for device in gpus:  # only when asked for (``SandboxLimits.gpus``): the GPUs, nothing else of /dev
        argv += ["--dev-bind", device, device]
    argv += ["--bind", str(work), INSIDE_WORKSPACE,
             "--bind", str(home), INSIDE_HOME,
             "--bind", str(tmp), "/tmp"]
    # After /tmp: an interpreter living under /tmp (a virtualenv in a clone there) must not be
    # hidden by the sandbox's private /tmp.
    for source, dest in _python_binds():
        argv += ["--ro-bind", str(source), str(dest)]
    # The new root holds only mount points; nothing may be written beside them.
    argv += ["--remount-ro", "/", "--chdir", chdir]
    return argv


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
        argv = bwrap_argv(work=probe / "work", home=probe / "home", tmp=probe / "tmp",
                          chdir=INSIDE_WORKSPACE) + ["--", "/bin/sh", "-c", "echo ok > /workspace/ok"]
        proc = subprocess.run(argv, capture_output=True, timeout=10, env={"PATH": "/usr/bin:/bin"},
                              preexec_fn=drop_to(uid, [], []))
        if proc.returncode == 0 and (probe / "work" / "ok").exists():
            return True, f"bwrap works ({exe})"
        return False, f"bwrap is installed but fails here: {proc.stderr.decode(errors='replace').strip()[:300]}"
    except subprocess.TimeoutExpired:
        return False, "bwrap is installed but hung when probed"
    finally:
        remove_tree(probe)


# --------------------------------------------------------------------------- uids


def allocate_uid(root: Path) -> int | None:
    """A user id of a new sandbox's own when bakeoff is root (else None), held by a lock file
    ``root/.uid-<uid>`` naming this process."""
    if os.geteuid() != 0:
        return None
    # A uid whose processes are still dying (a fork bomb's, say) would start the next sandbox
    # already at its process limit: hand out only uids that own no process.
    busy = {uid_of(pid) for pid in all_pids()}
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
