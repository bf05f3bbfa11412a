"""Reading a diff, applying a result to the user's repository safely, and taking it back.

``parse_patch`` is the one diff parser: validation, the apply and the GitHub Action's
suggestions all read its parse, and it reads paths as ``git apply`` does.

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
import threading
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, Field

from bakeoff.agent import repository
from bakeoff.agent.repository import GitError

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


class Hunk(BaseModel):
    """One ``@@`` hunk: where it sits on each side, and its lines with their prefix
    (``' '`` context, ``'-'`` removed, ``'+'`` added, ``'\\'`` a no-newline marker)."""

    old_start: int
    old_len: int
    new_start: int
    new_len: int
    lines: list[str] = Field(default_factory=list)

    @property
    def new_text(self) -> list[str]:
        """The hunk's lines as the file reads after the patch."""
        return [line[1:] for line in self.lines if line[:1] in (" ", "+")]


class FilePatch(BaseModel):
    """One file of a diff: the path before (None when created) and after (None when deleted)."""

    old_path: str | None = None
    new_path: str | None = None
    new_mode: str | None = None
    binary: bool = False
    hunks: list[Hunk] = Field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [p for p in dict.fromkeys([self.old_path, self.new_path]) if p is not None]


class ParsedPatch(BaseModel):
    """A diff read once: the files it touches, and what is malformed about it."""

    files: list[FilePatch] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        """Every path the patch touches (both sides of a rename), each once."""
        return list(dict.fromkeys(p for f in self.files for p in f.paths))


def _unquote(raw: str) -> str:
    quoted = re.match(r'"((?:[^"\\]|\\.)*)"', raw)
    if quoted:
        return codecs.escape_decode(quoted[1].encode())[0].decode("utf-8", errors="replace")
    return raw.split("\t", 1)[0]  # a tab ends the name (git writes one after names with spaces)


def _name(raw: str, *, strip: int = 1) -> str | None:
    """A path as ``git apply -p1`` reads it (``strip=0``: as -p0); an absolute one stays whole, to be refused."""
    path = _unquote(raw)
    if path == "/dev/null":
        return None
    path = re.sub("/{2,}", "/", path)
    if strip and "/" in path and not path.startswith("/"):
        path = path.split("/", 1)[1]
    return path


def _header_names(rest: str) -> tuple[str | None, str | None]:
    """The two names of a ``diff --git`` line; unquoted names with spaces are the same name twice."""
    m = re.fullmatch(r'("(?:[^"\\]|\\.)*"|\S+) ("(?:[^"\\]|\\.)*"|\S+)', rest)
    if m:
        return _name(m[1]), _name(m[2])
    half = len(rest) // 2
    if len(rest) % 2 == 1 and rest[half] == " " and _name(rest[:half]) == _name(rest[half + 1:]):
        return _name(rest[:half]), _name(rest[half + 1:])
    return None, None


def _read_extended_header(line: str, current: FilePatch) -> None:
    if line.startswith(("new file mode ", "new mode ")):
        current.new_mode = line.split()[-1]
    elif line.startswith("deleted file mode "):
        current.new_path = None
    elif line.startswith(("rename from ", "copy from ")):
        current.old_path = _name(line.split(" ", 2)[2], strip=0)
    elif line.startswith(("rename to ", "copy to ")):
        current.new_path = _name(line.split(" ", 2)[2], strip=0)
    elif line.startswith("GIT binary patch") or (line.startswith("Binary files ") and line.endswith(" differ")):
        current.binary = True


