"""How every front door stops: SIGINT (Ctrl-C), SIGTERM (``kill``, CI timeouts, systemd,
Kubernetes) and SIGHUP (a closed terminal or SSH session) alike.

While a door's async work runs (``StoppableLoop.run``), the first of these signals cancels
it: each layer's own cleanup runs as the cancellation unwinds (candidates' processes are
killed, containers removed, tmpfs mounts unmounted, sandbox and temporary directories
removed, a half-done apply rolled back), and the door exits 128 + the signal's number (130,
143, 129). A wait of any kind, a wait for a sandbox slot included, is an ``asyncio`` wait
and ends at once. A second signal only says that cleanup is still running; a third leaves
at once, and the next start reaps what is left (containers by label, directories by marker).

Outside the async work (reading the chat prompt, writing files) the console script makes
all three raise ``Stopped`` in the main thread, where Python would raise
``KeyboardInterrupt`` for Ctrl-C only.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Tasks still running once a run has unwound are cancelled and get this long to clean up.
CLEANUP_S = 20.0


class Stopped(BaseException):
    """A signal told bakeoff to stop. A ``BaseException``, like ``KeyboardInterrupt``, so no
    ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signum)


def install() -> None:
    """INT, TERM and HUP raise ``Stopped`` in the main thread (the console script calls this;
    a library caller keeps Python's own Ctrl-C, ``KeyboardInterrupt``)."""
    for sig in SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup'ed: stay ignored
            signal.signal(sig, _raise_stopped)


def say(message: str) -> None:
    """One line on stderr, written at once (signal time: no rich, no buffering)."""
    with contextlib.suppress(OSError, ValueError):
        os.write(sys.stderr.fileno(), f"\nbakeoff: {message}\n".encode())


class StoppableLoop:
    """An event loop whose runs INT, TERM and HUP cancel; ``Stopped`` says which one came.

    One loop can run many steps (chat keeps one for its session, so its sandbox pool stays
    bound to one loop). ``close`` cancels what is left, waiting ``CLEANUP_S`` at most.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.received: list[int] = []

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` to its end; a signal cancels it and raises ``Stopped`` once it has unwound."""
        task = self.loop.create_task(work)
        self.received = []
        with self._signals(task):
            try:
                result = self.loop.run_until_complete(task)
            except asyncio.CancelledError:
                if self.received:
                    raise Stopped(self.received[0]) from None
                raise
            except BaseException:
                if self.received:
                    raise Stopped(self.received[0]) from None
                raise
        if self.received:  # the work turned the cancellation into an answer: still stopped
            raise Stopped(self.received[0])
        return result

    @contextlib.contextmanager
    def _signals(self, task: asyncio.Task[Any]) -> Iterator[None]:
        def on_signal(signum: int) -> None:
            self.received.append(signum)
            name = signal.Signals(signum).name
            if len(self.received) == 1:
                say(f"{name}: stopping: candidates are stopped, sandboxes and temporary files removed")
                task.cancel()
            elif len(self.received) == 2:
                say(f"{name}: still cleaning up; a third signal leaves at once, and the next start "
                    "removes what is left")
            else:
                leave_now(Stopped(self.received[0]))

        previous = {}
        try:
            for sig in SIGNALS:
                handler = signal.getsignal(sig)
                if handler is signal.SIG_IGN:
                    continue  # nohup'ed: stay ignored
                try:
                    self.loop.add_signal_handler(sig, on_signal, sig)
                except (ValueError, RuntimeError):  # not the main thread: no signal handlers here
                    break
                previous[sig] = handler
            yield
        finally:
            for sig, handler in previous.items():
                self.loop.remove_signal_handler(sig)
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)

    def close(self, *, stopped: bool = False) -> None:
        """Finish what is still running (cancelled, ``CLEANUP_S`` at most) and close the loop.
        After a signal, threads still blocked in a system call are not waited for."""
        loop = self.loop
        if loop.is_closed():
            return
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        if pending:
            # Work the cancelled run left behind (a build it started in a task of its own): it is
            # cancelled too, and its own cleanup (kill the compiler, remove its directory) runs.
            # The sandboxes' closes are done by now: the pools wait for them as the run unwinds.
            for t in pending:
                t.cancel()
            loop.run_until_complete(asyncio.wait(pending, timeout=CLEANUP_S))
        loop.run_until_complete(loop.shutdown_asyncgens())
        if not stopped:
            loop.run_until_complete(loop.shutdown_default_executor())
        asyncio.set_event_loop(None)
        loop.close()

    def __enter__(self) -> StoppableLoop:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.close(stopped=isinstance(exc, (Stopped, KeyboardInterrupt)))


def run_stoppable(work: Coroutine[Any, Any, T]) -> T:
    """``work`` in a loop of its own that INT, TERM and HUP cancel (then ``Stopped`` is raised)."""
    with StoppableLoop() as loop:
        return loop.run(work)


def leave_now(stop: Stopped, message: str | None = None) -> NoReturn:
    """Exit 128 + the signal's number, now: the cleanup the work's own layers did stands;
    exit handlers run (the Docker backend removes its warm containers there); children still
    running are killed; threads blocked in a system call are not waited for."""
    if message:
        say(message)
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    _kill_children()
    os._exit(stop.exit_code)


def _kill_children() -> None:
    """SIGKILL every process whose parent is this one (a git clone a cancelled thread started)."""
    me = str(os.getpid())
    proc = Path("/proc")
    if not proc.is_dir():
        return
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) < 2 or fields[1] != me:
            continue
        pid = int(entry.name)
        with contextlib.suppress(OSError):
            if os.getpgid(pid) == pid:  # it leads a process group of its own: the group goes too
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
