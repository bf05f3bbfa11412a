"""Models behind the ``Model`` seam: ``ScriptedModel`` (tests, benchmarks, the offline demo),
``LitellmModel`` (every real API), and the wrappers every run puts around them (budget).

Picking one from configuration happens here, lazily: ``import litellm`` waits for a real call.
So does checking it: ``model_for_role`` refuses a model whose API key is missing before
anything is imported; ``check_models`` (at a run's start) asks litellm about the rest and
about prices.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bakeoff.agent.config import ConfigError, ModelConfig
from bakeoff.agent.events import EventBus
from bakeoff.agent.seams import Model

if TYPE_CHECKING:
    from bakeoff.agent.models.retry import Breakers


class ModelSetupError(ConfigError):
    """A model cannot be used as configured (no API key; no price under a dollar budget)."""


def resolve_model(spec: str, *, role: str | None = None, **kw: Any) -> Model:
    """``scripted:PATH`` replays a script file; anything else is a litellm model string."""
    if spec.startswith("scripted:"):
        from bakeoff.agent.models.scripted import ScriptedModel

        return ScriptedModel.from_file(spec.removeprefix("scripted:"), role=role)
    from bakeoff.agent.models.litellm import LitellmModel

    return LitellmModel(spec, **kw)


def model_for_role(config: ModelConfig, role: str, *, spec: str | None = None, events: EventBus | None = None,
                   breakers: Breakers | None = None, environ: Mapping[str, str] | None = None) -> Model:
    """The configured model for ``role`` (or ``spec``, one of the role's models), with the
    configuration's fallbacks, retries, parameters and prices. Raises ``ModelSetupError``
    when the API key of the model or of a fallback is missing."""
    spec = spec or config.for_role(role)
    if spec.startswith("scripted:"):
        return resolve_model(spec, role=role)
    check_keys({m: {**config.role_params(role), **config.model_params().get(m, {})} for m in [spec, *config.fallbacks]},
               environ)
    if breakers is None:
        from bakeoff.agent.models.retry import Breakers

        breakers = Breakers(config.breaker_failures, config.breaker_cooldown_s)
    return resolve_model(
        spec, fallbacks=config.fallbacks, timeout=config.timeout, max_retries=config.retries,
        backoff_s=config.backoff_s, max_backoff_s=config.max_backoff_s, params=config.model_params(),
        prices=config.prices, breakers=breakers, events=events, **config.role_params(role),
    )


def check_keys(params: Mapping[str, Mapping[str, Any]], environ: Mapping[str, str] | None = None, *,
               ask_litellm: bool = False) -> None:
    """Raise ``ModelSetupError`` (one line, naming the variable to set) when the API key of a
    model (model string -> the litellm parameters it is called with) is missing."""
    from bakeoff.agent.models.providers import key_message, missing_key

    environ = os.environ if environ is None else environ
    missing = {m: v for m in params if (v := missing_key(m, params[m], environ, ask_litellm=ask_litellm))}
    if missing:
        raise ModelSetupError(key_message(missing, {m: params[m].get("api_base") for m in missing}))


def check_models(models: Sequence[Model], *, budget_usd: float | None, budget_tokens: int | None) -> list[str]:
    """At a run's start (imports litellm): every key litellm knows to ask for is there, and a
    dollar budget can bound every model. Returns the models with no price (only their tokens
    count); raises ``ModelSetupError`` when one has no price, a dollar budget is set and no
    token budget is."""
    from bakeoff.agent.models.litellm import LitellmModel

    real = [m for m in models if isinstance(m, LitellmModel)]
    for m in real:
        check_keys({x: {**m.extra, **m.params.get(x, {})} for x in m.models()}, ask_litellm=True)
    unpriced = list(dict.fromkeys(name for m in real for name in m.unpriced()))
    if unpriced and budget_usd is not None and budget_tokens is None:
        names = ", ".join(unpriced)
        example = unpriced[0]
        raise ModelSetupError(
            f"{names} {'has' if len(unpriced) == 1 else 'have'} no price in litellm's table, so the dollar budget "
            f"(${budget_usd:g}) cannot bound {'it' if len(unpriced) == 1 else 'them'}: set a token budget "
            f"(budget_tokens = 200000, or --budget-tokens) or a price ([model.prices] \"{example}\" = "
            "{input = 0.5, output = 1.5}, dollars per million tokens)"
        )
    return unpriced
