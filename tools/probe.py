"""The probe: one small stdlib-only program that lists, searches and describes a tree.

Listing, searching and detecting what a repository builds with all run the same probe:
inside a sandbox it is shipped to ``python3 -c`` (one command, whatever the backend), on the
read-only workspace it runs in-process, so both see exactly the same files (``walk_files``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
from typing import Any

from bakeoff.agent.seams import ToolContext
from bakeoff.tools import ignore
from bakeoff.tools.errors import ToolError
from bakeoff.tools.ignore import glob_matcher, walk_files

PROBE_TIMEOUT_S = 120.0  # one probe command inside a sandbox

# --------------------------------------------------------------------------- shipped source
# Everything between here and ``_PROBE_FUNCTIONS`` is stdlib-only and self-contained: its
# source is shipped into sandboxes. Keep imports inside the functions.

_SOURCE_EXTS = (".c", ".cc", ".cpp", ".cxx", ".cu", ".h", ".hh", ".hpp", ".hxx", ".cuh")
_MARKER_FILES = (
    "Makefile", "makefile", "GNUmakefile", "CMakeLists.txt", "pyproject.toml", "setup.py",
    "setup.cfg", "pytest.ini", "tox.ini", "conftest.py",
)


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


def _probe_list(root: str, files: list, req: dict) -> dict:
    # Answers stay under ``budget`` characters: a sandbox caps what a command may print.
    budget = req.get("budget", 100_000)
    match = glob_matcher(req.get("glob") or "")
    hits = [f for f in files if match(f)]
    shown, size = [], 0
    for f in hits[: req["limit"]]:
        size += len(f) + 4
        if size > budget:
            break
        shown.append(f)
    return {"files": shown, "total": len(hits)}


def _probe_search(root: str, files: list, req: dict) -> dict:
    import re

    budget = req.get("budget", 100_000)
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


def _probe_detect(root: str, files: list, req: dict) -> dict:
    import os
    import re

    features, python = {}, []
    for f in files:
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


def _probe_compile_python(root: str, files: list, req: dict) -> dict:
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


def run_probe(root: str, req: dict) -> dict:
    """Answer one probe request: list, search, detect or compile_python."""
    modes = {"list": _probe_list, "search": _probe_search, "detect": _probe_detect,
             "compile_python": _probe_compile_python}
    mode = req["mode"]
    if mode not in modes:
        raise ValueError(f"unknown probe mode {mode!r}")
    return modes[mode](root, walk_files(root), req)


_PROBE_FUNCTIONS = (
    ignore.glob_regex, ignore.glob_matcher, ignore.parse_ignore_file, ignore.is_ignored, ignore.walk_files,
    read_text, source_features, make_targets,
    _probe_list, _probe_search, _probe_detect, _probe_compile_python, run_probe,
)


# --------------------------------------------------------------------------- running it


@functools.cache
def probe_script() -> str:
    """The probe as a ``python3 -c`` program: argv[1] is the JSON request, stdout the JSON answer."""
    consts = (
        f"_SKIP_DIRS = {ignore._SKIP_DIRS!r}\n"
        f"_SOURCE_EXTS = {_SOURCE_EXTS!r}\n_MARKER_FILES = {_MARKER_FILES!r}\n"
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
        res = await ctx.sandbox.exec(["python3", "-c", probe_script(), json.dumps(request)], timeout=PROBE_TIMEOUT_S)
        if not res.ok or res.truncated:
            raise ProbeFailed(
                "listing files inside the sandbox failed (the sandbox needs python3 on its PATH): "
                + res.summary(800)
            )
        return json.loads(res.stdout)
    if ctx.workspace is None:
        raise ToolError("this tool needs a sandbox or a workspace; the session provided neither")
    return await asyncio.to_thread(run_probe, str(ctx.workspace), request)
