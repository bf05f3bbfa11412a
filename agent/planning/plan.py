"""The plan format and its parser: one task per line, pure.

A plan line is a call with an optional number, dependencies and a comment::

    3. search(pattern="omp parallel", path=$1.path) deps=[1]  # where the loops are
    {"id": 4, "tool": "build", "args": {"target": "all"}, "deps": [3]}
    join()

Argument values may reference earlier results: ``$2`` (task 2's whole result, type kept),
``$2.path`` / ``${2}.files[0]`` (a field, type kept). A string that mixes text and references
("$1 and $2") gets them substituted as text; ``$$`` is a literal ``$`` (see ``refs``).
Parsing is pure and tolerant of what real models write (numbering variants, bullets, code
fences, prose lines, JSON lines, ``key: value`` arguments, positional arguments). What it
cannot accept (unknown tool, arguments the tool's schema rejects, references to tasks not
defined earlier, a task depending on itself) becomes a ``PlanLineError``: a message for the
planner, never a crash. ``plan_stream`` applies the same rules while the model writes.
"""

from __future__ import annotations

import ast
import difflib
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from bakeoff.agent.planning.refs import REF, pure_ref, refs_in
from bakeoff.agent.seams import Tool
from bakeoff.agent.types import Task
from bakeoff.tools.registry import Registry

JOIN = "join"  # the tool name of the line that ends a plan

_NUMBER = re.compile(
    r"^(?:(?:task|step|action)\s*)?[#$%]?\(?(\d+)\)?\s*(?:[.:)\-]|=|\s)\s*", re.IGNORECASE
)
_BULLET = re.compile(r"^(?:[-*+>]\s+|\*\*|__)+")
_CALL_PREFIX = re.compile(r"^(?:action|call|tool|task)\s*(?:\d+\s*)?:\s*", re.IGNORECASE)
_CALL_HEAD = re.compile(r"([A-Za-z_][\w\-.]*)\s*\(")
_DEPS = re.compile(
    r"(?:deps?|dependencies|depends(?:\s+on)?|after)\s*[=:]?\s*[\[(]?\s*((?:\$?\{?\d+\}?\s*(?:,|and|&)?\s*)+)[\])]?",
    re.IGNORECASE,
)
_JOIN_WORDS = {"join", "join()", "<end_of_plan>", "end_of_plan", "end of plan", "end plan", "<end>"}
THOUGHT = re.compile(r"^\s*(?:\*\*)?thought(?:\*\*)?\s*:\s*(.*)$", re.IGNORECASE)


class PlanLineError(BaseModel):
    """A plan line that could not become a task, with what the planner should fix."""

    line: str
    message: str
    task_id: int | None = None

    def __str__(self) -> str:
        where = f"task {self.task_id}" if self.task_id is not None else "line"
        return f"{where} `{self.line.strip()[:200]}`: {self.message}"


# --------------------------------------------------------------------------- call syntax


def _scan_call(text: str) -> tuple[str, str, str] | str:
    """Split ``name(args) rest`` respecting quotes and brackets; a str is what went wrong."""
    m = _CALL_HEAD.match(text)
    if m is None:
        return "no call"
    i, depth, quote = m.end(), 1, ""
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return m.group(1), text[m.end() : i], text[i + 1 :]
        i += 1
    return "unbalanced brackets or an unclosed string in the arguments"


_BARE_LITERALS = {"true": "True", "false": "False", "null": "None", "none": "None"}  # JSON habits
_WORD = re.compile(r"[A-Za-z_]\w*")


