"""Applying a validated patch to the user's repository safely, and taking it back.

Before a patch touches the user's tree: it passes ``patches.validate_patch`` (it stays inside
the repo, no ``.git/`` or CI files, no symlink leaving it), the repo's HEAD must still be the
run's base, and no file the patch touches may have uncommitted changes (the user may have
edited during the run). The apply is atomic: on any failure, Ctrl-C (or TERM, or HUP)
included, the previous state is restored. ``undo`` restores exactly the state before the
apply, and refuses when the user changed things since.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import posixpath
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, Field

from bakeoff.agent import repository
from bakeoff.agent.patches import PatchRejected, parse_patch, validate_patch
from bakeoff.agent.repository import GitError


class UndoRefused(PatchRejected):
    """Undo would overwrite something the user changed after the apply."""


class FileState(BaseModel):
    """One touched path: what it was before the apply, and a fingerprint of what it became."""

    path: str
    existed: bool
    content_b64: str | None = None  # file bytes, or the link target of a symlink
    mode: int | None = None
    is_symlink: bool = False
    after_sha256: str | None = None  # None when the apply left no file there


class AppliedChange(BaseModel):
    """What ``apply_patch`` did, with everything ``undo`` needs to take it back."""

    repo: Path
    patch: str
    head_before: str
    branch_before: str | None  # None when HEAD was detached
    head_after: str
    branch_after: str | None
    committed: bool = False
    created_branch: str | None = None
    files: list[FileState] = Field(default_factory=list)
    created_dirs: list[str] = Field(default_factory=list)


# --------------------------------------------------------------------------- git


@contextlib.contextmanager
def _refused_when_git_fails() -> Iterator[None]:
    """A failing git command refuses the patch (or its undo), naming the command and git's words."""
    try:
        yield
    except GitError as err:
        raise PatchRejected([str(err)]) from None


def _head(repo: Path) -> str:
    with _refused_when_git_fails():
        return repository.text(repo, "rev-parse", "--verify", "HEAD")


def _fingerprint(path: Path) -> str | None:
    if path.is_symlink():
        return "link:" + hashlib.sha256(os.readlink(path).encode()).hexdigest()
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return None


def _capture(repo: Path, rel: str) -> FileState:
    p = repo / rel
    if p.is_symlink():
        return FileState(path=rel, existed=True, is_symlink=True,
                         content_b64=base64.b64encode(os.readlink(p).encode()).decode())
    if p.is_file():
        return FileState(path=rel, existed=True, mode=p.stat().st_mode & 0o7777,
                         content_b64=base64.b64encode(p.read_bytes()).decode())
    return FileState(path=rel, existed=False)


def _restore(repo: Path, files: list[FileState], created_dirs: list[str]) -> None:
    for state in files:
        p = repo / state.path
        if p.is_symlink() or p.is_file():
            p.unlink()
        if not state.existed:
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        data = base64.b64decode(state.content_b64 or "")
        if state.is_symlink:
            os.symlink(data.decode(), p)
        else:
            p.write_bytes(data)
            if state.mode is not None:
                os.chmod(p, state.mode)
    for rel in sorted(created_dirs, key=len, reverse=True):
        try:
            (repo / rel).rmdir()
        except OSError:
            pass  # not empty: something else lives there now, and it is not ours to remove


# --------------------------------------------------------------------------- apply / undo


def apply_patch(repo: Path, patch: str, *, base_commit: str | None = None, message: str | None = None,
                branch: str | None = None) -> AppliedChange:
    """Apply ``patch`` to the repository at ``repo``, all or nothing.

    With ``message`` the change becomes one commit (commit hooks are not run), on a new
    ``branch`` when one is named, else on the current branch. Raises ``PatchRejected``
    (nothing changed) when the patch is unsafe, the base moved, a touched file has
    uncommitted changes, or git cannot apply it.
    """
    repo = Path(repo).resolve()
    if branch is not None and message is None:
        raise ValueError("a branch needs a commit message")
    parsed = parse_patch(patch)
    paths = parsed.paths
    head = _check_applicable(repo, patch, paths, base_commit, branch)
    branch_before = repository.current_branch(repo)
    states = [_capture(repo, p) for p in paths]
    created_dirs = sorted({d for f in parsed.files if f.new_path for d in _missing_parents(repo, f.new_path)})
    locks_before = _git_locks(repo)
    try:
        with _refused_when_git_fails():
            _write(repo, patch, head, paths, message=message, branch=branch)
    except BaseException:
        # A git killed by Ctrl-C leaves its lock files behind; they are ours to remove.
        for lock in _git_locks(repo) - locks_before:
            lock.unlink(missing_ok=True)
        with _ctrl_c_deferred():
            _rollback(repo, head, branch_before, branch, paths, states, created_dirs, index=message is not None)
        raise
    for state in states:
        state.after_sha256 = _fingerprint(repo / state.path)
    return AppliedChange(
        repo=repo, patch=patch, head_before=head, branch_before=branch_before,
        head_after=_head(repo), branch_after=repository.current_branch(repo), committed=message is not None,
        created_branch=branch, files=states, created_dirs=created_dirs,
    )


