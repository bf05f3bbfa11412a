"""Tar archives in and out of a Docker sandbox: the workspace going in, the diff coming out.

The engine moves files only as tar archives. Going in, every entry is owned by the sandbox
user (a ``git archive`` says root) and a workspace snapshot is made once per commit and shared
by every sandbox made from it. Coming out, the container's tree streams past the snapshot's
index, so only the changed entries are kept, and ``git diff --no-index`` of those, extracted
side by side with ``safe_extract``, gives a repository diff.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from bakeoff.agent import repository
from bakeoff.agent.seams import Workspace
from bakeoff.sandboxes.workspace import UnsafeArchive, WorkspaceError, git_failures_as_workspace_errors, safe_extract

if TYPE_CHECKING:
    from typing_extensions import Buffer

UID = GID = 1000  # the sandbox user of the image

Signature = tuple  # what git sees of an entry: see _signature


# --------------------------------------------------------------------------- going in


def _tarinfo_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid, info.gid, info.uname, info.gname = UID, GID, "", ""
    info.mtime = int(info.mtime)  # whole seconds keep the headers plain (no pax records to parse)
    info.pax_headers = {}
    return info


def directory_tar(src: Path) -> bytes:
    """A tar of ``src`` as the sandbox user owns it, leaving out every ``.git`` (like copy_workspace)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for root, dirs, files in os.walk(src):
            dirs[:] = sorted(d for d in dirs if d != ".git")
            rel_root = os.path.relpath(root, src)
            for name in dirs + sorted(f for f in files if f != ".git"):
                full = os.path.join(root, name)
                arcname = name if rel_root == "." else f"{rel_root}/{name}"
                info = tar.gettarinfo(full, arcname=arcname)
                if info is None or not (info.isfile() or info.isdir() or info.issym()):
                    continue  # sockets, fifos and devices have no place in a workspace copy
                _tarinfo_owned(info)
                if info.isfile():
                    with open(full, "rb") as fh:
                        tar.addfile(info, fh)
                else:
                    tar.addfile(info)
    return buf.getvalue()


def _reowned_tar(data: bytes) -> bytes:
    """The same archive with every entry owned by the sandbox user (git archive says root)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as src, \
            tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as dst:
        for info in src:
            _tarinfo_owned(info)
            dst.addfile(info, src.extractfile(info) if info.isfile() else None)
    return out.getvalue()


def file_tar(rel: str, content: bytes) -> bytes:
    """A tar placing ``content`` at ``rel``, with entries for its parent directories (which
    replaces any symlink a command left where a parent directory should be)."""
    buf = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        parts = PurePosixPath(rel).parts
        for i in range(1, len(parts)):
            d = tarfile.TarInfo("/".join(parts[:i]))
            d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, now
            tar.addfile(_tarinfo_owned(d))
        f = tarfile.TarInfo(rel)
        f.size, f.mode, f.mtime = len(content), 0o644, now
        tar.addfile(_tarinfo_owned(f), io.BytesIO(content))
    return buf.getvalue()


class WorkspaceTar:
    """A workspace snapshot as a tar, shared by every sandbox made from it."""

    def __init__(self, tar: bytes) -> None:
        self.tar = tar
        self._index: dict[str, Signature] | None = None

    @property
    def index(self) -> dict[str, Signature]:
        """Each file's and link's signature (computed once, on the first diff)."""
        if self._index is None:
            self._index = _index_tar(self.tar)
        return self._index


class WorkspaceTars:
    """Workspace snapshots by repository and commit, each made once; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_commit: dict[tuple[str, str], WorkspaceTar] = {}

    def get(self, workspace: Workspace) -> WorkspaceTar:
        """The snapshot of ``workspace``: its directory as it is now, or its commit's tree."""
        src = Path(workspace.path)
        if not src.is_dir():
            raise WorkspaceError(f"workspace {src} is not a directory")
        if workspace.commit is None:
            return WorkspaceTar(directory_tar(src))
        sha = repository.resolve_commit(src, workspace.commit)
        if sha is None:
            raise WorkspaceError(f"{workspace.commit!r} names no commit in {src}")
        key = (str(src.resolve()), sha)
        with self._lock:
            snapshot = self._by_commit.get(key)
        if snapshot is None:
            with git_failures_as_workspace_errors():
                snapshot = WorkspaceTar(_reowned_tar(repository.archive(src, sha)))
            with self._lock:
                self._by_commit[key] = snapshot
        return snapshot


# --------------------------------------------------------------------------- coming out


