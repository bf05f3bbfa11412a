"""Sandboxes: where candidate code runs, and how the backend is chosen.

``choose_backend("auto")`` picks the strongest backend this machine offers (Docker when an
engine answers, else local with bubblewrap, else plain local with a loud warning) and says
why. ``create_sandbox`` builds one; ``SandboxPool`` runs many under a concurrency limit.
Docker support is imported only when the Docker backend is really used.
"""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import BaseModel

from bakeoff.agent.seams import Sandbox, SandboxLimits, Workspace

KINDS = ("auto", "docker", "local", "local+bwrap")


class SandboxUnavailable(RuntimeError):
    """The sandbox kind asked for cannot run here; the message says what the user can do."""


class BackendChoice(BaseModel):
    backend: str  # "docker", "local+bwrap" or "local"
    reason: str
    warning: str | None = None


def _docker_engine() -> tuple[bool, str]:
    try:
        from bakeoff.sandboxes.docker_engine import engine_available
    except ImportError as exc:  # the docker SDK (or its backend module) is not installed
        return False, f"the Docker backend cannot be loaded: {exc}"
    return engine_available()


@functools.cache
def _local_choice() -> BackendChoice:
    from bakeoff.sandboxes.local_isolation import bwrap_status

    ok, why = bwrap_status()
    if ok:
        return BackendChoice(backend="local+bwrap", reason=why)
    return BackendChoice(
        backend="local", reason=why,
        warning=f"reduced isolation: {why}; commands can reach the network and read the host's files",
    )


def choose_backend(kind: str = "auto") -> BackendChoice:
    """Which backend ``kind`` means here, and why. Raises ``SandboxUnavailable`` when it can't run."""
    if kind not in KINDS:
        raise SandboxUnavailable(f"unknown sandbox kind {kind!r}: use one of {', '.join(KINDS)}")
    if kind in ("auto", "docker"):
        ok, why = _docker_engine()
        if ok:
            return BackendChoice(backend="docker", reason=why)
        if kind == "docker":
            raise SandboxUnavailable(why if "--sandbox local" in why else
                                     f"no Docker engine reachable ({why}): start it, or use --sandbox local")
        local = _local_choice()
        return local.model_copy(update={"reason": f"Docker not used: {why}; {local.reason}"})
    local = _local_choice()
    if kind == "local+bwrap" and local.backend != "local+bwrap":
        raise SandboxUnavailable(f"bubblewrap cannot run here ({local.reason}): install it, or use --sandbox local")
    return local


async def create_sandbox(
    workspace: Workspace,
    kind: str = "auto",
    limits: SandboxLimits | None = None,
    *,
    image: str | None = None,
    dockerfile: Path | None = None,
) -> Sandbox:
    """A fresh sandbox holding a copy of ``workspace``, on the backend ``kind`` resolves to."""
    choice = choose_backend(kind)
    if choice.backend == "docker":
        from bakeoff.sandboxes.docker_backend import DockerBackend

        return await DockerBackend.shared(image=image, dockerfile=dockerfile).create(workspace, limits)
    from bakeoff.sandboxes.local import LocalSandbox

    return await LocalSandbox.create(workspace, limits, use_bwrap=choice.backend == "local+bwrap")


__all__ = ["BackendChoice", "SandboxUnavailable", "choose_backend", "create_sandbox", "KINDS"]
