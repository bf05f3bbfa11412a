"""A sandbox's private copy of a workspace, its pristine base, and safe archive extraction.

The user's tree is sacred: a sandbox never sees the user's directory or a writable ``.git``.
A plain directory is copied (its ``.git`` left out); a git repository at a commit is exported
with ``git archive``. The base is committed to a private git repository kept next to the
copy (outside what sandboxed code can reach), so ``diff()`` is an ordinary git diff with
new and deleted files included.

Every sandbox directory carries a marker naming the process that owns it, so a later start
can remove what a killed orchestrator left behind (``reap_stale``).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import signal
import stat
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from bakeoff.agent import repository
from bakeoff.agent.repository import GitError
from bakeoff.agent.seams import Workspace

MARKER = ".bakeoff-owner"
ENV_MARKER = "BAKEOFF_SANDBOX"  # set in every sandboxed process: "<owner pid>:<sandbox id>"
_PREFIX = "bakeoff-sb-"


class UnsafeArchive(ValueError):
    """An archive tried to place something outside its destination (or a device file)."""


class WorkspaceError(RuntimeError):
    """The workspace given by the user cannot be copied (not a directory, unknown commit…)."""


def sandbox_root() -> Path:
    """Where sandbox directories live: ``$BAKEOFF_SANDBOX_DIR``, else ``bakeoff-sandboxes`` in
    the system temp dir (``bakeoff-sandboxes-<uid>`` when another user owns that one).

    Raises ``SandboxUnavailable`` (the user can fix it) when the directory cannot be made or
    belongs to another user.
    """
    from bakeoff.sandboxes import SandboxUnavailable

    named = os.environ.get("BAKEOFF_SANDBOX_DIR")
    root = Path(named) if named else Path(tempfile.gettempdir()) / "bakeoff-sandboxes"
    if not named and root.is_dir() and root.stat().st_uid != os.geteuid():
        root = root.with_name(f"bakeoff-sandboxes-{os.geteuid()}")  # a shared machine: one each
    where = f"sandbox directory {root}" + (" (BAKEOFF_SANDBOX_DIR)" if named else "")
    try:
        root.mkdir(parents=True, exist_ok=True)
        if root.stat().st_uid != os.geteuid():
            raise SandboxUnavailable(f"{where} belongs to another user: set BAKEOFF_SANDBOX_DIR to a directory of yours")
        # Sandboxed users must traverse it to reach their own directory, but not list others.
        os.chmod(root, 0o711)
    except OSError as exc:
        raise SandboxUnavailable(f"{where} cannot be used ({exc.strerror or exc}): "
                                 "set BAKEOFF_SANDBOX_DIR to a directory you can write") from None
    return root


def new_sandbox_dir(root: Path | None = None) -> Path:
    """A fresh directory owned (by marker) by this process."""
    path = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=root or sandbox_root()))
    os.chmod(path, 0o711)
    (path / MARKER).write_text(f"{os.getpid()}\n")
    return path


# --------------------------------------------------------------------------- copying


@contextlib.contextmanager
def git_failures_as_workspace_errors() -> Iterator[None]:
    """A git command that fails on the workspace (unknown commit, say) raises ``WorkspaceError``."""
    try:
        yield
    except GitError as exc:
        raise WorkspaceError(str(exc)) from exc


def copy_workspace(workspace: Workspace, dest: Path) -> None:
    """Fill the empty directory ``dest`` with the workspace's files (never its ``.git``)."""
    src = workspace.path
    if not src.is_dir():
        raise WorkspaceError(f"workspace {src} is not a directory")
    with disk_full_as_workspace_error(src):
        if workspace.commit is None:
            shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns(".git"),
                            dirs_exist_ok=True)
            return
        with git_failures_as_workspace_errors():
            tar = repository.archive(src, workspace.commit)
        safe_extract(tar, dest)


@contextlib.contextmanager
def disk_full_as_workspace_error(src: Path) -> Iterator[None]:
    """A copy of workspace ``src`` that runs out of space raises a ``WorkspaceError`` saying
    which limit to raise; other failures pass through."""
    try:
        yield
    except (OSError, shutil.Error, WorkspaceError) as exc:
        if "No space left" in str(exc) or getattr(exc, "errno", None) == errno.ENOSPC:
            raise WorkspaceError(f"workspace {src} does not fit in the sandbox's disk limit: "
                                 "raise SandboxLimits.disk_bytes") from exc
        raise


