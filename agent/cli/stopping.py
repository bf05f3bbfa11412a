"""How every front door stops: SIGINT (Ctrl-C), SIGTERM (``kill``, CI timeouts, systemd,
Kubernetes) and SIGHUP (a closed terminal or SSH session) alike.

While a door's async work runs (``StoppableLoop.run``), the first of these signals cancels
it: each layer's own cleanup runs as the cancellation unwinds (candidates' processes are
killed, containers removed, tmpfs mounts unmounted, sandbox and temporary directories
removed, a half-done apply rolled back), and the door exits 128 + the signal's number (130,
143, 129). A wait of any kind, a wait for a sandbox slot included, is an ``asyncio`` wait
and ends at once. A second signal only says that cleanup is still running; a third leaves
at once, and the next start reaps what is left (containers by label, directories by marker).

Outside the async work (starting up, between a chat's steps) a signal never raises in the
middle of what the main thread is doing: an exception raised there can be swallowed (Python
only prints one raised in a fork hook or a finalizer, and the stop would be lost) or can cut
a cleanup short (a probe's directory half removed). The signal is kept, and acted on at the
next point made for it: the next run (cancelled before it starts), the chat's prompt, or the
end of the command. A wait for the user's input is the one place it raises ``Stopped`` at
once (``reading_input``): nothing else can end that wait. The console script installs this
(``install``); a library caller keeps Python's own Ctrl-C outside the runs.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

if TYPE_CHECKING:  # asyncio is imported where a loop starts: ``bakeoff --help`` runs none
    import asyncio

T = TypeVar("T")

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Tasks still running once a run has unwound are cancelled and get this long to clean up;
# threads still at work (a sandbox being copied, then removed) get as long again.
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


class _Receiver:
    """Where a stop signal goes now. One handler serves the whole process (``_on_signal``); it
    is never swapped for another while bakeoff runs, so no signal finds Python's default."""

    def __init__(self) -> None:
        self.received: list[int] = []  # signals no door has acted on yet (see ``settle_interrupt``)
        self.loop: StoppableLoop | None = None  # the loop whose run the next signal stops
        self.reading = False  # the main thread waits for the user's input


_receiver = _Receiver()


def _on_signal(signum: int, _frame: object) -> None:
    """Runs in the main thread between any two bytecodes: it raises only at the prompt."""
    r = _receiver
    r.received.append(signum)
    if r.loop is not None:
        r.loop.signalled(signum, len(r.received))
    elif r.reading:
        r.reading = False
        raise Stopped(r.received[0])
    elif len(r.received) == 2:
        say(f"{signal.Signals(signum).name}: bakeoff stops once this step is done; a third signal leaves at once")
    elif len(r.received) >= 3:
        leave_now(Stopped(r.received[0]))


def install() -> None:
    """INT, TERM and HUP stop bakeoff as this module says (the console script calls this)."""
    global _receiver
    _receiver = _Receiver()
    for sig in SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup'ed: stay ignored
            signal.signal(sig, _on_signal)


@contextlib.contextmanager
def reading_input() -> Iterator[None]:
    """Around a wait for the user's input: a signal raises ``Stopped`` in it at once, and one
    kept since the last step is raised on entry."""
    r = _receiver
    r.reading = True
    try:
        if r.received:
            raise Stopped(r.received[0])
        yield
    finally:
        r.reading = False


def settle_interrupt() -> None:
    """A door acted on Ctrl-C and goes on (chat: a step cancelled, the prompt cleared); a TERM
    or HUP that came too still stops it."""
    _receiver.received = [s for s in _receiver.received if s != signal.SIGINT]


def leave_if_stopped() -> None:
    """At the end of a command: a signal kept since the last point made for stopping still
    decides how it exits."""
    if _receiver.received:
        stop = Stopped(_receiver.received[0])
        leave_now(stop, f"stopped by {stop.name}")


def say(message: str) -> None:
    """One line on stderr, written at once (signal time: no rich, no buffering)."""
    with contextlib.suppress(OSError, ValueError):
        os.write(sys.stderr.fileno(), f"\nbakeoff: {message}\n".encode())


