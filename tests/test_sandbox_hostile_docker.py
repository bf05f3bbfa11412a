"""Hostile tests of the Docker backend, one per class:

- processes that escape the per-command cleanup (``env -i``, a double fork, a fork bomb in
  its own session) are gone before the next command starts, and a command running beside
  them is not touched;
- ``read_file`` sees no more than the sandbox's user would: not through a symlink to ``/``,
  not a file that user may not read;
- a command that trips a limit is reported with it (``killed: more than 64 processes``);
- an image build is never retried with the host's network.

Real engine, real containers; skipped only when no engine answers (never in CI).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bakeoff.agent.events import EventBus
from bakeoff.agent.seams import SandboxLimits, Workspace
from bakeoff.sandboxes.docker import DockerBackend, DockerImageError, engine_available
from bakeoff.sandboxes.docker_sandbox import WORKDIR
from tests.test_sandbox_docker import docker_backend  # noqa: F401  (the session fixture)

ENGINE_UP, ENGINE_WHY = engine_available()
pytestmark = [pytest.mark.docker, pytest.mark.skipif(not ENGINE_UP, reason=ENGINE_WHY)]


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    (tmp_path / "main.c").write_text("int main(void) { return 0; }\n")
    return Workspace(path=tmp_path)


async def _others(sb) -> list[str]:
    """Every process in the container but init, the keeper and the listing itself."""
    r = await sb.exec("ps -eo pid=,args=")
    assert r.ok, r.summary()
    rows = [line.split(None, 1) for line in r.stdout.splitlines()]
    return [args for pid, args in rows
            if pid != "1" and not args.startswith(("sleep 21600", "sh -c", "ps -eo")) and "ps -eo" not in args]


async def test_escaped_processes_are_gone_before_the_next_command(docker_backend, workspace) -> None:
    async with await docker_backend.create(workspace) as sb:
        r = await sb.exec("env -i /bin/sleep 1101 & (setsid env -i /bin/sleep 1102 &) ; "
                          "env -i setsid bash -c 'sleep 1103 & sleep 1104' & echo started", timeout=20)
        assert r.ok and r.stdout == "started\n"
        assert await _others(sb) == []
        # A command running beside one that leaves processes behind is not cut short: the
        # container is cleaned once no command runs.
        long = asyncio.create_task(sb.exec("sleep 2; echo survived", timeout=20))
        await asyncio.sleep(0.5)
        assert (await sb.exec("env -i setsid /bin/sleep 1105 & echo left", timeout=20)).ok
        done = await long
        assert done.ok and done.stdout == "survived\n"
        assert await _others(sb) == []


async def test_a_fork_bomb_in_its_own_session_is_cleaned_and_named(docker_backend, workspace) -> None:
    async with await docker_backend.create(workspace, SandboxLimits(max_processes=64)) as sb:
        r = await sb.exec("bash -c ':(){ :|:& };:'; sleep 2", timeout=8)
        assert r.limit == "more than 64 processes" and not r.ok
        assert "killed: more than 64 processes" in r.summary()
        assert (await sb.exec("echo alive")).stdout == "alive\n"
        r = await sb.exec("env -i setsid bash -c ':(){ :|:& };:' & sleep 2; echo launched", timeout=8)
        assert r.stdout.startswith("launched")
        assert await _others(sb) == []  # the next command starts in a clean container


async def test_read_file_sees_no_more_than_the_sandbox_user(docker_backend, workspace) -> None:
    async with await docker_backend.create(workspace) as sb:
        r = await sb.exec("ln -s / root; ln -s /etc etc; echo hidden > h; chmod 000 h; mkfifo pipe; "
                          "mkdir d; ln -s ../main.c d/up")
        assert r.ok, r.summary()
        for outside in ("root/etc/shadow", "root/etc/passwd", "etc/passwd", "root/proc/1/environ"):
            with pytest.raises(ValueError, match="outside the workspace"):
                await sb.read_file(outside)
        with pytest.raises(PermissionError):
            await sb.read_file("h")  # its own file, but mode 000: the user cannot read it, nor may we
        with pytest.raises(ValueError, match="not a regular file"):
            await sb.read_file("pipe")
        assert await sb.read_file("d/up") == (workspace.path / "main.c").read_bytes()
        # Through the link to the container's root, back into the workspace: still its own file.
        assert await sb.read_file(f"root{WORKDIR}/main.c") == (workspace.path / "main.c").read_bytes()


async def test_an_image_build_is_never_retried_with_the_hosts_network(docker_backend, tmp_path) -> None:
    recipe = tmp_path / "docker" / "Dockerfile"
    recipe.parent.mkdir()
    # Offline on the build network; with the host's network (docker0 visible) it would pass.
    recipe.write_text(f"FROM {docker_backend.image}\n"
                      "RUN if [ -e /sys/class/net/docker0 ]; then echo host-network; exit 0; fi; "
                      "echo \"Temporary failure resolving 'deb.debian.org'\" >&2; exit 1\n")
    events = EventBus()
    seen = []
    events.subscribe(seen.append)
    own = DockerBackend(dockerfile=recipe)
    own.events = events
    try:
        with pytest.raises(DockerImageError) as err:
            await asyncio.to_thread(own.ensure_image)
    finally:
        await own.close()
    assert "could not reach the network: build the image yourself" in str(err.value)
    assert [e.kind for e in seen if e.kind.startswith("sandbox.image")] == ["sandbox.image.build"]
