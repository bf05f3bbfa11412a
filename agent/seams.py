"""The three seams of bakeoff: Model, Sandbox and Tool.

Everything else is plain data. Each seam is a small Protocol; implementations are picked
from configuration and imported lazily (``import litellm`` and ``import docker`` happen only
when a real model or a Docker sandbox is used).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

# --------------------------------------------------------------------------- sandbox


class ExecResult(BaseModel):
    """What one command in a sandbox did. A failing command is data, not an exception."""

    exit_code: int | None  # None when the command never produced an exit status
    stdout: str = ""
    stderr: str = ""
    duration_s: float = 0.0
    timed_out: bool = False
    oom_killed: bool = False
    truncated: bool = False  # stdout or stderr was capped (head and tail kept)
    limit: str | None = None  # the limit that stopped it, in words: "more than 512 processes"

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.oom_killed and self.limit is None

    def summary(self, limit: int = 2000) -> str:
        """A short text for a model or a log: the status line, then as much of the output's
        tail as fits in ``limit`` characters (so a caller keeping the tail keeps the status)."""
        status = (
            "timed out" if self.timed_out
            else "out of memory" if self.oom_killed
            else f"exit {self.exit_code}"
        )
        if self.limit:
            status = f"killed: {self.limit}" + (f", {status}" if self.timed_out or self.oom_killed else "")
        head = f"[{status} in {self.duration_s:.2f}s]\n"
        out = (self.stdout + ("\n" if self.stdout and self.stderr else "") + self.stderr).strip()
        if len(head) + len(out) > limit:
            marker = "[... output cut ...]\n"
            out = marker + out[len(out) - max(0, limit - len(head) - len(marker)):]
        return f"{head}{out}".rstrip()


class SandboxLimits(BaseModel):
    """Resource limits every backend enforces as far as it can."""

    model_config = ConfigDict(extra="forbid")

    wall_seconds: float = 120.0  # default per-command wall-clock timeout
    cpu_seconds: int = 600
    max_processes: int = 512  # processes *and threads* (OpenMP teams count here)
    max_file_bytes: int = 256 * 1024 * 1024
    max_open_files: int = 1024
    memory_bytes: int = 2 * 1024 * 1024 * 1024
    output_bytes: int = 256 * 1024  # per stream; head and tail are kept
    disk_bytes: int = 1024 * 1024 * 1024  # writable space (docker tmpfs / workspace cap)
    cpus: float | None = None  # docker: CPU quota; None means all
    gpus: bool = False  # this machine's NVIDIA devices inside (CUDA candidates run and are timed)


class Workspace(BaseModel):
    """Where a sandbox's files come from: a directory, or a git repository at a commit."""

    model_config = ConfigDict(extra="forbid")

    path: Path
    commit: str | None = None  # a git revision; None copies the directory as it is


@runtime_checkable
class Sandbox(Protocol):
    """An isolated copy of a workspace in which commands run under limits.

    The original workspace is never written. Paths given to the file methods are relative
    to the sandbox's workspace root; a path escaping it raises ``ValueError``.
    """

    backend: str  # "local", "local+bwrap" or "docker"

    async def exec(
        self,
        cmd: str | Sequence[str],
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> ExecResult: ...

    async def write_file(self, path: str, content: str | bytes) -> None: ...

    async def read_file(self, path: str) -> bytes: ...

    async def diff(self) -> str:
        """Unified diff (git format, a/ b/ prefixes) of the workspace against its base."""
        ...

    async def close(self) -> None: ...


# --------------------------------------------------------------------------- model


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Completion(BaseModel):
    """The answer to one model call: ``n`` texts, their usage and their cost."""

    model: str
    texts: list[str]
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float | None = None  # None when the model's price is unknown
    latency_s: float = 0.0
    estimated: bool = False  # usage is partly estimated: a stream ended before its usage arrived

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""


@runtime_checkable
class Model(Protocol):
    """A language model. ``stream`` yields text deltas, then one final ``Completion``."""

    name: str

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int | None = None,
    ) -> Completion: ...

    def stream(
        self,
        messages: Sequence[Message],
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
    ) -> AsyncIterator[str | Completion]: ...


# --------------------------------------------------------------------------- tool


@dataclass
class ToolContext:
    """What a tool may touch: a sandbox to run in, and/or a read-only workspace path."""

    workspace: Path | None = None  # read-only view of the user's repo
    sandbox: Sandbox | None = None
    baseline_sandbox: Sandbox | None = None  # profile: the base version, for A/B timing
    allow_git_write: bool = False  # git: commit and branch in the workspace (never in a run)


@runtime_checkable
class Tool(Protocol):
    """A typed tool. ``Args``' JSON schema is what the planner sees.

    ``time_limit_s`` is the longest one call may take, declared by the tool next to what it
    does (a file read: seconds; a build: its own command timeout plus a margin). The
    scheduler cancels a call that runs past it. None: the tool sets no bound of its own and
    its caller bounds it (the run's budget and time limit), as for a fan-out of candidates.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    Args: ClassVar[type[BaseModel]]
    Result: ClassVar[type[BaseModel]]
    time_limit_s: ClassVar[float | None]

    async def __call__(self, args: BaseModel, ctx: ToolContext) -> BaseModel: ...
