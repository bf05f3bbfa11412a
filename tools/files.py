"""Reading the repository: ``read_file``, ``list_files`` and ``search``.

These tools look at a sandbox when there is one (it holds the candidate's edits) and at the
read-only workspace otherwise. Listing and searching run the probe (``bakeoff.tools.probe``),
so both places show exactly the same files, and skip what ``.gitignore`` ignores.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from bakeoff.agent.seams import ToolContext
from bakeoff.tools.errors import ToolError
from bakeoff.tools.limits import SANDBOX_START_S
from bakeoff.tools.probe import PROBE_TIMEOUT_S, probe


# --------------------------------------------------------------------------- path checks


def check_relative_path(path: str, *, writing: bool = False) -> str:
    """A clean workspace-relative path, or a ToolError saying what a valid path looks like.

    The same rules as a patch's (``agent.path_rules``): no invisible or control characters,
    nothing that leaves the repository or reaches ``.git`` however it is spelled; ``writing``
    also refuses CI and repository configuration files, which tools may read but not edit.
    """
    from bakeoff.agent.path_rules import component_key, path_problems, refused_character, shown

    p = path.strip().replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    parts = [x for x in p.split("/") if x not in ("", ".")]
    if not parts or p.startswith("/"):
        raise ToolError(f"path {shown(path)} is not inside the repository: give a path relative to its root, like 'src/main.c'")
    clean = "/".join(parts)
    if writing:
        problems = path_problems(clean)
        if problems:
            raise ToolError(f"path {shown(path)} may not be edited: {problems[0]}")
        return clean
    bad = refused_character(clean)
    if bad:
        raise ToolError(f"path {shown(path)} holds a control, invisible or bidirectional character ({bad})")
    keys = [component_key(x) for x in parts]
    if ".." in parts or ".." in keys:
        raise ToolError(f"path {shown(path)} is not inside the repository: give a path relative to its root, like 'src/main.c'")
    if ".git" in keys:
        raise ToolError(f"path {shown(path)} is inside .git, which tools may not touch")
    return clean


async def read_bytes(ctx: ToolContext, path: str) -> bytes:
    """A file's bytes from the sandbox, else from the workspace; ToolError when missing."""
    rel = check_relative_path(path)
    if ctx.sandbox is not None:
        try:
            return await ctx.sandbox.read_file(rel)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ToolError(f"no file {rel!r} in the repository: use list_files or search to find the right path") from exc
        except ValueError as exc:  # the sandbox refuses paths that leave it, symlinks included
            raise ToolError(f"path {path!r} cannot be read: {exc}") from exc
    if ctx.workspace is None:
        raise ToolError("this tool needs a sandbox or a workspace; the session provided neither")
    root = Path(ctx.workspace).resolve()
    full = (root / rel).resolve()
    if not full.is_relative_to(root):
        raise ToolError(f"path {path!r} leads outside the repository (through a symlink)")
    if not full.is_file():
        raise ToolError(f"no file {rel!r} in the repository: use list_files or search to find the right path")
    return await asyncio.to_thread(full.read_bytes)


# --------------------------------------------------------------------------- read_file


