"""litellm, set up the way bakeoff needs it: offline, quiet, and checked before the first call.

- ``load_litellm`` imports litellm on first use (it takes seconds) with its price table read
  from the installed package (never fetched at start-up), its own log lines, warnings and
  banners kept off bakeoff's stderr and stdout (unless ``LITELLM_LOG`` asks for them).
- ``missing_key`` says which variable to set when a model's API key is not there: for the
  common providers without importing litellm (so a run fails in well under a second), for the
  rest from litellm's own ``validate_environment``.
- ``cost_of``: dollars from the configuration's price (``Price``) first, else from
  litellm's table; None when neither knows the model.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from typing import Any

from bakeoff.agent.config import Price

# Provider prefix -> the variables litellm reads its key from (any one of them will do).
KEY_VARIABLES: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "mistral": ("MISTRAL_API_KEY",),
    "groq": ("GROQ_API_KEY",),
    "deepseek": ("DEEPSEEK_API_KEY",),
    "openrouter": ("OPENROUTER_API_KEY",),
    "xai": ("XAI_API_KEY",),
    "together_ai": ("TOGETHERAI_API_KEY",),
    "fireworks_ai": ("FIREWORKS_AI_API_KEY",),
    "cohere": ("COHERE_API_KEY",),
    "cerebras": ("CEREBRAS_API_KEY",),
    "deepinfra": ("DEEPINFRA_API_KEY",),
    "perplexity": ("PERPLEXITYAI_API_KEY",),
}
# Model names litellm routes to a provider without a prefix.
_UNPREFIXED = (("gpt-", "openai"), ("chatgpt-", "openai"), ("o1", "openai"), ("o3", "openai"), ("o4", "openai"),
               ("claude-", "anthropic"))
# Parameters that carry a credential of their own: no variable is needed then.
_CREDENTIAL_PARAMS = ("api_key", "azure_ad_token", "aws_access_key_id", "vertex_credentials")

_LOGGERS = ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx")
_loaded: Any = None


def load_litellm() -> Any:
    """litellm, imported once, offline and quiet (see the module's docstring)."""
    global _loaded
    if _loaded is not None:
        return _loaded
    # Read before litellm's import: the price table comes from the installed package.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import litellm
    litellm.suppress_debug_info = True  # no "Give Feedback / Get Help" banners
    # Warnings litellm's code raises later (pydantic deprecations, ...) are not the user's.
    warnings.filterwarnings("ignore", module=r"litellm(\..*)?$")
    # pydantic builds litellm's types lazily and warns about them from its own module.
    warnings.filterwarnings("ignore", message=r".*on TypedDict class .*ReadOnly", category=UserWarning)
    if "LITELLM_LOG" not in os.environ:  # unless the user asked for litellm's own logs
        for name in _LOGGERS:
            logging.getLogger(name).disabled = True
    _loaded = litellm
    return litellm


# --------------------------------------------------------------------------- keys


def provider_of(model: str) -> str | None:
    """The provider a model string names, as far as bakeoff knows it without litellm."""
    prefix, sep, rest = model.partition("/")
    if sep:
        return prefix
    return next((p for start, p in _UNPREFIXED if model.startswith(start)), None)


def missing_key(model: str, params: Mapping[str, Any], environ: Mapping[str, str] | None = None, *,
                ask_litellm: bool = False) -> str | None:
    """The variable(s) to set for ``model``'s API key, or None when the key is there (or none
    is needed, or bakeoff cannot tell). ``ask_litellm``: also ask litellm for providers bakeoff
    does not know (imports litellm)."""
    environ = os.environ if environ is None else environ
    if any(params.get(p) for p in _CREDENTIAL_PARAMS):
        return None
    provider = provider_of(model)
    names = KEY_VARIABLES.get(provider or "")
    if names is None:
        if not ask_litellm:
            return None
        found = load_litellm().validate_environment(model=model, api_base=params.get("api_base"))
        names = tuple(k for k in found.get("missing_keys") or [] if k.endswith("_API_KEY"))
        if not names or found.get("keys_in_environment"):
            return None
    if any(environ.get(n) for n in names):
        return None
    return " (or ".join(names) + ")" * (len(names) - 1)


def key_message(missing: Mapping[str, str], api_bases: Mapping[str, Any]) -> str:
    """One line: which models lack a key and which variables to set."""
    variables = list(dict.fromkeys(missing.values()))
    local = any(api_bases.get(m) for m in missing)
    return (
        f"no API key for {', '.join(missing)}: set {' and '.join(variables)}"
        + (" (any value will do for a server that needs no key)" if local else "")
    )


# --------------------------------------------------------------------------- prices


def cost_of(model: str, prompt_tokens: int, completion_tokens: int, prices: Mapping[str, Price]) -> float | None:
    """Dollars for a call's tokens; None when the price is unknown. The configuration's price
    wins over litellm's table."""
    if model in prices:
        p = prices[model]
        return (prompt_tokens * p.input + completion_tokens * p.output) / 1e6
    litellm = load_litellm()
    try:
        prompt, completion = litellm.cost_per_token(model=model, prompt_tokens=prompt_tokens,
                                                    completion_tokens=completion_tokens)
    except Exception:  # litellm raises assorted types for a model missing from its table
        return None
    return float(prompt + completion)
