"""Tests and inputs for Python candidates: parsing model-written tests, asking the tester
model for them, and drawing inputs from a function's type hints (and mutating them).

``parse_generated_tests`` is pure: model text in, ``TestCase``s out. ``typed_inputs`` and
``mutate_inputs`` make the calls the Python differential harness (``python_harness``) runs.
"""

from __future__ import annotations

import ast
import hashlib
import random
import re
from collections.abc import Sequence
from typing import Any

from bakeoff.agent.seams import Model
from bakeoff.agent.types import Task, TestCase

_FENCE = re.compile(r"```[a-zA-Z0-9_+-]*\n(.*?)(?:```|\Z)", re.S)
_ASSERT = re.compile(r"(?<![\w.])assert(?=[\s(])")
# Where a generated assert ends (CodeT's stop strings, plus the next assert).
_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint", "\nassert")


def _test_id(code: str) -> str:
    return "gen-" + hashlib.sha1(code.encode()).hexdigest()[:10]


def _code_blocks(text: str) -> str:
    blocks = _FENCE.findall(text)
    return "\n".join(blocks) if blocks else text


def _longest_compiling_prefix(piece: str) -> str | None:
    lines = piece.splitlines()
    for k in range(len(lines), 0, -1):
        code = "\n".join(lines[:k]).rstrip()
        try:
            tree = ast.parse(code)
        except SyntaxError:
            continue
        if len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert):
            return code
        return None
    return None


def _names(code: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(code)) if isinstance(n, ast.Name)}


def _pytest_functions(code: str, entry: str) -> list[str]:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    found = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            src = ast.get_source_segment(code, node)
            if src and entry in _names(src) and not node.args.args:
                found.append(f"{src}\n\n{node.name}()")
    return found


def parse_generated_tests(text: str, entry: str) -> list[TestCase]:
    """Asserts and pytest-style test functions that call ``entry``, from raw model output.

    Copes with what models write: code fences, prose around the code, a line cut off at the
    token limit (dropped), ``assert`` followed by a line break (joined), tests that do not
    mention ``entry`` (dropped). A test written k times is returned once with weight k.
    """
    code = _code_blocks(text)
    found: list[str] = []
    if re.search(r"^\s*def test", code, re.M):
        found.extend(_pytest_functions(code, entry))
        if found:
            # Asserts inside the functions are already covered; top-level ones are taken below.
            code = "\n".join(
                line for line in code.splitlines() if not line.startswith((" ", "\t")) and not line.startswith("def ")
            )
    starts = [m.start() for m in _ASSERT.finditer(code)]
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(code)
        piece = code[start:end]
        for stop in _STOPS:
            cut = piece.find(stop, 1)
            if cut != -1:
                piece = piece[:cut]
        # "assert\n    f(x) == y": join the expression onto the assert line.
        piece = "assert " + piece[len("assert") :].lstrip()
        assertion = _longest_compiling_prefix(piece)
        if assertion is not None and entry in _names(assertion):
            found.append(assertion)
    tests: dict[str, TestCase] = {}
    for item in found:
        if item in tests:
            tests[item].weight += 1
        else:
            tests[item] = TestCase(id=_test_id(item), kind="generated", code=item)
    return list(tests.values())


def call_of(assertion: str, entry: str) -> str | None:
    """The outermost call of ``entry`` in a test: the input it probes, without its expected value."""
    try:
        tree = ast.parse(assertion)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == entry:
            return ast.get_source_segment(assertion, node)
    return None


async def generate_tests(model: Model, task: Task | str, code: str, entry: str, *, n: int = 1) -> list[TestCase]:
    """Ask the tester model for tests of ``entry`` (prompt testgen.j2); ``n`` samples, merged."""
    from bakeoff.agent.prompting import render
    from bakeoff.agent.seams import Message

    goal = task.goal if hasattr(task, "goal") else str(task)
    prompt = render("testgen", task=goal, code=code, entry=entry)
    completion = await model.complete([Message(role="user", content=prompt)], n=n, temperature=0.8 if n > 1 else 0.0)
    merged: dict[str, TestCase] = {}
    for text in completion.texts:
        for test in parse_generated_tests(text, entry):
            if test.code in merged:
                merged[test.code].weight += test.weight
            else:
                merged[test.code] = test
    return list(merged.values())


