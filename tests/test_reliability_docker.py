"""RELIABILITY.md on the Docker backend: runaway code (1-8), escapes (9-13), hostile archives
(15), the engine missing or dying mid-run (20). Each test asserts the safe outcome.

Item 21 (reaping after a killed orchestrator) is in test_sandbox_docker.py. Skipped only
when no Docker engine answers.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
import tarfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from bakeoff.agent.seams import SandboxLimits, Workspace
from bakeoff.sandboxes import SandboxUnavailable
from bakeoff.sandboxes.archive import changed_entries, diff_changed
from bakeoff.sandboxes.docker import (
    LABEL_BACKEND,
    DockerBackend,
    DockerSandbox,
    DockerUnavailable,
    engine_available,
)
from bakeoff.sandboxes.docker_host import DockerHost
from bakeoff.sandboxes.workspace import UnsafeArchive, WorkspaceError
from tests.test_sandbox_docker import docker_backend  # noqa: F401  (the session fixture)

ENGINE_UP, ENGINE_WHY = engine_available()
pytestmark = [pytest.mark.docker, pytest.mark.skipif(not ENGINE_UP, reason=ENGINE_WHY)]

MiB = 2**20


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    (tmp_path / "main.c").write_text("int main(void) { return 0; }\n")
    return Workspace(path=tmp_path)


async def _processes(sb: DockerSandbox) -> str:
    r = await sb.exec("ps -eo args")
    assert r.ok, r.summary()
    return r.stdout


# --------------------------------------------------------------------------- runaway code


async def test_01_infinite_loop_is_timed_out_and_gone(docker_backend, workspace) -> None:
    async with await docker_backend.create(workspace) as sb:
        r = await sb.exec("while true; do :; done", timeout=1.5)
        assert r.timed_out and not r.oom_killed and not r.ok
        assert 1.4 < r.duration_s < 6
        assert "while true" not in await _processes(sb)


async def test_02_background_child_holding_stdout_is_killed(docker_backend, workspace) -> None:
    async with await docker_backend.create(workspace) as sb:
        r = await sb.exec("sleep 1001 & echo started", timeout=30)
        assert r.ok and r.stdout == "started\n"
        assert r.duration_s < 1.5  # no waiting for the child's end of stdout
        # A child that left the process group (its own session) is found by its token.
        r = await sb.exec("setsid sleep 1002 & sleep 0.2; echo started", timeout=30)
        assert r.ok and r.duration_s < 3
        procs = await _processes(sb)
        assert "sleep 1001" not in procs and "sleep 1002" not in procs


async def test_03_ignored_term_escalates_to_kill(docker_backend, workspace) -> None:
    async with await docker_backend.create(workspace) as sb:
        r = await sb.exec("trap '' TERM; while :; do :; done", timeout=1)
        assert r.timed_out and r.exit_code == 137
        assert r.duration_s < 5
        assert "trap" not in await _processes(sb)


async def test_04_fork_bomb_hits_the_process_limit_and_spares_others(docker_backend, workspace) -> None:
    limits = SandboxLimits(max_processes=64, cpus=0.5)
    bomb_box = await docker_backend.create(workspace, limits)
    neighbour = await docker_backend.create(workspace)
    try:
        bomb = asyncio.create_task(bomb_box.exec("bash -c ':(){ :|:& };:'; sleep 10", timeout=4))
        await asyncio.sleep(1.5)
        r = await neighbour.exec("echo fine", timeout=10)  # runs while the bomb goes off
        assert r.ok and r.stdout == "fine\n"
        result = await bomb
        assert not result.ok and result.duration_s < 12
        assert "Resource temporarily unavailable" in result.stderr or result.timed_out
        r = await bomb_box.exec("echo alive", timeout=10)  # the bomb is gone: the sandbox works
        assert r.ok
    finally:
        await bomb_box.close()  # teardown succeeds
        await neighbour.close()
    assert bomb_box.container_id not in {c["Id"] for c in docker_backend.api.containers(all=True)}


OMP_PROGRAM = textwrap.dedent("""\
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel
        {
            #pragma omp atomic
            n++;
        }
        printf("threads=%d\\n", n);
        return 0;
    }
    """)


async def test_05_thousand_openmp_threads_fail_cleanly(docker_backend, tmp_path) -> None:
    (tmp_path / "omp.c").write_text(OMP_PROGRAM)
    async with await docker_backend.create(Workspace(path=tmp_path), SandboxLimits(max_processes=128)) as sb:
        assert (await sb.exec("gcc -fopenmp omp.c -o omp")).ok
        r = await sb.exec("./omp", env={"OMP_NUM_THREADS": "1000"}, timeout=20)
        assert not r.timed_out and r.duration_s < 10
        assert r.ok or "Thread creation failed" in r.stderr, r.summary()
        assert (await sb.exec("./omp", env={"OMP_NUM_THREADS": "4"})).stdout == "threads=4\n"


async def test_06_memory_bomb_is_out_of_memory_not_timeout(docker_backend, workspace) -> None:
    async with await docker_backend.create(workspace, SandboxLimits(memory_bytes=64 * MiB)) as sb:
        r = await sb.exec("python3 -c 'a = bytearray(512 * 2**20)'", timeout=30)
        assert r.oom_killed and not r.timed_out and r.exit_code == 137
        assert (await sb.exec("echo ok")).ok  # the sandbox (and the host) carry on


async def test_07_endless_output_is_capped_head_and_tail(docker_backend, workspace) -> None:
    async with await docker_backend.create(workspace, SandboxLimits(output_bytes=4096)) as sb:
        r = await sb.exec("echo FIRST; head -c 30000000 /dev/zero | tr '\\0' a; echo; echo LAST", timeout=30)
        assert r.ok and r.truncated
        assert r.stdout.startswith("FIRST\n") and r.stdout.endswith("LAST\n")
        assert len(r.stdout) < 4096 + 100 and "bytes cut" in r.stdout
        r = await sb.exec("yes", timeout=1.5)
        assert r.timed_out and r.truncated and len(r.stdout) < 4096 + 100


async def test_08_huge_file_and_many_files_stop_at_the_cap(docker_backend, workspace) -> None:
    limits = SandboxLimits(disk_bytes=16 * MiB, max_file_bytes=64 * MiB)
    async with await docker_backend.create(workspace, limits) as sb:
        r = await sb.exec("dd if=/dev/zero of=big bs=1M count=64", timeout=30)
        assert not r.ok and "No space left on device" in r.stderr
        size = int((await sb.exec("stat -c %s big")).stdout)
        assert size <= 16 * MiB
        r = await sb.exec("rm big; python3 -c \"\n"
                          "import os\n"
                          "n = 0\n"
                          "try:\n"
                          "    while n < 1000000:\n"
                          "        open(f'f{n}', 'w').close(); n += 1\n"
                          "except OSError as e:\n"
                          "    print(n, e.strerror)\n"
                          "\"", timeout=60)
        count, _, why = r.stdout.strip().partition(" ")
        assert why == "No space left on device" and int(count) < 100_000
        r = await sb.exec("head -c 20000000 /dev/zero > /tmp/t", timeout=30)
        assert not r.ok and "No space left on device" in r.stderr  # /tmp is capped as well
    # Cleanup completed: the container and its workspace volume are gone.
    assert sb.container_id not in {c["Id"] for c in docker_backend.api.containers(all=True)}


# --------------------------------------------------------------------------- escape


async def test_09_no_network_at_all(docker_backend, workspace) -> None:
    async with await docker_backend.create(workspace) as sb:
        r = await sb.exec("python3 -c \"import socket; socket.create_connection(('1.1.1.1', 80), timeout=5)\"",
                          timeout=10)
        assert not r.ok and r.duration_s < 3 and "unreachable" in r.stderr.lower()
        r = await sb.exec("getent hosts example.com", timeout=10)
        assert r.exit_code != 0 and r.duration_s < 3
        r = await sb.exec("bash -c 'echo hi > /dev/tcp/1.1.1.1/80'", timeout=10)
        assert r.exit_code != 0 and r.duration_s < 3
        # Listening works only on a loopback no one else shares: there is no other interface.
        r = await sb.exec("python3 -c \"import socket; s = socket.socket(); s.bind(('0.0.0.0', 8080)); "
                          "s.listen(); print('listening')\" && tail -n +3 /proc/net/dev | cut -d: -f1")
        assert r.stdout.split() == ["listening", "lo"]
        info = docker_backend.api.inspect_container(sb.container_id)["NetworkSettings"]
        assert not info.get("IPAddress") and set(info["Networks"] or {}) <= {"none"}


async def test_10_docker_socket_and_metadata_unreachable(docker_backend, workspace) -> None:
    async with await docker_backend.create(workspace) as sb:
        r = await sb.exec("ls -la /var/run/docker.sock /run/docker.sock")
        assert r.exit_code != 0 and "No such file" in r.stderr
        for host, port in (("169.254.169.254", 80), ("172.17.0.1", 2375), ("172.17.0.1", 2376)):
            r = await sb.exec(f"python3 -c \"import socket; socket.create_connection(('{host}', {port}), timeout=5)\"",
                              timeout=10)
            assert not r.ok and r.duration_s < 3, (host, port, r.summary())


async def test_11_writes_outside_the_workspace_are_denied(docker_backend, workspace) -> None:
    escape = Path("/root") / f"bakeoff-escape-{uuid.uuid4().hex}"
    async with await docker_backend.create(workspace) as sb:
        for target in ("/etc/bakeoff-probe", "$HOME/bakeoff-probe", "/usr/bin/bakeoff-probe"):
            r = await sb.exec(f"echo x > {target}")
            assert r.exit_code != 0, target
            assert (await sb.exec(f"test -e {target}")).exit_code != 0
        r = await sb.exec(f"ln -s /etc/passwd link && echo x >> link; ln -s {escape} link2 && echo x > link2; "
                          "tail -n 1 /etc/passwd")
        assert "Read-only file system" in r.stderr or "Permission denied" in r.stderr
        assert r.stdout.strip() != "x"
        assert (await sb.exec(f"test -e {escape}")).exit_code != 0
    assert not escape.exists()


async def test_12_no_secret_in_the_environment(docker_backend, workspace, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-bakeoff-fake-openai-123")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_bakeofffaketoken456")
    async with await docker_backend.create(workspace) as sb:
        r = await sb.exec("env; cat /proc/self/environ /proc/1/environ | tr '\\0' '\\n'",
                          env={"ANTHROPIC_API_KEY": "sk-ant-bakeoff-fake-789", "OMP_NUM_THREADS": "2"})
        assert r.ok, r.summary()
        out = r.stdout + r.stderr
        for secret in ("sk-bakeoff-fake-openai-123", "ghp_bakeofffaketoken456", "sk-ant-bakeoff-fake-789"):
            assert secret not in out
        assert "OMP_NUM_THREADS=2" in out  # ordinary variables do get through


SETUID_PROGRAM = textwrap.dedent("""\
    #include <stdio.h>
    #include <unistd.h>
    int main(void) {
        if (setuid(0) == 0 || geteuid() == 0) { puts("became root"); return 0; }
        perror("setuid");
        return 1;
    }
    """)


async def test_13_no_privilege_gain(docker_backend, tmp_path) -> None:
    (tmp_path / "up.c").write_text(SETUID_PROGRAM)
    async with await docker_backend.create(Workspace(path=tmp_path)) as sb:
        r = await sb.exec("gcc up.c -o up && ./up")
        assert r.exit_code == 1 and "became root" not in r.stdout
        checks = {
            "su": "su root -c id </dev/null",
            "sudo": "sudo -n id",
            "mount": "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m",
            "unshare": "unshare -r id",
            "unshare-user": "unshare -U -m id",
        }
        for name, cmd in checks.items():
            r = await sb.exec(cmd, timeout=10)
            assert r.exit_code != 0 and "uid=0" not in r.stdout, (name, r.summary())
        status = (await sb.exec("grep -E '^(CapEff|CapPrm|NoNewPrivs)' /proc/self/status")).stdout.split()
        assert status == ["CapPrm:", "0000000000000000", "CapEff:", "0000000000000000", "NoNewPrivs:", "1"]


# --------------------------------------------------------------------------- hostile results


def _tar(*entries: tuple[str, str | None]) -> bytes:
    """A tar of (name, symlink target or None for a small file)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, link in entries:
            info = tarfile.TarInfo(name)
            if link is None:
                info.size = 2
                tar.addfile(info, io.BytesIO(b"x\n"))
            else:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize("entries", [
    [("../evil", None)],
    [("/etc/evil", None)],
    [("ok/../../evil", None)],
    [("link", "/etc/passwd")],
    [("sub/link", "../../outside")],
])
def test_15_unsafe_archives_are_refused(entries, tmp_path) -> None:
    base = _tar(("kept", None))
    with pytest.raises(UnsafeArchive):
        _, a_side, b_side = changed_entries(base, {}, [_tar(*entries)])
        diff_changed(a_side, b_side)
    assert not (tmp_path.parent / "evil").exists()


