"""The house: one ``bakeoff`` namespace, rooms that import only downwards, sizes a reader can hold.

Rooms, from the front doors down (README, "Layout"): a module may import its own room and
any room below it, never one above. The test reads imports from the source (top level and
inside functions alike), so a lazy import cannot hide an upward arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"agent": "bakeoff.agent", "tools": "bakeoff.tools", "sandboxes": "bakeoff.sandboxes",
           "prompts": "bakeoff.prompts", "bakeoff": "bakeoff"}

# Lowest first. A module's room is the longest prefix of its name found here.
FLOORS: list[list[str]] = [
    ["bakeoff.agent.seams", "bakeoff.agent.types", "bakeoff.agent.events", "bakeoff.agent.config",
     "bakeoff.agent.diffs", "bakeoff.agent.path_rules",
     "bakeoff.agent.prompting", "bakeoff.agent.stats", "bakeoff.agent.repository", "bakeoff.agent.patches",
     "bakeoff.agent.apply",
     "bakeoff.agent.storage", "bakeoff.prompts"],
    ["bakeoff.tools", "bakeoff.sandboxes", "bakeoff.agent.models"],
    ["bakeoff.agent.selection", "bakeoff.agent.harness", "bakeoff.agent.planning", "bakeoff.agent.github"],
    ["bakeoff.agent.fanout"],
    ["bakeoff.agent.session", "bakeoff.agent.report"],
    ["bakeoff.agent.batch"],
    ["bakeoff.agent.cli", "bakeoff.__main__", "bakeoff"],
]
FLOOR = {room: i for i, rooms in enumerate(FLOORS) for room in rooms}

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
MAX_METHODS = 20


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def room(name: str) -> str:
    best = max((r for r in FLOOR if name == r or name.startswith(r + ".")), key=len, default=None)
    assert best is not None, f"{name} is in no room of the layout: add it to FLOORS (and the README's Layout)"
    return best


def imports(path: Path, name: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                # "from bakeoff.agent import session" imports the module bakeoff.agent.session
                found.append((node.lineno, f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base))
    return found


MODULES = modules()


def test_every_module_lives_in_the_bakeoff_namespace():
    outside = []
    for name, path in MODULES.items():
        for line, target in imports(path, name):
            top = target.split(".")[0]
            if top in ("agent", "tools", "sandboxes", "prompts", "examples"):
                outside.append(f"{path.relative_to(ROOT)}:{line} imports {target} (use bakeoff.{target})")
    assert not outside, "\n".join(outside)


def upward_imports(modules: dict[str, Path]) -> list[str]:
    """Every import of a module into a room on a higher floor than its own."""
    upward = []
    for name, path in modules.items():
        mine = room(name)
        for line, target in imports(path, name):
            if not target.startswith("bakeoff"):
                continue
            theirs = room(target)
            if FLOOR[theirs] > FLOOR[mine]:
                upward.append(f"{path.name}:{line}: {mine} (floor {FLOOR[mine]}) imports "
                              f"{target} ({theirs}, floor {FLOOR[theirs]})")
    return upward


def test_no_room_imports_a_room_above_it():
    upward = upward_imports(MODULES)
    assert not upward, "imports that run back up:\n" + "\n".join(upward)


@pytest.mark.parametrize("line,caught", [
    ("from bakeoff.agent.session import Session", True),  # a lower room importing the session
    ("from bakeoff.agent.cli.run import fail", True),  # ... or a front door
    ("import bakeoff.agent.fanout.pipeline", True),
    ("from bakeoff.agent.seams import Sandbox", False),
    ("from bakeoff.sandboxes.pool import SandboxPool", False),
])
def test_an_upward_import_is_caught(tmp_path, line, caught):
    module = tmp_path / "probe.py"
    module.write_text(f"def f():\n    {line}\n")
    found = upward_imports({"bakeoff.agent.harness.probe": module})
    assert bool(found) is caught, found


def test_rooms_on_one_floor_do_not_import_each_other_in_a_circle():
    edges: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        mine = room(name)
        for _, target in imports(path, name):
            if target.startswith("bakeoff") and room(target) != mine:
                edges.setdefault(mine, set()).add(room(target))

    def reaches(a: str, b: str, seen: frozenset = frozenset()) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, seen | {n})) for n in edges.get(a, ()))

    circles = [f"{a} <-> {b}" for a in edges for b in edges[a] if reaches(b, a)]
    assert not circles, "rooms that import each other: " + ", ".join(sorted(circles))


def test_sizes_a_reader_can_hold():
    too_big = []
    for name, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            too_big.append(f"module {name}: {lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    too_big.append(f"function {name}.{node.name} (line {node.lineno}): {size} lines")
            elif isinstance(node, ast.ClassDef):
                methods = sum(isinstance(b, (ast.FunctionDef, ast.AsyncFunctionDef)) for b in node.body)
                if methods > MAX_METHODS:
                    too_big.append(f"class {name}.{node.name}: {methods} methods")
    assert not too_big, "\n".join(too_big)


@pytest.mark.parametrize("probe,expected", [
    ("bakeoff.agent.session", "bakeoff.agent.session"),
    ("bakeoff.agent.fanout.trajectory", "bakeoff.agent.fanout"),
    ("bakeoff.agent.cli.run", "bakeoff.agent.cli"),
])
def test_rooms_are_found_by_longest_prefix(probe, expected):
    assert room(probe) == expected
