"""Reading sources as text: which functions a file defines, which one a goal is about, the
local headers a C file needs, and whether two benchmark outputs agree."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from bakeoff.agent.fanout.strategies import language_of
from bakeoff.agent.seams import Sandbox

_DEF_PY = re.compile(r"^(?:async\s+)?def\s+([A-Za-z_]\w*)\s*\(", re.M)
_DEF_C = re.compile(r"^[A-Za-z_][\w\s\*]*?\b([A-Za-z_]\w*)\s*\([^;{)]*\)\s*\{", re.M)
_LOCAL_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[ \t]*$', re.M)


def functions_in(source: str, language: str, *, public: bool = False) -> list[str]:
    """Names of the top-level functions a source defines; ``public``: not ``static``, not ``_private``."""
    if language == "python":
        return [f for f in _DEF_PY.findall(source) if not (public and f.startswith("_"))]
    names = []
    for m in _DEF_C.finditer(source):
        if m.group(1) in ("if", "for", "while", "switch", "return"):
            continue
        if public and re.match(r"\s*static\b", m.group(0)):
            continue
        names.append(m.group(1))
    return names


def file_of(entry: str, files: Mapping[str, str]) -> str | None:
    """The file (of ``files``: path -> text) that defines the function ``entry``."""
    for path, text in files.items():
        if entry in functions_in(text, language_of([path])):
            return path
    return None


def guess_entry(goal: str, files: Mapping[str, str]) -> str | None:
    """The function a goal is about: one it names, else the only public function of the files."""
    found: list[str] = []
    public: list[str] = []
    for path, text in files.items():
        found.extend(functions_in(text, language_of([path])))
        public.extend(f for f in functions_in(text, language_of([path]), public=True) if f != "main")
    named = [f for f in found if re.search(rf"\b{re.escape(f)}\b", goal)]
    if named:
        return named[0]
    public = list(dict.fromkeys(public))
    return public[0] if len(public) == 1 else None


def inline_includes(source: str, files: Mapping[str, str], depth: int = 4) -> str:
    """``source`` with each ``#include "x.h"`` of a repository file replaced by its text.

    The differential harness compiles a function's file on its own, away from the repository,
    so the local headers it needs travel inside it.
    """
    if depth == 0:
        return source

    def one(m: re.Match) -> str:
        text = files.get(m.group(1))
        return m.group(0) if text is None else inline_includes(text, files, depth - 1)

    return _LOCAL_INCLUDE.sub(one, source)


async def local_headers(sb: Sandbox, source: str, path: str | None) -> dict[str, str]:
    """The repository headers ``source`` includes with quotes, by the name it includes them by."""
    folder = path.rsplit("/", 1)[0] + "/" if path and "/" in path else ""
    found: dict[str, str] = {}
    for name in _LOCAL_INCLUDE.findall(source):
        try:
            found[name] = (await sb.read_file(folder + name)).decode("utf-8", "replace")
        except (FileNotFoundError, ValueError):
            continue  # a system header included with quotes, or one outside the repository
    return found


def _numbers(text: str) -> list[str]:
    return re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf", text or "")


def same_output(a: str | None, b: str | None, rel: float = 1e-6) -> bool:
    """Two benchmark outputs agree: same text around the numbers, integers exact, floats within ``rel``."""
    if a is None or b is None:
        return a == b
    if re.sub(r"[-+\d.eE]+", "#", a) != re.sub(r"[-+\d.eE]+", "#", b):
        return False
    for x, y in zip(_numbers(a), _numbers(b)):
        if x == y:
            continue
        if re.fullmatch(r"[-+]?\d+", x) and re.fullmatch(r"[-+]?\d+", y):
            return False
        try:
            fx, fy = float(x), float(y)
        except ValueError:
            return False
        if not math.isclose(fx, fy, rel_tol=rel, abs_tol=1e-12):
            return False
    return True
