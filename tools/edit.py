"""Applying edits: ``apply_edit_blocks`` and the ``edit`` tool.

``apply_edit_blocks(files, blocks)`` applies ``EditBlock`` values (see ``edit_blocks``) to
file contents, purely; a SEARCH text must occur exactly once, and when it does not, the
``EditError`` says where the closest region is. ``EditError`` is a ``ToolError``: the model
made the mistake and the message tells it how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from bakeoff.agent.seams import ToolContext
from bakeoff.tools.edit_blocks import FORMAT_HINT, EditBlock, parse_edit_blocks
from bakeoff.tools.errors import ToolError
from bakeoff.tools.files import check_relative_path
from bakeoff.tools.limits import SANDBOX_START_S


class EditError(ToolError):
    """An edit block that does not apply; the message shows the closest region of the file."""


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
    # Reading and writing a few files takes moments; the first call of a run may also start its sandbox.
    time_limit_s: ClassVar[float | None] = 30.0 + SANDBOX_START_S

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
            EditBlock(path=check_relative_path(b.path, writing=True), search=b.search, replace=b.replace, whole_file=b.whole_file)
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
