"""The Action's settings: the workflow's inputs and the base branch, never the pull request.

The gate (which holds GITHUB_TOKEN and runs no PR code) reads the base branch's
``bakeoff.toml``, or ``[tool.bakeoff]`` in its ``pyproject.toml``, through the API and hands the
table on in the trigger. The run step merges it under the ``BAKEOFF_*`` variables and flags the
workflow sets (``config.load_action_settings``); the checkout, which is the pull request's, is
never read for settings.

Whatever the settings say, the Action refuses:

- an ``image`` that is not an image reference: it never builds a Dockerfile, least of all one
  the pull request could have written;
- a scripted model (which replays a file named in the settings) unless the workflow enables
  scripted models (``allow-scripted-model``) and names it itself.

No message here quotes a file: a settings file is named with its place, never shown.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from typing import Any

from bakeoff.agent.config import MODEL_ROLES, ConfigError, Settings, load_action_settings
from bakeoff.agent.github.client import GitHub
from bakeoff.agent.github.trigger import Trigger

# A Docker image reference: [registry[:port]/]name[/name...][:tag][@sha256:digest], lower case.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(rf"(?:[a-zA-Z0-9]+(?:[.-][a-zA-Z0-9]+)*(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*"
                    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?")
_WORKFLOW_SOURCES = ("env ", "flag ")


class ActionRefused(ConfigError):
    """A setting the Action will not run with; the message says what to do instead."""


def _table(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = re.search(r"\((at line \d+, column \d+|at end of document)\)", str(exc))
        raise ConfigError(f"{source} is not valid TOML ({where[1] if where else 'unreadable'}): "
                          "fix it on the base branch") from None


def read_base_settings(gh: GitHub, ref: str, name: str) -> tuple[dict[str, Any], str]:
    """The base branch's settings table at ``ref`` (a commit of branch ``name``) and where it
    came from; ``({}, "")`` when the base branch has none."""
    text = gh.file_text("bakeoff.toml", ref)
    if text is not None:
        source = f"bakeoff.toml on {name}"
        return _table(text, source), source
    text = gh.file_text("pyproject.toml", ref)
    if text is None:
        return {}, ""
    source = f"pyproject.toml [tool.bakeoff] on {name}"
    table = _table(text, f"pyproject.toml on {name}").get("tool", {}).get("bakeoff")
    if table is None:
        return {}, ""
    if not isinstance(table, dict):
        raise ConfigError(f"{source} must be a table: fix it on the base branch")
    return table, source


def refusals(settings: Settings, provenance: Mapping[str, str], *, allow_scripted: bool) -> list[str]:
    """Why the Action will not run with ``settings``; empty when it will."""
    problems = []
    if settings.image is not None and not _IMAGE.fullmatch(settings.image):
        problems.append(
            f"image (from {provenance.get('image', '?')}) is not a Docker image reference: in the Action, image must "
            "name an image (like python:3.12-slim); a Dockerfile is never built there, since the pull request could "
            "have written it. Build and push the image in a trusted workflow, then name it")
    models = [(f"model.{role}", getattr(settings.model, role)) for role in ("default", *MODEL_ROLES)]
    models += [("model.fallbacks", spec) for spec in settings.model.fallbacks]
    for key, spec in models:
        if not (spec or "").startswith("scripted:"):
            continue
        source = provenance.get(key, "?")
        if not allow_scripted:
            problems.append(f"{key} (from {source}) is a scripted model, which replays a file: the Action runs one "
                            "only when the workflow sets allow-scripted-model: true")
        elif not source.startswith(_WORKFLOW_SOURCES):
            problems.append(f"{key} (from {source}) is a scripted model: with allow-scripted-model, the workflow "
                            "itself must name it (the model input), not a settings file")
    return problems


def action_settings(trigger: Trigger, environ: Mapping[str, str], flags: Mapping[str, Any], *,
                    allow_scripted: bool = False) -> tuple[Settings, dict[str, str]]:
    """The run step's settings and where each came from; raises ``ConfigError`` (``ActionRefused``
    when the settings are valid but not for the Action)."""
    settings, provenance = load_action_settings(trigger.base_settings, trigger.base_settings_source, environ, flags)
    problems = refusals(settings, provenance, allow_scripted=allow_scripted)
    if problems:
        raise ActionRefused("bakeoff action run refuses these settings:\n  " + "\n  ".join(problems))
    return settings, provenance
