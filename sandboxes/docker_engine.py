"""The Docker engine as the sandboxes see it: is one there, a connection, and the sandbox image.

``DockerEngine`` holds one connection and the thread pool every blocking SDK call runs in,
and turns an engine that went away into ``DockerUnavailable`` (a message the user can act
on). ``resolve_image`` finds the image a user named, or builds ``sandboxes/Dockerfile`` once,
tagged ``bakeoff-sandbox:<hash of the Dockerfile>``.

``import docker`` happens only inside functions: ``bakeoff --help`` never pays for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from bakeoff.agent.events import EventBus
from bakeoff.sandboxes import SandboxUnavailable
from bakeoff.sandboxes.docker_host import DockerHost, Endpoint, api_client, client_kwargs, ssh_problem

if TYPE_CHECKING:
    from docker import APIClient

T = TypeVar("T")
P = ParamSpec("P")

DEFAULT_DOCKERFILE = Path(__file__).with_name("Dockerfile")
IMAGE_REPOSITORY = "bakeoff-sandbox"
LABEL = "bakeoff.sandbox"  # on everything bakeoff makes on the engine


class DockerUnavailable(SandboxUnavailable):
    """No Docker engine answers (or it stopped answering): start it, or use --sandbox local."""


class DockerImageError(RuntimeError):
    """The sandbox image could not be found or built: fix the Dockerfile or name another image."""


def engine_address() -> str:
    """The environment's engine (what ``docker`` reaches when no engine is named)."""
    return DockerHost().address


def unreachable_message(reason: object, address: str | None = None) -> str:
    """Why the engine at ``address`` cannot be used, on one line, with what to do about it."""
    address = address or engine_address()
    said = " ".join(str(reason).split())
    if "HTTP request to an HTTPS server" in said:
        return (f"the Docker engine at {address} speaks TLS only: pass --docker-cert-path DIR (ca.pem, cert.pem, "
                "key.pem) or set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH=DIR, or use --sandbox local")
    if "SSL" in said or "certificate" in said.lower():
        return (f"TLS with the Docker engine at {address} failed: its certificate must be signed by ca.pem, and "
                f"cert.pem be a client certificate its CA signed; or use --sandbox local ({said})")
    return f"no Docker engine reachable at {address}: start it, or use --sandbox local ({said})"


def engine_available(docker_host: DockerHost | None = None, timeout: float = 2.0) -> tuple[bool, str]:
    """Whether the Docker engine answers, and if not, why (in words a user can act on).

    Raises ``DockerHostError`` when the engine is not even named right (no such context,
    missing certificates): that is the user's to fix whichever sandbox kind was asked for."""
    try:
        import docker
        import requests
    except ImportError as exc:
        return False, f"the docker Python package is missing ({exc}): pip install docker, or use --sandbox local"
    endpoint = client_kwargs(docker_host)
    if endpoint.over_ssh:
        problem = ssh_problem(endpoint.kwargs["base_url"])
        if problem is not None:
            return False, f"the Docker engine at {endpoint.address} cannot be reached: {problem}; or use --sandbox local"
    try:
        client = api_client(endpoint, timeout=max(1, int(round(timeout))))
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        return False, unreachable_message(exc, endpoint.address)
    try:
        client.ping()
        version = client.version().get("Version", "?")
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        return False, unreachable_message(exc, endpoint.address)
    finally:
        client.close()
    return True, f"Docker engine {version} at {endpoint.address}"


def is_connection_error(exc: BaseException) -> bool:
    import requests

    return isinstance(exc, (requests.ConnectionError, ConnectionError, socket.timeout))