class _ChunkReader(io.RawIOBase):
    """A file over an iterator of byte chunks, so a tar can be read as it streams in."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Buffer) -> int:
        while not self._pending:
            try:
                self._pending = next(self._chunks)
            except StopIteration:
                return 0
        view = memoryview(buf)
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _entry_name(info: tarfile.TarInfo) -> str:
    name = info.name
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def _looks_binary(data: bytes) -> bool:
    return b"\0" in data[:8000]  # git's own test


def _signature(info: tarfile.TarInfo, data: bytes | None) -> Signature:
    # What git sees of an entry: its kind, its executable bit, and its content or target.
    if info.issym():
        return ("l", info.linkname)
    return ("f", bool(info.mode & 0o100), hashlib.sha1(data or b"").digest())


def _index_tar(tar_bytes: bytes) -> dict[str, Signature]:
    out: dict[str, Signature] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
        for info in tar:
            if info.isfile():
                fh = tar.extractfile(info)
                out[_entry_name(info)] = _signature(info, fh.read() if fh else b"")
            elif info.issym():
                out[_entry_name(info)] = _signature(info, None)
    return out


def changed_entries(base_tar: bytes, base: dict[str, Signature],
                    chunks: Iterable[bytes]) -> tuple[list[str], bytes, bytes]:
    """Compare the base with the streamed current tree without keeping more than the changes.

    Returns the changed names, and two small tars (base side, current side) of just those
    entries. New binary files are dropped here: they are build products, not edits.
    """
    seen: set[str] = set()
    changed: list[str] = []
    b_side = io.BytesIO()
    with tarfile.open(fileobj=io.BufferedReader(_ChunkReader(chunks), 1 << 16), mode="r|") as cur, \
            tarfile.open(fileobj=b_side, mode="w", format=tarfile.GNU_FORMAT) as out:
        for info in cur:
            name = _entry_name(info)
            if not name or info.isdir():
                continue
            if name.startswith("/") or ".." in PurePosixPath(name).parts:
                raise UnsafeArchive(f"unsafe name in the sandbox's archive: {info.name}")
            if not (info.isfile() or info.issym()):
                raise UnsafeArchive(f"device or special file in the sandbox's archive: {info.name}")
            data = None
            if info.isfile():
                fh = cur.extractfile(info)
                data = fh.read() if fh else b""
            seen.add(name)
            if base.get(name) == _signature(info, data):
                continue
            if name not in base and data is not None and _looks_binary(data):
                continue
            changed.append(name)
            info.name = name
            out.addfile(info, io.BytesIO(data) if data is not None else None)
    changed += [n for n in base if n not in seen]
    return sorted(changed), _entries_of(base_tar, set(changed)), b_side.getvalue()


def _entries_of(tar_bytes: bytes, wanted: set[str]) -> bytes:
    """A tar of just the files and links of ``tar_bytes`` named in ``wanted``."""
    kept = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as src, \
            tarfile.open(fileobj=kept, mode="w", format=tarfile.GNU_FORMAT) as out:
        for info in src:
            if _entry_name(info) in wanted and (info.isfile() or info.issym()):
                out.addfile(info, src.extractfile(info) if info.isfile() else None)
    return kept.getvalue()


def diff_changed(a_tar: bytes, b_tar: bytes) -> str:
    """``git diff --no-index`` of the changed entries extracted side by side as ``a`` and ``b``,
    which yields the ``a/`` and ``b/`` prefixes of a repository diff."""
    tmp = Path(tempfile.mkdtemp(prefix="bakeoff-docker-diff-"))
    try:
        safe_extract(a_tar, tmp / "a")
        safe_extract(b_tar, tmp / "b")  # refuses links that leave the workspace
        # No repository and no configuration of the user's has a say in how the diff reads.
        env = repository.private_env(tmp / "no-repository", tmp)
        out = repository.run(tmp, "diff", "--no-index", "--no-prefix", "--no-renames", "--no-color",
                             "--no-ext-diff", "a", "b", env={**env, "HOME": str(tmp)}, check=False)
        if not out:
            # Only entries that differ are compared, so an empty diff means git failed (it exits
            # 1 both for "they differ" and for some failures: its status cannot tell).
            raise RuntimeError("git diff --no-index printed nothing for entries that differ")
        return _repository_headers(out.decode("utf-8", errors="replace"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _repository_headers(text: str) -> str:
    """A file only on one side reads ``diff --git b/x b/x`` (or ``a/x a/x``) in a no-index diff;
    a repository diff says ``a/x b/x``."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if not line.startswith("diff --git "):
            continue
        rest = line[len("diff --git "):].rstrip("\n")
        half = (len(rest) - 1) // 2
        if len(rest) % 2 == 1 and rest[half] == " " and rest[:half] == rest[half + 1:]:
            name = rest[:half]
            quoted = name.startswith('"')
            path = name[3:-1] if quoted else name[2:]
            lines[i] = (f'diff --git "a/{path}" "b/{path}"\n' if quoted else f"diff --git a/{path} b/{path}\n")
    return "".join(lines)
