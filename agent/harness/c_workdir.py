"""Where the C/C++ harness's commands run: a directory of its own, or one inside a sandbox.

Both answer the same four calls (``WorkDir``), with the same timeouts; the local one is
faster and is what the benchmarks use, the sandboxed one is what runs candidates nobody
has read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shlex
import signal
import time
from pathlib import Path
from typing import Protocol

from bakeoff.agent.seams import ExecResult, Sandbox

LOG_LIMIT = 4000
# How a driver stopped by its own alarm (a call past its limit) exits.
SIGALRM_CODES = (128 + signal.SIGALRM, -signal.SIGALRM)


def digest(*parts: str) -> str:
    """A short name for a build or a spec file, from everything that makes it differ."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def cap(text: str, limit: int = 65536) -> str:
    return text if len(text) <= limit else text[: limit // 2] + "\n[... cut ...]\n" + text[-limit // 2 :]


class WorkDir(Protocol):
    """A directory in which files are written and shell commands run."""

    def path(self, name: str) -> str: ...

    async def write(self, name: str, text: str | bytes) -> None: ...

    async def exists(self, name: str) -> bool: ...

    async def run(self, cmd: str, timeout: float) -> ExecResult: ...


class LocalDir:
    """Plain subprocesses in a directory of our own; each in its own process group."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, name: str) -> str:
        return str(self.root / name)

    async def write(self, name: str, text: str | bytes) -> None:
        target = self.root / name
        if isinstance(text, bytes):
            target.write_bytes(text)
        else:
            target.write_text(text)

    async def exists(self, name: str) -> bool:
        return (self.root / name).exists()

    async def run(self, cmd: str, timeout: float) -> ExecResult:
        start = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", cmd, cwd=self.root, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )
        timed_out = False
        out, err = b"", b""
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            # Bounded too: a lost exit notification must not hang the whole run.
            with contextlib.suppress(TimeoutError):
                out, err = await asyncio.wait_for(proc.communicate(), 10)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                # Reaped while the loop still runs (also when cancelled): a process left to the
                # garbage collector after the loop closed prints "Event loop is closed".
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.shield(asyncio.wait_for(proc.wait(), 10))
        return ExecResult(
            exit_code=proc.returncode, stdout=cap(out.decode(errors="replace")),
            stderr=cap(err.decode(errors="replace")), duration_s=time.monotonic() - start, timed_out=timed_out,
        )


class SandboxDir:
    """The same through the Sandbox seam, in a subdirectory of the sandbox's workspace."""

    def __init__(self, sandbox: Sandbox, subdir: str = ".bakeoff-diff"):
        self.sandbox = sandbox
        self.subdir = subdir

    def path(self, name: str) -> str:
        return name

    async def write(self, name: str, text: str | bytes) -> None:
        await self.sandbox.write_file(f"{self.subdir}/{name}", text)

    async def exists(self, name: str) -> bool:
        res = await self.sandbox.exec(f"test -e {shlex.quote(self.subdir + '/' + name)}", timeout=30)
        return res.exit_code == 0

    async def run(self, cmd: str, timeout: float) -> ExecResult:
        return await self.sandbox.exec(["bash", "-c", f"mkdir -p {self.subdir} && cd {self.subdir} && {cmd}"], timeout=timeout)


async def run_limited(workdir: WorkDir, limiter: asyncio.Semaphore, cmd: str, timeout: float) -> ExecResult:
    """``cmd`` once a slot of ``limiter`` is free: compilers and test runs share the machine."""
    async with limiter:
        return await workdir.run(cmd, timeout)
