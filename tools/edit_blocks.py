"""Edits as data, and the parser of model answers into them.

``parse_edit_blocks(text)`` turns a model's answer (aider-style SEARCH/REPLACE blocks, or whole
files in fenced code blocks after a file name) into ``EditBlock`` values: ``search == ""``
creates a file, ``whole_file=True`` replaces one. Pure. A malformed answer raises
``EditParseError``, a ``ToolError``: the model made the mistake and the message tells it how
to fix it.
"""

from __future__ import annotations

import re

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from bakeoff.tools.errors import ToolError


class EditParseError(ToolError):
    """A model answer that is not a well-formed set of edit blocks; the message says why."""


@dataclass(config=ConfigDict(extra="forbid"))
class EditBlock:
    """Replace ``search`` by ``replace`` in ``path``.

    ``search == ""`` creates ``path`` (it must not exist yet, or be empty);
    ``whole_file=True`` replaces the whole content of ``path`` by ``replace``.
    """

    path: str = Field(description="file path relative to the repository root")
    search: str = Field(description="exact lines to find (must occur once); empty to create a new file")
    replace: str = Field(description="lines that take their place")
    whole_file: bool = Field(default=False, description="true: 'replace' is the file's whole new content")


FORMAT_HINT = (
    "Write each edit as:\n"
    "path/to/file.c\n"
    "<<<<<<< SEARCH\n"
    "exact lines from the file\n"
    "=======\n"
    "the new lines\n"
    ">>>>>>> REPLACE"
)

# --------------------------------------------------------------------------- parsing

