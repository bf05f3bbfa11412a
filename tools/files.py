"""Reading the repository: ``read_file``, ``list_files`` and ``search``.

These tools look at a sandbox when there is one (it holds the candidate's edits) and at the
read-only workspace otherwise. Listing and searching run one small stdlib-only probe: inside
the sandbox it is shipped to ``python3 -c`` (one command, whatever the backend), on the
workspace it runs in-process, so both see exactly the same files. Files ignored by
``.gitignore`` are skipped: through ``git ls-files`` where the tree is a git repository, else
through a simple matcher of the ignore files (comments, ``!``, anchored and directory-only
patterns, ``**``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import re
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from bakeoff.agent.seams import ToolContext
from bakeoff.tools.errors import ToolError

# --------------------------------------------------------------------------- the probe
# Everything between here and ``_PROBE_FUNCTIONS`` is stdlib-only and self-contained: its
# source is shipped into sandboxes. Keep imports inside the functions.

_SKIP_DIRS = (".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache")
_SOURCE_EXTS = (".c", ".cc", ".cpp", ".cxx", ".cu", ".h", ".hh", ".hpp", ".hxx", ".cuh")
_MARKER_FILES = (
    "Makefile", "makefile", "GNUmakefile", "CMakeLists.txt", "pyproject.toml", "setup.py",
    "setup.cfg", "pytest.ini", "tox.ini", "conftest.py",
)


def glob_regex(pattern: str) -> str:
    """A regex (without anchors) for a glob over '/'-separated paths: ``*``, ``?``, ``[..]``, ``**``."""
    import re

    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")  # zero or more directories
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if pattern[j:j + 1] == "!":
                j += 1
            if pattern[j:j + 1] == "]":
                j += 1
            while j < len(pattern) and pattern[j] != "]":
                j += 1
            if j >= len(pattern):
                out.append(re.escape(c))  # an unclosed '[' is a literal
            else:
                body = pattern[i + 1:j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j + 1
                continue
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def glob_matcher(pattern: str):
    """A predicate over relative paths. A glob without '/' matches the file name anywhere."""
    import re

    pattern = pattern.strip()
    while pattern.startswith("./"):
        pattern = pattern[2:]
    if not pattern or pattern in ("*", "**", "**/*"):
        return lambda path: True
    if "/" in pattern:
        rx = re.compile("^" + glob_regex(pattern) + "$")
        return lambda path: rx.match(path) is not None
    rx = re.compile("^(?:.*/)?" + glob_regex(pattern) + "$")
    return lambda path: rx.match(path) is not None


def parse_ignore_file(text: str, base: str) -> list:
    """Rules ``(base, regex, negate, dir_only)`` from one .gitignore located in ``base``."""
    import re

    rules = []
    for raw in text.splitlines():
        line = raw.rstrip("\n\r")
        if not line.endswith("\\ "):
            line = line.rstrip(" ")
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if negate:
            line = line[1:]
        if line.startswith("\\"):
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        anchored = "/" in line
        line = line.lstrip("/")
        prefix = "^" if anchored else "^(?:.*/)?"
        rules.append((base, re.compile(prefix + glob_regex(line) + "$"), negate, dir_only))
    return rules


def is_ignored(rules: list, path: str, is_dir: bool) -> bool:
    """Whether ``path`` (relative to the root) is ignored; the last matching rule wins."""
    ignored = False
    for base, rx, negate, dir_only in rules:
        if dir_only and not is_dir:
            continue
        if base:
            if not path.startswith(base + "/"):
                continue
            rel = path[len(base) + 1:]
        else:
            rel = path
        if rx.match(rel):
            ignored = not negate
    return ignored


def walk_files(root: str) -> list:
    """Every file under ``root`` that git would track or offer to track, sorted."""
    import os
    import shutil
    import subprocess

    if os.path.isdir(os.path.join(root, ".git")) and shutil.which("git"):
        proc = subprocess.run(
            ["git", "-c", "safe.directory=*", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=root, capture_output=True, timeout=60,
        )
        if proc.returncode == 0:
            names = [n for n in proc.stdout.decode("utf-8", "replace").split("\0") if n]
            keep = [
                n for n in names
                if os.path.isfile(os.path.join(root, n))
                and not any(part in _SKIP_DIRS for part in n.split("/")[:-1])
            ]
            return sorted(set(keep))
    rules: list = []
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir
        if ".gitignore" in filenames:
            try:
                with open(os.path.join(dirpath, ".gitignore"), encoding="utf-8", errors="replace") as fh:
                    rules.extend(parse_ignore_file(fh.read(), rel_dir))
            except OSError:
                pass  # an unreadable ignore file ignores nothing, as git does
        kept_dirs = []
        for d in sorted(dirnames):
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if d in _SKIP_DIRS or os.path.islink(os.path.join(dirpath, d)) or is_ignored(rules, rel, True):
                continue
            kept_dirs.append(d)
        dirnames[:] = kept_dirs
        for f in filenames:
            rel = f"{rel_dir}/{f}" if rel_dir else f
            if not is_ignored(rules, rel, False):
                found.append(rel)
    return sorted(found)


def read_text(root: str, rel: str, max_bytes: int):
    """The file's text, or None when it is binary, too big or unreadable."""
    import os

    full = os.path.join(root, rel)
    try:
        if os.path.getsize(full) > max_bytes:
            return None
        with open(full, "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", "replace")


