"""Every built-in tool is typed as the planner needs it: unique names, valid JSON schemas."""

from __future__ import annotations

import json

import jsonschema
import pydantic
import pytest

from bakeoff.agent.seams import Tool
from bakeoff.tools.catalog import builtin_tools
from bakeoff.tools.registry import default_registry

EXPECTED = {"read_file", "list_files", "search", "edit", "run", "build", "test", "profile", "git"}


def test_catalog_names_are_unique_and_complete():
    names = [t.name for t in builtin_tools()]
    assert len(names) == len(set(names)) and set(names) == EXPECTED
    assert set(default_registry().names()) == EXPECTED


@pytest.mark.parametrize("tool", builtin_tools(), ids=lambda t: t.name)
def test_each_tool_is_typed_and_schema_is_valid(tool):
    assert isinstance(tool, Tool) and tool.description.strip()
    schema = tool.Args.model_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    json.dumps(tool.Result.model_json_schema())
    assert schema.get("additionalProperties") is False  # extra="forbid": a typo is reported, not ignored
    for field, prop in schema["properties"].items():
        assert prop.get("description"), f"{tool.name}.{field} has no description"
    with pytest.raises(pydantic.ValidationError):
        tool.Args.model_validate({"no_such_argument": 1, **{k: "x" for k in schema.get("required", [])}})


@pytest.mark.parametrize("tool", builtin_tools(), ids=lambda t: t.name)
def test_each_tool_declares_its_own_time_limit(tool):
    limit = tool.time_limit_s
    assert limit is None or limit > 0
    longest_command = tool.Args.model_json_schema()["properties"].get("timeout", {}).get("maximum")
    if limit is not None and longest_command is not None:
        assert limit > longest_command  # the command's own timeout fires first; the limit is a backstop


def test_registry_exports_json():
    entries = json.loads(default_registry().to_json())
    assert {e["name"] for e in entries} == EXPECTED
    assert all(e["parameters"]["type"] == "object" for e in entries)
