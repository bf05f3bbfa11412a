"""The Docker sandbox on a real engine: files in and out, commands, diffs, the warm pool,
OpenMP and MPI inside the image, and reaping what a killed orchestrator left.

Skipped only when no Docker engine answers (CI starts one with ../shared/scripts/docker-up).
The image is built once per test session.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bakeoff.agent.seams import ExecResult, Sandbox, SandboxLimits, Workspace
from bakeoff.sandboxes.docker import (
    LABEL_BACKEND,
    LABEL_OWNER,
    WORKDIR,
    DockerBackend,
    DockerImageError,
    DockerSandbox,
    DockerSandboxGone,
    engine_available,
)

ENGINE_UP, ENGINE_WHY = engine_available()
pytestmark = [pytest.mark.docker, pytest.mark.skipif(not ENGINE_UP, reason=ENGINE_WHY)]

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def docker_backend():
    """The process's shared backend with its image built (once per session)."""
    backend = DockerBackend.shared()
    backend.ensure_image()
    yield backend
    asyncio.run(backend.close())


@pytest.fixture
def c_repo(tmp_path: Path) -> Path:
    """A small C repository committed to git, plus an uncommitted change and a .git to leave out."""
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "sum.c").write_text(textwrap.dedent("""\
        #include <stdio.h>
        #include <omp.h>
        int main(void) {
            long total = 0;
            #pragma omp parallel for reduction(+:total)
            for (long i = 1; i <= 1000000; i++) total += i;
            printf("sum=%ld threads=%d\\n", total, omp_get_max_threads());
            return 0;
        }
        """))
    (repo / "README").write_text("base\n")
    (repo / "run.sh").write_text("#!/bin/sh\necho run\n")
    (repo / "run.sh").chmod(0o755)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_GLOBAL": os.devnull}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "base"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True)
    (repo / "README").write_text("uncommitted\n")
    return repo


def _labelled(backend: DockerBackend) -> set[str]:
    return {c["Id"] for c in backend.api.containers(all=True, filters={"label": f"{LABEL_BACKEND}={backend.id}"})}


async def test_files_commands_and_diff(docker_backend: DockerBackend, c_repo: Path) -> None:
    sb = await docker_backend.create(Workspace(path=c_repo))
    try:
        assert isinstance(sb, Sandbox) and sb.backend == "docker"
        # A directory workspace is copied as it is (uncommitted change included), .git left out.
        assert await sb.read_file("README") == b"uncommitted\n"
        r = await sb.exec("ls -a; test ! -e .git && echo no-git; ./run.sh; id -u")
        assert r.ok, r.summary()
        assert "no-git" in r.stdout and "run" in r.stdout and r.stdout.split()[-1] == "1000"

        await sb.write_file("src/new/notes.txt", "fresh\n")
        await sb.write_file("README", b"edited\n")
        r = await sb.exec(["sh", "-c", 'rm ../run.sh; echo "$GREETING" > env.txt; pwd'], env={"GREETING": "hi"},
                          cwd="src")
        assert r.ok and r.stdout.strip() == f"{WORKDIR}/src"
        assert await sb.read_file("src/env.txt") == b"hi\n"
        r = await sb.exec("exit 3")
        assert r.exit_code == 3 and not r.ok and not r.timed_out and not r.oom_killed

        diff = await sb.diff()
        assert "diff --git a/README b/README\n" in diff and "-uncommitted\n+edited\n" in diff
        assert "diff --git a/run.sh b/run.sh\ndeleted file mode 100755" in diff
        assert "diff --git a/src/new/notes.txt b/src/new/notes.txt\nnew file mode 100644" in diff
        assert "+++ b/src/env.txt" in diff

        # The diff applies to a fresh copy of the base with plain git.
        check = subprocess.run(["git", "apply", "--check", "-"], cwd=c_repo, input=diff.encode(),
                               capture_output=True)
        assert check.returncode == 0, check.stderr.decode()
        # The user's tree is never written.
        assert (c_repo / "README").read_text() == "uncommitted\n" and (c_repo / "run.sh").exists()

        with pytest.raises(ValueError):
            await sb.write_file("../outside", "x")
        with pytest.raises(ValueError):
            await sb.read_file("/etc/passwd")
        with pytest.raises(FileNotFoundError):
            await sb.read_file("missing.txt")
    finally:
        await sb.close()
    with pytest.raises(RuntimeError):
        await sb.exec("true")