def source_features(text: str) -> dict:
    """What a C/C++/CUDA source needs: OpenMP, MPI, a ``main``."""
    import re

    return {
        "omp": bool(re.search(r"^\s*#\s*(?:include\s*<omp\.h>|pragma\s+omp\b)", text, re.M)),
        "mpi": bool(re.search(r'^\s*#\s*include\s*[<"]mpi\.h[>"]', text, re.M)),
        "main": bool(re.search(r"^\s*(?:int|void|auto)?\s*main\s*\(", text, re.M)),
    }


def make_targets(text: str) -> list:
    """Explicit target names of a Makefile (not pattern rules or variables)."""
    import re

    targets = []
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-/ ]+?)\s*::?(?!=)", line)
        if m and not line.startswith("\t"):
            targets.extend(t for t in m.group(1).split() if "%" not in t and not t.startswith("."))
    return sorted(set(targets))


def run_probe(root: str, req: dict) -> dict:
    """Answer one probe request: list, search, detect or compile_python."""
    import re

    mode = req["mode"]
    files = walk_files(root)
    # Answers stay under ``budget`` characters: a sandbox caps what a command may print.
    budget = req.get("budget", 100_000)
    if mode == "list":
        match = glob_matcher(req.get("glob") or "")
        hits = [f for f in files if match(f)]
        shown, size = [], 0
        for f in hits[: req["limit"]]:
            size += len(f) + 4
            if size > budget:
                break
            shown.append(f)
        return {"files": shown, "total": len(hits)}
    if mode == "search":
        match = glob_matcher(req.get("glob") or "")
        rx = re.compile(req["pattern"], re.IGNORECASE if req.get("ignore_case") else 0)
        matches, total, searched, size = [], 0, 0, 0
        for f in files:
            if not match(f):
                continue
            text = read_text(root, f, 2_000_000)
            if text is None:
                continue
            searched += 1
            for no, line in enumerate(text.splitlines(), 1):
                if rx.search(line):
                    total += 1
                    cut = req["max_line"]
                    text_shown = line if len(line) <= cut else line[:cut] + " [...]"
                    size += len(f) + len(text_shown) + 16
                    if len(matches) < req["limit"] and size <= budget:
                        matches.append([f, no, text_shown])
        return {"matches": matches, "total": total, "files_searched": searched}
    if mode == "detect":
        import os

        features, python = {}, []
        for f in files:
            name = f.rsplit("/", 1)[-1]
            if f.endswith(_SOURCE_EXTS) and len(features) < 2000:
                text = read_text(root, f, 4_000_000)
                if text is not None:
                    features[f] = source_features(text)
            elif f.endswith(".py") and len(python) < 2000:
                python.append(f)
        markers = [f for f in files if f.rsplit("/", 1)[-1] in _MARKER_FILES]
        makefile = next((m for m in ("GNUmakefile", "makefile", "Makefile") if m in files), None)
        cmake = read_text(root, "CMakeLists.txt", 4_000_000) if "CMakeLists.txt" in files else None
        return {
            "root": os.path.abspath(root),
            "sources": features,
            "python": python,
            "markers": markers,
            "makefile": makefile,
            "make_targets": make_targets(read_text(root, makefile, 4_000_000) or "") if makefile else [],
            "cmake_tests": bool(cmake and re.search(r"\b(enable_testing|add_test|include\s*\(\s*CTest)", cmake)),
        }
    if mode == "compile_python":
        errors, checked = [], 0
        for f in files:
            if not f.endswith(".py"):
                continue
            text = read_text(root, f, 8_000_000)
            if text is None:
                continue
            checked += 1
            try:
                compile(text, f, "exec", dont_inherit=True)
            except SyntaxError as exc:
                errors.append([f, exc.lineno or 0, exc.offset or 0, f"{type(exc).__name__}: {exc.msg}"])
            except ValueError as exc:  # source with NUL bytes
                errors.append([f, 0, 0, f"ValueError: {exc}"])
        return {"checked": checked, "errors": errors[:200]}
    raise ValueError(f"unknown probe mode {mode!r}")


