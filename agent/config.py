"""bakeoff's settings, merged from four layers in one function and validated once.

Layers, lowest first: built-in defaults < the user's config file
(``$XDG_CONFIG_HOME/bakeoff/config.toml``) < the repository's ``bakeoff.toml`` or
``[tool.bakeoff]`` in its ``pyproject.toml`` < ``BAKEOFF_*`` environment variables < flags.
Every value remembers the layer it came from, so ``bakeoff config`` can show it and a
validation error can say where to fix it.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT = "default"
MODEL_ROLES = ("planner", "editor", "tester", "judge")  # the joiner uses the planner's model


class ModelNotConfigured(Exception):
    """No model is configured for a role: the user can fix it, and the message says how."""

    def __init__(self, role: str) -> None:
        self.role = role
        up = role.upper()
        super().__init__(
            f"no model configured for the {role} role. Configure one in any of these ways:\n"
            f"  - bakeoff.toml:    [model] default = \"MODEL\"   (or {role} = \"MODEL\")\n"
            f"  - pyproject.toml:  [tool.bakeoff.model] default = \"MODEL\"\n"
            f"  - environment:     BAKEOFF_MODEL=MODEL  or  BAKEOFF_{up}_MODEL=MODEL (also BAKEOFF_MODEL_{up})\n"
            f"  - command line:    --model MODEL\n"
            f"  - offline:         --model scripted:PATH  (replays responses from a YAML/JSON file)\n"
            f"MODEL is any litellm model string, e.g. openai/gpt-4o-mini, anthropic/claude-3-5-sonnet-latest, "
            f"ollama/qwen2.5-coder; set the provider's API key in its usual variable."
        )


class ModelConfig(BaseModel):
    """Which model plays each role. A role without its own model uses ``default``."""

    model_config = ConfigDict(extra="forbid")

    default: str | None = None
    planner: str | None = None
    editor: str | None = None
    tester: str | None = None
    judge: str | None = None
    fallbacks: list[str] = Field(default_factory=list)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    timeout: float = Field(120.0, gt=0)

    def for_role(self, role: str) -> str:
        spec = getattr(self, role, None) if role in MODEL_ROLES else None
        spec = spec or self.default
        if not spec:
            raise ModelNotConfigured(role)
        return spec


class Settings(BaseModel):
    """Everything a run can be configured with. Unknown keys are errors, not ignored."""

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = Field(default_factory=ModelConfig)
    n: int = Field(4, ge=1, le=64, description="candidate edits developed in parallel")
    budget_usd: float | None = Field(2.0, ge=0, description="dollars one run may spend (None: no cap)")
    budget_tokens: int | None = Field(None, ge=0, description="tokens one run may spend (None: no cap)")
    sandbox: Literal["auto", "local", "local+bwrap", "docker"] = "auto"
    image: str | None = Field(None, description="docker image or Dockerfile path for sandboxes")
    rounds: int = Field(2, ge=0, le=10, description="repair rounds per candidate")
    workers: int = Field(2, ge=1, le=64, description="batch tasks run at once")
    max_sandboxes: int = Field(4, ge=1, le=128, description="sandboxes alive at once")
    planner: Literal["compiler", "react"] = "compiler"
    max_replans: int = Field(2, ge=0, le=10)
    build: str | None = Field(None, description="build command (detected when unset)")
    test: str | None = Field(None, description="test command (detected when unset)")
    threads: int | None = Field(
        None, ge=1, le=4096,
        description="threads candidates are timed at (unset: the CPUs the sandbox may use, from its affinity and cgroup quota)",
    )

    @property
    def max_n(self) -> int:
        """The most candidates one fan_out may start: the user's ``n``, whatever the plan asks."""
        return self.n


class ConfigError(Exception):
    """A setting the user wrote is wrong; the message names the source, the field and the fix."""


# --------------------------------------------------------------------------- layers


