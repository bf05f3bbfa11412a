"""Applying a result to the user's repository, safely, and taking it back.

The user's tree is sacred. Before a patch touches it: the patch must stay inside the repo
(no ``..``, no absolute path, no symlink leaving it, none of ``.git/`` or CI files, nothing
binary), the repo's HEAD must still be the run's base, and no file the patch touches may
have uncommitted changes (the user may have edited during the run). The apply is atomic:
on any failure, Ctrl-C included, the previous state is restored. ``undo`` restores exactly
the state before the apply, and refuses when the user changed things since.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import hashlib
import os
import posixpath
import re
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, Field

_CI_PREFIXES = (".github/workflows/", ".ci/", ".circleci/")
_CI_FILES = (".gitlab-ci.yml", "azure-pipelines.yml")
_CI_NAMES = ("Jenkinsfile", "jenkinsfile")
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_SYMLINK_MODE = "120000"


class PatchRejected(Exception):
    """The patch (or its undo) was refused; ``reasons`` say why, one per problem."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


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


# --------------------------------------------------------------------------- parsing


@dataclass
class _FilePatch:
    old_path: str | None = None
    new_path: str | None = None
    new_mode: str | None = None
    binary: bool = False
    added: list[str] = field(default_factory=list)  # '+' lines (a new symlink's target)
    hunks: int = 0

    @property
    def paths(self) -> list[str]:
        return [p for p in dict.fromkeys([self.old_path, self.new_path]) if p is not None]


def _unquote(raw: str) -> str:
    raw = raw.rstrip("\n")
    if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
        return codecs.escape_decode(raw[1:-1].encode())[0].decode("utf-8", errors="replace")
    return raw.split("\t", 1)[0]


def _strip_prefix(raw: str) -> str | None:
    path = _unquote(raw.strip() if not raw.startswith('"') else raw)
    if path == "/dev/null":
        return None
    for prefix in ("a/", "b/"):
        if path.startswith(prefix):
            return path[len(prefix):]
    return path


def parse_patch(patch: str) -> tuple[list[_FilePatch], list[str]]:
    """The files a unified (git) diff touches, and what is malformed about it."""
    files: list[_FilePatch] = []
    problems: list[str] = []
    lines = patch.splitlines()
    current: _FilePatch | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("diff --git "):
            current = _FilePatch()
            files.append(current)
            m = re.match(r'^diff --git ("(?:[^"\\]|\\.)*"|\S+) ("(?:[^"\\]|\\.)*"|\S+)$', line)
            if m:
                current.old_path, current.new_path = _strip_prefix(m.group(1)), _strip_prefix(m.group(2))
        elif line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            if current is None or current.binary or current.hunks:
                current = _FilePatch()
                files.append(current)
            current.old_path = _strip_prefix(line[4:])
            current.new_path = _strip_prefix(lines[i + 1][4:])
            i += 1
        elif current is not None and line.startswith(("new file mode ", "new mode ")):
            current.new_mode = line.split()[-1]
        elif current is not None and line.startswith("deleted file mode "):
            current.new_path = None
        elif current is not None and line.startswith(("rename from ", "copy from ")):
            current.old_path = _unquote(line.split(" ", 2)[2])
        elif current is not None and line.startswith(("rename to ", "copy to ")):
            current.new_path = _unquote(line.split(" ", 2)[2])
        elif current is not None and (line.startswith("GIT binary patch") or
                                      (line.startswith("Binary files ") and line.endswith(" differ"))):
            current.binary = True
        elif line.startswith("@@"):
            m = _HUNK.match(line)
            if current is None or m is None:
                problems.append(f"malformed diff: hunk header {line[:60]!r} outside a file or unreadable")
                i += 1
                continue
            old_n = int(m.group(2)) if m.group(2) is not None else 1
            new_n = int(m.group(4)) if m.group(4) is not None else 1
            current.hunks += 1
            i += 1
            while i < len(lines) and (old_n > 0 or new_n > 0):
                body = lines[i]
                tag = body[:1]
                if tag in (" ", ""):
                    old_n, new_n = old_n - 1, new_n - 1
                elif tag == "-":
                    old_n -= 1
                elif tag == "+":
                    new_n -= 1
                    current.added.append(body[1:])
                elif tag == "\\":
                    pass
                else:
                    break
                i += 1
            if old_n != 0 or new_n != 0:
                problems.append(f"malformed diff: a hunk of {current.new_path or current.old_path} "
                                "does not match its line counts")
            while i < len(lines) and lines[i].startswith("\\"):
                i += 1
            continue
        i += 1
    if not files:
        problems.append("malformed diff: no file headers (expected 'diff --git' or '---'/'+++' lines)")
    for f in files:
        if not f.paths:
            problems.append("malformed diff: a file section names no path")
        elif not f.binary and not f.hunks and f.new_mode is None and not (
                f.old_path and f.new_path is None) and f.old_path == f.new_path:
            problems.append(f"malformed diff: no change for {f.paths[0]}")
    return files, problems


