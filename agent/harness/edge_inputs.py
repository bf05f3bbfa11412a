"""Edge-case inputs the tester model proposes for a differential harness.

The harnesses draw inputs from a function's types; the places where a parallel rewrite
breaks (empty input, one element, a size just past a multiple of the thread count, ties,
duplicates) are better named by a model that has read the function. ``propose_inputs`` asks
the tester model (prompt edge_inputs.j2) and turns its answer into what the harness's
``make_tests(extra_inputs)`` takes:

- C/C++ (``c_harness.CHarness``): mappings ``{"vars": {...}, "values": {...}}``,
  checked against the harness's driver plan (``c_edge_inputs``), so that an input reaches the
  reference only when the driver can build it and its literal arguments agree with its sizes;
- Python (``python_harness.PythonHarness``): calls of the entry function with literal arguments.

Parsing is pure (``parse_c_inputs``, ``parse_python_inputs``): model text in, inputs and notes
out (``edge_text`` reads the JSON). Each proposal left out gives a note saying why.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any

from bakeoff.agent.harness.c_edge_inputs import c_prompt_parts, parse_c_inputs
from bakeoff.agent.harness.c_harness import CHarness
from bakeoff.agent.harness.edge_text import MAX_INPUTS, capped, gist
from bakeoff.agent.harness.protocol import DifferentialHarness
from bakeoff.agent.harness.python_harness import PythonHarness
from bakeoff.agent.harness.testgen import parse_inputs, typed_inputs
from bakeoff.agent.seams import Message, Model
from bakeoff.agent.types import TestCase

MAX_CALL_CHARS = 2000  # a Python call longer than this is data, not an edge case


# --------------------------------------------------------------------------- Python inputs


def _literal_call(call: str) -> bool:
    """Every argument a literal: proposals run in the reference's process, so no code rides along."""
    try:
        node = ast.parse(call, mode="eval").body
        assert isinstance(node, ast.Call)
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            ast.literal_eval(arg.value if isinstance(arg, ast.Starred) else arg)
    except (SyntaxError, ValueError, TypeError, AssertionError, MemoryError, RecursionError):
        return False
    return True


def parse_python_inputs(text: str, entry: str, limit: int = MAX_INPUTS) -> tuple[list[str], list[str]]:
    """The calls of ``entry`` with literal arguments in a tester's answer, and a note per one left out."""
    calls = parse_inputs(text, entry)
    if not calls:
        return [], [f"edge inputs: the tester's answer held no call of {entry} ({gist(text)})"]
    kept: list[str] = []
    notes: list[str] = []
    for call in calls:
        if len(call) > MAX_CALL_CHARS:
            notes.append(f"edge input {call[:40]}... left out: over {MAX_CALL_CHARS} characters")
        elif not _literal_call(call):
            notes.append(f"edge input {call[:60]} left out: its arguments are not all literals")
        else:
            kept.append(call)
    return capped(kept, notes, limit)


# --------------------------------------------------------------------------- asking the model


async def propose_inputs(model: Model, *, goal: str, source: str, entry: str, language: str,
                         harness: DifferentialHarness) -> tuple[list, list[str]]:
    """Ask ``model`` (the tester) for edge cases of ``entry`` and return (inputs for
    ``harness.make_tests``, notes on what was left out). A ``CHarness`` gets mappings checked
    against its driver plan; a ``PythonHarness`` gets calls with literal arguments. The
    harness decides the format and the function's name; ``entry`` and ``language`` (the
    task's) name them in the prompt only when the harness does not. Errors of the model call
    itself propagate: the caller decides what a failed call means."""
    from bakeoff.agent.prompting import render

    if isinstance(harness, PythonHarness):
        name = harness.entry or entry
        example = "\n".join(typed_inputs(harness.reference_source, name, count=2, size=2))
        parts: dict[str, Any] = {"kind": "python", "sizes": [], "params": [], "example": example}
        fence, shown = "python", "Python"
    elif isinstance(harness, CHarness):
        name = harness.function or entry
        parts = c_prompt_parts(harness.plan)
        fence, shown = ("c", "C") if (harness.language or language) == "c" else ("cpp", "C++")
    else:
        raise TypeError(f"no edge inputs for a {type(harness).__name__}: only CHarness and PythonHarness take them")
    prompt = render("edge_inputs", language=shown, goal=goal, source=source, entry=name, fence=fence,
                    limit=MAX_INPUTS, **parts)
    completion = await model.complete([Message(role="user", content=prompt)], temperature=0.0)
    if isinstance(harness, PythonHarness):
        return parse_python_inputs(completion.text, name)
    return parse_c_inputs(completion.text, harness.plan)


async def make_tests_with(harness: DifferentialHarness, extra_inputs: Sequence[Any]) -> tuple[list[TestCase], list[str]]:
    """``harness.make_tests(extra_inputs)``; when the proposed inputs make it fail, once more
    without them, with a note. An error that is not theirs comes back from the second try."""
    if not extra_inputs:
        return await harness.make_tests(), []
    try:
        return await harness.make_tests(list(extra_inputs)), []
    # What proposed inputs can cause: a rejected constraint (ValueError), a literal the driver
    # cannot write (TypeError), a size expression that divides by zero (ArithmeticError), a
    # reference that does not build with the literals compiled in (RuntimeError).
    except (ValueError, TypeError, ArithmeticError, RuntimeError) as exc:
        note = f"edge inputs: the harness rejected the {len(extra_inputs)} proposed ({type(exc).__name__}: {exc}"[:300] + ")"
        return await harness.make_tests(), [note]
