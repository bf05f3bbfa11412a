"""bakeoff's settings, merged from four layers in one function and validated once.

Layers, lowest first: built-in defaults < the user's config file
(``$XDG_CONFIG_HOME/bakeoff/config.toml``) < the repository's ``bakeoff.toml`` or
``[tool.bakeoff]`` in its ``pyproject.toml`` < ``BAKEOFF_*`` environment variables < flags.
Every value remembers the layer it came from, so ``bakeoff config`` can show it and a
validation error can say where to fix it. The GitHub Action merges other layers
(``load_action_settings``): its checkout is a pull request's, which never configures a run.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bakeoff.agent.seams import SandboxLimits

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


class Price(BaseModel):
    """A model's price in dollars per million tokens, for models litellm has no price for."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0, description="dollars per million prompt tokens")
    output: float = Field(ge=0, description="dollars per million completion tokens")


# litellm parameters bakeoff sets itself on every call: a [model.params] table may not.
RESERVED_PARAMS = {
    "model", "messages", "n", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
    "timeout", "max_retries", "drop_params",
}


class ModelConfig(BaseModel):
    """Which model plays each role, how calls are retried, and what litellm is told besides.

    A role without its own model uses ``default``. ``editors`` spreads the candidates over
    several models in turn. ``params`` adds litellm parameters (``api_base``,
    ``reasoning_effort``, ...) by role (``default`` for all roles) or by model string, the
    model's own winning; ``prices`` prices models litellm has none for.
    """

    model_config = ConfigDict(extra="forbid")

    default: str | None = None
    planner: str | None = None
    editor: str | None = None
    tester: str | None = None
    judge: str | None = None
    editors: list[str] = Field(default_factory=list)
    fallbacks: list[str] = Field(default_factory=list)
    timeout: float = Field(120.0, gt=0, description="seconds one attempt may wait (a stream: for each chunk)")
    retries: int = Field(4, ge=0, le=10, description="retries of one model before its fallback")
    backoff_s: float = Field(1.0, gt=0, description="first wait between retries; it doubles")
    max_backoff_s: float = Field(30.0, gt=0, description="longest wait; a longer Retry-After goes to the fallback")
    breaker_failures: int = Field(3, ge=1, description="failures in a row that send a model's calls to its fallback")
    breaker_cooldown_s: float = Field(30.0, ge=0, description="how long they go there before the model is tried again")
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    prices: dict[str, Price] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if self.editor and self.editors:
            raise ValueError("set either editor (one model) or editors (several), not both")
        roles = ("default", *MODEL_ROLES)
        for key, table in self.params.items():
            near = difflib.get_close_matches(key, roles, n=1, cutoff=0.75)
            if key not in roles and "/" not in key and near:
                raise ValueError(f"params for {key!r}: did you mean the role {near[0]!r}?")
            reserved = sorted(RESERVED_PARAMS & set(table))
            if reserved:
                raise ValueError(f"params for {key!r} set {', '.join(reserved)}, which bakeoff sets on every call "
                                 "(temperature is spread across the candidates; max_tokens comes from the budget)")
        return self

    def for_role(self, role: str) -> str:
        spec = getattr(self, role, None) if role in MODEL_ROLES else None
        spec = spec or (self.editors[0] if role == "editor" and self.editors else None) or self.default
        if not spec:
            raise ModelNotConfigured(role)
        return spec

    def editor_models(self) -> list[str]:
        """The editor models, in the order candidates take them."""
        return list(self.editors) or [self.for_role("editor")]

    def role_params(self, role: str) -> dict[str, Any]:
        """litellm parameters for every call of ``role`` (``default``'s, then the role's own)."""
        return {**self.params.get("default", {}), **self.params.get(role, {})}

    def model_params(self) -> dict[str, dict[str, Any]]:
        """litellm parameters by model string, wherever the model is used (fallbacks too)."""
        return {k: v for k, v in self.params.items() if k != "default" and k not in MODEL_ROLES}


class Settings(BaseModel):
    """Everything a run can be configured with. Unknown keys are errors, not ignored."""

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = Field(default_factory=ModelConfig)
    n: int = Field(4, ge=1, le=64, description="candidate edits developed in parallel")
    budget_usd: float | None = Field(2.0, ge=0, description="dollars one run may spend (None: no cap)")
    budget_tokens: int | None = Field(None, ge=0, description="tokens one run may spend (None: no cap)")
    # "unsafe-local" runs candidates with no isolation: the user's own choice, never a repository's.
    sandbox: Literal["auto", "local", "local+bwrap", "docker", "unsafe-local"] = "auto"
    image: str | None = Field(None, description="docker image or Dockerfile path for sandboxes")
    docker_host: str | None = Field(
        None, description="Docker engine for sandboxes: tcp://HOST:PORT, ssh://USER@HOST, unix:///PATH or a docker "
                          "context name (unset: DOCKER_HOST, else this machine's engine)")
    docker_cert_path: str | None = Field(
        None, description="folder of ca.pem, cert.pem and key.pem: TLS to a tcp:// docker_host")
    rounds: int = Field(2, ge=0, le=10, description="repair rounds per candidate")
    workers: int = Field(2, ge=1, le=64, description="batch tasks run at once")
    max_sandboxes: int = Field(4, ge=1, le=128, description="sandboxes running candidates at once")
    time_limit_s: float = Field(3600.0, gt=0, description="wall-clock seconds one run (or batch task) may take")
    planner: Literal["compiler", "react"] = "compiler"
    max_replans: int = Field(2, ge=0, le=10)
    build: str | None = Field(None, description="build command (detected when unset)")
    test: str | None = Field(None, description="test command (detected when unset)")
    threads: int | None = Field(
        None, ge=1, le=4096,
        description="threads candidates are timed at (unset: the CPUs the sandbox may use, from its affinity and cgroup quota)",
    )
    command_timeout: float = Field(300.0, gt=0, description="seconds a candidate's build, test or benchmark may run")
    gpus: bool = Field(False, description="hand this machine's NVIDIA GPUs to the sandboxes, so CUDA candidates run, "
                                          "are compared and timed (off: they are only built)")

    def sandbox_limits(self) -> SandboxLimits | None:
        """What the settings change in every sandbox's limits (None: the defaults)."""
        return SandboxLimits(gpus=True) if self.gpus else None

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
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                          "TOML files are UTF-8: save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot be read ({exc.strerror or exc})") from None


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