class StoppableLoop:
    """An event loop whose runs INT, TERM and HUP cancel; ``Stopped`` says which one came.

    One loop can run many steps (chat keeps one for its session, so its sandbox pool stays
    bound to one loop). ``finish`` runs cleanup that a signal must not cut short; ``close``
    cancels what is left, waiting ``CLEANUP_S`` at most, and as long for threads at work.
    """

    def __init__(self) -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self._executor = ThreadPoolExecutor(thread_name_prefix="bakeoff")
        self.loop.set_default_executor(self._executor)
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._task: asyncio.Task[Any] | None = None  # what the first signal cancels

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` to its end; a signal cancels it and raises ``Stopped`` once it has
        unwound. A signal kept since the last step cancels it before it starts."""
        task = self.loop.create_task(work)
        with self._signals(task):
            try:
                result = self.loop.run_until_complete(task)
            except BaseException:
                if _receiver.received:
                    raise Stopped(_receiver.received[0]) from None
                raise
        if _receiver.received:  # the work turned the cancellation into an answer: still stopped
            raise Stopped(_receiver.received[0])
        return result

    def finish(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` (a cleanup) to its end: a signal does not cancel it, a third leaves at
        once; one that came is acted on at the next point made for stopping."""
        with self._signals(None):
            return self.loop.run_until_complete(work)

    def signalled(self, signum: int, count: int) -> None:
        """From the signal handler, at any point of the loop's own code: the third signal
        leaves now; the others are answered by the loop."""
        if count >= 3:
            leave_now(Stopped(_receiver.received[0]))
        self.loop.call_soon_threadsafe(self._answer, signum, count, self._task)

    def _answer(self, signum: int, count: int, task: asyncio.Task[Any] | None) -> None:
        name = signal.Signals(signum).name
        if count == 1 and task is not None:
            say(f"{name}: stopping: candidates are stopped, sandboxes and temporary files removed")
            task.cancel()
        else:
            say(f"{name}: still cleaning up; a third signal leaves at once, and the next start "
                "removes what is left")

    @contextlib.contextmanager
    def _signals(self, task: asyncio.Task[Any] | None) -> Iterator[None]:
        """Signals go to this loop while it runs ``task`` (``None``: cleanup, not cancelled)."""
        try:
            previous = {sig: signal.signal(sig, _on_signal) for sig in SIGNALS
                        if signal.getsignal(sig) is not signal.SIG_IGN}  # nohup'ed: stay ignored
        except ValueError:  # not the main thread: no signal handlers here
            yield
            return
        # The C-level handler writes here, so a signal that another thread took still wakes
        # the loop, which then runs the Python-level one.
        wakeup = signal.set_wakeup_fd(self._wakeup_fd(), warn_on_full_buffer=False)
        r = _receiver
        r.loop, self._task = self, task
        try:
            if task is not None and r.received:  # kept since the last step: this one stops before it starts
                task.cancel()
            yield
        finally:
            r.loop, self._task = None, None
            signal.set_wakeup_fd(wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)

    def _wakeup_fd(self) -> int:
        if self._wake is None:
            reader, writer = socket.socketpair()
            reader.setblocking(False)
            writer.setblocking(False)
            self.loop.add_reader(reader.fileno(), _drain, reader)
            self._wake = (reader, writer)
        return self._wake[1].fileno()

    def close(self) -> None:
        """Finish what is still running (cancelled, ``CLEANUP_S`` at most) and close the loop.
        Threads still at work get ``CLEANUP_S`` more; one blocked for good is left behind."""
        import asyncio

        loop = self.loop
        if loop.is_closed():
            return
        with self._signals(None):
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            if pending:
                # Work the cancelled run left behind (a build it started in a task of its own): it is
                # cancelled too, and its own cleanup (kill the compiler, remove its directory) runs.
                # The sandboxes' closes are done by now: the pools wait for them as the run unwinds.
                for t in pending:
                    t.cancel()
                loop.run_until_complete(asyncio.wait(pending, timeout=CLEANUP_S))
            loop.run_until_complete(loop.shutdown_asyncgens())
        # A sandbox whose creation was cancelled is still being copied in a thread, which then
        # removes it: that thread is waited for, a bounded time (Python 3.11's own wait has no bound).
        waiter = threading.Thread(target=self._executor.shutdown, daemon=True)
        waiter.start()
        waiter.join(CLEANUP_S)
        if self._wake is not None:
            loop.remove_reader(self._wake[0].fileno())
            for end in self._wake:
                end.close()
        asyncio.set_event_loop(None)
        loop.close()

    def __enter__(self) -> StoppableLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drain(reader: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while reader.recv(4096):
            pass


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