# --------------------------------------------------------------------------- validation


def _is_ci(path: str) -> bool:
    return (path.startswith(_CI_PREFIXES) or path in _CI_FILES
            or posixpath.basename(path) in _CI_NAMES)


def _leaves(repo_real: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real != repo_real and not real.startswith(repo_real + os.sep)


def validate_patch(patch: str, repo: Path) -> list[str]:
    """Why ``patch`` must not be applied to ``repo``; an empty list means it may."""
    files, reasons = parse_patch(patch)
    repo_real = os.path.realpath(repo)
    for f in files:
        for path in f.paths:
            parts = path.split("/")
            if path.startswith("/") or os.path.isabs(path):
                reasons.append(f"absolute path: {path}")
                continue
            if ".." in parts:
                reasons.append(f"path leaves the repository: {path}")
                continue
            # Lower case: on case-insensitive file systems ".GIT" is ".git".
            if ".git" in (p.lower() for p in parts):
                reasons.append(f"touches .git/: {path}")
            if _is_ci(path) or _is_ci(path.lower()):
                reasons.append(f"touches a CI file: {path}")
            # Any existing component that is a symlink leading out of the repo.
            for k in range(1, len(parts) + 1):
                prefix = os.path.join(repo, *parts[:k])
                if os.path.islink(prefix) and _leaves(repo_real, prefix):
                    reasons.append(f"path goes through a symlink leaving the repository: {'/'.join(parts[:k])}")
                    break
        if f.binary:
            reasons.append(f"binary patch: {f.new_path or f.old_path}")
        if f.new_mode == _SYMLINK_MODE and f.new_path is not None:
            target = f.added[0] if f.added else ""
            inside = posixpath.normpath(posixpath.join(posixpath.dirname(f.new_path), target))
            if (target.startswith("/") or inside == ".." or inside.startswith("../")
                    or _leaves(repo_real, os.path.join(repo_real, inside))):
                reasons.append(f"new symlink {f.new_path} points outside the repository: {target}")
    return list(dict.fromkeys(reasons))


# --------------------------------------------------------------------------- git


def _git(repo: Path, *args: str, input: str | None = None, check: bool = True) -> str:
    env = {**os.environ, "GIT_LITERAL_PATHSPECS": "1", "GIT_TERMINAL_PROMPT": "0"}
    proc = subprocess.run(["git", *args], cwd=repo, input=input, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise PatchRejected([f"git {args[0]} failed: {proc.stderr.strip() or proc.stdout.strip()}"])
    return proc.stdout


def _head(repo: Path) -> str:
    return _git(repo, "rev-parse", "--verify", "HEAD").strip()


def _branch(repo: Path) -> str | None:
    out = _git(repo, "symbolic-ref", "-q", "--short", "HEAD", check=False).strip()
    return out or None


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


def _identity(repo: Path) -> list[str]:
    if _git(repo, "config", "user.email", check=False).strip():
        return []
    return ["-c", "user.name=bakeoff", "-c", "user.email=bakeoff@localhost"]


# --------------------------------------------------------------------------- apply / undo


def apply_patch(
    repo: Path,
    patch: str,
    *,
    base_commit: str | None = None,
    message: str | None = None,
    branch: str | None = None,
) -> AppliedChange:
    """Apply ``patch`` to the repository at ``repo``, all or nothing.

    With ``message`` the change becomes one commit (commit hooks are not run), on a new
    ``branch`` when one is named, else on the current branch. Raises ``PatchRejected``
    (nothing changed) when the patch is unsafe, the base moved, a touched file has
    uncommitted changes, or git cannot apply it.
    """
    repo = Path(repo).resolve()
    if branch is not None and message is None:
        raise ValueError("a branch needs a commit message")
    reasons = validate_patch(patch, repo)
    if reasons:
        raise PatchRejected(reasons)
    head = _head(repo)
    if base_commit is not None:
        base = _git(repo, "rev-parse", "--verify", f"{base_commit}^{{commit}}", check=False).strip()
        if base != head:
            raise PatchRejected([f"the repository moved: HEAD is {head[:12]}, the run started from "
                                 f"{base_commit[:12]}; re-run on the new HEAD"])
    files, _ = parse_patch(patch)
    paths = list(dict.fromkeys(p for f in files for p in f.paths))
    dirty = _git(repo, "status", "--porcelain", "--ignored", "--untracked-files=all", "--", *paths)
    if dirty.strip():
        changed = ", ".join(line[3:] for line in dirty.splitlines())
        raise PatchRejected([f"uncommitted changes in files the patch touches: {changed}; "
                             "commit or stash them first"])
    if branch is not None and _git(repo, "rev-parse", "--verify", "-q", f"refs/heads/{branch}", check=False).strip():
        raise PatchRejected([f"branch {branch} already exists"])
    _git(repo, "apply", "--check", "--whitespace=nowarn", input=patch)

    branch_before = _branch(repo)
    states = [_capture(repo, p) for p in paths]
    created_dirs = sorted({d for f in files if f.new_path for d in _missing_parents(repo, f.new_path)})
    locks_before = _git_locks(repo)
    try:
        if branch is not None:
            _git(repo, "branch", branch, head)
            _git(repo, "symbolic-ref", "HEAD", f"refs/heads/{branch}")
        _git(repo, "apply", "--whitespace=nowarn", *(["--index"] if message else []), input=patch)
        if message is not None:
            _git(repo, *_identity(repo), "commit", "-q", "--no-verify", "-m", message, "--", *paths)
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
        head_after=_head(repo), branch_after=_branch(repo), committed=message is not None,
        created_branch=branch, files=states, created_dirs=created_dirs,
    )


@contextlib.contextmanager
def _ctrl_c_deferred():
    """A second Ctrl-C must not cut a rollback short; it is delivered once the rollback is done."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


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
    if branch_before is not None:
        if created_branch is None:
            _git(repo, "update-ref", f"refs/heads/{branch_before}", head)
        _git(repo, "symbolic-ref", "HEAD", f"refs/heads/{branch_before}")
    else:
        _git(repo, "update-ref", "--no-deref", "HEAD", head)
    if created_branch is not None:
        _git(repo, "branch", "-D", created_branch, check=False)
    if index:
        _git(repo, "reset", "-q", head, "--", *paths, check=False)
    _restore(repo, states, created_dirs)


def undo(repo: Path, change: AppliedChange) -> None:
    """Restore exactly the state before ``change`` (files, index entries, HEAD, branch).

    Raises ``UndoRefused`` (and changes nothing) when HEAD, the branch or a touched file
    changed after the apply.
    """
    repo = Path(repo).resolve()
    reasons = []
    if _head(repo) != change.head_after:
        reasons.append(f"HEAD moved since the apply (now {_head(repo)[:12]}, was {change.head_after[:12]})")
    if _branch(repo) != change.branch_after:
        reasons.append(f"the current branch changed since the apply (now {_branch(repo)}, was {change.branch_after})")
    for state in change.files:
        if _fingerprint(repo / state.path) != state.after_sha256:
            reasons.append(f"{state.path} changed since the apply")
    if reasons:
        raise UndoRefused(reasons)
    paths = [s.path for s in change.files]
    _rollback(repo, change.head_before, change.branch_before, change.created_branch, paths,
              change.files, change.created_dirs, index=change.committed)
