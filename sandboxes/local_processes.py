"""The processes of a local sandbox: the limits they start under, and finding and killing them.

A command's processes are found by its cgroup when it has one (a sandboxed user cannot leave
it), else by the sandbox's own uid, else by process group and the marker in the environment.
Everything is read from ``/proc``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import signal
import time
from collections.abc import Callable
from pathlib import Path

from bakeoff.agent.seams import SandboxLimits
from bakeoff.sandboxes.cgroups import Cgroup, in_other_cgroup
from bakeoff.sandboxes.workspace import processes_with_marker


class SandboxBroken(RuntimeError):
    """The sandbox itself failed (not the command in it): a bug or a broken host setup."""


def uid_of(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def stat_fields(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, threads) of a process, None when it is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            raw = os.read(fd, 1024)
        finally:
            os.close(fd)
        fields = raw.rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[2]), int(fields[17])
    except (OSError, ValueError, IndexError):
        return None


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def all_pids() -> list[int]:
    return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]


def signal_all(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)



_PR_SET_NO_NEW_PRIVS = 38


def drop_to(uid: int | None, rlimits: list[tuple[int, int]], cgroup_fds: list[int], *,
            cwd_fd: int | None = None, no_new_privileges: bool = False) -> Callable[[], None]:
    """The child's last steps before exec: join the cgroup, lower limits, drop privileges,
    enter the working directory as the sandbox's user (from a descriptor: no path is resolved
    with the host's rights) and, where bwrap does not already, forbid gaining privileges
    (setuid binaries, file capabilities) for good."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl if no_new_privileges else None

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
        if cwd_fd is not None:
            os.fchdir(cwd_fd)
        if prctl is not None and prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")

    return preexec


def command_rlimits(limits: SandboxLimits, uid: int | None, *, pids_cgroup: bool = False) -> list[tuple[int, int]]:
    """The rlimits a command starts under; ``uid`` is the sandbox's own user, if it has one.

    With a cgroup counting the command's processes (``pids_cgroup``) the cgroup alone limits
    them: RLIMIT_NPROC counts every process of the user, so it would let one command's fork
    bomb refuse the forks of another running beside it, and unrecorded."""
    if pids_cgroup:
        nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]  # as high as it may go
    elif uid is None:
        # Not root: the limit counts every process of this user, so leave room for them.
        nproc = limits.max_processes + sum(1 for p in all_pids() if uid_of(p) == os.getuid()) + 64
    else:
        nproc = limits.max_processes
    return [
        (resource.RLIMIT_CPU, limits.cpu_seconds),
        (resource.RLIMIT_NPROC, nproc),
        (resource.RLIMIT_FSIZE, limits.max_file_bytes),
        (resource.RLIMIT_NOFILE, limits.max_open_files),
        (resource.RLIMIT_CORE, 0),
    ]


class SandboxProcesses:
    """Every process one sandbox started: found, watched for memory, and killed."""

    def __init__(self, uid: int | None, marker: str, memory_bytes: int) -> None:
        self.uid = uid  # the sandbox's own user (bakeoff runs as root), else None
        self.marker = marker  # the sandbox's value of the environment marker
        self.memory_bytes = memory_bytes

    def members(self, leader: int | None, cgroup: Cgroup | None) -> set[int]:
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
                candidates |= {pid for pid in all_pids()
                               if uid_of(pid) == self.uid and not in_other_cgroup(pid, cgroup)}
        elif self.uid is not None:
            candidates = {pid for pid in all_pids() if uid_of(pid) == self.uid}
        else:
            candidates = set()
            if leader is not None:
                for pid in all_pids():
                    info = stat_fields(pid)
                    if info is not None and info[1] == leader:
                        candidates.add(pid)
            needle = self.marker
            candidates.update(processes_with_marker(lambda v: v == needle))
        live = set()
        for pid in candidates:
            info = stat_fields(pid)
            if pid != me and info is not None and info[0] not in ("Z", "X"):
                live.add(pid)
        return live

    async def terminate(self, leader: int | None, cgroup: Cgroup | None, grace: float) -> None:
        """TERM, then after ``grace`` KILL, everything the sandbox runs, until nothing is left."""
        if grace > 0:
            signal_all(self.members(leader, cgroup), signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self.members(leader, cgroup):
                await asyncio.sleep(0.05)
        for _ in range(200):
            members = self.members(leader, cgroup)
            if not members:
                return
            signal_all(members, signal.SIGKILL)
            await asyncio.sleep(0.01)
        raise SandboxBroken(f"processes of sandbox {self.marker} survive SIGKILL: {sorted(members)}")

    def threads(self, members: set[int]) -> int:
        return sum((stat_fields(p) or ("", 0, 1))[2] for p in members)

    async def watch(self, leader: int, cgroup: Cgroup | None, max_processes: int) -> str:
        """Until a limit is hit: kill everything the command runs, and say which (``"memory"``
        or ``"processes"``). With a cgroup the kernel enforces both and this only notices;
        without one, a sample every 50 ms is the enforcement (weaker: a fast allocation or
        fork can overshoot between samples)."""
        counted = cgroup is not None and "pids" in cgroup.dirs  # else threads are counted here
        while True:
            hit = None
            if cgroup is not None:
                hit = "processes" if cgroup.pids_max_hits() else "memory" if cgroup.oom_kills() else None
            members = self.members(leader, cgroup) if hit or not counted else set()
            if cgroup is None and sum(rss_bytes(p) for p in members) > self.memory_bytes:
                hit = "memory"
            if hit is None and not counted and self.threads(members) >= max_processes:
                hit = "processes"
            if hit is not None:
                signal_all(members, signal.SIGKILL)
                return hit
            await asyncio.sleep(0.05)
