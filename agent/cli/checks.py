"""What a user typed or named, checked before any work starts.

Each check either returns what it checked or ends the command with one line on stderr and
exit 2 (``fail``): a task that is empty or not text, a file that is missing or not UTF-8, an
output or state directory that is a file or cannot be written, a ``--patch`` whose folder
does not exist.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import NoReturn

EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """A user-fixable problem: say what to do, exit with ``code``."""
    import typer

    typer.echo(f"bakeoff: {' '.join(message.split())}", err=True)  # one line, however the message was written
    raise typer.Exit(code)


def not_utf8(data: bytes, error: UnicodeDecodeError) -> str:
    """Where the first byte that is not UTF-8 is, in words."""
    return f"byte 0x{data[error.start]:02x} at offset {error.start} is not UTF-8"


def task_text(task: str, what: str = "the task") -> str:
    """A task the model can read: not empty, and text (an argument of bytes that are not
    UTF-8 arrives as lone surrogates, which no JSON can carry)."""
    if not task.strip():
        fail(f"{what} is empty: say what to do, e.g. bakeoff run \"make total in calc.py faster\"")
    try:
        task.encode("utf-8")
    except UnicodeEncodeError as exc:
        raw = task.encode("utf-8", "surrogateescape")
        fail(f"{what} is not UTF-8 text ({_bad_byte(raw, exc.start)}): write it in UTF-8")
    return task


def _bad_byte(raw: bytes, index: int) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return not_utf8(raw, exc)
    return f"character {index} is not text"


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of the file ``path``; exit 2 naming the file when it is missing or not text."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        fail(f"{what} {path} does not exist: check the path")
    except IsADirectoryError:
        fail(f"{what} {path} is a directory, not a file")
    except OSError as exc:
        fail(f"{what} {path} cannot be read: {exc.strerror or exc}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(f"{what} {path} is not UTF-8 text ({not_utf8(data, exc)}): save it as UTF-8")


def writable_dir(path: Path, what: str) -> Path:
    """``path`` as a directory this process can write (made when missing); exit 2 when it is a
    file, or cannot be made or written."""
    if path.exists() and not path.is_dir():
        fail(f"{what} {path} is a file, not a directory: name a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"{what} {path} cannot be made: {exc.strerror or exc}")
    problem = _cannot_write(path)
    if problem:
        fail(f"{what} {path} is not writable ({problem}): choose a directory you can write")
    return path


def _cannot_write(folder: Path) -> str | None:
    """Why a file cannot be made in ``folder``, found by making one (permissions, a read-only
    mount and a full disk all show this way; root passes ``os.access`` on a read-only mount)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".bakeoff-write-check-", dir=folder)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    os.unlink(probe)
    return None


def patch_target(path: Path | None) -> Path | None:
    """Where ``--patch`` will write: its folder must exist and be writable, and it must not be a directory."""
    if path is None:
        return None
    if path.is_dir():
        fail(f"--patch {path} is a directory: name a file, e.g. --patch {path / 'winner.diff'}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        fail(f"--patch {path}: the folder {folder} does not exist; create it first or name another file")
    problem = _cannot_write(folder)
    if problem:
        fail(f"--patch {path}: the folder {folder} is not writable ({problem})")
    return path
