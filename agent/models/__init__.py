"""Models behind the ``Model`` seam: ``ScriptedModel`` (tests, benchmarks, the offline demo),
``LitellmModel`` (every real API), and the wrappers every run puts around them (budget).

Picking one from configuration happens here, lazily: ``import litellm`` waits for a real call.
"""

from __future__ import annotations

from typing import Any

from bakeoff.agent.config import ModelConfig
from bakeoff.agent.seams import Model


def resolve_model(spec: str, *, role: str | None = None, **kw: Any) -> Model:
    """``scripted:PATH`` replays a script file; anything else is a litellm model string."""
    if spec.startswith("scripted:"):
        from bakeoff.agent.models.scripted import ScriptedModel

        return ScriptedModel.from_file(spec.removeprefix("scripted:"), role=role)
    from bakeoff.agent.models.litellm import LitellmModel

    return LitellmModel(spec, **kw)


def model_for_role(config: ModelConfig, role: str) -> Model:
    """The configured model for ``role``, with the configuration's fallbacks and timeout."""
    spec = config.for_role(role)
    if spec.startswith("scripted:"):
        return resolve_model(spec, role=role)
    return resolve_model(spec, fallbacks=config.fallbacks, timeout=config.timeout)