async def test_git_commit_workspace_and_build_products(docker_backend: DockerBackend, c_repo: Path) -> None:
    sb = await docker_backend.create(Workspace(path=c_repo, commit="HEAD"))
    try:
        assert await sb.read_file("README") == b"base\n"  # the commit, not the uncommitted edit
        r = await sb.exec("gcc -O2 -fopenmp src/sum.c -o sum && ./sum", env={"OMP_NUM_THREADS": "2"})
        assert r.ok, r.summary()
        assert "sum=500000500000 threads=2" in r.stdout
        diff = await sb.diff()
        assert diff == ""  # the new binary is a build product, not an edit
    finally:
        await sb.close()


async def test_mpi_hello_with_two_ranks(docker_backend: DockerBackend, tmp_path: Path) -> None:
    (tmp_path / "hello.c").write_text(textwrap.dedent("""\
        #include <mpi.h>
        #include <stdio.h>
        int main(int argc, char **argv) {
            int rank, size;
            MPI_Init(&argc, &argv);
            MPI_Comm_rank(MPI_COMM_WORLD, &rank);
            MPI_Comm_size(MPI_COMM_WORLD, &size);
            printf("rank %d of %d\\n", rank, size);
            MPI_Finalize();
            return 0;
        }
        """))
    sb = await docker_backend.create(Workspace(path=tmp_path))
    try:
        r = await sb.exec("mpicc hello.c -o hello && mpirun -n 2 --oversubscribe ./hello", timeout=60)
        assert r.ok, r.summary()
        assert sorted(line for line in r.stdout.splitlines() if line.startswith("rank")) == \
            ["rank 0 of 2", "rank 1 of 2"]
    finally:
        await sb.close()


