"""Which Docker engine the sandboxes live on: this machine's, or another machine's.

``DockerHost`` is the engine as the user named it (``--docker-host`` / ``docker_host``, and
``--docker-cert-path`` / ``docker_cert_path``):

- nothing: the environment, as ``docker.from_env`` reads it (``DOCKER_HOST``, else the local
  socket);
- ``tcp://HOST:PORT``: TLS when a folder of ``ca.pem``, ``cert.pem`` and ``key.pem`` is given,
  or, as the docker CLI does, when ``DOCKER_TLS_VERIFY`` is set (the folder is then
  ``DOCKER_CERT_PATH``, else ``~/.docker``);
- ``ssh://USER@HOST[:PORT]``: the ``ssh`` client on PATH runs ``docker system dial-stdio``
  there, with the user's own ssh keys and config;
- ``unix:///PATH``;
- a docker context name (``docker context ls``): its host and TLS material.

``client_kwargs`` turns it into what the docker SDK's clients take, and ``api_client`` makes
one: every client bakeoff makes is made there. The certificate folder is the host's configuration: it is read here, on the
host, and never goes into a sandbox (a sandbox's environment is an allow-list that has no
``DOCKER_*``).

``import docker`` happens only inside functions: ``bakeoff --help`` never pays for it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bakeoff.sandboxes import SandboxUnavailable

if TYPE_CHECKING:
    from docker import APIClient
    from docker.tls import TLSConfig

DEFAULT_ADDRESS = "unix:///var/run/docker.sock"
TLS_FILES = ("ca.pem", "cert.pem", "key.pem")
HOW_TO_NAME = ("name the engine as tcp://HOST:PORT, ssh://USER@HOST, unix:///PATH or a docker context name "
               "(docker context ls)")
_CERT_FLAG = "--docker-cert-path (docker_cert_path)"
_CONTEXT_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.+-]*")
_TCP = ("tcp", "http", "https")


class DockerHostError(SandboxUnavailable):
    """The Docker engine cannot be used as it was named (an address or context that is not
    one, missing certificates, no ssh client): the message says what to change."""


@dataclass(frozen=True)
class DockerHost:
    """The Docker engine as the user named it; ``DockerHost()`` is the environment's."""

    host: str | None = None
    cert_path: str | None = None

    @property
    def named(self) -> bool:
        """Whether the user chose an engine (else: the environment's, as ``docker`` does)."""
        return bool(self.host or self.cert_path)

    @property
    def address(self) -> str:
        """The engine's address for messages, before it is resolved (a context by its name)."""
        return self.host or os.environ.get("DOCKER_HOST") or DEFAULT_ADDRESS

    @property
    def cli(self) -> str:
        """The docker command line that reaches this engine (for messages saying what to run)."""
        if self.host and "://" not in self.host:
            return f"docker --context {self.host}"
        tls = f"DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH={self.cert_path} " if self.cert_path else ""
        return f"{tls}docker -H {self.address}"


@dataclass(frozen=True)
class Endpoint:
    """A resolved engine: what messages call it, the keyword arguments of the docker SDK's
    clients, and the folder its TLS client key comes from (which no sandbox may get a copy of)."""

    address: str
    kwargs: dict[str, Any] = field(compare=False)
    cert_folder: Path | None = None

    @property
    def over_ssh(self) -> bool:
        return bool(self.kwargs.get("use_ssh_client"))

    def refuse_copying(self, workspace: Path) -> None:
        """Raise ``DockerHostError`` when the TLS folder lies inside ``workspace``: every sandbox
        gets a copy of its workspace, and the key to the engine stays on the host."""
        if self.cert_folder is None:
            return
        folder, root = self.cert_folder.resolve(), workspace.resolve()
        if folder.is_relative_to(root):
            raise DockerHostError(f"the Docker client certificates in {folder} are inside {root}, which every "
                                  "sandbox gets a copy of: keep them outside the repository")


