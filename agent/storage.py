"""Where bakeoff keeps what runs leave (event logs, reports, history), and how it writes them:
never inside the user's tree, never half a file."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

LOCK_NAME = ".bakeoff.lock"


class DirectoryBusy(Exception):
    """Another bakeoff process holds the directory: the user waits, or chooses another one."""


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$BAKEOFF_STATE_DIR``, else ``$XDG_STATE_HOME/bakeoff`` (``~/.local/state/bakeoff``)."""
    environ = os.environ if environ is None else environ
    if environ.get("BAKEOFF_STATE_DIR"):
        return Path(environ["BAKEOFF_STATE_DIR"])
    base = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME", "~")).expanduser() / ".local" / "state")
    return Path(base) / "bakeoff"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary name, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def new_run_dir(state: Path, run_id: str) -> Path:
    """``<state>/runs/<run_id>``, made by this run alone: any number of runs may share one
    state directory, since each writes only the folder it made. Raises ``DirectoryBusy`` when
    another run already has that id."""
    runs = state / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    path = runs / run_id
    try:
        path.mkdir()
    except FileExistsError:
        raise DirectoryBusy(f"another run already uses the id {run_id} in {runs}: give this one another id") from None
    return path


@contextlib.contextmanager
def claimed(directory: Path, what: str) -> Iterator[None]:
    """Hold ``directory`` for this process while the block runs.

    A second process that claims it is refused at once with ``DirectoryBusy`` naming the
    holder ("another batch, pid N, is using OUT"), before it touches anything there. The claim
    is an ``flock`` on ``<directory>/.bakeoff.lock``: the kernel drops it when the holder exits,
    however it exits, so a killed process never leaves a stale claim.
    """
    import fcntl

    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").split()
            pid = holder[0] if holder else "unknown"
            raise DirectoryBusy(f"another {what}, pid {pid}, is using {directory}: wait for it to finish, "
                                "or choose another directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {what}\n".encode())
        yield
    finally:
        os.close(fd)  # the file stays: removing it would let two processes lock two different files
