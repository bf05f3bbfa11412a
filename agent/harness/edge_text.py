"""Reading a tester's answer: the JSON items in model text, and the notes on what was left out.

Models wrap JSON in code fences, leave trailing commas, write Python literals (single
quotes, ``True``) or break one item of many; each is read as leniently as is safe. Pure:
text in, items out.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

# Each accepted input is one more test every candidate runs at every thread count, several
# times: a dozen covers the usual edge cases (0, 1, odd, around powers of two, ties) without
# outweighing the harness's own tests.
MAX_INPUTS = 12
_MAX_NOTES = 6  # notes past this many are counted, not listed: they end up in the verdict's reason

_FENCE = re.compile(r"```[a-zA-Z0-9_+-]*[ \t]*\n(.*?)(?:```|\Z)", re.S)
_TRAILING_COMMA = re.compile(r",(\s*[\]}])")
_OPENER = re.compile(r"[\[{]")
_JSON_WORDS = {"true": "True", "false": "False", "null": "None"}


class Rejected(ValueError):
    """Why one proposed input is left out (a note, never raised past the edge-input modules)."""


def _loads(text: str) -> Any:
    """One JSON value, leniently: trailing commas, and Python literals (single quotes, True)."""
    cleaned = _TRAILING_COMMA.sub(r"\1", text.strip())
    try:
        return json.loads(cleaned)
    except ValueError:
        pass
    pythonic = re.sub(r"\b(true|false|null)\b", lambda m: _JSON_WORDS[m.group(1)], cleaned)
    try:
        return ast.literal_eval(pythonic)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise ValueError(str(exc)) from exc


def _scan(text: str) -> tuple[list[Any], bool]:
    """Every JSON object or list in ``text``, left to right, and whether a bracket opened
    something that did not parse (a broken item, rather than prose around good JSON)."""
    decoder = json.JSONDecoder()
    cleaned = _TRAILING_COMMA.sub(r"\1", text)
    found: list[Any] = []
    broken = False
    pos = 0
    while (m := _OPENER.search(cleaned, pos)) is not None:
        try:
            value, end = decoder.raw_decode(cleaned, m.start())
        except ValueError:
            broken = True
            pos = m.start() + 1
            continue
        # A list of plain numbers in the prose ("sizes [0, 1]") is not a proposal.
        if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, dict) for v in value)):
            found.append(value)
        pos = end
    return found, broken


def json_items(text: str) -> tuple[list[Any], bool]:
    """The proposed items in model output, and whether all of it read as JSON: the JSON of
    each fenced block (or of the whole text when there is no fence), a list flattened to its
    items; a block that does not parse as a whole (one broken item) yields each object in it
    that does, and the flag is False."""
    items: list[Any] = []
    whole = True
    for block in _FENCE.findall(text) or [text]:
        try:
            values = [_loads(block)]
        except ValueError:
            values, broken = _scan(block)
            whole = whole and not broken
        for value in values:
            if isinstance(value, dict):
                wrapped = next((value[k] for k in ("inputs", "cases", "edge_cases", "tests")
                                if isinstance(value.get(k), list)), None)
                items.extend(wrapped if wrapped is not None else [value])
            elif isinstance(value, list):
                items.extend(value)
    return items, whole


def json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object of a fenced block (or of the whole text), read as leniently as
    ``json_items`` reads items; None when there is none."""
    for block in _FENCE.findall(text) or [text]:
        try:
            values = [_loads(block)]
        except ValueError:
            values, _ = _scan(block)
        for value in values:
            if isinstance(value, dict):
                return value
    return None


def gist(text: str) -> str:
    """The start of a model's answer, on one line, for a note."""
    one = " ".join(text.split())
    return repr(one[:60] + ("..." if len(one) > 60 else "")) if one else "empty"


def capped(kept: list, notes: list[str], limit: int) -> tuple[list, list[str]]:
    """At most ``limit`` inputs and ``_MAX_NOTES`` notes; what is cut is counted in a note."""
    if len(kept) > limit:
        notes.append(f"edge inputs: {len(kept) - limit} past the first {limit} left out")
        kept = kept[:limit]
    if len(notes) > _MAX_NOTES:
        notes = [*notes[: _MAX_NOTES - 1], f"edge inputs: {len(notes) - _MAX_NOTES + 1} more left out"]
    return kept, notes