def user_config_path(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "bakeoff" / "config.toml"


def _read_toml(path: Path, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML ({exc}); fix the file or remove it") from exc


def repo_config(repo: Path) -> tuple[dict[str, Any], str | None]:
    """The repository's settings and the name of the file they came from (None: no file)."""
    toml_path = repo / "bakeoff.toml"
    if toml_path.is_file():
        return _read_toml(toml_path, str(toml_path)), "bakeoff.toml"
    pyproject = repo / "pyproject.toml"
    if pyproject.is_file():
        table = _read_toml(pyproject, str(pyproject)).get("tool", {}).get("bakeoff")
        if table is not None:
            if not isinstance(table, dict):
                raise ConfigError(f"{pyproject}: [tool.bakeoff] must be a table")
            return table, "pyproject.toml [tool.bakeoff]"
    return {}, None


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys: ``{"model": {"editor": "x"}}`` -> ``{"model.editor": "x"}``.

    ``model = "name"`` is shorthand for ``model.default = "name"``.
    """
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if dotted == "model" and isinstance(value, str):
            flat["model.default"] = value
        elif isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _is_list_field(dotted: str) -> bool:
    top, _, sub = dotted.partition(".")
    fields = ModelConfig.model_fields if top == "model" and sub else Settings.model_fields
    info = fields.get(sub or top)
    return info is not None and "list" in str(info.annotation)


def env_names() -> dict[str, str]:
    """``BAKEOFF_*`` variable -> dotted setting it sets."""
    names = {f"BAKEOFF_{name.upper()}": name for name in Settings.model_fields if name != "model"}
    names["BAKEOFF_MODEL"] = "model.default"
    for sub in ModelConfig.model_fields:
        names[f"BAKEOFF_MODEL_{sub.upper()}"] = f"model.{sub}"
    for role in ("planner", "editor", "tester", "judge"):
        names[f"BAKEOFF_{role.upper()}_MODEL"] = f"model.{role}"
    return names


# Variables other parts of bakeoff read directly; they are not settings.
_NOT_SETTINGS = {"BAKEOFF_STATE_DIR"}


def _from_env(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    known = env_names()
    flat: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for var, raw in environ.items():
        if not var.startswith("BAKEOFF_") or var in _NOT_SETTINGS:
            continue
        dotted = known.get(var)
        if dotted is None:
            # Other parts of bakeoff may read their own BAKEOFF_* variables; only a near miss
            # of a setting's name is surely a typo.
            guess = difflib.get_close_matches(var, known, n=1, cutoff=0.85)
            if guess:
                raise ConfigError(
                    f"environment variable {var}: not a bakeoff setting (did you mean {guess[0]}?); "
                    "rename or unset it"
                )
            continue
        value: Any = raw
        if raw.strip().lower() in ("", "none", "null"):
            value = None
        elif _is_list_field(dotted):
            value = [part.strip() for part in raw.split(",") if part.strip()]
        flat[dotted] = value
        sources[dotted] = f"env {var}"
    return flat, sources


# --------------------------------------------------------------------------- merge


# Flags whose name is not the setting's own.
_FLAG_NAMES = {"model.default": "--model", "budget_usd": "--budget"}


def flag_name(dotted: str) -> str:
    return _FLAG_NAMES.get(dotted) or "--" + dotted.replace(".", "-").replace("_", "-")


def _defaults() -> dict[str, Any]:
    return _flatten(Settings().model_dump())


def load_settings(
    repo: Path,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> tuple[Settings, dict[str, str]]:
    """Merge defaults < user file < repo file < environment < flags, then validate once.

    ``flags`` uses dotted names (``"model.default"``, ``"n"``); a ``None`` value means the
    flag was not given. Returns the settings and, for every dotted field, where its value
    came from. Raises ``ConfigError`` naming the source, the field and how to fix it.
    """
    environ = os.environ if environ is None else environ
    merged = _defaults()
    provenance = {key: DEFAULT for key in merged}

    def layer(values: Mapping[str, Any], source: str | Mapping[str, str]) -> None:
        for key, value in values.items():
            merged[key] = value
            provenance[key] = source if isinstance(source, str) else source[key]

    user_path = user_config_path(environ)
    if user_path.is_file():
        layer(_flatten(_read_toml(user_path, str(user_path))), str(user_path))
    table, name = repo_config(repo)
    if name is not None:
        layer(_flatten(table), name)
    env_values, env_sources = _from_env(environ)
    layer(env_values, env_sources)
    given = _flatten({k: v for k, v in (flags or {}).items() if v is not None})  # "model": "x" is model.default
    layer(given, {k: "flag " + flag_name(k) for k in given})

    try:
        settings = Settings.model_validate(_unflatten(merged))
    except ValidationError as exc:
        raise ConfigError(_explain(exc, provenance)) from None
    return settings, provenance


def _explain(exc: ValidationError, provenance: Mapping[str, str]) -> str:
    lines = ["invalid bakeoff settings:"]
    valid = set(_defaults()) | {"model"}
    for err in exc.errors():
        dotted = ".".join(str(p) for p in err["loc"])
        source = provenance.get(dotted) or provenance.get(dotted.split(".")[0], "?")
        if err["type"] == "extra_forbidden":
            guess = difflib.get_close_matches(dotted, valid, n=1)
            hint = f"did you mean {guess[0]!r}? " if guess else ""
            lines.append(f"  {source}: {dotted!r} is not a setting; {hint}remove or rename it")
        else:
            lines.append(
                f"  {source}: {dotted} = {err.get('input')!r}: {err['msg']}; {_how_to_fix(source, dotted)}"
            )
    return "\n".join(lines)


def _how_to_fix(source: str, dotted: str) -> str:
    if source.startswith("env "):
        return f"change or unset {source[4:]}"
    if source.startswith("flag "):
        return f"pass another value to {source[5:]}"
    return f"edit {dotted} in {source}"
