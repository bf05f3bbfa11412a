"""Which files a tree holds, as git sees them: ``walk_files`` skips what ``.gitignore`` ignores.

Through ``git ls-files`` where the tree is a git repository, else through a simple matcher of
the ignore files (comments, ``!``, anchored and directory-only patterns, ``**``). The globs
the tools take (``glob_matcher``) share the same translation to regular expressions.

Everything here is stdlib-only and self-contained: the probe ships its source into sandboxes
(``bakeoff.tools.probe``). Keep imports inside the functions.
"""

from __future__ import annotations

_SKIP_DIRS = (".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache")


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