class DockerEngine:
    """One connection to the engine (made on first use) and the threads its blocking calls run in."""

    def __init__(self, docker_host: DockerHost | None = None, max_threads: int = 64) -> None:
        self.docker_host = docker_host or DockerHost()
        self.address = self.docker_host.address  # the resolved address once connected
        self.endpoint: Endpoint | None = None  # set on connecting
        self.executor = concurrent.futures.ThreadPoolExecutor(max_threads, thread_name_prefix="bakeoff-docker")
        self._lock = threading.Lock()
        self._client: APIClient | None = None

    @property
    def connected(self) -> bool:
        """Whether a connection was ever made (nothing can be left on an engine never reached)."""
        return self._client is not None

    @property
    def api(self) -> APIClient:
        """The low-level docker API client (connects on first use)."""
        if self._client is None:
            import docker

            with self._lock:
                if self._client is None:
                    endpoint = client_kwargs(self.docker_host)
                    self.endpoint, self.address = endpoint, endpoint.address
                    try:
                        self._client = api_client(endpoint, timeout=60, max_pool_size=128)
                    except docker.errors.DockerException as exc:
                        raise DockerUnavailable(unreachable_message(exc, self.address)) from exc
        return self._client

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """One blocking engine call, with an engine that went away turned into DockerUnavailable."""
        import docker

        try:
            return fn(*args, **kwargs)
        except docker.errors.APIError:
            raise
        except docker.errors.DockerException as exc:
            raise DockerUnavailable(unreachable_message(exc, self.address)) from exc
        except Exception as exc:
            if is_connection_error(exc):
                raise DockerUnavailable(
                    f"the Docker engine at {self.address} stopped answering: {exc}. "
                    "Start it again, or use --sandbox local") from exc
            raise

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``call`` in the engine's own thread pool, so many sandboxes run at once."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: self.call(fn, *args, **kwargs))


# --------------------------------------------------------------------------- the image


def resolve_image(engine: DockerEngine, requested_image: str | None, dockerfile: Path | None,
                  events: EventBus) -> str:
    """The tag of the sandbox image: the image the user named, or the Dockerfile's (built if missing)."""
    import docker

    if requested_image:
        try:
            engine.call(engine.api.inspect_image, requested_image)
        except docker.errors.ImageNotFound as exc:
            raise DockerImageError(
                f"image {requested_image} not found on the Docker engine at {engine.address}: pull or build it "
                f"there first{_copy_hint(engine, requested_image, ', or ')}") from exc
        return requested_image
    assert dockerfile is not None
    try:
        recipe = dockerfile.read_bytes()
    except OSError as exc:
        raise DockerImageError(f"cannot read the sandbox Dockerfile {dockerfile}: {exc}") from exc
    tag = f"{IMAGE_REPOSITORY}:{hashlib.sha256(recipe).hexdigest()[:12]}"
    try:
        engine.call(engine.api.inspect_image, tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    _build(engine, dockerfile, tag, events)
    return tag


def _copy_hint(engine: DockerEngine, image: str, lead: str) -> str:
    """For an engine bakeoff was pointed at: how to copy an image this machine's engine has."""
    if not engine.docker_host.named:
        return ""
    return f"{lead}copy it there from this machine's engine: docker save {image} | {engine.docker_host.cli} load"


def _looks_offline(error: str, log: list[str]) -> bool:
    text = (error + "\n" + "\n".join(log)).lower()
    return any(sign in text for sign in ("temporary failure resolving", "could not resolve",
                                         "failed to fetch", "network is unreachable", "no such host"))


def _build(engine: DockerEngine, dockerfile: Path, tag: str, events: EventBus) -> None:
    """Build the image on the engine's default build network, and only there: a build is never
    retried with the host's network (a Dockerfile's RUN steps would then reach whatever the
    host reaches); when the build has no route out, the message says how to build it yourself."""
    started = time.monotonic()
    events.emit("sandbox.image.build", image=tag, dockerfile=str(dockerfile))
    error, log = _build_once(engine, dockerfile, tag)
    if error is not None:
        hint = ""
        if _looks_offline(error, log):
            hint = (f"\nthe build could not reach the network: build the image yourself where it can "
                    f"(docker build -t {tag} {dockerfile.parent}), or name an image you have with --image")
        hint += _copy_hint(engine, tag, "\n")
        raise DockerImageError(
            f"building the sandbox image from {dockerfile} failed: {error.strip()}\n"
            + "\n".join(log[-20:]) + hint)
    events.emit("sandbox.image.built", image=tag, seconds=round(time.monotonic() - started, 1))


def _build_once(engine: DockerEngine, dockerfile: Path, tag: str) -> tuple[str | None, list[str]]:
    log: list[str] = []
    error = None
    for chunk in engine.call(engine.api.build, path=str(dockerfile.parent),
                             dockerfile=dockerfile.name, tag=tag, rm=True, forcerm=True,
                             decode=True, labels={LABEL + ".image": "1"}):
        if "stream" in chunk:
            log.extend(chunk["stream"].splitlines())
            del log[:-40]
        if "error" in chunk:
            error = chunk["error"]
    return error, log