def client_kwargs(docker_host: DockerHost | None, environ: Mapping[str, str] | None = None) -> Endpoint:
    """``docker_host`` as the docker SDK's client keyword arguments (``base_url`` and ``tls``, or
    ``use_ssh_client``) and the address messages name. Raises ``DockerHostError``."""
    environ = os.environ if environ is None else environ
    docker_host = docker_host or DockerHost()
    if not docker_host.named:
        from docker.utils import kwargs_from_env

        kwargs = kwargs_from_env(environment=dict(environ))
        folder = environ.get("DOCKER_CERT_PATH") if "tls" in kwargs else None
        address = environ.get("DOCKER_HOST") or DEFAULT_ADDRESS
        return Endpoint(address, kwargs, Path(folder).expanduser() if folder else None)
    host = docker_host.host or environ.get("DOCKER_HOST")
    if not host:
        raise DockerHostError(f"{_CERT_FLAG} is for a tcp:// Docker engine: name it with --docker-host tcp://HOST:PORT")
    if "://" not in host:
        return _from_context(host, docker_host.cert_path, environ)
    scheme = host.split("://", 1)[0].lower()
    if scheme in _TCP:
        return _endpoint(host, host, *_tls_from_folder(host, docker_host.cert_path, environ))
    if docker_host.cert_path:
        raise DockerHostError(f"{_CERT_FLAG} is for tcp:// engines, not {host}: remove it")
    return _endpoint(host, host)


def _endpoint(url: str, address: str, tls: TLSConfig | None = None, cert_folder: Path | None = None) -> Endpoint:
    scheme = url.split("://", 1)[0].lower()
    if scheme in _TCP:
        return Endpoint(address, {"base_url": url, **({"tls": tls} if tls is not None else {})},
                        cert_folder if tls is not None else None)
    if scheme == "ssh":
        if shutil.which("ssh") is None:
            raise DockerHostError(
                f"the Docker engine at {address} is reached with the ssh client, which is not installed here: "
                "install it (Debian/Ubuntu: apt-get install openssh-client; Fedora: dnf install openssh-clients), "
                "or reach the engine over tcp:// with TLS")
        return Endpoint(address, {"base_url": url, "use_ssh_client": True})
    if scheme in ("unix", "npipe"):
        return Endpoint(address, {"base_url": url})
    raise DockerHostError(f"{url!r} is not a Docker engine address: {HOW_TO_NAME}")


def _tls_from_folder(address: str, cert_path: str | None,
                     environ: Mapping[str, str]) -> tuple[TLSConfig | None, Path | None]:
    """TLS as the docker CLI sets it up: with the folder given, or when DOCKER_TLS_VERIFY is set."""
    if cert_path:
        folder, source = Path(cert_path).expanduser(), _CERT_FLAG
    elif environ.get("DOCKER_TLS_VERIFY"):
        named = environ.get("DOCKER_CERT_PATH")
        folder = Path(named).expanduser() if named else Path.home() / ".docker"
        source = "DOCKER_CERT_PATH" if named else "~/.docker, as DOCKER_TLS_VERIFY is set"
    else:
        return None, None
    missing = [name for name in TLS_FILES if not (folder / name).is_file()]
    if missing:
        raise DockerHostError(f"TLS for the Docker engine at {address}: no {', '.join(missing)} in {folder} "
                              f"(from {source}); the folder needs ca.pem, cert.pem and key.pem")
    from docker.tls import TLSConfig

    return TLSConfig(client_cert=(str(folder / "cert.pem"), str(folder / "key.pem")),
                     ca_cert=str(folder / "ca.pem"), verify=True), folder


def api_client(endpoint: Endpoint, **options: Any) -> APIClient:
    """A low-level docker client of ``endpoint`` (``options``: ``timeout``, ``max_pool_size``)."""
    return _engine_client_class()(**endpoint.kwargs, **options)


@functools.cache
def _engine_client_class() -> type[APIClient]:
    """``docker.APIClient`` whose TLS settings are the engine's own. requests lets
    ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` replace the CA a client was given (docker-py
    #2433), so a TLS engine would be checked against the wrong CA; the docker CLI ignores them."""
    import docker

    class EngineClient(docker.APIClient):
        def merge_environment_settings(self, url, proxies, stream, verify, cert):  # type: ignore[no-untyped-def]
            merged = super().merge_environment_settings(url, proxies, stream, verify, cert)
            if verify is None and self.verify is not True:  # a CA file, or verification turned off
                merged["verify"] = self.verify
            return merged

    return EngineClient


# --------------------------------------------------------------------------- contexts


