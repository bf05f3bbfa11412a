"""Hostile tests of the local backends (local+bwrap and unsafe-local), one per class of escape:

- the host-side file API racing a command that flips a directory and a symlink to a host
  path (nothing outside the workspace is read, written, created or re-owned);
- what ``auto`` and ``local`` do without an isolating backend (they refuse; only the loudly
  named ``unsafe-local`` runs unisolated, and it still forbids privilege gains);
- the bind mount exposing bakeoff's Python, made once however many runs.

Real processes, real bubblewrap, real mounts; as root where the class concerns root.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

import bakeoff.sandboxes as sandboxes
from bakeoff.agent.config import ConfigError
from bakeoff.agent.seams import SandboxLimits, Workspace
from bakeoff.sandboxes import SandboxUnavailable, choose_backend
from bakeoff.sandboxes.beneath import read_beneath, write_beneath
from bakeoff.sandboxes.local import LocalSandbox
from bakeoff.sandboxes.local_isolation import _python_binds, drop_deleted_views, is_mount_point

LIMITS = SandboxLimits(wall_seconds=30, max_processes=64, memory_bytes=256 * 2**20)

# Swaps ``x`` between a real directory of the workspace and a symlink to the host directory
# (absolute, or relative through ``..``) as fast as it can, atomically (renameat2 with
# RENAME_EXCHANGE), so ``x`` always exists and is one or the other, for the given seconds.
FLIPPER = textwrap.dedent("""\
    import ctypes, os, sys, time
    host, seconds = sys.argv[1], float(sys.argv[2])
    libc = ctypes.CDLL(None, use_errno=True)
    def exchange(a, b):
        if libc.renameat2(-100, a.encode(), -100, b.encode(), 2) != 0:
            raise OSError(ctypes.get_errno(), f"renameat2 {a} {b}")
    os.symlink(host, "abs")
    os.symlink("../" * 12 + host.lstrip("/"), "rel")
    flips, end = 0, time.time() + seconds
    while time.time() < end:
        for name in ("abs", "abs", "rel", "rel"):
            exchange(name, "x")
            flips += 1
    print(flips)