async def test_15_sandbox_links_leaving_the_workspace_are_refused(docker_backend, workspace) -> None:
    async with await docker_backend.create(workspace) as sb:
        assert (await sb.exec("ln -s /etc/passwd passwd; ln -s main.c alias.c")).ok
        assert await sb.read_file("alias.c") == (workspace.path / "main.c").read_bytes()
        with pytest.raises(ValueError):
            await sb.read_file("passwd")
        with pytest.raises(UnsafeArchive):
            await sb.diff()


# --------------------------------------------------------------------------- the engine


async def test_20_no_engine_gives_a_clear_message(tmp_path, monkeypatch, workspace) -> None:
    dead = tmp_path / "dead.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{dead}")
    ok, why = engine_available(timeout=1)
    assert not ok
    assert f"no Docker engine reachable at unix://{dead}" in why and "--sandbox local" in why
    backend = DockerBackend.shared()
    with pytest.raises(SandboxUnavailable) as err:
        await backend.create(workspace)
    assert isinstance(err.value, DockerUnavailable)
    assert f"unix://{dead}" in str(err.value) and "--sandbox local" in str(err.value)


class EngineProxy:
    """A Unix socket relaying to the real engine, which the test can kill: an engine dying."""

    def __init__(self, path: Path, upstream: str = "/var/run/docker.sock") -> None:
        self.path, self.upstream = path, upstream
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> EngineProxy:
        self.path.unlink(missing_ok=True)
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(str(self.path))
        self._listener.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.upstream)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def kill(self) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread; close alone does not
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            for s in self._sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._sockets.clear()