_PROBE_FUNCTIONS = (
    glob_regex, glob_matcher, parse_ignore_file, is_ignored, walk_files, read_text,
    source_features, make_targets, run_probe,
)


@functools.cache
def probe_script() -> str:
    """The probe as a ``python3 -c`` program: argv[1] is the JSON request, stdout the JSON answer."""
    consts = (
        f"_SKIP_DIRS = {_SKIP_DIRS!r}\n_SOURCE_EXTS = {_SOURCE_EXTS!r}\n_MARKER_FILES = {_MARKER_FILES!r}\n"
    )
    body = "\n\n".join(inspect.getsource(f) for f in _PROBE_FUNCTIONS)
    main = (
        "\n\nimport json as _json, sys as _sys\n"
        "_req = _json.loads(_sys.argv[1])\n"
        "_sys.stdout.write(_json.dumps(run_probe('.', _req)))\n"
    )
    # The annotations use names the script does not import; postponed evaluation skips them.
    return "from __future__ import annotations\n" + consts + body + main


class ProbeFailed(RuntimeError):
    """The sandbox could not list its own files (no python3 in the image, most likely)."""


async def probe(ctx: ToolContext, request: dict[str, Any]) -> dict[str, Any]:
    """Run one probe request on the sandbox if there is one, else on the read-only workspace."""
    if ctx.sandbox is not None:
        res = await ctx.sandbox.exec(["python3", "-c", probe_script(), json.dumps(request)], timeout=120)
        if not res.ok or res.truncated:
            raise ProbeFailed(
                "listing files inside the sandbox failed (the sandbox needs python3 on its PATH): "
                + res.summary(800)
            )
        return json.loads(res.stdout)
    if ctx.workspace is None:
        raise ToolError("this tool needs a sandbox or a workspace; the session provided neither")
    return await asyncio.to_thread(run_probe, str(ctx.workspace), request)


# --------------------------------------------------------------------------- path checks


def check_relative_path(path: str) -> str:
    """A clean workspace-relative path, or a ToolError saying what a valid path looks like."""
    p = path.strip().replace("\\", "/")
    while p.startswith("./"):
        p = p[2:]
    parts = [x for x in p.split("/") if x not in ("", ".")]
    if not parts or p.startswith("/") or ".." in parts:
        raise ToolError(f"path {path!r} is not inside the repository: give a path relative to its root, like 'src/main.c'")
    if parts[0] == ".git":
        raise ToolError(f"path {path!r} is inside .git, which tools may not touch")
    return "/".join(parts)


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
