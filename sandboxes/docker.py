"""The Docker sandbox: a hardened container per candidate, taken from a warm pool.

Each sandbox is a container of the sandbox image (``sandboxes/Dockerfile``, built once and
tagged ``bakeoff-sandbox:<hash of the Dockerfile>``; users may name their own image or
Dockerfile) with no network, no capabilities, no privilege gain, a non-root user, limits on
processes and threads, memory (swap included) and CPU, a read-only root file system and two
size-capped tmpfs file systems: ``/tmp`` and the workspace ``/work``. Leaked containers end
and remove themselves at their expiry, and the next start removes what a killed orchestrator
left. The docker SDK blocks, so every call runs in the backend's own thread pool and many
sandboxes run at once.

This module is the public face; the work is done, by job, in:

- ``docker_host``: which engine (this machine's, or one named by tcp://, ssh://, a context);
- ``docker_engine``: is an engine there, the connection and its threads, the sandbox image;
- ``docker_backend``: containers, the warm pool, reaping leftovers (``DockerBackend``);
- ``docker_sandbox``: one container as a Sandbox: commands, files, diff (``DockerSandbox``);
- ``archive``: the tar archives that carry the workspace in and the diff out.

``import docker`` happens only inside functions: ``bakeoff --help`` never pays for it.
"""

from __future__ import annotations

from bakeoff.sandboxes.docker_backend import (
    DEFAULT_EXPIRY_S,
    LABEL_BACKEND,
    LABEL_EXPIRES,
    LABEL_HOST,
    LABEL_OWNER,
    DockerBackend,
)
from bakeoff.sandboxes.docker_engine import (
    DEFAULT_DOCKERFILE,
    IMAGE_REPOSITORY,
    LABEL,
    DockerImageError,
    DockerUnavailable,
    engine_available,
)
from bakeoff.sandboxes.docker_host import DockerHost, DockerHostError
from bakeoff.sandboxes.docker_sandbox import HOME, USER, WORKDIR, DockerSandbox, DockerSandboxGone

__all__ = [
    "DEFAULT_DOCKERFILE", "DEFAULT_EXPIRY_S", "HOME", "IMAGE_REPOSITORY", "LABEL", "LABEL_BACKEND",
    "LABEL_EXPIRES", "LABEL_HOST", "LABEL_OWNER", "USER", "WORKDIR", "DockerBackend", "DockerHost",
    "DockerHostError", "DockerImageError", "DockerSandbox", "DockerSandboxGone", "DockerUnavailable",
    "engine_available",
]
