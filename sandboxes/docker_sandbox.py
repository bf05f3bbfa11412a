"""One hardened container as a Sandbox: commands, files and the diff, through the engine's API.

Commands run through ``docker exec`` under ``timeout -k`` inside the container and a
wall-clock deadline outside it; when the command ends, everything in its process group is
killed so background children cannot hold its output open. Files go in and out as tar
archives (``archive``); paths are relative to the workspace ``/work``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import posixpath
import secrets
import tarfile
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from bakeoff.agent.seams import ExecResult, SandboxLimits
from bakeoff.sandboxes.archive import GID, UID, WorkspaceTar, changed_entries, diff_changed, file_tar
from bakeoff.sandboxes.docker_engine import DockerEngine, DockerUnavailable, is_connection_error
from bakeoff.sandboxes.local_isolation import looks_secret
from bakeoff.sandboxes.output import OutputCapture

if TYPE_CHECKING:
    from docker.types import CancellableStream

    from bakeoff.sandboxes.docker_backend import DockerBackend

WORKDIR = "/work"
HOME = "/home/sandbox"  # exists in the image, owned by root: reading works, writing does not
USER = f"{UID}:{GID}"

KILL_AFTER_S = 1  # between the inside timeout's TERM and its KILL
OUTSIDE_GRACE_S = 3.0  # the outside deadline trails the inside one by this much
GIVE_UP_S = 5.0  # after killing everything, how long the output stream may still take

# Runs the command in its own process group (``timeout`` makes one), then kills whatever of
# that group is left, so a background child that keeps stdout open cannot hold up the call.
# A child that left the group (setsid) still carries this command's BAKEOFF_EXEC token in its
# environment; the scan for it runs only when processes beyond init, the keeper and this shell
# remain, so the common case costs no extra process. The last line on stderr carries the exit
# status (taken off before the caller sees it), which spares a round trip to the engine.
_RUN = r"""t=$1; d=$2; shift 2
cd -- "$d" || exit 126
timeout -k %d "$t" "$@" </dev/null &
p=$!
wait "$p"; rc=$?
kill -9 "-$p" 2>/dev/null
set -- /proc/[0-9]*
if [ "$#" -gt 3 ]; then
  for d in "$@"; do
    [ "${d#/proc/}" = "$$" ] && continue
    grep -qsz "^BAKEOFF_EXEC=$BAKEOFF_EXEC\$" "$d/environ" && kill -9 "${d#/proc/}" 2>/dev/null
  done
fi
printf '\n%%s:%%d\n' "$BAKEOFF_EXEC" "$rc" >&2
exit "$rc"
""" % KILL_AFTER_S

# Used only when the inside timeout failed: kill every process but init, the expiry keeper
# (the oldest process after init) and this shell.
_KILL_ALL = r"""k=$(ls /proc | grep -E '^[0-9]+$' | sort -n | sed -n 2p)
for _ in 1 2 3; do
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    case "$p" in 1|"$k"|"$$") ;; *) kill -9 "$p" 2>/dev/null ;; esac
  done
done
exit 0
"""

_OOM_COUNT = "cat /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null"


class DockerSandboxGone(RuntimeError):
    """A sandbox's container disappeared under it (expired, or removed by someone else)."""


def _inside_path(rel: str) -> str:
    """``rel`` normalised under the workspace; ``ValueError`` when it is absolute or escapes."""
    if not rel or rel.startswith("/") or "\0" in rel:
        raise ValueError(f"path must be relative to the workspace: {rel!r}")
    norm = posixpath.normpath(rel)
    if norm == ".." or norm.startswith("../"):
        raise ValueError(f"path escapes the workspace: {rel!r}")
    return norm


def _oom_kills(text: str) -> int:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "oom_kill" and parts[1].isdigit():
            return int(parts[1])
    return 0


def _exec_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """The caller's variables, minus any that look like secrets; the rest comes from the image."""
    out = {"HOME": HOME, "TMPDIR": "/tmp"}
    for name, value in (env or {}).items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise ValueError(f"bad environment variable name or value: {name!r}")
        if not looks_secret(name):
            out[name] = value
    return out


class _CommandRun:
    """One ``docker exec`` of the wrapped command, read to its end in one of the engine's threads."""

    def __init__(self, engine: DockerEngine, container_id: str, argv: list[str],
                 environment: dict[str, str], output_bytes: int) -> None:
        self._engine = engine
        self._container_id = container_id
        self._argv = argv
        self._environment = environment
        self.out, self.err = OutputCapture(output_bytes), OutputCapture(output_bytes)
        self.exec_id: str | None = None
        self._stream: CancellableStream | None = None  # of (stdout, stderr) chunks

    @property
    def started(self) -> bool:
        """Whether the engine began the command (its output stream is open)."""
        return self._stream is not None

    def pump(self) -> None:
        # Create, start and read in one thread hop: each hop costs latency on a busy machine.
        engine, api = self._engine, self._engine.api
        self.exec_id = engine.call(api.exec_create, self._container_id, self._argv, stdout=True,
                                   stderr=True, user=USER, environment=self._environment)["Id"]
        self._stream = engine.call(api.exec_start, self.exec_id, stream=True, demux=True)
        for o, e in self._stream:
            if o:
                self.out.feed(o)
            if e:
                self.err.feed(e)

    def stop_reading(self) -> None:
        if self._stream is not None:
            self._stream.close()