class BaseSnapshot:
    """A private git repository recording the workspace as it was when the sandbox started."""

    def __init__(self, git_dir: Path, work_tree: Path) -> None:
        self.git_dir = git_dir
        self.work_tree = work_tree
        self._env = repository.private_env(git_dir, work_tree)

    @classmethod
    def record(cls, git_dir: Path, work_tree: Path) -> BaseSnapshot:
        """Commit everything in ``work_tree`` (ignored files too) as the base.

        The files are streamed to ``git fast-import``, which writes one pack instead of a
        loose object per file (five times faster on a 1,000-file repo).
        """
        snap = cls(git_dir, work_tree)
        snap._run("init", "-q", "--template=")
        snap._run("config", "core.autocrlf", "false")
        snap._run("config", "core.fileMode", "true")
        snap._run("fast-import", "--quiet", "--done", input=_fast_import_stream(work_tree))
        snap._run("read-tree", "refs/heads/base")
        snap._run("symbolic-ref", "HEAD", "refs/heads/base")
        # Stat data for the index, so each diff re-reads only the files that changed.
        snap._run("update-index", "-q", "--refresh", check=False)
        return snap

    def _run(self, *args: str, extra_env: dict[str, str] | None = None, input: bytes | None = None,
             check: bool = True) -> bytes:
        with git_failures_as_workspace_errors():
            return repository.run(self.work_tree, *args, input=input, env={**self._env, **(extra_env or {})},
                                  check=check)

    def diff(self, include_binary: bool = False) -> str:
        """Git-format diff of the work tree against the base (new and deleted files included).

        New binary files are left out unless asked for: they are build products, not edits.
        """
        index = self.git_dir / "diff-index"
        shutil.copyfile(self.git_dir / "index", index)
        try:
            env = {"GIT_INDEX_FILE": str(index)}
            self._run("add", "-A", "--force", extra_env=env)
            out = self._run("diff", "--cached", "--no-renames", "--no-color", "--no-ext-diff",
                            "HEAD", extra_env=env).decode("utf-8", errors="replace")
        finally:
            index.unlink(missing_ok=True)
        if include_binary or not out:
            return out
        sections = _split_diff(out)
        kept = [s for s in sections if not ("\nnew file mode" in s.split("\n@@", 1)[0] and "\nBinary files " in s)]
        return "".join(kept)


def _quote_path(path: bytes) -> bytes:
    out = bytearray(b'"')
    for b in path:
        if b in (0x22, 0x5C):
            out += b"\\" + bytes([b])
        elif b < 0x20 or b == 0x7F:
            out += b"\\%03o" % b
        else:
            out.append(b)
    return bytes(out + b'"')


def _fast_import_stream(root: Path) -> bytes:
    """A ``git fast-import`` stream committing every file under ``root`` (no ``.git``)."""
    out = bytearray(b"commit refs/heads/base\ncommitter bakeoff <bakeoff@localhost> 0 +0000\ndata 5\nbase\n")
    root_b = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(root_b):
        dirnames[:] = sorted(d for d in dirnames if d != b".git" or os.path.islink(os.path.join(dirpath, d)))
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root_b)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                mode, data = b"120000", os.readlink(full)
            elif stat.S_ISREG(st.st_mode):
                mode = b"100755" if st.st_mode & 0o111 else b"100644"
                with open(full, "rb") as f:
                    data = f.read()
            else:
                continue  # sockets, fifos: not content
            out += b"M " + mode + b" inline " + _quote_path(rel) + b"\ndata %d\n" % len(data) + data + b"\n"
    out += b"\ndone\n"
    return bytes(out)


