"""Every built-in tool, in one list. ``fan_out`` is the agent's own tool and lives elsewhere."""

from __future__ import annotations

from bakeoff.agent.seams import Tool
from bakeoff.tools.edit import Edit
from bakeoff.tools.errors import ToolError
from bakeoff.tools.exec import Build, Run, Test
from bakeoff.tools.files import ListFiles, ReadFile, Search
from bakeoff.tools.git import Git
from bakeoff.tools.profile import Profile

__all__ = ["ToolError", "builtin_tools"]


def builtin_tools() -> list[Tool]:
    """A fresh instance of each built-in tool."""
    return [ReadFile(), ListFiles(), Search(), Edit(), Run(), Build(), Test(), Profile(), Git()]