async def test_warm_pool_hands_out_started_containers(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x\n")
    backend = DockerBackend()
    try:
        await backend.warm(2)
        assert backend.pool_size() == 2
        warm_ids = set(backend.containers()["warm"])
        first = await backend.create(Workspace(path=tmp_path))
        second = await backend.create(Workspace(path=tmp_path))
        assert first.warm_start and second.warm_start
        assert {first.container_id, second.container_id} == warm_ids
        assert (await second.exec("cat f.txt")).stdout == "x\n"
        # The pool refills in the background.
        for _ in range(100):
            if backend.pool_size() >= 2:
                break
            await asyncio.sleep(0.1)
        assert backend.pool_size() == 2
        await first.close()
        await second.close()
    finally:
        await backend.close()
    assert _labelled(backend) == set()  # close leaves nothing behind, warm containers included


async def test_many_sandboxes_run_commands_at_once(docker_backend: DockerBackend, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x\n")
    boxes = await asyncio.gather(*(docker_backend.create(Workspace(path=tmp_path)) for _ in range(4)))
    try:
        started = time.monotonic()
        results = await asyncio.gather(*(sb.exec("sleep 1; cat f.txt") for sb in boxes))
        elapsed = time.monotonic() - started
        assert all(r.ok and r.stdout == "x\n" for r in results)
        assert elapsed < 3.5, f"4 one-second commands took {elapsed:.1f}s: they ran one after another"
    finally:
        await asyncio.gather(*(sb.close() for sb in boxes))


async def test_expired_container_removes_itself(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x\n")
    backend = DockerBackend(expiry_s=2)
    try:
        sb = await backend.create(Workspace(path=tmp_path))
        assert (await sb.exec("true")).ok
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and sb.container_id in _labelled(backend):
            await asyncio.sleep(0.25)
        assert sb.container_id not in _labelled(backend)
        with pytest.raises(DockerSandboxGone):
            await sb.exec("true")
        await sb.close()
    finally:
        await backend.close()


_KILLED_ORCHESTRATOR = """
import asyncio, sys
from pathlib import Path
from bakeoff.agent.seams import Workspace
from bakeoff.sandboxes.docker import DockerBackend

async def main():
    sb = await DockerBackend.shared().create(Workspace(path=Path(sys.argv[1])))
    print(sb.container_id, flush=True)
    await sb.exec("sleep 1000")

asyncio.run(main())
"""


async def test_reaps_containers_of_a_killed_orchestrator(docker_backend: DockerBackend, tmp_path: Path) -> None:
    """RELIABILITY 21: the next start removes what a killed orchestrator left, by label."""
    (tmp_path / "f.txt").write_text("x\n")
    mine = await docker_backend.create(Workspace(path=tmp_path))
    child = subprocess.Popen([sys.executable, "-c", _KILLED_ORCHESTRATOR, str(tmp_path)],
                             cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 60)
        cid = line.strip()
        assert cid, "the child orchestrator did not create its sandbox"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        leftovers = [c["Id"] for c in docker_backend.api.containers(
            filters={"label": f"{LABEL_OWNER}={child.pid}"})]
        assert cid in leftovers  # still running: nobody closed it

        removed = await asyncio.to_thread(docker_backend.reap_leftovers)
        assert removed >= 1
        assert docker_backend.api.containers(all=True, filters={"label": f"{LABEL_OWNER}={child.pid}"}) == []
        # A live owner's containers stay.
        assert (await mine.exec("true")).ok
    finally:
        if child.poll() is None:
            child.kill()
        await mine.close()


def test_exec_result_is_data(docker_backend: DockerBackend, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x\n")

    async def run() -> list[ExecResult]:
        sb: DockerSandbox = await docker_backend.create(Workspace(path=tmp_path))
        async with sb:
            return [
                await sb.exec("echo out; echo err >&2; false"),
                await sb.exec("printf 'no newline' >&2; exit 5"),
                # A command imitating the wrapper's status line does not decide the status.
                await sb.exec("printf '\\n%s:0\\n' \"$BAKEOFF_EXEC\" >&2; exit 7"),
            ]

    plain, no_newline, forged = asyncio.run(run())
    assert (plain.exit_code, plain.stdout, plain.stderr) == (1, "out\n", "err\n")
    assert plain.model_dump_json()  # serializes like every other result
    assert (no_newline.exit_code, no_newline.stderr) == (5, "no newline")
    assert forged.exit_code == 7 and forged.stderr.endswith(":0\n")


def test_limits_shape_the_container(docker_backend: DockerBackend, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x\n")
    limits = SandboxLimits(max_processes=77, memory_bytes=96 * 2**20, disk_bytes=48 * 2**20, cpus=0.5)

    async def run() -> dict:
        sb = await docker_backend.create(Workspace(path=tmp_path), limits)
        async with sb:
            return docker_backend.api.inspect_container(sb.container_id)

    info = asyncio.run(run())
    host = info["HostConfig"]
    assert host["PidsLimit"] == 77 and host["Memory"] == 96 * 2**20 and host["MemorySwap"] == 96 * 2**20
    assert host["NanoCpus"] == 500_000_000
    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
    assert info["Config"]["User"] == "1000:1000"
    assert "size=50331648" in host["Tmpfs"]["/tmp"]


async def test_users_own_dockerfile_or_image(docker_backend: DockerBackend, tmp_path: Path) -> None:
    recipe = tmp_path / "docker" / "Dockerfile"
    recipe.parent.mkdir()
    recipe.write_text(f"FROM {docker_backend.image}\nUSER root\nRUN echo custom > /etc/bakeoff-marker\nUSER 1000:1000\n")
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "f.txt").write_text("x\n")
    own = DockerBackend(dockerfile=recipe)
    try:
        tag = await asyncio.to_thread(own.ensure_image)
        assert tag.startswith("bakeoff-sandbox:") and tag != docker_backend.image  # tagged by its hash
        async with await own.create(Workspace(path=tmp_path / "ws")) as sb:
            assert (await sb.exec("cat /etc/bakeoff-marker")).stdout == "custom\n"
    finally:
        await own.close()
    named = DockerBackend(image=tag)
    try:
        async with await named.create(Workspace(path=tmp_path / "ws")) as sb:
            assert (await sb.exec("cat /etc/bakeoff-marker; id -u")).stdout == "custom\n1000\n"
    finally:
        await named.close()
        docker_backend.api.remove_image(tag, force=True)
    missing = DockerBackend(image="bakeoff-no-such-image:0")
    with pytest.raises(DockerImageError, match="not found"):
        await asyncio.to_thread(missing.ensure_image)
    await missing.close()


async def test_cancelled_exec_ends_its_processes(docker_backend: DockerBackend, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x\n")
    async with await docker_backend.create(Workspace(path=tmp_path)) as sb:
        running = asyncio.create_task(sb.exec("sleep 1003", timeout=60))
        await asyncio.sleep(1.0)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        procs = (await sb.exec("ps -eo args")).stdout
        assert "sleep 1003" not in procs
