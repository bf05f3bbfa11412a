"""A sandbox command's limits in the words a report shows when one of them stops it.

Both backends fill ``ExecResult.limit`` from these, so a candidate that trips a limit reads
the same everywhere: ``killed: more than 512 processes``.
"""

from __future__ import annotations

from bakeoff.agent.seams import SandboxLimits


def size_words(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            value = n / scale
            return f"{value:g} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} bytes"


def processes(limits: SandboxLimits) -> str:
    return f"more than {limits.max_processes} processes"


def memory(limits: SandboxLimits) -> str:
    return f"more than {size_words(limits.memory_bytes)} of memory"


def wall_time(seconds: float) -> str:
    return f"more than {seconds:g} s"


def tripped(limits: SandboxLimits, timeout: float, *, pids: bool, oom: bool, timed_out: bool) -> str | None:
    """The limit that stopped a command, most telling first: a fork bomb also runs out the clock."""
    if pids:
        return processes(limits)
    if oom:
        return memory(limits)
    if timed_out:
        return wall_time(timeout)
    return None