def _check_applicable(repo: Path, patch: str, paths: list[str], base_commit: str | None, branch: str | None) -> str:
    """HEAD, when ``patch`` may be applied to ``repo`` now; else ``PatchRejected`` says why."""
    reasons = validate_patch(patch, repo)
    if reasons:
        raise PatchRejected(reasons)
    head = _head(repo)
    if base_commit is not None and repository.resolve_commit(repo, base_commit) != head:
        raise PatchRejected([f"the repository moved: HEAD is {head[:12]}, the run started from "
                             f"{base_commit[:12]}; re-run on the new HEAD"])
    with _refused_when_git_fails():
        dirty = repository.run(repo, "status", "--porcelain", "--ignored", "--untracked-files=all", "--", *paths)
    if dirty.strip():
        changed = ", ".join(line[3:] for line in dirty.decode("utf-8", "replace").splitlines())
        raise PatchRejected([f"uncommitted changes in files the patch touches: {changed}; "
                             "commit or stash them first"])
    if branch is not None and repository.resolve_commit(repo, f"refs/heads/{branch}"):
        raise PatchRejected([f"branch {branch} already exists"])
    try:
        # --numstat: the paths git would write, which must all be paths the check above read.
        out = repository.run(repo, "apply", "--check", "--numstat", "-z", "--whitespace=nowarn", input=patch)
    except GitError as err:
        raise PatchRejected(_not_text(repo, paths) or [str(err)]) from None
    unseen = {e.split(b"\t", 2)[2].decode("utf-8", "replace") for e in out.split(b"\0") if e} - set(paths)
    if unseen:
        raise PatchRejected([f"git would change paths the check did not read: {', '.join(sorted(unseen))}"])
    return head


def _not_text(repo: Path, paths: list[str]) -> list[str]:
    """Why a patch cannot apply when a file it touches is not UTF-8: bakeoff reads and writes
    files as UTF-8 text, so its diff of such a file cannot match the file's bytes."""
    reasons = []
    for rel in paths:
        p = repo / rel
        if p.is_symlink() or not p.is_file():
            continue
        data = p.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            byte = data[exc.start]
            reasons.append(f"{rel} is not UTF-8 text (byte 0x{byte:02x} at offset {exc.start}: Latin-1 or "
                           f"Windows-1252, most likely): bakeoff "
                           f"edits files as UTF-8, so its change cannot apply to this file's bytes; convert it "
                           f"(iconv -f latin1 -t utf-8) and run again, or make the change by hand")
    return reasons


def _write(repo: Path, patch: str, head: str, paths: list[str], *, message: str | None, branch: str | None) -> None:
    if branch is not None:
        repository.run(repo, "branch", branch, head)
        repository.run(repo, "symbolic-ref", "HEAD", f"refs/heads/{branch}")
    repository.run(repo, "apply", "--whitespace=nowarn", *(["--index"] if message else []), input=patch)
    if message is not None:
        repository.run(repo, *repository.identity_flags(repo), "commit", "-q", "--no-verify", "-m", message,
                       "--", *paths)


_DEFERRED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _ctrl_c_deferred():
    """A second Ctrl-C (or TERM, or HUP) must not cut a rollback short; it is delivered once the
    rollback is done, to whatever handled it before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in _DEFERRED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    if pending:
        if previous[pending[0]] is signal.default_int_handler:
            raise KeyboardInterrupt
        signal.raise_signal(pending[0])


def _git_locks(repo: Path) -> set[Path]:
    git_dir = repo / ".git"
    found = set()
    for dirpath, dirnames, filenames in os.walk(git_dir):
        dirnames[:] = [d for d in dirnames if d != "objects"]
        found.update(Path(dirpath) / n for n in filenames if n.endswith(".lock"))
    return found


def _missing_parents(repo: Path, rel: str) -> list[str]:
    missing = []
    parent = posixpath.dirname(rel)
    while parent and not (repo / parent).exists():
        missing.append(parent)
        parent = posixpath.dirname(parent)
    return missing


def _rollback(repo: Path, head: str, branch_before: str | None, created_branch: str | None,
              paths: list[str], states: list[FileState], created_dirs: list[str], *, index: bool) -> None:
    with _refused_when_git_fails():
        if branch_before is not None:
            if created_branch is None:
                repository.run(repo, "update-ref", f"refs/heads/{branch_before}", head)
            repository.run(repo, "symbolic-ref", "HEAD", f"refs/heads/{branch_before}")
        else:
            repository.run(repo, "update-ref", "--no-deref", "HEAD", head)
        if created_branch is not None:
            repository.run(repo, "branch", "-D", created_branch, check=False)
        if index:
            repository.run(repo, "reset", "-q", head, "--", *paths, check=False)
    _restore(repo, states, created_dirs)


def undo(repo: Path, change: AppliedChange) -> None:
    """Restore exactly the state before ``change`` (files, index entries, HEAD, branch).

    Raises ``UndoRefused`` (and changes nothing) when HEAD, the branch or a touched file
    changed after the apply.
    """
    repo = Path(repo).resolve()
    reasons = []
    head, branch = _head(repo), repository.current_branch(repo)
    if head != change.head_after:
        reasons.append(f"HEAD moved since the apply (now {head[:12]}, was {change.head_after[:12]})")
    if branch != change.branch_after:
        reasons.append(f"the current branch changed since the apply (now {branch}, was {change.branch_after})")
    for state in change.files:
        if _fingerprint(repo / state.path) != state.after_sha256:
            reasons.append(f"{state.path} changed since the apply")
    if reasons:
        raise UndoRefused(reasons)
    paths = [s.path for s in change.files]
    _rollback(repo, change.head_before, change.branch_before, change.created_branch, paths,
              change.files, change.created_dirs, index=change.committed)