def parse_inputs(text: str, entry: str) -> list[str]:
    """Calls of ``entry`` with their arguments, one per proposed input, from model output."""
    calls: list[str] = []
    for line in _code_blocks(text).splitlines():
        line = line.strip().rstrip(",;")
        if not line or line.startswith("#"):
            continue
        call = call_of(line if not line.startswith("assert") else line, entry)
        if call and call not in calls:
            calls.append(call)
    return calls


# --------------------------------------------------------------------------- type-driven inputs


class _ValueMaker:
    """Random values from a parameter's annotation (ast), sized by ``size``."""

    def __init__(self, rng: random.Random, size: int):
        self.rng = rng
        self.size = size

    def make(self, ann: ast.expr | None, depth: int = 0) -> Any:
        r = self.rng
        if ann is None or depth > 4:
            return r.randint(-10, 10)
        if isinstance(ann, ast.Constant) and isinstance(ann.value, str):
            try:
                return self.make(ast.parse(ann.value, mode="eval").body, depth)
            except SyntaxError:
                return r.randint(-10, 10)
        if isinstance(ann, ast.BinOp) and isinstance(ann.op, ast.BitOr):  # X | None
            options = [a for a in (ann.left, ann.right) if not (isinstance(a, ast.Constant) and a.value is None)]
            return None if r.random() < 0.1 else self.make(r.choice(options) if options else None, depth)
        name, args = self._split(ann)
        if name == "int":
            return r.randint(-self.size, self.size) if r.random() < 0.5 else r.randint(0, 10)
        if name == "float":
            return round(r.uniform(-self.size, self.size), 3)
        if name == "bool":
            return r.random() < 0.5
        if name == "str":
            n = r.randint(0, min(self.size, 12) if self.size < 100 else self.size)
            return "".join(r.choice("abcdeABC xyz01") for _ in range(n))
        if name in ("list", "List", "Sequence", "Iterable", "set", "Set", "frozenset"):
            n = r.randint(0, self.size if depth == 0 else min(self.size, 8))
            items = [self.make(args[0] if args else None, depth + 1) for _ in range(n)]
            return set(_freeze(i) for i in items) if name in ("set", "Set", "frozenset") else items
        if name in ("tuple", "Tuple"):
            if len(args) == 2 and isinstance(args[1], ast.Constant) and args[1].value is Ellipsis:
                return tuple(self.make(args[0], depth + 1) for _ in range(r.randint(0, self.size)))
            return tuple(self.make(a, depth + 1) for a in args)
        if name in ("dict", "Dict", "Mapping"):
            n = r.randint(0, self.size)
            k, v = (args + [None, None])[:2]
            return {_freeze(self.make(k, depth + 1)): self.make(v, depth + 1) for _ in range(n)}
        if name == "Optional":
            return None if r.random() < 0.1 else self.make(args[0] if args else None, depth)
        if name == "Union" and args:
            return self.make(r.choice(args), depth)
        return r.randint(-10, 10)

    @staticmethod
    def _split(ann: ast.expr) -> tuple[str, list[ast.expr]]:
        if isinstance(ann, ast.Subscript):
            base = ann.value
            name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
            sl = ann.slice
            args = list(sl.elts) if isinstance(sl, ast.Tuple) else [sl]
            return name, args
        if isinstance(ann, ast.Attribute):
            return ann.attr, []
        if isinstance(ann, ast.Name):
            return ann.id, []
        if isinstance(ann, ast.Constant) and ann.value is None:
            return "None", []
        return "", []


def _freeze(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, (set, dict)):
        return tuple(sorted(map(repr, v)))
    return v


