"""The one diff parser: the files, modes and hunks of a unified (git) diff, read as ``git apply`` reads them.

Validation (``path_rules``), the apply (``patches``) and the GitHub Action's suggestions all read
this parse, so the paths that are checked are the paths that are written. Where git's reading
depends on guesses this parse does not make (a traditional diff whose names have no ``a/`` or
``b/`` to strip), the patch is reported malformed instead of guessed at.
"""

from __future__ import annotations

import codecs
import re

from pydantic import BaseModel, Field

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
# What git's diff_timestamp_len strips after a traditional diff's name: a date, maybe a time and
# a zone; a tab before it is dropped alone, spaces all together.
_DATE = re.compile(r"(\t| +)(?:\d\d)?\d\d-\d\d-\d\d(?: \d\d:\d\d:\d\d(?:\.\d+)?)?(?: [+-]\d{4}| [+-]\d\d:\d\d)?$")
# The lines git reads in the header of a ``diff --git`` section, until the first other line.
_GIT_HEADER_LINES = ("--- ", "+++ ", "old mode ", "new mode ", "deleted file mode ", "new file mode ",
                     "copy from ", "copy to ", "rename old ", "rename new ", "rename from ", "rename to ",
                     "similarity index ", "dissimilarity index ", "index ")
SYMLINK_MODE = "120000"


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
    """One file of a diff: the path before (None when created) and after (None when deleted), and
    its modes: ``old_mode``/``new_mode`` from mode lines, ``index_mode`` from an ``index`` line
    (a mode that does not change)."""

    old_path: str | None = None
    new_path: str | None = None
    old_mode: str | None = None
    new_mode: str | None = None
    index_mode: str | None = None
    copied: bool = False  # a copy keeps its source
    binary: bool = False
    hunks: list[Hunk] = Field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [p for p in dict.fromkeys([self.old_path, self.new_path]) if p is not None]

    @property
    def mode_after(self) -> str | None:
        """The mode the patch states for the file it leaves (None: unstated, or no file left)."""
        return None if self.new_path is None else (self.new_mode or self.index_mode)


class ParsedPatch(BaseModel):
    """A diff read once: the files it touches, and what is malformed about it."""

    files: list[FilePatch] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        """Every path the patch touches (both sides of a rename or copy), each once."""
        return list(dict.fromkeys(p for f in self.files for p in f.paths))


class _Unstrippable(ValueError):
    """A name with no leading directory for ``-p1`` to strip: git would guess how to read it."""


def _unquote(raw: str) -> str | None:
    """A C-quoted name as git unquotes it; None when ``raw`` is not quoted."""
    quoted = re.match(r'"((?:[^"\\]|\\.)*)"', raw)
    if not quoted:
        return None
    return codecs.escape_decode(quoted[1].encode())[0].decode("utf-8", errors="replace")


def _strip(path: str, strip: int) -> str | None:
    if path == "/dev/null":
        return None
    path = re.sub("/{2,}", "/", path)
    if strip:
        if "/" not in path:
            raise _Unstrippable(path)
        if not path.startswith("/"):  # an absolute name stays whole, to be refused
            path = path.split("/", 1)[1]
    return path


def _name(raw: str, *, strip: int = 1) -> str | None:
    """A name of a ``diff --git`` section as ``git apply -p1`` reads it (``strip=0``: as -p0):
    quoted, or up to the first tab."""
    quoted = _unquote(raw)
    return _strip(quoted if quoted is not None else raw.split("\t", 1)[0], strip)


def _traditional_name(raw: str) -> str | None:
    """A name of a traditional ``---``/``+++`` pair: as in a git section, except that a date
    after it is cut off with the whitespace before it (so a name may hold spaces and tabs)."""
    quoted = _unquote(raw)
    if quoted is not None:
        return _strip(quoted, 1)
    date = _DATE.search(raw)
    return _strip(raw[: date.start()] if date else raw.split("\t", 1)[0], 1)


def _header_names(rest: str) -> tuple[str | None, str | None]:
    """The two names of a ``diff --git`` line; unquoted names with spaces are the same name twice."""
    m = re.fullmatch(r'("(?:[^"\\]|\\.)*"|\S+) ("(?:[^"\\]|\\.)*"|\S+)', rest)
    if m:
        return _name(m[1]), _name(m[2])
    half = len(rest) // 2
    try:
        if len(rest) % 2 == 1 and rest[half] == " " and _name(rest[:half]) == _name(rest[half + 1:]):
            return _name(rest[:half]), _name(rest[half + 1:])
    except _Unstrippable:
        pass  # not two halves of one name; the ---/+++ lines name the file
    return None, None


