"""The tools the planner may call, by name, with the JSON schemas it sees."""

from __future__ import annotations

import json
from collections.abc import Iterable

from bakeoff.agent.seams import Tool


class Registry:
    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} registered twice")
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def schemas(self) -> list[dict]:
        """One entry per tool: name, description, and the JSON schema of its arguments."""
        return [
            {"name": t.name, "description": t.description, "parameters": t.Args.model_json_schema()}
            for _, t in sorted(self._tools.items())
        ]

    def describe(self) -> str:
        """The tool list as a prompt shows it: one block per tool with its argument schema."""
        blocks = []
        for entry in self.schemas():
            params = entry["parameters"]
            props = params.get("properties", {})
            required = set(params.get("required", []))
            args = ", ".join(f"{k}{'' if k in required else '?'}: {_type_name(v)}" for k, v in props.items())
            blocks.append(f"{entry['name']}({args})\n  {entry['description']}")
        return "\n".join(blocks)

    def to_json(self) -> str:
        return json.dumps(self.schemas(), indent=2)


def _type_name(schema: dict) -> str:
    """A short type for a JSON schema: 'integer', 'array[string]', 'string|null'."""
    if "anyOf" in schema:
        return "|".join(_type_name(s) for s in schema["anyOf"])
    kind = schema.get("type", "any")
    if kind == "array" and isinstance(schema.get("items"), dict):
        return f"array[{_type_name(schema['items'])}]"
    if "enum" in schema:
        return "|".join(repr(v) for v in schema["enum"])
    return kind


def default_registry() -> Registry:
    """Every built-in tool. Imported lazily so the CLI stays light."""
    from bakeoff.tools import catalog

    return Registry(catalog.builtin_tools())