def _contexts_dir(environ: Mapping[str, str]) -> Path:
    # Where the docker CLI keeps them. (The SDK's ContextAPI looks beside config.json, and
    # finds nothing where the CLI made contexts but no config.json.)
    return Path(environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "contexts"


def _context_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def known_contexts(environ: Mapping[str, str] | None = None) -> list[str]:
    """The docker context names, ``default`` first."""
    environ = os.environ if environ is None else environ
    names = []
    for meta in sorted((_contexts_dir(environ) / "meta").glob("*/meta.json")):
        try:
            names.append(str(json.loads(meta.read_text(encoding="utf-8"))["Name"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a broken entry is the docker CLI's to report
    return ["default", *sorted(names)]


def _from_context(name: str, cert_path: str | None, environ: Mapping[str, str]) -> Endpoint:
    if cert_path:
        raise DockerHostError(f"docker context {name!r} carries its own TLS material: remove {_CERT_FLAG}")
    if name == "default":
        default = client_kwargs(None, environ)
        return Endpoint(f"{default.address} (docker context default)", default.kwargs)
    meta_file = _contexts_dir(environ) / "meta" / _context_id(name) / "meta.json"
    if not _CONTEXT_NAME.fullmatch(name) or not meta_file.is_file():
        raise DockerHostError(f"no docker context named {name!r} (known contexts: {', '.join(known_contexts(environ))}), "
                              f"and it is no address: {HOW_TO_NAME}")
    try:
        endpoint = json.loads(meta_file.read_text(encoding="utf-8"))["Endpoints"]["docker"]
        url = str(endpoint.get("Host") or DEFAULT_ADDRESS)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DockerHostError(f"docker context {name!r} cannot be read ({meta_file}: {exc}): "
                              "fix it with docker context update, or name the engine's address") from None
    folder = _contexts_dir(environ) / "tls" / _context_id(name) / "docker"
    tls = _context_tls(folder, skip_verify=bool(endpoint.get("SkipTLSVerify")))
    return _endpoint(url, f"{url} (docker context {name})", tls, folder)


def _context_tls(folder: Path, *, skip_verify: bool) -> TLSConfig | None:
    """A context's TLS material (``docker context create --docker ca=,cert=,key=``), if any."""
    from docker.tls import TLSConfig

    ca, cert, key = (folder / n for n in TLS_FILES)
    if not (ca.is_file() or cert.is_file() or skip_verify):
        return None
    client_cert = (str(cert), str(key)) if cert.is_file() and key.is_file() else None
    return TLSConfig(client_cert=client_cert, ca_cert=str(ca) if ca.is_file() else None, verify=not skip_verify)


# --------------------------------------------------------------------------- ssh


_SSH_REACHED: set[str] = set()


def ssh_problem(url: str, timeout: float = 15.0) -> str | None:
    """Why the engine at ``url`` (``ssh://…``) cannot be used over ssh, in words a user can act
    on; None when it can. ssh runs ``docker version`` there without ever prompting (BatchMode):
    a password or an unknown host key is a problem to fix first, not a hidden prompt. A host
    reached once is not checked again."""
    if url in _SSH_REACHED:
        return None
    parsed = urllib.parse.urlparse(url)
    if not parsed.hostname:
        return f"{url!r} names no host: write ssh://USER@HOST[:PORT]"
    login = ([f"-l{parsed.username}"] if parsed.username else []) + ([f"-p{parsed.port}"] if parsed.port else [])
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, int(timeout))}", *login, "--",
            parsed.hostname, "docker", "version", "--format", "{{.Server.Version}}"]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout + 5)
    except subprocess.TimeoutExpired:
        return f"ssh to {parsed.hostname} did not finish in {timeout + 5:.0f}s"
    if done.returncode == 0:
        _SSH_REACHED.add(url)
        return None
    said = " ".join((done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1].split())
    who = f"{parsed.username}@{parsed.hostname}" if parsed.username else parsed.hostname
    port = f" -p {parsed.port}" if parsed.port else ""
    if done.returncode == 255:  # ssh's own failure: no connection, no login, unknown host key
        return (f"ssh could not log in ({said}); `ssh{port} {who} docker version` must work without a prompt: "
                "a key in ssh-agent or ~/.ssh, and the host key in known_hosts")
    return (f"ssh logged in to {who}, but `docker version` failed there ({said}): that account needs the docker CLI "
            "and access to the engine")
