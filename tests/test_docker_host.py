"""Sandboxes on another machine's Docker engine: ``--docker-host`` / ``docker_host`` with TLS,
ssh and docker contexts.

The engine tests run a real second dockerd on ``tcp://127.0.0.1:PORT`` with TLS certificates
made for it (``tests/docker_tls.py``), next to the machine's main engine: containers must be
made on the engine named, and only there. They are skipped only when no main engine answers
(``docker info`` fails); the second engine needs dockerd and root, which CI has.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bakeoff.agent.config import load_settings
from bakeoff.agent.seams import Workspace
from bakeoff.agent.session import docker_host_of, make_pool
from bakeoff.sandboxes import SandboxUnavailable, choose_backend, create_sandbox
from bakeoff.sandboxes.docker_host import DockerHost, DockerHostError, Endpoint, client_kwargs
from tests.docker_tls import TlsEngine, tls_engine
from tests.test_session import cli_env, make_repo, write_script

REFERENCE = "def total(xs):\n    s = 0\n    for x in xs:\n        s += x\n    return s\n"
FAST = "def total(xs):\n    return sum(xs)\n"
WRONG = "def total(xs):\n    return sum(xs) + 1\n"


def _main_engine_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_engine = pytest.mark.skipif(not _main_engine_answers(), reason="no Docker engine answers (docker info fails)")


def _bakeoff(*args: str, env: dict[str, str], cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bakeoff", *args], env=env, cwd=cwd, input=stdin,
                          capture_output=True, text=True, timeout=180)


def _said(proc: subprocess.CompletedProcess) -> list[str]:
    """bakeoff's own error lines on stderr."""
    return [line for line in proc.stderr.splitlines() if line.startswith("bakeoff")]


# --------------------------------------------------------------------------- addresses (no engine needed)


def _cert_folder(folder: Path) -> Path:
    """The three files a TLS folder holds (their contents matter only to a real engine)."""
    folder.mkdir(parents=True)
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (folder / name).write_text(f"{name}\n")
    return folder


def test_each_kind_of_address_becomes_client_arguments(tmp_path, monkeypatch) -> None:
    _cert_folder(tmp_path / "certs")
    for var in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        monkeypatch.delenv(var, raising=False)
    tls = client_kwargs(DockerHost("tcp://127.0.0.1:2376", str(tmp_path / "certs")))
    assert tls.address == "tcp://127.0.0.1:2376" and tls.kwargs["base_url"] == "tcp://127.0.0.1:2376"
    assert tls.kwargs["tls"].ca_cert == str(tmp_path / "certs" / "ca.pem") and tls.kwargs["tls"].verify is True
    assert tls.kwargs["tls"].cert == (str(tmp_path / "certs" / "cert.pem"), str(tmp_path / "certs" / "key.pem"))
    assert tls.cert_folder == tmp_path / "certs"
    assert "tls" not in client_kwargs(DockerHost("tcp://127.0.0.1:2375")).kwargs
    assert client_kwargs(DockerHost("unix:///run/other.sock")).kwargs == {"base_url": "unix:///run/other.sock"}
    if shutil.which("ssh"):
        assert client_kwargs(DockerHost("ssh://me@build:2222")).kwargs == {"base_url": "ssh://me@build:2222",
                                                                            "use_ssh_client": True}
    # As the docker CLI: DOCKER_TLS_VERIFY turns TLS on, with DOCKER_CERT_PATH's files.
    env = {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path / "certs")}
    assert client_kwargs(DockerHost("tcp://10.0.0.5:2376"), env).kwargs["tls"].ca_cert == str(tmp_path / "certs" / "ca.pem")
    # Nothing named: exactly what docker.from_env reads.
    unset = client_kwargs(None, {"DOCKER_HOST": "tcp://10.0.0.6:2375"})
    assert unset.address == "tcp://10.0.0.6:2375" and unset.kwargs == {"base_url": "tcp://10.0.0.6:2375"}
    assert not DockerHost().named and DockerHost("x").named and DockerHost(None, "/certs").named