_HEAD = re.compile(r"^\s*<{5,9}\s*(?:SEARCH|ORIGINAL)\s*$", re.IGNORECASE)
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_TAIL = re.compile(r"^\s*>{5,9}\s*(?:REPLACE|UPDATED)\s*$", re.IGNORECASE)
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([^`]*?)\s*$")
_PATH_CHARS = re.compile(r"[\w.\-+@~/]+")
_EXTENSION = re.compile(r"\.[A-Za-z0-9_+\-]{1,12}$")
_BARE_NAMES = {"Makefile", "makefile", "GNUmakefile", "Dockerfile", "Containerfile", "Justfile", "Rakefile", "Gemfile"}


def _looks_like_path(s: str) -> bool:
    if not _PATH_CHARS.fullmatch(s) or s.startswith("-") or re.fullmatch(r"[\d.]+|[./\-]+", s):
        return False
    name = s.rstrip("/").rsplit("/", 1)[-1]
    return name in _BARE_NAMES or bool(_EXTENSION.search(name)) or ("/" in s.strip("/") and not s.endswith("/"))


def _clean_path(s: str) -> str:
    while s.startswith("./"):
        s = s[2:]
    return s


def _filename_from_line(line: str) -> str | None:
    """The path a line names, after removing the decorations models put around file names."""
    s = line.strip()
    s = re.sub(r"^(?:\d+[.)]|[-+]|\*(?!\*))\s+", "", s)  # list items: '1. path', '- path'
    s = re.sub(r"^(?:\*{3,}|#+|//+|--+|>+)\s*", "", s)  # '*** path', '# path', '// path'
    s = re.sub(r"\s*(?:\*{3,}|#+)$", "", s)
    s = re.sub(r"^(?:(?:new |updated |modified )?file(?:name)?|path)\s*:\s*", "", s, flags=re.IGNORECASE)
    for _ in range(2):  # '**`path`**:' needs two rounds
        s = s.strip().strip("*`'\"").strip().rstrip(":").strip()
    if not s or _HEAD.match(s) or _DIVIDER.match(s) or _TAIL.match(s):
        return None
    return _clean_path(s) if _looks_like_path(s) else None


def _filename_from_info(info: str) -> str | None:
    """A path in a fence's info string: '```src/a.c', '```c src/a.c', '```c:src/a.c'."""
    for token in re.split(r"[\s:]+", info.strip()):
        token = token.strip("`'\"")
        if token and _looks_like_path(token):
            return _clean_path(token)
    return None


def _path_before(lines: list[str], start: int, at: int) -> str | None:
    """The file name written just before line ``at``: skips blank lines and fence openings."""
    for j in range(at - 1, start - 1, -1):
        line = lines[j]
        if not line.strip():
            continue
        fence = _FENCE.match(line)
        if fence:
            named = _filename_from_info(fence.group(2))
            if named:
                return named
            continue
        return _filename_from_line(line)
    return None


def _join(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def _dedent(head: str, search: list[str], replace: list[str]) -> tuple[list[str], list[str]]:
    """Drop the indentation of a block nested in a list item (the markers' own indentation)."""
    indent = head[: len(head) - len(head.lstrip())]
    body = [line for line in search + replace if line.strip()]
    if not indent or not all(line.startswith(indent) for line in body):
        return search, replace

    def cut(lines: list[str]) -> list[str]:
        return [line[len(indent):] if line.strip() else "" for line in lines]

    return cut(search), cut(replace)


def _block_end(lines: list[str], head: int, path: str) -> tuple[int, int]:
    """(divider, tail): the '=======' and '>>>>>>> REPLACE' lines of the block opened at ``head``."""
    divider = tail = None
    j = head + 1
    while j < len(lines):
        if _HEAD.match(lines[j]):
            raise EditParseError(
                f"a new '<<<<<<< SEARCH' at line {j + 1} starts before the block opened at line {head + 1} "
                f"(for {path}) was closed with '>>>>>>> REPLACE'.\n{FORMAT_HINT}"
            )
        if divider is None and _DIVIDER.match(lines[j]):
            divider = j
        elif _TAIL.match(lines[j]):
            tail = j
            break
        j += 1
    if tail is None:
        raise EditParseError(
            f"the block opened at line {head + 1} (for {path}) never ends with '>>>>>>> REPLACE'"
            f" (was the answer cut off?).\n{FORMAT_HINT}"
        )
    if divider is None:
        raise EditParseError(
            f"the block opened at line {head + 1} (for {path}) has no '=======' line between its "
            f"SEARCH and REPLACE parts.\n{FORMAT_HINT}"
        )
    return divider, tail


def parse_edit_blocks(text: str, default_path: str | None = None) -> list[EditBlock]:
    """The edits in a model's answer, in order.

    SEARCH/REPLACE blocks are read wherever they are (inside or outside code fences, with the
    file name on the line before the fence, before SEARCH, inside the fence or in its info
    string); a block without a name takes the previous block's, else ``default_path``.
    An answer without such blocks is read as whole files: a fenced code block after a file
    name line (or, with ``default_path``, a single unnamed code block). Raises
    ``EditParseError`` when a block is malformed, a file name is missing and cannot be
    inferred, or the answer holds no edit at all.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    lines = [line.rstrip(" \t") if (_HEAD.match(line) or _DIVIDER.match(line) or _TAIL.match(line)) else line for line in lines]
    blocks: list[EditBlock] = []
    last_path: str | None = None
    region_start = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        if _TAIL.match(line):
            raise EditParseError(
                f"line {i + 1} closes a block with '>>>>>>> REPLACE' but no '<<<<<<< SEARCH' opened it.\n{FORMAT_HINT}"
            )
        if not _HEAD.match(line):
            i += 1
            continue
        head = i
        path = _path_before(lines, region_start, head) or last_path or default_path
        if path is None:
            raise EditParseError(
                f"the SEARCH block at line {head + 1} has no file name: put the file's path alone on the "
                f"line before '<<<<<<< SEARCH'.\n{FORMAT_HINT}"
            )
        divider, tail = _block_end(lines, head, path)
        search, replace = _dedent(lines[head], lines[head + 1:divider], lines[divider + 1:tail])
        blocks.append(EditBlock(path=path, search=_join(search), replace=_join(replace)))
        last_path = path
        region_start = tail + 1
        i = tail + 1
    if blocks:
        return blocks
    return _parse_whole_files(lines, default_path)


def _parse_whole_files(lines: list[str], default_path: str | None) -> list[EditBlock]:
    blocks: list[EditBlock] = []
    unnamed: list[tuple[int, str]] = []
    region_start = 0
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        marker = fence.group(1)
        path = _filename_from_info(fence.group(2)) or _path_before(lines, region_start, i)
        j = i + 1
        closing = re.compile(r"^\s*" + re.escape(marker[0]) + "{" + str(len(marker)) + r",}\s*$")
        while j < len(lines) and not closing.match(lines[j]):
            j += 1
        if j == len(lines):
            if path:
                raise EditParseError(
                    f"the code block for {path} opened at line {i + 1} is never closed with {marker}"
                    " (was the answer cut off?): send the whole file again."
                )
            break
        body = _join(lines[i + 1:j])
        if path:
            blocks.append(EditBlock(path=path, search="", replace=body, whole_file=True))
        else:
            unnamed.append((i + 1, body))
        region_start = j + 1
        i = j + 1
    if blocks:
        return blocks
    if len(unnamed) == 1 and default_path:
        return [EditBlock(path=default_path, search="", replace=unnamed[0][1], whole_file=True)]
    if unnamed:
        where = ("the code block at line " if len(unnamed) == 1 else "the code blocks at lines ") + ", ".join(
            str(n) for n, _ in unnamed
        )
        raise EditParseError(
            f"{where} {'has' if len(unnamed) == 1 else 'have'} no file name, so it is unclear which file they replace: "
            f"put the file's path alone on the line before the opening fence, or use SEARCH/REPLACE blocks.\n{FORMAT_HINT}"
        )
    raise EditParseError(f"the answer contains no edit: no SEARCH/REPLACE block and no fenced file.\n{FORMAT_HINT}")
