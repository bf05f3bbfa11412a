"""Opening files beneath a directory that a sandboxed command may be changing at that moment.

The host reads and writes a local sandbox's files on its behalf, often as root, while a
command of the sandbox may be running. Checking a path and then opening it is a race: the
command can swap a checked directory for a symlink to a host path in between. So no path is
ever resolved twice here: every component is opened from the directory descriptor of the
one before it, with ``O_NOFOLLOW``. A symlink met on the way is read and its target walked the
same way, from the directory holding it; ``..`` goes back to the descriptor it came from and
never above the root. Whatever the command swaps, each step sees either a directory of the
workspace or a link it then walks beneath the root: never the host. Directories created on
the way are created beneath the root too, and handed to the sandbox's user by descriptor.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections import deque

MAX_LINKS = 40  # as the kernel's own limit on symlinks in one lookup

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def check_relative(rel: str) -> str:
    """``rel`` normalised; ``ValueError`` when it is empty, absolute, has a NUL or climbs out."""
    if not rel or rel.startswith("/") or "\0" in rel:
        raise ValueError(f"path must be relative to the workspace: {rel!r}")
    norm = posixpath.normpath(rel)
    if norm == ".." or norm.startswith("../"):
        raise ValueError(f"path escapes the workspace: {rel!r}")
    return norm


class _Walk:
    """The directories descended so far (descriptors, the root first) and the names still to walk."""

    def __init__(self, root_fd: int, rel: str) -> None:
        self.rel = rel
        self.stack = [os.dup(root_fd)]
        self.todo = deque(p for p in rel.split("/") if p not in ("", "."))
        self.links = 0

    @property
    def here(self) -> int:
        return self.stack[-1]

    def close(self) -> None:
        for fd in self.stack:
            os.close(fd)
        self.stack.clear()

    def up(self) -> None:
        if len(self.stack) == 1:
            raise ValueError(f"path escapes the workspace: {self.rel!r}")
        os.close(self.stack.pop())

    def follow(self, name: str) -> bool:
        """When ``name`` (in the current directory) is a symlink, queue its target; else False."""
        try:
            target = os.readlink(name, dir_fd=self.here)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                return False  # not a link (any more)
            raise
        self.links += 1
        if self.links > MAX_LINKS:
            raise OSError(errno.ELOOP, f"too many levels of symlinks in {self.rel!r}")
        if target.startswith("/"):
            raise ValueError(f"{self.rel!r} goes through a symlink leaving the workspace ({target})")
        self.todo.extendleft(reversed([p for p in target.split("/") if p not in ("", ".")]))
        return True

    def descend(self, name: str, *, make: bool, owner: int | None) -> None:
        """Enter the directory ``name``, following a symlink beneath the root, creating it if asked."""
        for _ in range(8):  # a command racing us can make a step fail; it is retried, never widened
            try:
                self.stack.append(os.open(name, _DIR_FLAGS, dir_fd=self.here))
                return
            except FileNotFoundError:
                if not make:
                    raise
                try:
                    os.mkdir(name, 0o755, dir_fd=self.here)
                except FileExistsError:
                    continue
                fd = os.open(name, _DIR_FLAGS, dir_fd=self.here)
                self.stack.append(fd)
                if owner is not None:
                    os.fchown(fd, owner, owner)
                return
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                if self.follow(name):
                    return
                if exc.errno == errno.ENOTDIR:
                    raise NotADirectoryError(errno.ENOTDIR, f"{name!r} in {self.rel!r} is not a directory") from None
        raise OSError(errno.EAGAIN, f"{self.rel!r} kept changing while it was opened")


def open_beneath(root_fd: int, rel: str, flags: int, *, mode: int = 0o644, make_parents: bool = False,
                 owner: int | None = None) -> int:
    """A descriptor of ``rel`` opened beneath the directory ``root_fd`` with ``flags`` (``O_RDONLY``, or
    ``O_WRONLY | O_CREAT | O_TRUNC``), following symlinks only while they stay beneath it.

    Only regular files are opened (a FIFO left by a command cannot block the host). With
    ``make_parents``, missing directories are created beneath the root; with ``owner``, what
    is created (and the file written) is handed to that user id. ``ValueError`` when ``rel``
    or a symlink on its way leaves the root.
    """
    walk = _Walk(root_fd, check_relative(rel))
    try:
        while walk.todo:
            name = walk.todo.popleft()
            if name == "..":
                walk.up()
            elif walk.todo:
                walk.descend(name, make=make_parents, owner=owner)
            else:
                fd = _open_last(walk, name, flags, mode)
                if fd is None:
                    continue  # it was a symlink: its target is queued
                if owner is not None and flags & (os.O_WRONLY | os.O_RDWR):
                    os.fchown(fd, owner, owner)
                return fd
        raise IsADirectoryError(errno.EISDIR, f"{rel!r} is a directory")
    finally:
        walk.close()


def _open_last(walk: _Walk, name: str, flags: int, mode: int) -> int | None:
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode, dir_fd=walk.here)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) and walk.follow(name):
            return None
        raise
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        if stat.S_ISDIR(kind):
            raise IsADirectoryError(errno.EISDIR, f"{walk.rel!r} is a directory")
        raise ValueError(f"{walk.rel!r} is not a regular file")
    os.set_blocking(fd, True)
    return fd


def open_dir_beneath(root_fd: int, rel: str) -> int:
    """A descriptor of the directory ``rel`` beneath ``root_fd`` (symlinks followed while beneath)."""
    walk = _Walk(root_fd, check_relative(rel))
    try:
        while walk.todo:
            name = walk.todo.popleft()
            if name == "..":
                walk.up()
            else:
                walk.descend(name, make=False, owner=None)
        return os.dup(walk.here)
    finally:
        walk.close()


def read_beneath(root_fd: int, rel: str) -> bytes:
    """The bytes of the regular file ``rel`` beneath the directory ``root_fd``."""
    fd = open_beneath(root_fd, rel, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def write_beneath(root_fd: int, rel: str, data: bytes, *, owner: int | None = None) -> None:
    """Write ``data`` to ``rel`` beneath the directory ``root_fd``, creating its directories beneath it."""
    fd = open_beneath(root_fd, rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, make_parents=True, owner=owner)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
