"""Every built-in tool, in one list. ``fan_out`` is the agent's own tool and lives elsewhere."""

from __future__ import annotations

from agent.seams import Tool
from tools.edit import Edit
from tools.errors import ToolError
from tools.exec import Build, Run, Test
from tools.files import ListFiles, ReadFile, Search
from tools.git import Git
from tools.profile import Profile

__all__ = ["ToolError", "builtin_tools"]


def builtin_tools() -> list[Tool]:
    """A fresh instance of each built-in tool."""
    return [ReadFile(), ListFiles(), Search(), Edit(), Run(), Build(), Test(), Profile(), Git()]
