"""A second, real Docker engine for the tests: its own dockerd listening on
``tcp://127.0.0.1:PORT`` with TLS certificates made here (a CA, a server certificate for
127.0.0.1, a client certificate), its own data and exec roots, a bridge of its own and no
iptables.

Its bridge is made here and named ``bk<port>``: a dockerd started with ``--bridge=none``
deletes the machine's ``docker0``, which would cut the main engine's containers and builds
off their network.

It starts with no images; ``load`` copies one from the machine's main engine. Stopping it
removes its containers, its process and its files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(folder: Path) -> None:
    """ca.pem, server-cert.pem/server-key.pem (for 127.0.0.1) and cert.pem/key.pem (a client)
    in ``folder``: the names docker's DOCKER_CERT_PATH expects."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca-key.pem", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=bakeoff test CA", cwd=folder)
    for name, subject, usage in (("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
                                 ("client", "/CN=bakeoff test client", "extendedKeyUsage=clientAuth\n")):
        key, cert = ("server-key.pem", "server-cert.pem") if name == "server" else ("key.pem", "cert.pem")
        (folder / f"{name}.ext").write_text(usage)
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", f"{name}.csr", "-subj", subject,
                 cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
                 "-out", cert, "-days", "2", "-extfile", f"{name}.ext", cwd=folder)


@dataclass
class TlsEngine:
    url: str
    certs: Path
    root: Path
    process: subprocess.Popen

    @property
    def cli(self) -> list[str]:
        return ["docker", "--tlsverify", "--tlscacert", str(self.certs / "ca.pem"), "--tlscert",
                str(self.certs / "cert.pem"), "--tlskey", str(self.certs / "key.pem"), "-H", self.url]

    @property
    def env(self) -> dict[str, str]:
        """What a docker client needs to reach this engine: the usual three variables."""
        return {"DOCKER_HOST": self.url, "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(self.certs)}

    def answers(self) -> bool:
        done = subprocess.run([*self.cli, "version", "--format", "{{.Server.Version}}"], capture_output=True, timeout=30)
        return done.returncode == 0

    def load(self, image: str) -> None:
        """Copy ``image`` from the machine's main engine into this one."""
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        loaded = subprocess.run([*self.cli, "load", "-q"], stdin=save.stdout, capture_output=True, timeout=300)
        save.wait(timeout=300)
        assert loaded.returncode == 0 and save.returncode == 0, loaded.stderr

    def containers(self) -> list[str]:
        done = subprocess.run([*self.cli, "ps", "-aq"], capture_output=True, text=True, timeout=30)
        return done.stdout.split()


@contextlib.contextmanager
def _own_bridge(port: int) -> Iterator[str]:
    """A bridge for the second engine alone (10.2xx.y.1/24), removed afterwards."""
    name = f"bk{port}"
    _ip("link", "add", name, "type", "bridge")
    try:
        _ip("addr", "add", f"10.{200 + port % 50}.{port % 250}.1/24", "dev", name)
        _ip("link", "set", name, "up")
        yield name
    finally:
        subprocess.run(["ip", "link", "delete", name], capture_output=True)


@contextlib.contextmanager
def tls_engine(root: Path) -> Iterator[TlsEngine]:
    """A dockerd of its own under ``root`` (a short path: unix socket names are limited)."""
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        raise RuntimeError("a second Docker engine needs dockerd and root (CI runs as root with docker.io installed)")
    certs = root / "certs"
    port = _free_port()
    try:
        make_certificates(certs)
        with _own_bridge(port) as bridge:
            yield from _run_engine(root, certs, f"tcp://127.0.0.1:{port}", bridge)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run_engine(root: Path, certs: Path, url: str, bridge: str) -> Iterator[TlsEngine]:
    log = (root / "dockerd.log").open("wb")
    process = subprocess.Popen(
        ["dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "exec"),
         "--pidfile", str(root / "docker.pid"), "-H", url, "--tlsverify",
         "--tlscacert", str(certs / "ca.pem"), "--tlscert", str(certs / "server-cert.pem"),
         "--tlskey", str(certs / "server-key.pem"), f"--bridge={bridge}", "--iptables=false", "--ip6tables=false",
         "--ip-masq=false", f"--cgroup-parent=/bakeoff-test-{root.name}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    engine = TlsEngine(url=url, certs=certs, root=root, process=process)
    try:
        deadline = time.monotonic() + 60
        while not engine.answers():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the test's dockerd did not come up:\n" + (root / "dockerd.log").read_text()[-3000:])
            time.sleep(0.5)
        yield engine
    finally:
        with contextlib.suppress(Exception):
            left = engine.containers()
            if left:
                subprocess.run([*engine.cli, "rm", "-f", *left], capture_output=True, timeout=120)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        log.close()
        subprocess.run(["umount", "-R", "-l", str(root / "data")], capture_output=True)
        subprocess.run(["umount", "-R", "-l", str(root / "exec")], capture_output=True)