""")


def _host_tree(root: Path) -> dict[str, tuple[int, int, int, bytes | None]]:
    """Every entry under ``root``: (mode, uid, gid, content of files)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            p = Path(dirpath, name)
            st = p.lstat()
            data = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
            out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, data)
    return out


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A host directory only root may enter, holding a secret."""
    d = tmp_path / "host-only"
    d.mkdir(mode=0o700)
    (d / "secret").write_text("HOST-SECRET")
    (d / "secret").chmod(0o600)
    return d


@pytest.mark.parametrize("use_bwrap", [True, False], ids=["local+bwrap", "unsafe-local"])
async def test_host_file_access_never_leaves_the_workspace_while_a_command_flips_links(
        tmp_path: Path, host: Path, use_bwrap: bool) -> None:
    (tmp_path / "ws").mkdir()
    before = _host_tree(host)
    async with await LocalSandbox.create(Workspace(path=tmp_path / "ws"), LIMITS, use_bwrap=use_bwrap) as sb:
        await sb.write_file("flip.py", FLIPPER)
        await sb.write_file("x/secret", "inside")
        flipping = asyncio.create_task(sb.exec(["python3", "flip.py", str(host), "4"]))
        seen: dict[str, int] = {}
        while not flipping.done():
            for path, action in (("x/secret", "read"), ("x/secret", "write"), ("x/new/dir/f", "write")):
                try:
                    if action == "read":
                        data = await sb.read_file(path)
                        assert data in (b"inside", b"planted"), data  # the workspace's file, never the host's
                        seen["inside"] = seen.get("inside", 0) + 1
                    else:
                        await sb.write_file(path, "planted")
                        seen["written"] = seen.get("written", 0) + 1
                except (ValueError, OSError) as exc:  # refused, or missing mid-flip: both are fine
                    kind = "refused" if isinstance(exc, ValueError) else errno.errorcode.get(exc.errno or 0, "?")
                    seen[kind] = seen.get(kind, 0) + 1
            await asyncio.sleep(0)
        result = flipping.result()
        assert result.ok, result.summary()
        assert int(result.stdout) > 100  # it really flipped while the host read and wrote
        assert seen.get("inside") and seen.get("refused"), seen  # both states were met
        assert seen.get("written"), seen
        # What was written landed in the workspace, owned by the sandbox's user.
        if sb.uid is not None:
            for made in (sb.work / "x", sb.work / "x" / "secret", sb.work / "x" / "new" / "dir" / "f"):
                assert not made.exists() or made.lstat().st_uid == sb.uid
    assert _host_tree(host) == before  # nothing outside was written, created or re-owned


def test_beneath_refuses_every_way_out_and_follows_links_that_stay(tmp_path: Path) -> None:
    ws, outside = tmp_path / "ws", tmp_path / "outside"
    ws.mkdir()
    outside.mkdir()
    (outside / "f").write_text("out")
    (ws / "d").mkdir()
    (ws / "d" / "f").write_text("in")
    os.symlink("d", ws / "to-d")
    os.symlink("../d/f", ws / "d" / "self")
    os.symlink(str(outside), ws / "abs")
    os.symlink("../outside", ws / "up")
    os.symlink("a", ws / "loop-b")
    os.symlink("loop-b", ws / "a")
    os.mkfifo(ws / "fifo")
    root = os.open(ws, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert read_beneath(root, "to-d/f") == b"in" and read_beneath(root, "d/self") == b"in"
        assert read_beneath(root, "d/../d/f") == b"in"
        for bad in ("abs/f", "up/f", "../outside/f", "/etc/passwd", "d/../../outside/f", "to-d/../../outside/f"):
            with pytest.raises(ValueError):
                read_beneath(root, bad)
            with pytest.raises(ValueError):
                write_beneath(root, bad, b"x")
        with pytest.raises(OSError) as loop:
            read_beneath(root, "a")
        assert loop.value.errno == errno.ELOOP
        with pytest.raises(ValueError, match="not a regular file"):
            read_beneath(root, "fifo")  # a FIFO cannot block the host
        write_beneath(root, "to-d/new/deeper/g", b"made")
        assert (ws / "d" / "new" / "deeper" / "g").read_bytes() == b"made"
    finally:
        os.close(root)
    assert [p.name for p in outside.iterdir()] == ["f"] and (outside / "f").read_text() == "out"


# --------------------------------------------------------------------------- no weak fallback


def test_auto_and_local_refuse_without_docker_or_bubblewrap(monkeypatch) -> None:
    monkeypatch.setattr(sandboxes, "_docker_engine", lambda _host=None: (False, "no Docker engine reachable (test)"))
    monkeypatch.setattr(sandboxes, "_bwrap", lambda: (False, "bwrap is not installed (test)"))
    for kind in ("auto", "local", "local+bwrap"):
        with pytest.raises(SandboxUnavailable) as err:
            choose_backend(kind)
        message = str(err.value)
        assert "\n" not in message and "--sandbox unsafe-local" in message and "bubblewrap" in message
        if kind == "auto":
            assert "docs.docker.com" in message and "apt-get install bubblewrap" in message
    assert choose_backend("unsafe-local").backend == "unsafe-local"  # only when named


def test_only_the_demos_own_scripted_example_may_fall_back_to_unsafe_local(monkeypatch, tmp_path: Path) -> None:
    from rich.console import Console

    from bakeoff.agent.cli.demo import demo_sandbox
    from bakeoff.agent.config import load_settings
    from bakeoff.agent.models import resolve_model

    script = tmp_path / "s.json"
    script.write_text('{"responses": [{"role": "planner", "text": "join()", "repeat": true}]}')
    scripted = resolve_model(f"scripted:{script}")
    settings, provenance = load_settings(tmp_path, environ={})
    err = Console(file=open(os.devnull, "w"), record=True)
    assert demo_sandbox(settings, provenance, scripted, err) is settings  # an isolating sandbox is here
    monkeypatch.setattr(sandboxes, "_docker_engine", lambda _host=None: (False, "no Docker engine reachable (test)"))
    monkeypatch.setattr(sandboxes, "_bwrap", lambda: (False, "bwrap is not installed (test)"))
    weak = demo_sandbox(settings, provenance, scripted, err)
    assert weak.sandbox == "unsafe-local" and "no isolation" in err.export_text()
    assert demo_sandbox(settings, provenance, None, err) is settings  # a live model's code: never
    asked, asked_from = load_settings(tmp_path, environ={"BAKEOFF_SANDBOX": "docker"})
    assert demo_sandbox(asked, asked_from, scripted, err) is asked  # a sandbox the user named: kept
    (tmp_path / "bakeoff.toml").write_text('sandbox = "unsafe-local"\n')
    with pytest.raises(ConfigError, match="a repository may not choose"):
        load_settings(tmp_path, environ={})


async def test_unsafe_local_forbids_privilege_gains_and_says_what_it_allows(tmp_path: Path) -> None:
    sb = await sandboxes.create_sandbox(Workspace(path=tmp_path), "unsafe-local", LIMITS)
    try:
        assert sb.backend == "unsafe-local"
        assert "reach the network" in sb.isolation_warning and "/dev/shm" in sb.isolation_warning
        r = await sb.exec("grep NoNewPrivs /proc/self/status; id -u")
        assert "NoNewPrivs:\t1" in r.stdout
        if os.geteuid() == 0:
            assert r.stdout.split()[-1] != "0"
        assert not (await sb.exec("sudo -n true")).ok
    finally:
        await sb.close()


# --------------------------------------------------------------------------- the Python bind mount


@pytest.mark.skipif(os.geteuid() != 0, reason="views are bind mounts only bakeoff running as root makes")
def test_a_view_of_a_deleted_interpreter_is_unmounted(tmp_path: Path) -> None:
    """A throwaway venv's interpreter view (a test's, a CI job's) is dropped once it is gone."""
    venv, root = tmp_path / "venv", tmp_path / "root"
    (venv / "bin").mkdir(parents=True)
    view = root / ".python-0123456789ab"
    view.mkdir(parents=True)
    kept = root / ".python-ba9876543210"
    kept.mkdir()
    for src, dst in ((venv, view), (tmp_path, kept)):
        subprocess.run(["mount", "--bind", str(src), str(dst)], check=True)
    try:
        assert drop_deleted_views(root) == [] and is_mount_point(view)  # its venv still exists
        shutil.rmtree(venv)
        assert drop_deleted_views(root) == [view]
        assert not is_mount_point(view) and not view.exists() and is_mount_point(kept)
    finally:
        for point in (view, kept):
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_the_python_bind_mount_is_made_once_however_many_runs() -> None:
    binds = _python_binds()

    def mounts() -> list[str]:
        """The live interpreter views: other tests mount and unmount beside this one, and a view
        of a venv another test deleted is dropped by whichever run comes next."""
        fields = [line.split(" ") for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        return [f[4] for f in fields if "/.python-" in f[4] and not f[3].endswith("//deleted")]

    before = mounts()
    for _ in range(3):
        assert _python_binds.__wrapped__() == binds  # a fresh run finds the view mounted
    assert mounts() == before  # nothing stacked
    for view, dest in binds:
        if view != dest:  # a view of a Python other users cannot reach, mounted as root
            assert os.geteuid() == 0 and is_mount_point(view)
            assert (view / "bin").is_dir()
