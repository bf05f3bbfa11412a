"""The local sandbox's parts: environment allow-list, output capping, copies and diffs,
safe extraction, path checks, backend choice. Real processes and real git repos."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from bakeoff.agent.events import EventBus
from bakeoff.agent.seams import Sandbox, SandboxLimits, Workspace
from bakeoff.sandboxes import SandboxUnavailable, choose_backend, create_sandbox
from bakeoff.sandboxes.local import LocalSandbox, build_env
from bakeoff.sandboxes.output import OutputCapture
from bakeoff.sandboxes.workspace import ENV_MARKER, UnsafeArchive, safe_extract

# --------------------------------------------------------------------------- environment


def test_env_is_built_from_an_allow_list_and_drops_secrets() -> None:
    host = {
        "PATH": "/host/bin", "HOME": "/root", "LANG": "C.UTF-8", "TERM": "xterm",
        "OMP_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
        "OPENAI_API_KEY": "sk-host", "GITHUB_TOKEN": "ghp_host", "AWS_SECRET_ACCESS_KEY": "aws",
        "DOCKER_HOST": "unix:///var/run/docker.sock", "SSH_AUTH_SOCK": "/tmp/agent", "RANDOM_VAR": "x",
    }
    caller = {"CFLAGS": "-O2", "MY_API_KEY": "k", "DB_PASSWORD": "p", "Service_Credentials": "c",
              "SOME_TOKEN": "t", "SECRET_SAUCE": "s"}
    env, dropped = build_env(host, caller, home="/h", tmpdir="/t", path="/usr/bin", marker="m")
    assert env == {
        "PATH": "/usr/bin", "HOME": "/h", "TMPDIR": "/t", "LANG": "C.UTF-8", "TERM": "xterm",
        "OMP_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
        "CFLAGS": "-O2", ENV_MARKER: "m",
    }
    assert sorted(dropped) == sorted(["MY_API_KEY", "DB_PASSWORD", "Service_Credentials", "SOME_TOKEN", "SECRET_SAUCE"])


async def test_dropped_secret_names_are_reported_as_an_event(tmp_path: Path) -> None:
    bus = EventBus()
    seen = []
    bus.subscribe(seen.append)
    sb = await LocalSandbox.create(Workspace(path=tmp_path), events=bus)
    try:
        r = await sb.exec("echo ${MY_API_KEY:-absent} $CFLAGS", env={"MY_API_KEY": "k", "CFLAGS": "-O3"})
    finally:
        await sb.close()
    assert r.stdout.strip() == "absent -O3"
    assert [e.data["names"] for e in seen if e.kind == "sandbox.env_dropped"] == [["MY_API_KEY"]]


# --------------------------------------------------------------------------- output


def test_capture_keeps_head_and_tail_and_marks_truncation() -> None:
    small = OutputCapture(100)
    small.feed(b"hello ")
    small.feed(b"world")
    assert small.text() == "hello world" and not small.truncated

    big = OutputCapture(10)
    for chunk in (b"0123", b"456789abc", b"defghij", b"klmnopqrstuvwxyz"):
        big.feed(chunk)
    assert big.truncated and big.total == 36
    assert big.head == b"01234" and big.tail == b"vwxyz"
    assert big.text() == "01234\n[... 26 bytes cut ...]\nvwxyz"


async def test_exec_caps_each_stream(tmp_path: Path) -> None:
    limits = SandboxLimits(output_bytes=1000, wall_seconds=10)
    async with await LocalSandbox.create(Workspace(path=tmp_path), limits) as sb:
        r = await sb.exec("seq 1 100000; seq 1 50000 >&2")
    assert r.ok and r.truncated
    assert r.stdout.startswith("1\n2\n3\n") and r.stdout.rstrip().endswith("99999\n100000")
    assert r.stderr.rstrip().endswith("50000") and "bytes cut" in r.stderr
    assert len(r.stdout) < 1100 and len(r.stderr) < 1100


# --------------------------------------------------------------------------- copies and diffs


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "u@example.com")
    _git(repo, "config", "user.name", "U")
    (repo / "keep.c").write_text("int main(void) { return 0; }\n")
    (repo / "gone.txt").write_text("delete me\n")
    (repo / "lib").mkdir()
    (repo / "lib" / "x.h").write_text("#define X 1\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "one")
    return repo


async def test_git_workspace_is_exported_at_its_commit_without_git_dir(git_repo: Path) -> None:
    first = _git(git_repo, "rev-parse", "HEAD").strip()
    (git_repo / "keep.c").write_text("int main(void) { return 1; }\n")
    _git(git_repo, "commit", "-qam", "two")
    (git_repo / "dirty.txt").write_text("uncommitted\n")
    async with await LocalSandbox.create(Workspace(path=git_repo, commit=first)) as sb:
        assert (await sb.read_file("keep.c")) == b"int main(void) { return 0; }\n"
        r = await sb.exec("ls -a")
        assert ".git" not in r.stdout.split() and "dirty.txt" not in r.stdout
        assert await sb.diff() == ""


async def test_diff_has_modified_new_and_deleted_files_and_leaves_the_original_alone(git_repo: Path) -> None:
    before = {p: p.read_bytes() for p in git_repo.rglob("*") if p.is_file() and ".git" not in p.parts}
    async with await LocalSandbox.create(Workspace(path=git_repo, commit="HEAD")) as sb:
        await sb.write_file("lib/new.h", "#define NEW 2\n")
        r = await sb.exec("rm gone.txt && sed -i 's/return 0/return 3/' keep.c && "
                          "printf 'x\\0y' > build.bin && mkdir -p deep/er && echo z > deep/er/z.txt")
        assert r.ok, r.summary()
        patch = await sb.diff()
        with_binary = await sb.diff(include_binary=True)
    assert "diff --git a/gone.txt b/gone.txt\ndeleted file mode 100644" in patch
    assert "diff --git a/lib/new.h b/lib/new.h\nnew file mode 100644" in patch
    assert "+++ b/deep/er/z.txt" in patch
    assert "-int main(void) { return 0; }\n+int main(void) { return 3; }" in patch
    assert "build.bin" not in patch and "build.bin" in with_binary
    after = {p: p.read_bytes() for p in git_repo.rglob("*") if p.is_file() and ".git" not in p.parts}
    assert after == before
    # The diff applies to the user's repo as it is.
    subprocess.run(["git", "apply", "--check", "-"], cwd=git_repo, input=patch.encode(), check=True)


async def test_plain_directory_is_copied_without_its_git_dir(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]\n")
    (tmp_path / "a.py").write_text("print(1)\n")
    async with await LocalSandbox.create(Workspace(path=tmp_path)) as sb:
        r = await sb.exec("ls -A")
        assert r.stdout.split() == ["a.py"]
        await sb.write_file("a.py", "print(2)\n")
        assert "+print(2)" in await sb.diff()
    assert (tmp_path / "a.py").read_text() == "print(1)\n"


# --------------------------------------------------------------------------- files


async def test_file_paths_escaping_the_workspace_are_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    ws = tmp_path / "ws"
    ws.mkdir()
    async with await LocalSandbox.create(Workspace(path=ws)) as sb:
        await sb.exec(f"ln -s {outside} out; ln -s /etc etc; ln -s .. up")
        for bad in ("../x", "/etc/passwd", "out/secret", "etc/passwd", "up/outside/secret", "a/../../x"):
            with pytest.raises(ValueError):
                await sb.read_file(bad)
            with pytest.raises(ValueError):
                await sb.write_file(bad, "pwned")
        await sb.write_file("sub/dir/ok.txt", "fine")
        assert (await sb.exec("cat sub/dir/ok.txt && echo more >> sub/dir/ok.txt")).stdout == "fine"
        assert await sb.read_file("sub/dir/ok.txt") == b"finemore\n"
    assert (outside / "secret").read_text() == "s"


# --------------------------------------------------------------------------- extraction (item 15)


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _device(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info, None


@pytest.mark.parametrize("members, reason", [
    ([_file("ok.txt"), _file("../escape.txt")], "'..'"),
    ([_file("/tmp/abs.txt")], "absolute"),
    ([_file("a/../../b.txt")], "'..'"),
    ([_link("l", "/etc/passwd")], "outside"),
    ([_link("d/l", "../../x")], "outside"),
    ([_link("h", "../x", tarfile.LNKTYPE)], "hard link"),
    ([_device("null")], "device"),
    ([_link("here", "."), _link("here/up", ".."), _file("up/planted")], "beneath a symlink"),
    ([_link("d", "sub"), _file("d/x")], "beneath a symlink"),
])
def test_unsafe_archives_are_refused_and_nothing_is_extracted(tmp_path: Path, members, reason: str) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchive, match=reason):
        safe_extract(_tar(*members), dest)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "b.txt").exists()


def test_safe_archive_is_extracted(tmp_path: Path) -> None:
    names = safe_extract(_tar(_file("a/b.txt", b"hi"), _link("a/c", "b.txt"), _link("top", "a/b.txt")), tmp_path)
    assert names == ["a/b.txt", "a/c", "top"]
    assert (tmp_path / "a" / "c").read_bytes() == b"hi" and (tmp_path / "top").read_bytes() == b"hi"


# --------------------------------------------------------------------------- backends


def test_choose_local_reports_the_backend_and_why() -> None:
    choice = choose_backend("local")
    assert choice.backend == "local+bwrap" and choice == choose_backend("local+bwrap")
    assert choice.reason and choice.warning is None
    unsafe = choose_backend("unsafe-local")  # only by its own name
    assert unsafe.backend == "unsafe-local" and "reduced isolation" in unsafe.warning
    assert "reach the network" in unsafe.warning and "no privilege gain" in unsafe.warning
    with pytest.raises(SandboxUnavailable, match="unknown sandbox kind"):
        choose_backend("vm")


def test_without_a_docker_engine_auto_falls_back_and_docker_says_what_to_do(monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/bakeoff-docker.sock")
    with pytest.raises(SandboxUnavailable) as err:
        choose_backend("docker")
    assert "no Docker engine reachable" in str(err.value) and "--sandbox local" in str(err.value)
    auto = choose_backend("auto")
    assert auto.backend in ("local+bwrap", "local") and "Docker" in auto.reason


async def test_without_bwrap_the_sandbox_says_isolation_is_reduced(tmp_path: Path) -> None:
    bus = EventBus()
    seen = []
    bus.subscribe(seen.append)
    async with await LocalSandbox.create(Workspace(path=tmp_path), use_bwrap=False, events=bus) as sb:
        assert sb.backend == "unsafe-local"
        assert sb.isolation_warning and "reduced isolation" in sb.isolation_warning
        assert (await sb.exec("echo hi")).stdout == "hi\n"
    assert [e.data["backend"] for e in seen if e.kind == "sandbox.warning"] == ["unsafe-local"]


async def test_create_sandbox_local_follows_the_sandbox_protocol(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("1\n")
    sb = await create_sandbox(Workspace(path=tmp_path), "local", SandboxLimits(wall_seconds=5))
    try:
        assert isinstance(sb, Sandbox)
        assert sb.backend == choose_backend("local").backend
        r = await sb.exec(["cat", "f.txt"])
        assert r.ok and r.stdout == "1\n" and r.duration_s > 0
        failing = await sb.exec("exit 3")
        assert failing.exit_code == 3 and not failing.ok
    finally:
        await sb.close()
    await sb.close()  # closing twice is fine
    assert not sb.dir.exists()


async def test_cwd_is_relative_to_the_workspace(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "here").write_text("")
    async with await LocalSandbox.create(Workspace(path=tmp_path)) as sb:
        assert (await sb.exec("ls", cwd="sub")).stdout == "here\n"
        with pytest.raises(ValueError):
            await sb.exec("ls", cwd="../..")


async def test_diff_records_modes_symlinks_and_odd_names(tmp_path: Path) -> None:
    (tmp_path / "run.sh").write_text("echo hi\n")
    (tmp_path / "with space.txt").write_text("a\n")
    async with await LocalSandbox.create(Workspace(path=tmp_path)) as sb:
        r = await sb.exec("chmod +x run.sh && ln -s 'with space.txt' alias && echo b >> 'with space.txt' "
                          "&& echo q > 'quote\"d.txt'")
        assert r.ok, r.summary()
        patch = await sb.diff()
    assert "diff --git a/run.sh b/run.sh\nold mode 100644\nnew mode 100755" in patch
    assert "diff --git a/alias b/alias\nnew file mode 120000" in patch and "+with space.txt" in patch
    assert "+++ b/with space.txt" in patch and "+b" in patch
    assert '"b/quote\\"d.txt"' in patch


async def test_concurrent_commands_in_one_sandbox_both_finish(tmp_path: Path) -> None:
    for use_cgroup in (None, False):
        async with await LocalSandbox.create(Workspace(path=tmp_path), use_cgroup=use_cgroup) as sb:
            a, b = await asyncio.gather(sb.exec("sleep 0.3; echo a"), sb.exec("sleep 0.3; echo b"))
            assert (a.stdout, b.stdout) == ("a\n", "b\n") and a.ok and b.ok


async def test_a_workspace_larger_than_the_disk_cap_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    from bakeoff.sandboxes.workspace import WorkspaceError, sandbox_root

    (tmp_path / "big.bin").write_bytes(b"\0" * (3 * 2**20))
    def ours() -> tuple[set[Path], set[str]]:
        mine = f"{os.getpid()}\n"
        dirs = {d for d in sandbox_root().glob("bakeoff-sb-*")
                if (d / ".bakeoff-owner").is_file() and (d / ".bakeoff-owner").read_text() == mine}
        mounts = {line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines() if "bakeoff-sb-" in line}
        return dirs, mounts

    before = ours()
    limits = SandboxLimits(disk_bytes=2**20)
    if os.geteuid() == 0:  # the cap is a tmpfs, which only root can mount
        with pytest.raises(WorkspaceError, match="disk_bytes"):
            await LocalSandbox.create(Workspace(path=tmp_path), limits)
    else:
        async with await LocalSandbox.create(Workspace(path=tmp_path), limits) as sb:
            assert not sb.disk_capped
    after = ours()
    assert after[0] <= before[0] and after[1] <= before[1]  # nothing left: no directory, no mount