async def test_20_engine_dying_mid_run(docker_backend, workspace, tmp_path) -> None:
    path = tmp_path / "engine.sock"
    proxy = EngineProxy(path).start()
    backend = DockerBackend(docker_host=DockerHost(f"unix://{path}"))
    try:
        sb = await backend.create(workspace)
        running = asyncio.create_task(sb.exec("sleep 30"))
        await asyncio.sleep(1.0)
        proxy.kill()
        started = time.monotonic()
        with pytest.raises(DockerUnavailable) as err:
            await asyncio.wait_for(running, 20)
        assert time.monotonic() - started < 10
        assert "stopped answering" in str(err.value) and "--sandbox local" in str(err.value)
        await sb.close()  # does not raise with the engine away; remembers the container
        # The engine is back: the next reap removes what could not be removed while it was away.
        proxy = EngineProxy(path).start()
        assert await asyncio.to_thread(backend.reap_leftovers) >= 1
        assert sb.container_id not in {c["Id"] for c in docker_backend.api.containers(all=True)}
    finally:
        await backend.close()
        proxy.kill()
    assert {c["Id"] for c in docker_backend.api.containers(
        all=True, filters={"label": f"{LABEL_BACKEND}={backend.id}"})} == set()


async def test_20_failed_creation_leaves_no_container(tmp_path) -> None:
    (tmp_path / "big.bin").write_bytes(os.urandom(12 * MiB))
    limits = SandboxLimits(disk_bytes=4 * MiB)
    backend = DockerBackend()
    try:
        with pytest.raises(WorkspaceError):
            await backend.create(Workspace(path=tmp_path), limits)
        await backend.warm(1, limits)  # waits for the background refill, so the count is stable
        labelled = {c["Id"] for c in backend.api.containers(
            all=True, filters={"label": f"{LABEL_BACKEND}={backend.id}"})}
        assert labelled == set(backend.containers()["warm"])  # only the spare, nothing half-made
        assert backend.containers()["live"] == []
    finally:
        await backend.close()