def _read_git_header_line(line: str, current: FilePatch) -> None:
    """One line of a ``diff --git`` section's header (one of ``_GIT_HEADER_LINES``)."""
    word, _, rest = line.partition(" ")
    if line.startswith(("--- ", "+++ ")):
        setattr(current, "old_path" if word == "---" else "new_path", _name(rest))
    elif line.startswith(("new file mode ", "new mode ")):
        current.new_mode = line.split()[-1]
    elif line.startswith(("old mode ", "deleted file mode ")):
        current.old_mode = line.split()[-1]
        if line.startswith("deleted"):
            current.new_path = None
    elif line.startswith(("rename from ", "copy from ", "rename old ")):
        current.old_path = _name(line.split(" ", 2)[2], strip=0)
        current.copied = word == "copy"
    elif line.startswith(("rename to ", "copy to ", "rename new ")):
        current.new_path = _name(line.split(" ", 2)[2], strip=0)
    elif line.startswith("index ") and len(line.split()) == 3:
        current.index_mode = line.split()[2]


def _traditional(first: str, second: str) -> FilePatch:
    """A ``---``/``+++`` pair outside a git section. Like git: one name for both sides, the
    first's when it is a shorter prefix of the second's (``file`` over ``file.orig``)."""
    old, new = _traditional_name(first), _traditional_name(second)
    if old is None or new is None:
        return FilePatch(old_path=old, new_path=new)
    name = old if len(old) < len(new) and new.startswith(old) else new
    return FilePatch(old_path=name, new_path=name)


def _read_hunk(lines: list[str], i: int, current: FilePatch, problems: list[str]) -> int:
    """Read the hunk whose header is ``lines[i]``; returns the index after it. Its body is read by
    counting lines, so a removed ``-- x`` or an added ``++ y`` is never taken for a file header."""
    m = _HUNK.match(lines[i])
    if m is None:
        problems.append(f"malformed diff: hunk header {lines[i][:60]!r} unreadable")
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


class _Reader:
    """The parse's state: the files so far, whether a git header is being read, and whether the
    current file may take another hunk (garbage between hunks ends its file, as in git)."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.files: list[FilePatch] = []
        self.problems: list[str] = []
        self.in_header = False
        self.takes_hunks = False

    def read(self, i: int) -> int:
        """Read the line (or hunk) at ``i``; returns the index of the next one."""
        line = self.lines[i].removesuffix("\r")  # a CRLF diff: git reads its names without the CR
        current = self.files[-1] if self.files else None
        if line.startswith("diff --git "):
            old_path, new_path = _header_names(line[len("diff --git "):])
            self.files.append(FilePatch(old_path=old_path, new_path=new_path))
            self.in_header = self.takes_hunks = True
            return i + 1
        if self.in_header and current is not None and line.startswith(_GIT_HEADER_LINES):
            _read_git_header_line(line, current)
            return i + 1
        self.in_header = False
        if line.startswith("@@"):
            if current is None or not self.takes_hunks:
                self.problems.append(f"malformed diff: hunk header {line[:60]!r} outside a file")
                return i + 1
            return _read_hunk(self.lines, i, current, self.problems)
        if (line.startswith("--- ") and i + 2 < len(self.lines) and self.lines[i + 1].startswith("+++ ")
                and self.lines[i + 2].startswith("@@ -")):
            self.files.append(_traditional(line[4:], self.lines[i + 1].removesuffix("\r")[4:]))
            self.takes_hunks = True
            return i + 2
        if current is not None and not current.hunks and (
                line.startswith("GIT binary patch") or (line.startswith("Binary files ") and line.endswith(" differ"))):
            current.binary = True
        self.takes_hunks = False
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
    reader = _Reader(lines)
    i = 0
    while i < len(lines):
        try:
            i = reader.read(i)
        except _Unstrippable as err:
            reader.problems.append(f"malformed diff: the name {str(err)[:80]!r} has no leading directory "
                                   "(like a/ or b/) to strip")
            i += 1
    return ParsedPatch(files=reader.files, problems=reader.problems + _file_problems(reader.files))