@pytest.mark.parametrize("host,cert_path,environ,said", [
    ("tcp://127.0.0.1:2376", "{tmp}/empty", {}, "no ca.pem, cert.pem, key.pem in {tmp}/empty"),
    ("tcp://127.0.0.1:2376", None, {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": "{tmp}/empty"},
     "(from DOCKER_CERT_PATH)"),
    ("ssh://me@build", "{tmp}/certs", {}, "is for tcp:// engines, not ssh://me@build"),
    (None, "{tmp}/certs", {}, "name it with --docker-host tcp://HOST:PORT"),
    ("ftp://build", None, {}, "'ftp://build' is not a Docker engine address"),
    ("build:2376", None, {}, "no docker context named 'build:2376' (known contexts: default)"),
])
def test_an_engine_named_wrong_says_what_to_change(tmp_path, host, cert_path, environ, said) -> None:
    (tmp_path / "empty").mkdir()
    _cert_folder(tmp_path / "certs")
    environ = {k: v.format(tmp=tmp_path) for k, v in environ.items()} | {"DOCKER_CONFIG": str(tmp_path / "cfg")}
    with pytest.raises(DockerHostError) as err:
        client_kwargs(DockerHost(host, cert_path.format(tmp=tmp_path) if cert_path else None), environ)
    assert said.format(tmp=tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_ssh_without_the_ssh_client_says_what_to_install(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no ssh here
    with pytest.raises(DockerHostError, match="ssh client, which is not installed here: install it"):
        client_kwargs(DockerHost("ssh://me@build"))


def test_the_settings_carry_the_engine_from_file_environment_and_flag(tmp_path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    user = tmp_path / ".config" / "bakeoff" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text('docker_host = "tcp://file:2376"\ndocker_cert_path = "/etc/bakeoff/certs"\n')
    home = {"HOME": str(tmp_path)}
    settings, provenance = load_settings(repo, home)
    assert docker_host_of(settings) == DockerHost("tcp://file:2376", "/etc/bakeoff/certs")
    assert provenance["docker_host"] == str(user)
    settings, provenance = load_settings(repo, home | {"BAKEOFF_DOCKER_HOST": "ssh://me@env"})
    assert settings.docker_host == "ssh://me@env" and provenance["docker_host"] == "env BAKEOFF_DOCKER_HOST"
    settings, provenance = load_settings(repo, home, {"docker_host": "remote", "docker_cert_path": None})
    assert settings.docker_host == "remote" and provenance["docker_host"] == "flag --docker-host"
    assert make_pool(settings).docker_host == DockerHost("remote", "/etc/bakeoff/certs")


@pytest.mark.parametrize("line", ['docker_host = "tcp://attacker.example:2376"', 'docker_cert_path = "/root/.docker"'])
def test_a_repository_may_not_choose_the_engine(tmp_path, line) -> None:
    """A repository's bakeoff.toml naming an engine would send the user's tree (and a context's
    or a cert folder's credentials) where the repository says: refused, with what to do."""
    from bakeoff.agent.config import ConfigError

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "bakeoff.toml").write_text(line + "\n")
    with pytest.raises(ConfigError, match="an engine the repository chose: remove it, or pass --docker-"):
        load_settings(repo, {"HOME": str(tmp_path)})


def test_a_cert_folder_inside_the_workspace_is_never_copied(tmp_path) -> None:
    endpoint = Endpoint("tcp://127.0.0.1:2376", {}, tmp_path / "repo" / "certs")
    with pytest.raises(DockerHostError, match="inside .* which every sandbox gets a copy of"):
        endpoint.refuse_copying(tmp_path / "repo")
    endpoint.refuse_copying(tmp_path / "elsewhere")  # outside: fine


# --------------------------------------------------------------------------- a second, real engine
# Starting it and copying the sandbox image in takes about a minute, and removing it as long:
# every test that uses it is slow.


@pytest.fixture(scope="module")
def second_engine():
    """A TLS dockerd of its own, holding the sandbox image copied from the main engine."""
    if not _main_engine_answers():
        pytest.skip("no Docker engine answers (docker info fails)")
    from bakeoff.sandboxes.docker_backend import DockerBackend

    image = DockerBackend.shared().ensure_image()  # built on the main engine if it is missing
    root = Path(f"/tmp/bk-dh-{os.getpid()}")  # short: unix socket paths are limited
    with tls_engine(root) as engine:
        engine.load(image)
        yield engine
        asyncio.run(DockerBackend.shared(docker_host=DockerHost(engine.url, str(engine.certs))).close())


def _main_containers() -> set[str]:
    done = subprocess.run(["docker", "ps", "-aq", "--no-trunc"], capture_output=True, text=True, timeout=60)
    return set(done.stdout.split())


def _gone(engine: TlsEngine, short_id: str, within_s: float = 20) -> bool:
    deadline = time.monotonic() + within_s
    while short_id in engine.containers():  # auto-removal may still be finishing
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def _events(cli: list[str], since: int, label: str) -> list[str]:
    """Containers created with ``label`` on the engine ``cli`` reaches, since then."""
    done = subprocess.run([*cli, "events", "--since", str(since), "--until", str(int(time.time()) + 1),
                           "--filter", "type=container", "--filter", "event=create", "--filter", f"label={label}",
                           "--format", "{{.ID}}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.slow
async def test_a_sandbox_lives_on_the_named_engine_only(second_engine, tmp_path, monkeypatch) -> None:
    import certifi

    # A CA bundle for other hosts must not replace the engine's own CA (docker-py #2433).
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    environ = {"HOME": str(tmp_path), "BAKEOFF_SANDBOX": "docker", "BAKEOFF_DOCKER_HOST": second_engine.url,
               "BAKEOFF_DOCKER_CERT_PATH": str(second_engine.certs)}
    settings, _ = load_settings(tmp_path, environ)
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "hello.txt").write_text("from the host\n")
    async with make_pool(settings) as pool:
        assert pool.backend == "docker"
        async with pool.sandbox(Workspace(path=tmp_path / "ws")) as sb:
            result = await sb.exec("cat hello.txt && env && ls -a /work")
            assert result.ok and "from the host" in result.stdout
            # The certificates are the host's: neither their folder nor DOCKER_* reach the sandbox.
            assert str(second_engine.certs) not in result.stdout and "DOCKER" not in result.stdout
            assert "key.pem" not in result.stdout
            cid = sb.container_id
            assert cid[:12] in second_engine.containers()
            assert cid not in _main_containers()
        assert _gone(second_engine, cid[:12])


@pytest.mark.slow
async def test_a_missing_image_names_the_engine_and_how_to_copy_it(second_engine, tmp_path) -> None:
    from bakeoff.sandboxes.docker_backend import DockerBackend
    from bakeoff.sandboxes.docker_engine import DockerImageError

    host = DockerHost(second_engine.url, str(second_engine.certs))
    backend = DockerBackend("bakeoff-test-absent:1", docker_host=host)
    try:
        with pytest.raises(DockerImageError) as err:
            await backend.create(Workspace(path=tmp_path))
    finally:
        await backend.close()
    said = str(err.value)
    assert f"not found on the Docker engine at {second_engine.url}" in said
    assert (f"docker save bakeoff-test-absent:1 | DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH={second_engine.certs} "
            f"docker -H {second_engine.url} load") in said


@pytest.mark.slow
async def test_certificates_inside_the_workspace_are_refused(second_engine, tmp_path) -> None:
    shutil.copytree(second_engine.certs, tmp_path / "repo" / "certs")
    host = DockerHost(second_engine.url, str(tmp_path / "repo" / "certs"))
    with pytest.raises(DockerHostError, match="keep them outside the repository"):
        await create_sandbox(Workspace(path=tmp_path / "repo"), "docker", docker_host=host)


@pytest.mark.slow
def test_select_through_the_cli_runs_its_candidates_on_the_second_engine(second_engine, tmp_path) -> None:
    for name, source in {"ref": REFERENCE, "fast": FAST, "wrong": WRONG}.items():
        (tmp_path / f"{name}.py").write_text(source)
    since = int(time.time()) - 1
    proc = subprocess.Popen(
        [sys.executable, "-m", "bakeoff", "select", "--reference", "ref.py", "--candidate", "wrong.py",
         "--candidate", "fast.py", "--json", "--repeats", "1", "--timing-repeats", "2", "--sandbox", "docker",
         "--docker-host", second_engine.url, "--docker-cert-path", str(second_engine.certs)],
        cwd=tmp_path, env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    verdict = json.loads(out)
    assert verdict["winner"] == "fast" and verdict["correct"] == ["fast"]
    owner = f"bakeoff.owner-pid={proc.pid}"
    made = _events(second_engine.cli, since, owner)
    assert made, "no container of the run was made on the second engine"
    assert _events(["docker"], since, owner) == []  # and none on the main one
    assert all(_gone(second_engine, cid[:12]) for cid in made)  # all removed when select ended


@pytest.mark.slow
def test_plain_tcp_to_a_tls_engine_is_one_line_and_exit_2(second_engine, tmp_path) -> None:
    repo = make_repo(tmp_path / "repo")
    script = write_script(tmp_path / "s.json")
    proc = _bakeoff("run", "--repo", str(repo), "--model", f"scripted:{script}", "--sandbox", "docker",
                    "--docker-host", second_engine.url, "make total faster", env=cli_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == _said(proc) and len(_said(proc)) == 1
    assert f"the Docker engine at {second_engine.url} speaks TLS only: pass --docker-cert-path DIR" in proc.stderr
    assert "Traceback" not in proc.stderr


def _docker_config_with_context(tmp_path: Path, engine: TlsEngine, name: str) -> Path:
    config = tmp_path / "docker-config"
    certs = engine.certs
    made = subprocess.run(
        ["docker", "context", "create", name, "--docker",
         f"host={engine.url},ca={certs / 'ca.pem'},cert={certs / 'cert.pem'},key={certs / 'key.pem'}"],
        env={**os.environ, "DOCKER_CONFIG": str(config)}, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    return config


@pytest.mark.slow
async def test_a_docker_context_name_resolves_to_its_host_and_certificates(second_engine, tmp_path,
                                                                            monkeypatch) -> None:
    from bakeoff.sandboxes.docker_backend import DockerBackend
    from bakeoff.sandboxes.docker_engine import engine_available

    monkeypatch.setenv("DOCKER_CONFIG", str(_docker_config_with_context(tmp_path, second_engine, "bk-remote")))
    host = DockerHost("bk-remote")
    ok, why = engine_available(host)
    assert ok, why
    assert why.endswith(f"at {second_engine.url} (docker context bk-remote)")
    assert choose_backend("auto", host).backend == "docker"
    (tmp_path / "ws").mkdir()  # not the docker config: it holds the context's client key
    sb = await create_sandbox(Workspace(path=tmp_path / "ws"), "docker", docker_host=host)
    try:
        assert (await sb.exec("echo context")).stdout.strip() == "context"
        assert sb.container_id[:12] in second_engine.containers()
    finally:
        await sb.close()
        await DockerBackend.shared(docker_host=host).close()


@needs_engine
@pytest.mark.parametrize("door", ["run", "batch", "select", "chat", "demo"])
def test_an_unknown_context_is_one_line_naming_the_known_ones(tmp_path, door) -> None:
    config = tmp_path / "docker-config"
    made = subprocess.run(["docker", "context", "create", "bk-known", "--docker", "host=tcp://127.0.0.1:9"],
                          env={**os.environ, "DOCKER_CONFIG": str(config)}, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    repo = make_repo(tmp_path / "repo")
    script = write_script(tmp_path / "s.json")
    (tmp_path / "tasks.jsonl").write_text(json.dumps({"id": "t", "repo": str(repo), "instruction": "x"}) + "\n")
    (tmp_path / "ref.py").write_text(REFERENCE)
    args = {
        "run": ["run", "--repo", str(repo), "--model", f"scripted:{script}", "x"],
        "batch": ["batch", "tasks.jsonl", "--out", "out", "--model", f"scripted:{script}"],
        "select": ["select", "--reference", "ref.py", "--candidate", "ref.py"],
        "chat": ["chat", "--repo", str(repo), "--model", f"scripted:{script}"],
        "demo": ["demo"],
    }[door]
    proc = _bakeoff(*args, "--sandbox", "docker", "--docker-host", "bk-nosuch",
                    env=cli_env(tmp_path, DOCKER_CONFIG=str(config)), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = _said(proc)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "no docker context named 'bk-nosuch' (known contexts: default, bk-known)" in lines[0]


def test_ssh_to_no_reachable_host_is_one_line_and_exit_2(tmp_path) -> None:
    repo = make_repo(tmp_path / "repo")
    script = write_script(tmp_path / "s.json")
    # sandbox auto: an engine the user named is the one used, never silently replaced by bubblewrap
    proc = _bakeoff("run", "--repo", str(repo), "--model", f"scripted:{script}", "--sandbox", "auto",
                    "--docker-host", "ssh://nobody@127.0.0.1:1", "x", env=cli_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == _said(proc) and len(_said(proc)) == 1, proc.stderr
    if shutil.which("ssh"):
        assert "the Docker engine at ssh://nobody@127.0.0.1:1 cannot be reached: ssh could not log in" in proc.stderr
        assert "Connection refused" in proc.stderr
    else:
        assert "ssh client, which is not installed here" in proc.stderr


def test_auto_without_a_named_engine_still_falls_back(monkeypatch) -> None:
    from bakeoff import sandboxes

    monkeypatch.setattr(sandboxes, "_docker_engine", lambda _host=None: (False, "no Docker engine reachable (test)"))
    monkeypatch.setattr(sandboxes, "_bwrap", lambda: (True, "bubblewrap works"))
    assert choose_backend("auto", DockerHost()).backend == "local+bwrap"
    with pytest.raises(SandboxUnavailable, match="no Docker engine reachable"):
        choose_backend("auto", DockerHost("tcp://127.0.0.1:9"))