def parameters(source: str, entry: str) -> list[ast.arg]:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry:
            return [a for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")]
    raise ValueError(f"function {entry!r} is not defined in the reference")


# What an unannotated parameter most likely holds, from the names Python code uses for it.
_NAME_HINTS = (
    (re.compile(r"(arr|array|nums|numbers|lst|list|xs|values|items|seq|vec|ints|data|l)\d*$|_list$"), "list[int]"),
    (re.compile(r"(s|str|string|text|txt|word|sentence|name|char|c)\d*$"), "str"),
    (re.compile(r"(strings|words|names)$"), "list[str]"),
    (re.compile(r"(n|k|m|x|y|z|a|b|i|j|num|number|base|count|size|value|val|p|q)\d*$"), "int"),
)


def _guess_annotation(name: str) -> ast.expr | None:
    """An annotation for an unannotated parameter, guessed from its name (``arr`` is a list of
    ints, ``s`` a string, ``n`` an int); None when the name says nothing."""
    for pattern, ann in _NAME_HINTS:
        if pattern.fullmatch(name.lower()):
            return ast.parse(ann, mode="eval").body
    return None


def typed_inputs(source: str, entry: str, *, count: int, size: int, seed: int = 0) -> list[str]:
    """``count`` calls of ``entry`` with random arguments drawn from its type hints (or, for a
    parameter without one, from its name), sizes growing from 0 to ``size`` so that empty and
    tiny inputs come first."""
    params = parameters(source, entry)
    rng = random.Random(seed)
    calls: list[str] = []
    for i in range(count * 3):
        maker = _ValueMaker(rng, size if count == 1 else max(0, min(size, i * size // max(count - 1, 1))))
        args = ", ".join(repr(maker.make(p.annotation or _guess_annotation(p.arg))) for p in params)
        call = f"{entry}({args})"
        if call not in calls:
            calls.append(call)
        if len(calls) == count:
            break
    return calls


# --------------------------------------------------------------------------- type-aware mutation


def _mutate_value(v: Any, rng: random.Random, depth: int = 0) -> Any:
    """A nearby value of the same type (EvalPlus-style type-aware mutation)."""
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return rng.choice([v + 1, v - 1, -v, v * 2, 0, v + rng.randint(-10, 10)])
    if isinstance(v, float):
        return rng.choice([v + 1.0, v - 1.0, -v, v * 1.5, v / 2, 0.0])
    if isinstance(v, str):
        if not v:
            return rng.choice(["a", " ", "A1"])
        i = rng.randrange(len(v))
        return rng.choice([v[:i] + v[i + 1 :], v[:i] + v[i] + v[i:], v[::-1], v.swapcase(), v + v[i]])
    if isinstance(v, (list, tuple)):
        items = list(v)
        if not items:
            return v
        i = rng.randrange(len(items))
        choice = rng.randrange(4 if depth < 3 else 3)
        if choice == 0:
            del items[i]
        elif choice == 1:
            items.insert(rng.randrange(len(items) + 1), items[i])
        elif choice == 2:
            rng.shuffle(items)
        else:
            items[i] = _mutate_value(items[i], rng, depth + 1)
        return type(v)(items) if isinstance(v, tuple) else items
    if isinstance(v, dict) and v:
        k = rng.choice(list(v))
        out = dict(v)
        out[k] = _mutate_value(v[k], rng, depth + 1)
        return out
    return v


def mutate_inputs(calls: Sequence[str], entry: str, *, per_call: int = 2, seed: int = 0) -> list[str]:
    """New calls of ``entry`` near the given ones: each literal argument list mutated by type,
    ``per_call`` times. Calls whose arguments are not all literals are skipped."""
    rng = random.Random(seed)
    seen = set(calls)
    out: list[str] = []
    for call in calls:
        try:
            node = ast.parse(call, mode="eval").body
            args = [ast.literal_eval(a) for a in node.args]  # type: ignore[attr-defined]
        except (SyntaxError, ValueError, TypeError, AttributeError, MemoryError, RecursionError):
            continue
        if not args or getattr(node, "keywords", None):
            continue
        made = 0
        for _ in range(per_call * 3):
            if made == per_call:
                break
            new = list(args)
            i = rng.randrange(len(new))
            new[i] = _mutate_value(new[i], rng)
            text = f"{entry}({', '.join(repr(a) for a in new)})"
            if len(text) > 2000 or text in seen:
                continue
            seen.add(text)
            out.append(text)
            made += 1
    return out
