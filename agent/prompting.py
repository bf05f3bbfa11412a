"""Prompts are files in prompts/, one per role, rendered strictly: a missing variable is an error."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any


@lru_cache(maxsize=None)
def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("bakeoff.prompts", ""),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render(role: str, **variables: Any) -> str:
    """Render prompts/<role>.j2 with ``variables``; raises if the template uses an unknown one."""
    return _environment().get_template(f"{role}.j2").render(**variables)


def roles() -> list[str]:
    return sorted(p.name[:-3] for p in resources.files("bakeoff.prompts").iterdir() if p.name.endswith(".j2"))
