"""The target parallelism: how many threads candidates are timed at.

Users want the candidate that is fastest at the parallelism they will run. By default that
is the CPUs the sandbox may use, not the host's core count: the fewer of its CPU affinity
(the cpuset, what ``nproc`` shows) and its cgroup CPU quota (``cpu.max`` in cgroup v2,
``cpu.cfs_quota_us / cpu.cfs_period_us`` in v1; the tightest along the path to the root),
rounded down and at least 1. The user's ``--threads N`` or ``threads = N`` wins over both.

The sandbox's view is read by running ``PROBE`` inside it (plain POSIX shell: images need no
Python); without a sandbox, this process's own view is read. Both go through the same
parser (``read_probe``), which is what the tests drive.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

from bakeoff.agent.seams import Sandbox
from bakeoff.agent.types import TargetParallelism

# Prints "@nproc N", then "@file PATH" followed by the file's text for /proc/self/cgroup and
# every CPU-quota file on the path from the process's cgroup up to the root.
PROBE = r"""
echo "@nproc $(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null)"
echo "@file /proc/self/cgroup"; cat /proc/self/cgroup 2>/dev/null
while IFS=: read -r _ ctrls path; do
  case ",$ctrls," in
    ,,) roots="/sys/fs/cgroup /sys/fs/cgroup/unified" ;;
    *,cpu,*) roots="/sys/fs/cgroup/cpu,cpuacct /sys/fs/cgroup/cpu" ;;
    *) continue ;;
  esac
  for root in $roots; do
    p="${path%/}"
    while :; do
      for f in cpu.max cpu.cfs_quota_us cpu.cfs_period_us; do
        if [ -r "$root$p/$f" ]; then echo "@file $root$p/$f"; cat "$root$p/$f"; fi
      done
      [ -z "$p" ] && break
      p="${p%/*}"
    done
  done
done < /proc/self/cgroup
"""

CGROUP_ROOTS_V2 = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")
CGROUP_ROOTS_V1 = ("/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu")


def _ancestors(root: str, path: str) -> list[str]:
    """The cgroup directories from ``path`` up to ``root`` itself."""
    parts = [p for p in path.strip().split("/") if p]
    return [root + "".join("/" + p for p in parts[:k]) for k in range(len(parts), -1, -1)]


def _number(text: str | None) -> float | None:
    try:
        return float((text or "").split()[0])
    except (ValueError, IndexError):
        return None


def cgroup_quota(cgroup_text: str, read: Callable[[str], str | None]) -> float | None:
    """CPUs the cgroup quota allows (e.g. 2.5), the tightest on the path to the root; None
    when no quota is set. ``cgroup_text``: /proc/self/cgroup; ``read``: a file's text or None."""
    quotas: list[float] = []
    for line in cgroup_text.splitlines():
        fields = line.strip().split(":", 2)
        if len(fields) != 3:
            continue
        _, ctrls, path = fields
        if ctrls == "":
            for root in CGROUP_ROOTS_V2:
                for d in _ancestors(root, path):
                    words = (read(f"{d}/cpu.max") or "").split()
                    if len(words) == 2 and words[0] != "max" and _number(words[1]):
                        quotas.append(float(words[0]) / float(words[1]))
        elif "cpu" in ctrls.split(","):
            for root in CGROUP_ROOTS_V1:
                for d in _ancestors(root, path):
                    quota, period = _number(read(f"{d}/cpu.cfs_quota_us")), _number(read(f"{d}/cpu.cfs_period_us"))
                    if quota is not None and quota > 0 and period:
                        quotas.append(quota / period)
    return min(quotas) if quotas else None


def decide(affinity: int | None, quota: float | None) -> TargetParallelism:
    """The CPUs a process may use, from its affinity and its cgroup quota."""
    cpus = max(1, affinity or 1)
    if quota is not None and math.floor(quota) < cpus:
        return TargetParallelism(threads=max(1, math.floor(quota)),
                                 source=f"cgroup CPU quota ({quota:g} CPUs; {cpus} in its CPU affinity)")
    return TargetParallelism(threads=cpus, source=f"CPU affinity ({cpus} CPUs)"
                             + (f"; cgroup CPU quota {quota:g}" if quota is not None else ""))


def read_probe(text: str) -> TargetParallelism:
    """The target parallelism from ``PROBE``'s output."""
    files: dict[str, str] = {}
    nproc: int | None = None
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("@nproc "):
            value = _number(line[7:])
            nproc = int(value) if value else None
        elif line.startswith("@file "):
            current = line[6:].strip()
            files[current] = ""
        elif current is not None:
            files[current] += line + "\n"
    return decide(nproc, cgroup_quota(files.get("/proc/self/cgroup", ""), files.get))


def _read_here(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def local_view() -> TargetParallelism:
    """This process's target parallelism: its affinity and its cgroup quota."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return decide(affinity, cgroup_quota(_read_here("/proc/self/cgroup") or "", _read_here))


async def target_parallelism(threads: int | None = None, *, sandbox: Sandbox | None = None,
                             setting: str = "threads setting") -> TargetParallelism:
    """``threads`` when the user set it (``setting`` says where), else the CPUs ``sandbox`` may
    use (this process's when there is no sandbox, or the probe cannot run in it)."""
    if threads is not None:
        return TargetParallelism(threads=threads, source=setting)
    if sandbox is not None:
        res = await sandbox.exec(["sh", "-c", PROBE], timeout=30)
        if res.exit_code == 0 and "@nproc" in res.stdout:
            view = read_probe(res.stdout)
            return view.model_copy(update={"source": f"the sandbox's {view.source}"})
    return local_view()


def core_sets(cpus: list[int], threads: int) -> list[list[int]]:
    """Disjoint sets of ``threads`` CPUs each, as many as ``cpus`` holds (at least one set:
    all of ``cpus`` when there are fewer than ``threads``)."""
    if threads >= len(cpus):
        return [list(cpus)]
    return [cpus[i * threads:(i + 1) * threads] for i in range(len(cpus) // threads)]


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on, in order."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def cpu_list(cpus: list[int]) -> str:
    """``taskset -c`` syntax: [0, 1, 2, 3, 8] -> "0-3,8"."""
    runs: list[list[int]] = []
    for c in sorted(set(cpus)):
        if runs and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
