"""Local sandboxes of one commit share its export and base (``base_template``); each one's
files and diff stay its own. Real git repositories and real sandboxes."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from bakeoff.agent.seams import Workspace
from bakeoff.sandboxes import base_template
from bakeoff.sandboxes.base_template import BaseTemplates
from bakeoff.sandboxes.local import LocalSandbox
from bakeoff.sandboxes.workspace import WorkspaceError


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull}
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "u@example.com")
    _git(repo, "config", "user.name", "U")
    (repo / "src" / "a.c").write_text("int a(void) { return 1; }\n")
    (repo / "gone.txt").write_text("delete me\n")
    (repo / "run.sh").write_text("#!/bin/sh\necho run\n")
    os.chmod(repo / "run.sh", 0o755)
    os.symlink("src/a.c", repo / "link.c")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "one")
    return repo


def _files(root: Path) -> dict[Path, bytes]:
    return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file() and ".git" not in p.parts}


async def test_two_sandboxes_of_one_commit_are_independent_and_their_diffs_exact(repo: Path) -> None:
    before = _files(repo)
    ws = Workspace(path=repo, commit="HEAD")
    one, two = await asyncio.gather(LocalSandbox.create(ws), LocalSandbox.create(ws))
    try:
        assert await one.diff() == "" and await two.diff() == ""  # the same files, modes and link as the base
        r = await one.exec("rm gone.txt && echo 'int a(void) { return 2; }' > src/a.c && echo new > new.txt")
        assert r.ok, r.summary()
        await two.write_file("two.txt", "only in two\n")
        seen = await two.exec("cat gone.txt src/a.c; test ! -e new.txt && ls -l run.sh && readlink link.c")
        assert seen.ok, seen.summary()
        assert seen.stdout.startswith("delete me\nint a(void) { return 1; }\n")
        assert "-rwxr-xr-x" in seen.stdout and seen.stdout.endswith("src/a.c\n")
        assert not (await one.exec("test -e two.txt")).ok
        diff_one, diff_two = await one.diff(), await two.diff()
    finally:
        await asyncio.gather(one.close(), two.close())
    assert "diff --git a/gone.txt b/gone.txt\ndeleted file mode 100644" in diff_one
    assert "-int a(void) { return 1; }\n+int a(void) { return 2; }" in diff_one
    assert "diff --git a/new.txt b/new.txt\nnew file mode 100644" in diff_one
    assert diff_one.count("diff --git ") == 3
    assert diff_two.count("diff --git ") == 1 and "diff --git a/two.txt b/two.txt\nnew file mode 100644" in diff_two
    assert _files(repo) == before
    for patch in (diff_one, diff_two):
        subprocess.run(["git", "apply", "--check", "-"], cwd=repo, input=patch.encode(), check=True)


async def test_a_commit_is_exported_once_and_a_new_commit_gets_its_own(repo: Path, monkeypatch) -> None:
    templates = BaseTemplates()
    monkeypatch.setattr(base_template, "_TEMPLATES", templates)
    built = []
    real_build = base_template._build
    monkeypatch.setattr(base_template, "_build", lambda *a: built.append(a[1]) or real_build(*a))
    first = _git(repo, "rev-parse", "HEAD").strip()
    sandboxes = await asyncio.gather(*(LocalSandbox.create(Workspace(path=repo, commit="HEAD")) for _ in range(3)))
    (repo / "src" / "a.c").write_text("int a(void) { return 5; }\n")
    _git(repo, "commit", "-qam", "two")
    try:
        async with await LocalSandbox.create(Workspace(path=repo, commit="HEAD")) as newer:
            assert (await newer.read_file("src/a.c")) == b"int a(void) { return 5; }\n"
            assert await newer.diff() == ""
        for sb in sandboxes:
            assert (await sb.read_file("src/a.c")) == b"int a(void) { return 1; }\n"
            assert await sb.diff() == ""
    finally:
        await asyncio.gather(*(sb.close() for sb in sandboxes))
    assert built == [first, _git(repo, "rev-parse", "HEAD").strip()] and len(templates) == 2


async def test_a_sandbox_outlives_its_evicted_template(repo: Path, monkeypatch) -> None:
    templates = BaseTemplates(keep=1)
    monkeypatch.setattr(base_template, "_TEMPLATES", templates)
    first = _git(repo, "rev-parse", "HEAD").strip()
    async with await LocalSandbox.create(Workspace(path=repo, commit=first)) as old:
        (repo / "gone.txt").write_text("changed\n")
        _git(repo, "commit", "-qam", "two")
        async with await LocalSandbox.create(Workspace(path=repo, commit="HEAD")) as new:
            assert len(templates) == 1
            await old.exec("rm src/a.c")
            assert (await old.diff()).startswith("diff --git a/src/a.c b/src/a.c\ndeleted file mode 100644")
            assert (await new.read_file("gone.txt")) == b"changed\n" and await new.diff() == ""


async def test_an_unknown_commit_is_a_workspace_error(repo: Path) -> None:
    with pytest.raises(WorkspaceError, match="names no commit"):
        await LocalSandbox.create(Workspace(path=repo, commit="no-such-branch"))
