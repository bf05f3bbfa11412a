"""Reading a diff, and the rules a patch must follow before it may touch the user's tree.

``parse_patch`` is the one diff parser: validation, the apply (``bakeoff.agent.apply``) and
the GitHub Action's suggestions all read its parse, and it reads paths as ``git apply`` does.

The user's tree is sacred. Before a patch touches it, the patch must stay inside the repo
(no ``..``, no absolute path, no symlink leaving it, none of ``.git/`` or CI files, nothing
binary); ``bakeoff.agent.apply`` checks the rest (the base, uncommitted changes) and applies
it atomically.
"""

from __future__ import annotations

import codecs
import os
import posixpath
import re
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