class ReadFile:
    name: ClassVar[str] = "read_file"
    description: ClassVar[str] = (
        "Read a text file of the repository, optionally a range of lines (1-based, inclusive). "
        "Long files are cut with a marker that says how to read on."
    )
    # Reading one file takes moments; the first call of a run may also start its sandbox.
    time_limit_s: ClassVar[float | None] = 30.0 + SANDBOX_START_S

    class Args(BaseModel):
        model_config = ConfigDict(extra="forbid")

        path: str = Field(description="file path relative to the repository root, e.g. 'src/main.c'")
        start_line: int | None = Field(default=None, ge=1, description="first line to return (1-based)")
        end_line: int | None = Field(default=None, ge=1, description="last line to return (inclusive)")
        max_chars: int = Field(default=20_000, ge=200, le=200_000, description="cap on returned characters")

    class Result(BaseModel):
        path: str
        content: str
        start_line: int
        end_line: int
        total_lines: int
        truncated: bool = False

    async def __call__(self, args: Args, ctx: ToolContext) -> Result:
        data = await read_bytes(ctx, args.path)
        rel = check_relative_path(args.path)
        if b"\0" in data[:8192]:
            return self.Result(path=rel, content=f"[binary file, {len(data)} bytes]", start_line=0, end_line=0, total_lines=0)
        lines = data.decode("utf-8", "replace").splitlines(keepends=True)
        total = len(lines)
        start = args.start_line or 1
        end = min(args.end_line or total, total)
        if args.end_line is not None and args.end_line < start:
            raise ToolError(f"end_line {args.end_line} is before start_line {start}")
        if total and start > total:
            raise ToolError(f"{rel} has {total} lines; start_line {start} is past its end")
        out, size, last = [], 0, start - 1
        for no in range(start, end + 1):
            line = lines[no - 1]
            if size + len(line) > args.max_chars and out:
                break
            out.append(line)
            size += len(line)
            last = no
        content = "".join(out)
        truncated = last < end
        if truncated:
            content += f"\n[... cut at line {last} of {total}: read on with start_line={last + 1} ...]\n"
        return self.Result(
            path=rel, content=content, start_line=start if total else 0, end_line=last, total_lines=total, truncated=truncated
        )


# --------------------------------------------------------------------------- list_files


class ListFiles:
    name: ClassVar[str] = "list_files"
    description: ClassVar[str] = (
        "List the repository's files matching a glob ('*.c' matches anywhere, 'src/**/*.py' is "
        "anchored), skipping what .gitignore ignores."
    )
    # One probe under its own timeout.
    time_limit_s: ClassVar[float | None] = PROBE_TIMEOUT_S + SANDBOX_START_S

    class Args(BaseModel):
        model_config = ConfigDict(extra="forbid")

        glob: str = Field(default="**", description="glob over paths; without '/' it matches file names anywhere")
        limit: int = Field(default=500, ge=1, le=5000, description="most paths to return")

    class Result(BaseModel):
        files: list[str]
        total: int
        truncated: bool = False

    async def __call__(self, args: Args, ctx: ToolContext) -> Result:
        answer = await probe(ctx, {"mode": "list", "glob": args.glob, "limit": args.limit})
        return self.Result(files=answer["files"], total=answer["total"], truncated=answer["total"] > len(answer["files"]))


# --------------------------------------------------------------------------- search


class SearchMatch(BaseModel):
    path: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.text}"


class Search:
    name: ClassVar[str] = "search"
    description: ClassVar[str] = (
        "Search the repository's text files for a Python regular expression, line by line, "
        "skipping what .gitignore ignores. Returns matches as path:line:text."
    )
    # One probe under its own timeout.
    time_limit_s: ClassVar[float | None] = PROBE_TIMEOUT_S + SANDBOX_START_S

    class Args(BaseModel):
        model_config = ConfigDict(extra="forbid")

        pattern: str = Field(description="Python regular expression searched in each line")
        glob: str | None = Field(default=None, description="only files matching this glob, e.g. '*.c'")
        ignore_case: bool = Field(default=False, description="match case-insensitively")
        limit: int = Field(default=100, ge=1, le=1000, description="most matches to return")

    class Result(BaseModel):
        matches: list[SearchMatch]
        total: int
        files_searched: int
        truncated: bool = False

        def render(self) -> str:
            """The matches as grep prints them, one per line."""
            tail = f"\n[... {self.total - len(self.matches)} more matches ...]" if self.truncated else ""
            return "\n".join(str(m) for m in self.matches) + tail

    async def __call__(self, args: Args, ctx: ToolContext) -> Result:
        try:
            re.compile(args.pattern)
        except re.error as exc:
            raise ToolError(f"pattern {args.pattern!r} is not a valid Python regular expression: {exc}") from exc
        answer = await probe(
            ctx,
            {
                "mode": "search", "pattern": args.pattern, "glob": args.glob, "ignore_case": args.ignore_case,
                "limit": args.limit, "max_line": 300,
            },
        )
        matches = [SearchMatch(path=p, line=n, text=t) for p, n, t in answer["matches"]]
        return self.Result(
            matches=matches, total=answer["total"], files_searched=answer["files_searched"],
            truncated=answer["total"] > len(matches),
        )