# Settings whose value is a table of their own (keys are model strings, which may hold dots).
_TABLES = {"model.params", "model.prices"}


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys: ``{"model": {"editor": "x"}}`` -> ``{"model.editor": "x"}``.

    ``model = "name"`` is shorthand for ``model.default = "name"``; the tables in ``_TABLES``
    stay whole (a layer's table replaces a lower layer's).
    """
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if dotted == "model" and isinstance(value, str):
            flat["model.default"] = value
        elif isinstance(value, Mapping) and dotted not in _TABLES:
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


# Variables other parts of bakeoff read directly; they are not settings (and not typos of one).
_NOT_SETTINGS = {"BAKEOFF_STATE_DIR", "BAKEOFF_SANDBOX_DIR"}


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
        elif dotted in _TABLES:
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"environment variable {var}: not a JSON object ({exc}); fix or unset it") from None
        elif _is_list_field(dotted):
            value = [part.strip() for part in raw.split(",") if part.strip()]
        flat[dotted] = value
        sources[dotted] = f"env {var}"
    return flat, sources


# --------------------------------------------------------------------------- merge


# Flags whose name is not the setting's own.
_FLAG_NAMES = {"model.default": "--model", "budget_usd": "--budget", "time_limit_s": "--time-limit"}


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
    layers: list[tuple[dict[str, Any], str | Mapping[str, str]]] = []
    user_path = user_config_path(environ)
    if user_path.is_file():
        layers.append((_flatten(_read_toml(user_path, str(user_path))), str(user_path)))
    table, name = repo_config(repo)
    if name is not None:
        layers.append((_flatten(table), name))
    return _merge([*layers, _from_env(environ), _flag_layer(flags)], repository=name)


def load_action_settings(
    base: Mapping[str, Any],
    base_source: str,
    environ: Mapping[str, str],
    flags: Mapping[str, Any] | None = None,
) -> tuple[Settings, dict[str, str]]:
    """The GitHub Action's settings: defaults < ``base`` (the base branch's table, named
    ``base_source``) < ``BAKEOFF_*`` variables the workflow sets < flags.

    Neither the user's config file nor the checkout's ``bakeoff.toml`` or ``[tool.bakeoff]`` is
    read: in the Action the checkout is the pull request's, and the PR never configures the run.
    """
    layers: list[tuple[dict[str, Any], str | Mapping[str, str]]] = [(_flatten(base), base_source)] if base else []
    return _merge([*layers, _from_env(environ), _flag_layer(flags)], repository=base_source or None)


def _flag_layer(flags: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, str]]:
    given = _flatten({k: v for k, v in (flags or {}).items() if v is not None})  # "model": "x" is model.default
    return given, {k: "flag " + flag_name(k) for k in given}


def _merge(layers: list[tuple[dict[str, Any], str | Mapping[str, str]]],
           repository: str | None = None) -> tuple[Settings, dict[str, str]]:
    """Defaults, then each layer (dotted values, and where each came from), validated once.

    ``repository`` names the layer a repository wrote (its own file, or the base branch's in
    the Action): it may not turn isolation off for the person who runs bakeoff on it."""
    merged = _defaults()
    provenance = {key: DEFAULT for key in merged}
    for values, source in layers:
        for key, value in values.items():
            merged[key] = value
            provenance[key] = source if isinstance(source, str) else source[key]
    if merged.get("sandbox") == "unsafe-local" and repository and provenance.get("sandbox") == repository:
        name = repository
        raise ConfigError(f"{name}: sandbox = \"unsafe-local\" turns isolation off, which a repository may not "
                          "choose for you: remove it, or pass --sandbox unsafe-local yourself")
    if merged.get("gpus") and repository and provenance.get("gpus") == repository:
        raise ConfigError(f"{repository}: gpus = true would let the candidates reach this machine's GPUs, which a "
                          "repository may not choose for you: remove it, or pass --gpus yourself")
    for key in ("docker_host", "docker_cert_path"):
        if merged.get(key) and repository and provenance.get(key) == repository:
            raise ConfigError(f"{repository}: {key} would send your working tree (and, for a Docker context or "
                              "certificates, your credentials) to an engine the repository chose: remove it, or "
                              f"pass --{key.replace('_', '-')} yourself")
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
        prefixes = [".".join(dotted.split(".")[:i]) for i in range(dotted.count(".") + 1, 0, -1)]
        inside = sorted({v for k, v in provenance.items() if k.startswith(dotted + ".") and v != DEFAULT})
        source = next((provenance[p] for p in prefixes if p in provenance), ", ".join(inside) or "?")
        if err["type"] == "extra_forbidden":
            guess = difflib.get_close_matches(dotted, valid, n=1)
            hint = f"did you mean {guess[0]!r}? " if guess else ""
            lines.append(f"  {source}: {dotted!r} is not a setting; {hint}remove or rename it")
        elif isinstance(err.get("input"), Mapping):  # a check across a table's fields
            lines.append(f"  {source}: {dotted}: {err['msg'].removeprefix('Value error, ')}; {_how_to_fix(source, dotted)}")
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