def _split_diff(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("diff --git ") and current:
            parts.append("".join(current))
            current = []
        current.append(line)
    if current:
        parts.append("".join(current))
    return parts


# --------------------------------------------------------------------------- extraction


def safe_extract(tar_bytes: bytes, dest: Path) -> list[str]:
    """Extract a tar archive into ``dest`` (empty or bakeoff's own), refusing anything that
    would land outside it.

    Refused (``UnsafeArchive``, nothing extracted): absolute names, ``..`` components, links
    whose target leaves ``dest``, entries beneath a link, hard links to outside names,
    device files and FIFOs.
    Returns the names extracted; ``WorkspaceError`` when a safe archive does not fit.
    """
    Path(dest).mkdir(parents=True, exist_ok=True)
    names = check_archive(tar_bytes)
    extract_checked(tar_bytes, dest)
    return names


def check_archive(tar_bytes: bytes) -> list[str]:
    """The names in a tar archive, after ``safe_extract``'s checks (``UnsafeArchive`` if any fails)."""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:*") as tar:
        members = tar.getmembers()
    names = []
    for m in members:
        _check_member(m)
        names.append(m.name)
    # Links are checked where their names put them; an entry beneath a linked directory
    # would be written wherever the link leads, so none is accepted.
    links = {PurePosixPath(m.name).parts for m in members if m.issym()}
    for m in members:
        parts = PurePosixPath(m.name).parts
        if any(parts[:k] in links for k in range(1, len(parts))):
            raise UnsafeArchive(f"entry {m.name} lies beneath a symlink in the archive")
    return names


def extract_checked(tar_bytes: bytes, dest: Path) -> None:
    """Extract an archive that ``check_archive`` passed into ``dest`` (empty or bakeoff's own).

    ``WorkspaceError`` when it does not fit."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if shutil.which("tar") is None:
        # The checks are complete; the "tar" filter is a second line of defence.
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:*") as tar:
            tar.extractall(dest, filter="tar")
        return
    # GNU tar writes 1,000 files in a fraction of tarfile's time; the members are checked.
    proc = subprocess.run(["tar", "-x", "--no-same-owner", "--no-same-permissions", "-C", str(dest)],
                          input=tar_bytes, capture_output=True)
    if proc.returncode != 0:  # checked and safe, but it did not fit (disk full, say)
        raise WorkspaceError(f"tar could not extract into {dest}: {proc.stderr.decode(errors='replace').strip()}")


def _check_member(m: tarfile.TarInfo) -> None:
    name = m.name
    if name.startswith("/") or PurePosixPath(name).is_absolute():
        raise UnsafeArchive(f"absolute path in archive: {name}")
    parts = PurePosixPath(name).parts
    if ".." in parts:
        raise UnsafeArchive(f"path with '..' in archive: {name}")
    if m.ischr() or m.isblk() or m.isfifo() or m.isdev():
        raise UnsafeArchive(f"device or special file in archive: {name}")
    if m.issym():
        target = m.linkname
        if target.startswith("/"):
            raise UnsafeArchive(f"symlink {name} points outside (absolute target {target})")
        if not _stays_inside(PurePosixPath(name).parent, target):
            raise UnsafeArchive(f"symlink {name} points outside: {target}")
    if m.islnk():
        target = m.linkname
        if target.startswith("/") or ".." in PurePosixPath(target).parts:
            raise UnsafeArchive(f"hard link {name} points outside: {target}")


def _stays_inside(base: PurePosixPath, rel: str) -> bool:
    depth = len([p for p in base.parts if p not in ("", ".")])
    for part in PurePosixPath(rel).parts:
        if part in ("", "."):
            continue
        depth = depth - 1 if part == ".." else depth + 1
        if depth < 0:
            return False
    return True


# --------------------------------------------------------------------------- reaping


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(path: Path) -> int | None:
    try:
        return int((path / MARKER).read_text().strip())
    except (OSError, ValueError):
        return None


def unmount_below(path: Path) -> None:
    """Lazily unmount every mount point at or below ``path`` (deepest first)."""
    prefix = str(path.resolve())
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    points = [ln.split()[1].encode().decode("unicode_escape") for ln in lines if len(ln.split()) > 1]
    for point in sorted((p for p in points if p == prefix or p.startswith(prefix + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def remove_tree(path: Path) -> None:
    """Remove a sandbox directory, including files sandboxed code made read-only."""
    unmount_below(path)

    def _writable_then_retry(func: Callable[[str], object], p: str, _exc: object) -> None:
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if not os.path.islink(p) and os.path.isdir(p):
                os.chmod(p, 0o700)
            func(p)
        except FileNotFoundError:
            pass

    if path.exists():
        shutil.rmtree(path, onerror=_writable_then_retry)


def processes_with_marker(predicate: Callable[[str], bool]) -> list[int]:
    """Pids whose environment carries the sandbox marker and whose value satisfies ``predicate``."""
    found = []
    needle = (ENV_MARKER + "=").encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry.name}/environ").read_bytes()
        except OSError:
            continue
        for item in environ.split(b"\0"):
            if item.startswith(needle) and predicate(item[len(needle):].decode(errors="replace")):
                found.append(int(entry.name))
                break
    return found


def reap_stale(root: Path | None = None) -> int:
    """Remove sandbox directories (and kill sandboxed processes) whose owner has died.

    Returns how many directories were removed.
    """
    root = root or sandbox_root()

    def _dead_owner(value: str) -> bool:
        owner = value.split(":", 1)[0]
        return owner.isdigit() and not _alive(int(owner))

    for pid in processes_with_marker(_dead_owner):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    removed = 0
    if not root.is_dir():
        return 0
    for entry in root.iterdir():
        if not entry.name.startswith(_PREFIX) or not entry.is_dir():
            continue
        owner = _owner(entry)
        if owner is not None and _alive(owner):
            continue
        if owner is None and not (entry / MARKER).exists():
            # A directory being created right now has no marker yet; leave young ones alone.
            if time.time() - entry.stat().st_mtime < 60:
                continue
        remove_tree(entry)
        removed += 1
    for lock in root.glob(".uid-*"):
        owner_text = lock.read_text().strip() if lock.is_file() else ""
        if owner_text.isdigit() and not _alive(int(owner_text)):
            lock.unlink(missing_ok=True)
    return removed