def _normalize(inner: str, colon_keys: bool) -> str:
    """Make model-written arguments Python: quote bare ``$N`` references, map JSON literals,
    and (``colon_keys``) turn ``key: value`` into ``key=value`` at the top level."""
    out: list[str] = []
    i, quote, depth = 0, "", 0
    while i < len(inner):
        c = inner[i]
        if quote:
            out.append(c)
            if c == "\\" and i + 1 < len(inner):
                out.append(inner[i + 1])
                i += 2
                continue
            if c == quote:
                quote = ""
            i += 1
            continue
        if c in "\"'":
            quote = c
            out.append(c)
            i += 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == "$":
            m = REF.match(inner, i)
            if m is not None and m.group(0) != "$$":
                out.append(json.dumps(m.group(0)))
                i = m.end()
                continue
        if c.isalpha() or c == "_":
            m = _WORD.match(inner, i)
            assert m is not None
            word = m.group(0)
            if colon_keys and depth == 0 and re.match(r"\s*:(?!=)", inner[m.end() :]):
                colon = inner.index(":", m.end())
                out.append(word + "=")
                i = colon + 1
                continue
            out.append(_BARE_LITERALS.get(word.lower(), word))
            i = m.end()
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _literal(node: ast.expr) -> Any:
    if isinstance(node, ast.Name):
        return node.id  # a bare word (target=all): weak models drop the quotes
    return ast.literal_eval(node)


def parse_call_args(inner: str) -> tuple[list[Any], dict[str, Any]] | str:
    """Positional and keyword argument values of a call's inside; a str is the problem."""
    last = ""
    for colon_keys in (False, True):
        try:
            tree = ast.parse(f"_({_normalize(inner, colon_keys)})", mode="eval")
        except SyntaxError as e:
            last = f"arguments are not valid call syntax ({e.msg})"
            continue
        call = tree.body
        if not isinstance(call, ast.Call):
            return "arguments are not valid call syntax"
        try:
            positional = [_literal(a) for a in call.args]
            keywords = {}
            for kw in call.keywords:
                if kw.arg is None:
                    return "`**` arguments are not supported: write each argument as name=value"
                keywords[kw.arg] = _literal(kw.value)
        except (ValueError, SyntaxError, TypeError):
            return "argument values must be literals (strings, numbers, lists, objects) or $N references"
        return positional, keywords
    return last


# --------------------------------------------------------------------------- one task


