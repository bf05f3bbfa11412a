"""Cgroups for local sandbox commands: a memory and a process limit per command, under v2 or v1.

A command's cgroup is made below the cgroup this process runs in, where that is writable
(v1's memory and pids controllers, or v2 with the memory controller delegated), and named
``bakeoff-<pid>-<n>`` so a process of another command can be told apart.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import time
from pathlib import Path


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
def cgroup_parents() -> tuple[int, dict[str, Path]] | None:
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


class Cgroup:
    """One command's cgroup: a memory limit, a process limit, how often each was hit."""

    _serial = itertools.count()

    def __init__(self, version: int, dirs: dict[str, Path]) -> None:
        self.version = version
        self.dirs = dirs  # controller -> directory (one directory for both under v2)

    @classmethod
    def create(cls, memory_bytes: int, max_pids: int) -> Cgroup | None:
        found = cgroup_parents()
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

    def pids_max_hits(self) -> int:
        """How many times a fork or a new thread was refused at the process limit."""
        d = self.dirs.get("pids")
        if d is None:
            return 0
        try:
            for line in (d / "pids.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "max":
                    return int(value)
        except (OSError, ValueError):
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


def in_other_cgroup(pid: int, cgroup: Cgroup) -> bool:
    """Whether ``pid`` sits in a bakeoff cgroup other than ``cgroup`` (another command's)."""
    mine = {d.name for d in cgroup.dirs.values()}
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return False
    names = {line.rsplit("/", 1)[-1] for line in lines}
    return any(n.startswith("bakeoff-") and n not in mine for n in names)
