"""Sandboxes: where candidate code runs, and how the backend is chosen.

``choose_backend("auto")`` picks the strongest backend this machine offers (Docker when an
engine answers, else local with bubblewrap) and says why; with neither it refuses, with a
line saying how to get either. Running candidates with no isolation at all is possible
only when asked for by its loud name, ``unsafe-local``. ``create_sandbox`` builds one;
``SandboxPool`` runs many under a concurrency limit. Docker support is imported only when
the Docker backend is really used; its engine may be another machine's (``DockerHost``: an
engine the user named is the one used, never silently replaced by another backend).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from bakeoff.agent.seams import Sandbox, SandboxLimits, Workspace

if TYPE_CHECKING:
    from bakeoff.sandboxes.docker_host import DockerHost

UNSAFE_LOCAL = "unsafe-local"
KINDS = ("auto", "docker", "local", "local+bwrap", UNSAFE_LOCAL)
HOW_TO_ISOLATE = ("start a Docker engine (https://docs.docker.com/engine/install/) or install bubblewrap "
                  "(Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)")


class SandboxUnavailable(RuntimeError):
    """The sandbox kind asked for cannot run here; the message says what the user can do."""


class BackendChoice(BaseModel):
    backend: str  # "docker", "local+bwrap" or "unsafe-local"
    reason: str
    warning: str | None = None


def _docker_engine(docker_host: DockerHost | None = None) -> tuple[bool, str]:
    try:
        from bakeoff.sandboxes.docker_engine import engine_available
    except ImportError as exc:  # the docker SDK (or its backend module) is not installed
        return False, f"the Docker backend cannot be loaded: {exc}"
    return engine_available(docker_host)


@functools.cache
def _bwrap() -> tuple[bool, str]:
    from bakeoff.sandboxes.local_isolation import bwrap_status

    return bwrap_status()


def choose_backend(kind: str = "auto", docker_host: DockerHost | None = None) -> BackendChoice:
    """Which backend ``kind`` means here, and why. Raises ``SandboxUnavailable`` when it can't run.

    ``local`` and ``local+bwrap`` both mean bubblewrap; nothing falls back to running
    candidates unisolated: that is ``unsafe-local``, chosen by name or not at all. Docker is
    the engine ``docker_host`` names (by default the environment's); with ``auto``, an engine
    the user named that does not answer is an error, not a reason to run elsewhere.
    """
    if kind not in KINDS:
        raise SandboxUnavailable(f"unknown sandbox kind {kind!r}: use one of {', '.join(KINDS)}")
    if kind == UNSAFE_LOCAL:
        from bakeoff.sandboxes.local_isolation import unsafe_local_warning

        why = "asked for by name"
        return BackendChoice(backend=UNSAFE_LOCAL, reason=why, warning=unsafe_local_warning(why))
    docker_why = None
    if kind in ("auto", "docker"):
        ok, docker_why = _docker_engine(docker_host)
        if ok:
            return BackendChoice(backend="docker", reason=docker_why)
        if kind == "docker" or (docker_host is not None and docker_host.named):
            raise SandboxUnavailable(docker_why if "--sandbox local" in docker_why else
                                     f"no Docker engine reachable ({docker_why}): start it, or use --sandbox local")
    ok, why = _bwrap()
    if ok:
        return BackendChoice(backend="local+bwrap", reason=f"Docker not used: {docker_why}; {why}" if docker_why else why)
    if kind == "auto":
        raise SandboxUnavailable(
            f"no sandbox can isolate candidates here (Docker: {docker_why}; bubblewrap: {why}): {HOW_TO_ISOLATE}; "
            f"or, only for code you trust, --sandbox {UNSAFE_LOCAL}")
    raise SandboxUnavailable(f"bubblewrap cannot run here ({why}): install it, use --sandbox docker, "
                             f"or, only for code you trust, --sandbox {UNSAFE_LOCAL}")


async def create_sandbox(
    workspace: Workspace,
    kind: str = "auto",
    limits: SandboxLimits | None = None,
    *,
    image: str | None = None,
    dockerfile: Path | None = None,
    docker_host: DockerHost | None = None,
) -> Sandbox:
    """A fresh sandbox holding a copy of ``workspace``, on the backend ``kind`` resolves to
    (Docker: on the engine ``docker_host`` names)."""
    choice = choose_backend(kind, docker_host)
    if choice.backend == "docker":
        from bakeoff.sandboxes.docker_backend import DockerBackend

        backend = DockerBackend.shared(image=image, dockerfile=dockerfile, docker_host=docker_host)
        return await backend.create(workspace, limits)
    from bakeoff.sandboxes.local import LocalSandbox

    return await LocalSandbox.create(workspace, limits, use_bwrap=choice.backend == "local+bwrap")


__all__ = ["BackendChoice", "HOW_TO_ISOLATE", "KINDS", "SandboxUnavailable", "UNSAFE_LOCAL", "choose_backend",
           "create_sandbox"]


def reap_leftovers(group: str | None = None) -> int:
    """Remove this machine's sandboxes whose owning process has died (containers when a Docker
    engine answers, and bubblewrap sandboxes' directories and processes), and with ``group``
    every container made for that group, whoever made it. How many went."""
    from bakeoff.sandboxes.workspace import reap_stale

    removed = reap_stale()
    if _docker_engine()[0]:
        from bakeoff.sandboxes.docker_backend import DockerBackend

        removed += DockerBackend(image="bakeoff-reaper").reap_leftovers(group)
    return removed


async def close_backends() -> None:
    """Close what this process keeps between runs (Docker's warm containers), for a process
    that lives on after its work, such as a Ray worker."""
    import sys

    backend = sys.modules.get("bakeoff.sandboxes.docker_backend")
    if backend is not None:
        await backend.DockerBackend.close_shared()