def _resolve_tool(name: str, registry: Registry) -> Tool | str:
    """The tool ``name`` means (tolerating ``functions.read_file``, ``Read-File``); a str is
    the message for the planner."""
    tool = registry.get(name)
    if tool is not None:
        return tool
    wanted = name.lower().replace("-", "_").rsplit(".", 1)[-1]  # functions.read_file, Read-File
    same = [n for n in registry.names() if n.lower() == wanted]
    if len(same) == 1:
        found = registry.get(same[0])
        assert found is not None
        return found
    close = difflib.get_close_matches(name, registry.names(), n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown tool {name!r}.{hint} Available tools: {', '.join(registry.names())}."


def _is_tool(name: str, registry: Registry) -> bool:
    return not isinstance(_resolve_tool(name, registry), str)


def _schema_errors(tool: Tool, args: dict[str, Any], deferred: set[str]) -> list[str]:
    """Schema problems in ``args``; fields holding references are checked once resolved."""
    try:
        tool.Args.model_validate(args)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = err.get("loc", ())
            if loc and loc[0] in deferred:
                continue
            field = ".".join(str(p) for p in loc) or "arguments"
            problems.append(f"{field}: {err.get('msg', 'invalid')}")
        return problems
    return []


def _bind_positional(tool: Tool, positional: Sequence[Any], args: dict[str, Any]) -> dict[str, Any] | str:
    """Keyword arguments with the positional ones named by the schema's field order."""
    args = dict(args)
    if not positional:
        return args
    fields = list(tool.Args.model_fields)
    if len(positional) == 1 and isinstance(positional[0], dict) and not args and set(positional[0]) <= set(fields):
        return dict(positional[0])  # tool({"path": "a.c"}): a JSON object as the only argument
    if len(positional) > len(fields):
        return f"{tool.name} takes {len(fields)} arguments ({', '.join(fields)}), got {len(positional)}"
    for name, value in zip(fields, positional):
        if name in args:
            return f"argument {name!r} given twice"
        args[name] = value
    return args


def _declared_deps(task_id: int, deps: Iterable[int], known: set[int]) -> set[int] | str:
    """The dependencies a line names (``deps=[1, 2]``), each a task defined before it."""
    found = set()
    for d in deps:
        if d == task_id:
            return "a task cannot depend on itself (that is a cycle)"
        if d not in known:
            return (
                f"depends on task {d}, which is not defined before this line; a task may depend "
                "only on tasks written earlier in the plan (this also rules out cycles)"
            )
        found.add(d)
    return found


def _referenced(task_id: int, args: dict[str, Any], known: set[int]) -> tuple[set[int], set[str]] | str:
    """(tasks the arguments reference, arguments holding a reference): both become known
    only when the referenced tasks finish."""
    deps: set[int] = set()
    deferred: set[str] = set()
    for name, value in args.items():
        whole = pure_ref(value)
        for ref in refs_in(value):
            if ref.task_id == task_id:
                return f"argument {name!r} refers to ${ref.task_id}, the task itself (a cycle)"
            if ref.task_id not in known:
                if whole is None:
                    continue  # text such as awk's '{print $1}' stays as written
                return (
                    f"argument {name!r} refers to ${ref.task_id}, which is not a task defined "
                    "earlier in the plan"
                )
            deps.add(ref.task_id)
            deferred.add(name)
    return deps, deferred


def _build_task(
    line: str,
    number: int | None,
    tool_name: str,
    positional: Sequence[Any],
    args: dict[str, Any],
    deps: Iterable[int],
    thought: str,
    registry: Registry,
    known_ids: set[int],
) -> Task | PlanLineError:
    known = set(known_ids)
    task_id = number if number is not None else max(known, default=0) + 1

    def error(message: str) -> PlanLineError:
        return PlanLineError(line=line, message=message, task_id=task_id)

    if tool_name.lower().strip("_") == JOIN:
        return Task(id=task_id, tool=JOIN, deps=sorted(d for d in set(deps) if d in known))
    if number is not None and number in known:
        return error(f"task id {number} is already used; number new tasks from {max(known) + 1}")
    tool = _resolve_tool(tool_name, registry)
    if isinstance(tool, str):
        return error(tool)
    bound = _bind_positional(tool, positional, args)
    if isinstance(bound, str):
        return error(bound)
    named = _declared_deps(task_id, deps, known)
    if isinstance(named, str):
        return error(named)
    referenced = _referenced(task_id, bound, known)
    if isinstance(referenced, str):
        return error(referenced)
    ref_deps, deferred = referenced
    problems = _schema_errors(tool, bound, deferred)
    if problems:
        return error(f"arguments do not fit {tool.name}'s schema: " + "; ".join(problems))
    return Task(id=task_id, tool=tool.name, args=bound, deps=sorted(named | ref_deps), thought=thought.strip())


# --------------------------------------------------------------------------- one line


def _parse_json_line(line: str, text: str, registry: Registry, known_ids: set[int]) -> Task | PlanLineError | None:
    try:
        obj = json.loads(text.rstrip(","))
    except json.JSONDecodeError as e:
        return PlanLineError(line=line, message=f"looks like a JSON task but is not valid JSON ({e.msg})")
    if not isinstance(obj, dict):
        return None
    pick = lambda *keys: next((obj[k] for k in keys if k in obj), None)  # noqa: E731
    tool = pick("tool", "name", "action", "function", "tool_name")
    if isinstance(tool, dict):  # {"function": {"name": ..., "arguments": ...}}
        obj = {**obj, **tool}
        tool = tool.get("name")
    if not isinstance(tool, str):
        return None if not obj else PlanLineError(line=line, message="a JSON task needs a \"tool\" name")
    args = pick("args", "arguments", "input", "params", "parameters") or {}
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return PlanLineError(line=line, message="\"args\" is a string that is not a JSON object")
    if not isinstance(args, dict):
        return PlanLineError(line=line, message="\"args\" must be an object of name: value")
    raw_id = pick("id", "task_id", "idx", "step")
    deps_raw = pick("deps", "dependencies", "depends_on", "after") or []
    try:
        number = int(str(raw_id).lstrip("$")) if raw_id is not None else None
        deps = [int(str(d).strip("${}")) for d in (deps_raw if isinstance(deps_raw, list) else [deps_raw])]
    except ValueError:
        return PlanLineError(line=line, message="\"id\" and \"deps\" must be task numbers")
    thought = str(pick("thought", "why", "reason", "comment") or "")
    return _build_task(line, number, tool, [], args, deps, thought, registry, known_ids)


def _is_join(text: str) -> bool:
    return text.lower().strip("`*. ") in _JOIN_WORDS


def _split_number(text: str) -> tuple[int | None, str]:
    """(the task number a line starts with, the call after it without its decorations)."""
    number = None
    m = _NUMBER.match(text)
    if m is not None:
        number = int(m.group(1))
        text = text[m.end() :].strip()
    text = _CALL_PREFIX.sub("", _BULLET.sub("", text)).strip().strip("`").strip()
    head, paren, tail = text.partition("(")
    if paren and len(head) < 80:
        # Markdown around the tool name (**read_file**(...), `read_file`(...)).
        text = head.replace("*", "").replace("`", "").strip() + paren + tail
    return number, text


def _parse_call_line(
    line: str, number: int | None, text: str, registry: Registry, known: set[int]
) -> Task | PlanLineError | None:
    """``name(args) deps=[..]  # comment`` → a task; None when it is prose after all."""
    scanned = _scan_call(text)
    if isinstance(scanned, str):
        if scanned == "no call":
            return None  # prose
        head = _CALL_HEAD.match(text)
        if number is None and not (head is not None and _is_tool(head.group(1), registry)):
            return None
        return PlanLineError(line=line, message=scanned, task_id=number)
    name, inner, rest = scanned
    parsed = parse_call_args(inner)
    if isinstance(parsed, str):
        if number is None and not (_is_tool(name, registry) or name.lower() == JOIN):
            return None  # prose that happens to contain parentheses
        return PlanLineError(line=line, message=parsed, task_id=number)
    positional, keywords = parsed
    if number is None and name.lower() != JOIN and not _is_tool(name, registry) and not keywords:
        return None  # "Note (important) ..." and similar prose
    rest, _, comment = rest.strip().partition("#")
    deps: list[int] = []
    dm = _DEPS.search(rest)
    if dm is not None:
        deps = [int(d) for d in re.findall(r"\d+", dm.group(1))]
    return _build_task(line, number, name, positional, keywords, deps, comment, registry, known)


def parse_plan_line(line: str, registry: Registry, known_ids: Iterable[int] = ()) -> Task | PlanLineError | None:
    """One plan line → a ``Task``, a ``PlanLineError``, or None for a line that is not a task
    (blank, prose, a code fence, a thought). The line ending a plan gives ``Task(tool="join")``.

    ``known_ids`` are the tasks defined before this line (earlier lines, earlier plans): the
    only ones it may depend on. A line without a number gets the next free id. Pure.
    """
    known = set(known_ids)
    text = line.strip()
    if not text or text.startswith("```") or THOUGHT.match(text):
        return None
    text = _BULLET.sub("", text).strip()
    if _is_join(text):
        return _build_task(line, None, JOIN, [], {}, [], "", registry, known)
    if text.startswith("{"):
        return _parse_json_line(line, text, registry, known)
    number, text = _split_number(text)
    if text.startswith("{"):
        parsed = _parse_json_line(line, text, registry, known)
        if isinstance(parsed, Task) and number is not None and parsed.id != number and "id" not in text:
            return _build_task(line, number, parsed.tool, [], parsed.args, parsed.deps, parsed.thought, registry, known)
        return parsed
    if _is_join(text):
        return _build_task(line, number, JOIN, [], {}, [], "", registry, known)
    return _parse_call_line(line, number, text, registry, known)


def parse_plan(text: str, registry: Registry, known_ids: Iterable[int] = ()) -> tuple[list[Task], list[PlanLineError], bool]:
    """A whole plan text at once: (tasks, errors, joined). Same rules as streaming."""
    known = set(known_ids)
    tasks: list[Task] = []
    errors: list[PlanLineError] = []
    for line in text.splitlines():
        item = parse_plan_line(line, registry, known)
        if isinstance(item, Task):
            if item.tool == JOIN:
                return tasks, errors, True
            known.add(item.id)
            tasks.append(item)
        elif isinstance(item, PlanLineError):
            errors.append(item)
    return tasks, errors, False
