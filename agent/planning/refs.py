"""References inside plan arguments: ``$2`` (task 2's whole result), ``$2.path`` and
``${2}.files[0]`` (a field or an item of it), ``$$`` (a literal ``$``).

Finding them is pure; the scheduler resolves them once their producers have finished.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# `$$` (an escaped dollar), `${2}` / `${2.path}`, or `$2` / `$2.path` / `$2.files[0]`.
_PATH = r"((?:\.[A-Za-z_]\w*|\[\d+\])*)"
REF = re.compile(r"\$\$|\$\{(\d+)" + _PATH + r"\}" + _PATH + r"|\$(\d+)" + _PATH)
_PURE_REF = re.compile(r"\s*(?:\$\{(\d+)" + _PATH + r"\}" + _PATH + r"|\$(\d+)" + _PATH + r")\s*")


@dataclass(frozen=True, slots=True)
class Ref:
    """One reference inside an argument: task ``task_id``, then ``path`` (fields and indices).
    A dataclass, not pydantic: the scheduler resolves references on every task."""

    task_id: int
    path: list[str | int]


def _parse_path(text: str) -> list[str | int]:
    return [int(p[1:-1]) if p.startswith("[") else p[1:] for p in re.findall(r"\.[A-Za-z_]\w*|\[\d+\]", text)]


def _ref(m: re.Match[str]) -> Ref:
    """The reference a match of ``REF`` or ``_PURE_REF`` (same groups) spells."""
    if m.group(1) is not None:
        return Ref(task_id=int(m.group(1)), path=_parse_path(m.group(2) + m.group(3)))
    return Ref(task_id=int(m.group(4)), path=_parse_path(m.group(5)))


def pure_ref(value: Any) -> Ref | None:
    """The reference a whole argument value is (``"$2.path"``), or None."""
    if not isinstance(value, str):
        return None
    m = _PURE_REF.fullmatch(value)
    return None if m is None else _ref(m)


def refs_in(value: Any) -> list[Ref]:
    """Every reference in an argument value (strings, lists and dicts, recursively)."""
    if isinstance(value, str):
        return [_ref(m) for m in REF.finditer(value) if m.group(0) != "$$"]
    if isinstance(value, dict):
        return [r for v in value.values() for r in refs_in(v)]
    if isinstance(value, (list, tuple)):
        return [r for v in value for r in refs_in(v)]
    return []