def _read_hunk(lines: list[str], i: int, current: FilePatch | None, problems: list[str]) -> int:
    """Read the hunk whose header is ``lines[i]``; returns the index after it. Its body is read by
    counting lines, so a removed ``-- x`` or an added ``++ y`` is never taken for a file header."""
    m = _HUNK.match(lines[i])
    if current is None or m is None:
        problems.append(f"malformed diff: hunk header {lines[i][:60]!r} outside a file or unreadable")
        return i + 1
    hunk = Hunk(old_start=int(m[1]), old_len=int(m[2] if m[2] is not None else 1),
                new_start=int(m[3]), new_len=int(m[4] if m[4] is not None else 1))
    current.hunks.append(hunk)
    old_n, new_n = hunk.old_len, hunk.new_len
    i += 1
    while i < len(lines) and (old_n > 0 or new_n > 0):
        line = lines[i] or " "  # an empty line is context whose trailing space was stripped
        if line[0] not in " -+\\":
            break
        old_n -= line[0] in " -"
        new_n -= line[0] in " +"
        hunk.lines.append(line)
        i += 1
    if old_n != 0 or new_n != 0:
        problems.append(f"malformed diff: a hunk of {current.new_path or current.old_path} "
                        "does not match its line counts")
    while i < len(lines) and lines[i].startswith("\\"):
        hunk.lines.append(lines[i])
        i += 1
    return i


def _read_line(lines: list[str], i: int, files: list[FilePatch], problems: list[str]) -> int:
    """Read the header line or hunk at ``lines[i]`` into ``files``; returns the next index."""
    line = lines[i]
    current = files[-1] if files else None
    if line.startswith("diff --git "):
        old_path, new_path = _header_names(line[len("diff --git "):])
        files.append(FilePatch(old_path=old_path, new_path=new_path))
    elif line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
        if current is None or current.binary or current.hunks:
            current = FilePatch()
            files.append(current)
        current.old_path, current.new_path = _name(line[4:]), _name(lines[i + 1][4:])
        return i + 2
    elif line.startswith("@@"):
        return _read_hunk(lines, i, current, problems)
    elif current is not None:
        _read_extended_header(line, current)
    return i + 1


def _file_problems(files: list[FilePatch]) -> list[str]:
    if not files:
        return ["malformed diff: no file headers (expected 'diff --git' or '---'/'+++' lines)"]
    problems = []
    for f in files:
        if not f.paths:
            problems.append("malformed diff: a file section names no path")
        elif not f.binary and not f.hunks and f.new_mode is None and not (
                f.old_path and f.new_path is None) and f.old_path == f.new_path:
            problems.append(f"malformed diff: no change for {f.paths[0]}")
    return problems


def parse_patch(patch: str) -> ParsedPatch:
    """The files and hunks a unified (git) diff touches, and what is malformed about it. Pure.

    Paths are read as ``git apply`` reads them, and lines are split on ``\\n`` alone as git
    splits them (a form feed or U+2028 inside a line does not end it).
    """
    lines = patch.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    files: list[FilePatch] = []
    problems: list[str] = []
    i = 0
    while i < len(lines):
        i = _read_line(lines, i, files, problems)
    return ParsedPatch(files=files, problems=problems + _file_problems(files))


# --------------------------------------------------------------------------- validation


def _is_ci(path: str) -> bool:
    return (path.startswith(_CI_PREFIXES) or path in _CI_FILES
            or posixpath.basename(path) in _CI_NAMES)


def _leaves(repo_real: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real != repo_real and not real.startswith(repo_real + os.sep)


def validate_patch(patch: str, repo: Path) -> list[str]:
    """Why ``patch`` must not be applied to ``repo``; an empty list means it may."""
    parsed = parse_patch(patch)
    reasons = list(parsed.problems)
    repo_real = os.path.realpath(repo)
    for f in parsed.files:
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
            target = next((line[1:] for h in f.hunks for line in h.lines if line[:1] == "+"), "")
            inside = posixpath.normpath(posixpath.join(posixpath.dirname(f.new_path), target))
            if (target.startswith("/") or inside == ".." or inside.startswith("../")
                    or _leaves(repo_real, os.path.join(repo_real, inside))):
                reasons.append(f"new symlink {f.new_path} points outside the repository: {target}")
    return list(dict.fromkeys(reasons))


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
    with _refused_when_git_fails():
        # --numstat: the paths git would write, which must all be paths the check above read.
        out = repository.run(repo, "apply", "--check", "--numstat", "-z", "--whitespace=nowarn", input=patch)
    unseen = {e.split(b"\t", 2)[2].decode("utf-8", "replace") for e in out.split(b"\0") if e} - set(paths)
    if unseen:
        raise PatchRejected([f"git would change paths the check did not read: {', '.join(sorted(unseen))}"])
    return head


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