class DockerSandbox:
    """A Sandbox (agent.seams) in a hardened container. Paths are relative to ``/work``."""

    backend = "docker"

    def __init__(self, owner: DockerBackend, container_id: str, limits: SandboxLimits, base: WorkspaceTar,
                 *, warm_start: bool = False) -> None:
        self._owner = owner
        self._engine = owner.engine
        self.container_id = container_id
        self.limits = limits
        self._base = base
        self.warm_start = warm_start  # it came from the warm pool
        self._oom_seen = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"DockerSandbox({self.container_id[:12]})"

    # ------------------------------------------------------------------ exec

    async def exec(
        self,
        cmd: str | Sequence[str],
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> ExecResult:
        """Run ``cmd`` (a shell string, or an argv) in the workspace; a failing command is data."""
        self._check_open()
        limit = float(timeout if timeout is not None else self.limits.wall_seconds)
        if limit <= 0:
            raise ValueError(f"timeout must be positive, not {limit}")
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        if not argv:
            raise ValueError("empty command")
        workdir = WORKDIR if cwd in (None, "", ".") else f"{WORKDIR}/{_inside_path(cwd)}"
        token = secrets.token_hex(8)
        wrapped = ["sh", "-c", _RUN, "bakeoff-run", f"{limit:.3f}", workdir, *argv]
        run = _CommandRun(self._engine, self.container_id, wrapped,
                          {**_exec_env(env), "BAKEOFF_EXEC": token}, self.limits.output_bytes)
        started = time.monotonic()
        reader = asyncio.get_running_loop().run_in_executor(self._engine.executor, run.pump)
        gave_up = await self._wait_for(run, reader, limit)
        self._raise_failure(run, reader, gave_up)
        duration = time.monotonic() - started
        code = None if gave_up else run.err.take_trailer(token)
        if code is None and run.exec_id is not None:
            code = await self._exit_status(run.exec_id, gave_up)
        oom = False
        if code in (137, -9) or gave_up:
            oom = await self._engine.run(self._new_oom_kill_blocking)
        timed_out = not oom and (gave_up or (code in (124, 137) and duration >= limit * 0.95))
        return ExecResult(
            exit_code=code, stdout=run.out.text(), stderr=run.err.text(), duration_s=duration,
            timed_out=timed_out, oom_killed=oom, truncated=run.out.truncated or run.err.truncated,
        )

    async def _wait_for(self, run: _CommandRun, reader: asyncio.Future[None], limit: float) -> bool:
        """Wait for the command's output to end; True when it had to be given up on."""
        try:
            # asyncio.wait neither raises the reader's error nor cancels it on a timeout.
            done, _ = await asyncio.wait({reader}, timeout=limit + KILL_AFTER_S + OUTSIDE_GRACE_S)
            if done:
                return False
            # The inside timeout did not end it (a process escaped its group): kill everything.
            await self._engine.run(self._kill_all_blocking)
            done, _ = await asyncio.wait({reader}, timeout=GIVE_UP_S)
            if done:
                return False
            run.stop_reading()
            await asyncio.gather(reader, return_exceptions=True)
            return True
        except BaseException:
            # Cancelled (or the loop is going away): stop reading and end what the command began.
            run.stop_reading()
            with contextlib.suppress(DockerUnavailable):  # the original error is what matters
                await self._engine.run(self._kill_all_blocking)
            raise

    def _raise_failure(self, run: _CommandRun, reader: asyncio.Future[None], gave_up: bool) -> None:
        """Raise what went wrong with the engine (not with the command) while reading."""
        import docker

        exc = reader.exception() if reader.done() and not reader.cancelled() else None
        if isinstance(exc, docker.errors.APIError) and not run.started:
            raise self._gone(exc) from exc
        if exc is not None and not gave_up:
            if is_connection_error(exc):
                raise DockerUnavailable(
                    f"the Docker engine stopped answering while {self!r} ran a command: {exc}. "
                    "Start it again, or use --sandbox local") from exc
            raise exc

    async def _exit_status(self, exec_id: str, gave_up: bool) -> int | None:
        """The exit status from the engine (when the wrapper's trailer did not arrive)."""
        engine = self._engine
        info = await engine.run(engine.api.exec_inspect, exec_id)
        for _ in range(20):  # the exit status may trail the end of the stream by a moment
            if gave_up or not info.get("Running"):
                return None if info.get("Running") else info.get("ExitCode")
            await asyncio.sleep(0.05)
            info = await engine.run(engine.api.exec_inspect, exec_id)
        await engine.run(self._kill_all_blocking)
        raise DockerUnavailable(
            f"the output stream of a command in {self!r} broke while the command still ran: "
            "the connection to the Docker engine was cut. Check the engine, or use --sandbox local")

    def _exec_blocking(self, argv: list[str]) -> tuple[int | None, bytes]:
        """A short internal command (no limits beyond the container's), its exit code and output."""
        engine, api = self._engine, self._engine.api
        exec_id = engine.call(api.exec_create, self.container_id, argv, user=USER)["Id"]
        output = engine.call(api.exec_start, exec_id)
        code = engine.call(api.exec_inspect, exec_id).get("ExitCode")
        return code, output

    def _kill_all_blocking(self) -> None:
        import docker

        try:
            self._exec_blocking(["sh", "-c", _KILL_ALL])
        except docker.errors.APIError:
            pass  # the container is already gone: nothing left to kill

    def _new_oom_kill_blocking(self) -> bool:
        import docker

        try:
            _, text = self._exec_blocking(["sh", "-c", _OOM_COUNT])
        except docker.errors.APIError:
            text = b""
        count = _oom_kills(text.decode(errors="replace"))
        if count > self._oom_seen:
            self._oom_seen = count
            return True
        try:
            state = self._engine.call(self._engine.api.inspect_container, self.container_id)["State"]
        except docker.errors.NotFound:
            return False
        return bool(state.get("OOMKilled"))

    # ------------------------------------------------------------------ files

    async def write_file(self, path: str, content: str | bytes) -> None:
        import docker

        self._check_open()
        rel = _inside_path(path)
        data = content.encode() if isinstance(content, str) else bytes(content)
        try:
            await self._engine.run(self._engine.api.put_archive, self.container_id, WORKDIR, file_tar(rel, data))
        except docker.errors.APIError as exc:
            raise self._gone(exc) from exc

    async def read_file(self, path: str) -> bytes:
        """The file's bytes; symlinks are followed only while they stay inside the workspace."""
        self._check_open()
        import docker

        rel = _inside_path(path)
        for _ in range(16):
            try:
                chunks, _stat = await self._engine.run(
                    self._engine.api.get_archive, self.container_id, f"{WORKDIR}/{rel}")
                data = await self._engine.run(lambda: b"".join(chunks))
            except docker.errors.NotFound as exc:
                if isinstance(self._gone(exc), DockerSandboxGone):
                    raise self._gone(exc) from exc
                raise FileNotFoundError(f"{path}: no such file in the sandbox") from exc
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
                member = tar.next()
                if member is None:
                    raise FileNotFoundError(f"{path}: no such file in the sandbox")
                if member.isfile():
                    fh = tar.extractfile(member)
                    assert fh is not None
                    return fh.read()
                if member.isdir():
                    raise IsADirectoryError(f"{path} is a directory")
                if not member.issym():
                    raise ValueError(f"{path} is not a regular file")
                target = member.linkname
            if target.startswith("/"):
                raise ValueError(f"{path} is a symlink leaving the workspace ({target})")
            rel = _inside_path(posixpath.join(posixpath.dirname(rel), target))
        raise ValueError(f"{path}: too many levels of symlinks")

    async def diff(self) -> str:
        """Git-format diff of the workspace against its base; new binary files (build products)
        are left out. Raises ``UnsafeArchive`` when the workspace holds a link leaving it."""
        import docker

        self._check_open()
        try:
            chunks, _ = await self._engine.run(self._engine.api.get_archive, self.container_id, f"{WORKDIR}/.")
        except docker.errors.APIError as exc:
            raise self._gone(exc) from exc
        changed, a_tar, b_tar = await self._engine.run(changed_entries, self._base.tar, self._base.index, chunks)
        if not changed:
            return ""
        return await self._engine.run(diff_changed, a_tar, b_tar)

    # ------------------------------------------------------------------ life

    async def close(self) -> None:
        """Remove the container and its workspace. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._owner.release(self.container_id)

    def _gone(self, exc: Exception) -> Exception:
        """The error to raise when the engine refuses a call about this container."""
        status = getattr(exc, "status_code", None)
        text = str(getattr(exc, "explanation", None) or exc)
        if status == 409 or (status == 404 and "no such container" in text.lower()):
            return DockerSandboxGone(
                f"the container of {self!r} is gone (its {self._owner.expiry_s} s expiry passed, "
                f"or it was removed): {getattr(exc, 'explanation', None) or exc}")
        return exc

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

    async def __aenter__(self) -> DockerSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
