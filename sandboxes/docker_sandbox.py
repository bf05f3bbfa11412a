"""One hardened container as a Sandbox: commands, files and the diff, through the engine's API.

Commands run through ``docker exec`` under ``timeout -k`` inside the container and a
wall-clock deadline outside it; when the command ends, everything in its process group is
killed so background children cannot hold its output open, and once no command of the
sandbox runs, everything in the container but its init and keeper is (what escaped the
group: ``env -i``, a double fork). The limit a command ran into (processes, memory, time)
is read from the container's cgroup and reported in ``ExecResult.limit``. Files go in as tar
archives (``archive``) and are read inside the container as the sandbox's user, so a read
sees no more than that user would; paths are relative to the workspace ``/work``.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from bakeoff.agent.seams import ExecResult, SandboxLimits
from bakeoff.sandboxes import limits as limit_words
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
# A child that left the group (setsid) but still carries this command's BAKEOFF_EXEC token is
# killed too; what escaped both (``env -i``, a double fork) is left to the container-wide
# cleanup the sandbox runs once no command of it is running (``_KILL_ALL``). The last line on
# stderr carries the exit status, how often a fork was refused at the process limit and how
# many processes the OOM killer took during the command (read from the container's cgroup,
# with shell builtins only: at the process limit nothing can be forked), and how many
# processes are left (init, the keeper and this shell make 3). It is taken off before the
# caller sees it, which spares round trips to the engine.
_RUN = r"""t=$1; d=$2; shift 2
cd -- "$d" || exit 126
ev() {
  m=0; o=0
  for f in /sys/fs/cgroup/pids.events /sys/fs/cgroup/pids/pids.events; do
    if [ -r "$f" ]; then while read -r k v; do [ "$k" = max ] && m=$v; done < "$f"; fi
  done
  for f in /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control; do
    if [ -r "$f" ]; then while read -r k v; do [ "$k" = oom_kill ] && o=$v; done < "$f"; fi
  done
}
ev; m0=$m; o0=$o
timeout -k %d "$t" "$@" </dev/null &
p=$!
wait "$p"; rc=$?
kill -9 "-$p" 2>/dev/null
set -- /proc/[0-9]*
if [ "$#" -gt 3 ]; then
  for f in $(grep -lsz "^BAKEOFF_EXEC=$BAKEOFF_EXEC\$" /proc/[0-9]*/environ); do
    f=${f#/proc/}; f=${f%%/*}
    [ "$f" = "$$" ] || kill -9 "$f" 2>/dev/null
  done
  set -- /proc/[0-9]*
fi
ev
printf '\n%%s:%%d:%%d:%%d:%%d\n' "$BAKEOFF_EXEC" "$rc" "$((m - m0))" "$((o - o0))" "$#" >&2
exit "$rc"
""" % KILL_AFTER_S

# Cleans by what the container is: kills every process but init (pid 1), the expiry keeper
# (the lowest pid after init: it started first) and this shell, pass after pass until none is
# left. Shell builtins only, so it works while a fork bomb holds the process limit.
_KILL_ALL = r"""k=
for d in /proc/[0-9]*; do
  p=${d#/proc/}
  [ "$p" = 1 ] || [ "$p" = "$$" ] && continue
  if [ -z "$k" ] || [ "$p" -lt "$k" ]; then k=$p; fi
done
n=0
while [ "$n" -lt 100 ]; do
  left=0
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    case "$p" in 1|"$k"|"$$") ;; *) kill -9 "$p" 2>/dev/null && left=1 ;; esac
  done
  [ "$left" = 0 ] && exit 0
  n=$((n + 1))
