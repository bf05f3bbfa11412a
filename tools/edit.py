"""Edits: search/replace blocks, whole-file writes, and the parser of model answers.

Three pure functions are the public core, used by the ``edit`` tool and by candidates:

- ``parse_edit_blocks(text)`` turns a model's answer (aider-style SEARCH/REPLACE blocks, or
  whole files in fenced code blocks after a file name) into ``EditBlock`` values;
- ``apply_edit_blocks(files, blocks)`` applies them to file contents; a SEARCH text must occur
  exactly once, and when it does not, the ``EditError`` says where the closest region is;
- ``EditBlock`` itself: ``search == ""`` creates a file, ``whole_file=True`` replaces one.

Both errors subclass ``ToolError``: the model made the mistake and the message tells it how to
fix it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.dataclasses import dataclass

from bakeoff.agent.seams import ToolContext
from bakeoff.tools.errors import ToolError
from bakeoff.tools.files import check_relative_path


class EditError(ToolError):
    """An edit block that does not apply; the message shows the closest region of the file."""


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


# --------------------------------------------------------------------------- applying


def _line_of(content: str, index: int) -> int:
    return content.count("\n", 0, index) + 1


def _normalized(line: str) -> str:
    return " ".join(line.split())


def did_you_mean(content: str, search: str) -> str:
    """The region of ``content`` closest to ``search``, with line numbers, as advice."""
    flines = content.splitlines()
    slines = search.splitlines()
    if not flines or not slines:
        return "Read the file again and copy the lines to change exactly."
    k = len(slines)
    target_norm = [_normalized(x) for x in slines]
    file_norm = [_normalized(x) for x in flines]
    for start in range(len(flines) - k + 1):
        if file_norm[start:start + k] == target_norm:
            return (
                f"Lines {start + 1}-{start + k} differ from your SEARCH text only in whitespace (indentation, "
                f"tabs or trailing spaces): copy them exactly as they are:\n{_numbered(flines, start, k)}"
            )
    target = "\n".join(slines)
    best, best_start, best_size = 0.0, 0, k
    sizes = sorted({max(1, k - 1), k, k + 1}) if len(flines) < 20_000 else [k]
    for size in sizes:
        for start in range(0, max(1, len(flines) - size + 1)):
            matcher = difflib.SequenceMatcher(None, "\n".join(flines[start:start + size]), target, autojunk=False)
            if matcher.real_quick_ratio() <= best or matcher.quick_ratio() <= best:
                continue
            ratio = matcher.ratio()
            if ratio > best:
                best, best_start, best_size = ratio, start, size
    if best < 0.5:
        return "No region of the file looks like it: read the file again and copy the lines to change exactly."
    region = flines[best_start:best_start + best_size]
    changes = [
        d for d in difflib.unified_diff(slines, region, "your SEARCH", "the file", n=0, lineterm="")
        if d[:1] in "+-" and not d.startswith(("+++", "---"))
    ]
    shown = "\n".join(changes[:12]) + ("\n..." if len(changes) > 12 else "")
    return (
        f"Did you mean lines {best_start + 1}-{best_start + best_size} ({best:.0%} similar)?\n"
        f"{_numbered(flines, best_start, best_size)}\n"
        f"Lines that differ (- yours, + the file's):\n{shown}"
    )


def _numbered(lines: list[str], start: int, size: int) -> str:
    width = len(str(start + size))
    return "\n".join(f"{n + 1:>{width}}| {lines[n]}" for n in range(start, min(start + size, len(lines))))


def _apply_one(content: str | None, block: EditBlock, known: Sequence[str]) -> str:
    if block.whole_file:
        return block.replace
    if not block.search.strip():
        if content is None or not content.strip():
            return block.replace
        raise EditError(
            f"{block.path} already exists, so an empty SEARCH section cannot create it: put the lines to "
            "change in SEARCH, or send the whole file."
        )
    if content is None:
        close = difflib.get_close_matches(block.path, list(known), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise EditError(f"{block.path} does not exist; to create it leave the SEARCH section empty.{hint}")
    search, replace = block.search, block.replace
    if "\r\n" in content and "\r\n" not in search:
        search, replace = search.replace("\n", "\r\n"), replace.replace("\n", "\r\n")
    count = content.count(search)
    if count == 1:
        return content.replace(search, replace, 1)
    if count > 1:
        starts, at = [], content.find(search)
        while at != -1:
            starts.append(str(_line_of(content, at)))
            at = content.find(search, at + 1)
        raise EditError(
            f"the SEARCH text occurs {count} times in {block.path} (at lines {', '.join(starts)}): "
            "add neighbouring lines to SEARCH so that it matches only one place."
        )
    # A file without a final newline: the last SEARCH line matches without its "\n".
    bare = search[:-1] if search.endswith("\n") else search
    if content.endswith(bare) and content.count(bare) == 1:
        tail = replace[:-1] if replace.endswith("\n") and search.endswith("\n") else replace
        return content[: len(content) - len(bare)] + tail
    raise EditError(f"the SEARCH text is not in {block.path}. {did_you_mean(content, block.search)}")


def apply_edit_blocks(files: Mapping[str, str], blocks: Sequence[EditBlock]) -> dict[str, str]:
    """``files`` (path -> content) with every block applied in order, new files included.

    A path missing from ``files`` is a file that does not exist. Nothing is returned unless
    every block applies: the ``EditError`` lists every block that failed, with advice.
    """
    result = dict(files)
    failures = []
    for n, block in enumerate(blocks, 1):
        try:
            result[block.path] = _apply_one(result.get(block.path), block, list(result))
        except EditError as exc:
            failures.append(f"Edit {n} ({block.path}) failed: {exc.message}")
    if failures:
        applied = len(blocks) - len(failures)
        note = f"\n\n(None of the {len(blocks)} edits was applied; {applied} would have applied.)" if len(blocks) > 1 else ""
        raise EditError("\n\n".join(failures) + note)
    return result


def unified_diff(before: Mapping[str, str], after: Mapping[str, str], limit: int = 20_000) -> str:
    """A git-style diff of the files that changed between two mappings, capped."""
    parts = []
    for path in sorted(set(before) | set(after)):
        old, new = before.get(path), after.get(path)
        if old == new:
            continue
        parts.extend(
            difflib.unified_diff(
                (old or "").splitlines(keepends=True), (new or "").splitlines(keepends=True),
                f"a/{path}" if old is not None else "/dev/null", f"b/{path}",
            )
        )
    text = "".join(p if p.endswith("\n") else p + "\n" for p in parts)
    return text if len(text) <= limit else text[:limit] + "\n[... diff cut ...]\n"


# --------------------------------------------------------------------------- the tool


class Edit:
    name: ClassVar[str] = "edit"
    description: ClassVar[str] = (
        "Edit files in the sandbox with search/replace blocks. Each SEARCH text must match the "
        "file exactly, once; an empty SEARCH creates a new file; whole_file replaces a file. Give "
        "'blocks', or 'text' holding SEARCH/REPLACE blocks as written in an answer."
    )

    class Args(BaseModel):
        model_config = ConfigDict(extra="forbid")

        blocks: list[EditBlock] = Field(default_factory=list, description="edits applied in order")
        text: str | None = Field(
            default=None, description="edits written as 'path' then '<<<<<<< SEARCH' / '=======' / '>>>>>>> REPLACE'"
        )
        default_path: str | None = Field(default=None, description="file for blocks written without a file name")

    class Result(BaseModel):
        changed: list[str]
        created: list[str]
        diff: str

    async def __call__(self, args: Args, ctx: ToolContext) -> Result:
        if ctx.sandbox is None:
            raise ToolError("edit needs a sandbox: bakeoff never edits the user's tree directly")
        blocks = list(args.blocks)
        if args.text:
            blocks += parse_edit_blocks(args.text, default_path=args.default_path)
        if not blocks:
            raise ToolError(f"no edit given: pass 'blocks' or 'text'.\n{FORMAT_HINT}")
        blocks = [
            EditBlock(path=check_relative_path(b.path), search=b.search, replace=b.replace, whole_file=b.whole_file)
            for b in blocks
        ]
        before: dict[str, str] = {}
        for path in dict.fromkeys(b.path for b in blocks):
            try:
                before[path] = (await ctx.sandbox.read_file(path)).decode("utf-8")
            except FileNotFoundError:
                continue
            except UnicodeDecodeError as exc:
                raise ToolError(f"{path} is not UTF-8 text, so it cannot be edited with search/replace") from exc
            except ValueError as exc:  # the sandbox refuses paths that leave it, symlinks included
                raise ToolError(f"{path} cannot be edited: {exc}") from exc
        after = apply_edit_blocks(before, blocks)
        changed = [p for p in after if after[p] != before.get(p)]
        for path in changed:
            try:
                await ctx.sandbox.write_file(path, after[path])
            except ValueError as exc:
                raise ToolError(f"{path} cannot be written: {exc}") from exc
        return self.Result(
            changed=changed, created=[p for p in changed if p not in before], diff=unified_diff(before, after)
        )