done
exit 1
"""

# Reads one file of the workspace as the sandbox's user: 3 missing, 4 outside the workspace,
# 5 a directory, 6 not a regular file (a FIFO cannot hang the read: it is refused first), 7 not
# readable by that user.
_READ = r"""p=$(readlink -f -- "$1") || exit 3
case "$p" in "%s"/*) ;; *) exit 4 ;; esac
[ -e "$p" ] || exit 3
[ -d "$p" ] && exit 5
[ -f "$p" ] || exit 6
[ -r "$p" ] || exit 7
exec timeout 60 cat -- "$p"
""" % WORKDIR

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
        self._lost: str | None = None  # why the container was given up on
        self._active = 0  # commands running now
        self._dirty = False  # a command left processes behind: clean once none runs
        self._cleaning = asyncio.Lock()  # held while cleaning: no command starts meanwhile

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
        async with self._cleaning:
            self._active += 1
        try:
            result, left_behind = await self._run(run, token, limit)
        finally:
            self._active -= 1
        self._dirty = self._dirty or left_behind
        if self._dirty and self._active == 0:
            await self._clean()
        return result

    async def _run(self, run: _CommandRun, token: str, limit: float) -> tuple[ExecResult, bool]:
        """The command's result, and whether it may have left processes behind."""
        started = time.monotonic()
        reader = asyncio.get_running_loop().run_in_executor(self._engine.executor, run.pump)
        gave_up = await self._wait_for(run, reader, limit)
        self._raise_failure(run, reader, gave_up)
        duration = time.monotonic() - started
        trailer = None if gave_up else run.err.take_trailer(token)
        code = trailer[0] if trailer else None
        if code is None and run.exec_id is not None:
            code = await self._exit_status(run.exec_id, gave_up)
        if trailer and len(trailer) == 4:
            pids, oom, left_behind = trailer[1] > 0, trailer[2] > 0, trailer[3] > 3
        else:
            pids, left_behind = False, True
            oom = (code in (137, -9) or gave_up) and await self._engine.run(self._new_oom_kill_blocking)
        timed_out = not oom and (gave_up or (code in (124, 137) and duration >= limit * 0.95))
        return ExecResult(
            exit_code=code, stdout=run.out.text(), stderr=run.err.text(), duration_s=duration,
            timed_out=timed_out, oom_killed=oom, truncated=run.out.truncated or run.err.truncated,
            limit=limit_words.tripped(self.limits, limit, pids=pids, oom=oom, timed_out=timed_out),
        ), left_behind

    async def _clean(self) -> None:
        """Kill what commands left behind (``_KILL_ALL``), once none runs; a container that
        cannot be cleaned (a fork bomb holding every process slot) is removed."""
        async with self._cleaning:
            if self._active or not self._dirty:
                return
            if await self._engine.run(self._kill_all_blocking):
                self._dirty = False
                return
            self._lost = (f"the container of {self!r} was removed: processes a command left behind "
                          "could not be stopped inside it (a fork bomb, say)")
            self._closed = True
            await self._owner.release(self.container_id)

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

    def _kill_all_blocking(self) -> bool:
        """Run ``_KILL_ALL``; False when it could not run or could not finish (retried a few
        times: at the process limit the engine may fail to start it)."""
        import docker

        for attempt in range(5):
            try:
                code, _ = self._exec_blocking(["sh", "-c", _KILL_ALL])
            except docker.errors.NotFound:
                return True  # the container is already gone: nothing left to kill
            except docker.errors.APIError:
                code = None
            if code == 0:
                return True
            time.sleep(0.2 * (attempt + 1))
        return False

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
        """The file's bytes, read inside the container as the sandbox's user (so it sees no
        more than that user would); symlinks are followed only while they stay inside the
        workspace."""
        import docker

        self._check_open()
        rel = _inside_path(path)
        try:
            code, data, why = await self._engine.run(self._read_blocking, rel)
        except docker.errors.APIError as exc:
            raise self._gone(exc) from exc
        if code == 0:
            return data
        if code == 3:
            raise FileNotFoundError(f"{path}: no such file in the sandbox")
        if code == 4:
            raise ValueError(f"{path} leads outside the workspace (through a symlink)")
        if code == 5:
            raise IsADirectoryError(f"{path} is a directory")
        if code == 6:
            raise ValueError(f"{path} is not a regular file")
        if code == 7:
            raise PermissionError(f"{path} may not be read by the sandbox's user")
        raise OSError(f"reading {path} in {self!r} failed (exit {code}): {why.decode(errors='replace')[-300:]}")

    def _read_blocking(self, rel: str) -> tuple[int | None, bytes, bytes]:
        engine, api = self._engine, self._engine.api
        exec_id = engine.call(api.exec_create, self.container_id, ["sh", "-c", _READ, "bakeoff-read", rel],
                              user=USER, workdir=WORKDIR, environment={"HOME": HOME})["Id"]
        out, err = engine.call(api.exec_start, exec_id, demux=True)
        code = engine.call(api.exec_inspect, exec_id).get("ExitCode")
        return code, out or b"", err or b""

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
        if self._lost is not None:
            raise DockerSandboxGone(self._lost)
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")

    async def __aenter__(self) -> DockerSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
