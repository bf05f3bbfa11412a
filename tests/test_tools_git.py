"""The git tool on a real repository in a tmp dir: reads freely, writes only when allowed."""

from __future__ import annotations

import subprocess

import pytest

from bakeoff.agent.seams import ToolContext
from bakeoff.tools.errors import ToolError
from bakeoff.tools.git import Git
from tests.test_tools_support import git_init, write_tree


@pytest.fixture
def repo(tmp_path):
    write_tree(tmp_path, {"a.c": "int a;\n", "b.c": "int b;\n"})
    git_init(tmp_path)
    (tmp_path / "a.c").write_text("int a = 1;\n")
    (tmp_path / "new.c").write_text("int n;\n")
    return tmp_path


def head(repo) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()


async def test_status_and_diff(repo):
    ctx = ToolContext(workspace=repo)
    status = await Git()(Git.Args(action="status"), ctx)
    assert status.branch == "main" and sorted(status.files) == ["a.c", "new.c"]
    diff = await Git()(Git.Args(action="diff"), ctx)
    assert diff.files == ["a.c"] and "+int a = 1;" in diff.output and "-int a;" in diff.output
    log = await Git()(Git.Args(action="log"), ctx)
    assert "base" in log.output


async def test_writes_are_refused_without_approval(repo):
    before = head(repo)
    ctx = ToolContext(workspace=repo)
    with pytest.raises(ToolError, match="not allowed"):
        await Git()(Git.Args(action="commit", message="sneaky"), ctx)
    with pytest.raises(ToolError, match="not allowed"):
        await Git()(Git.Args(action="branch", name="bakeoff/x"), ctx)
    assert head(repo) == before
    listed = await Git()(Git.Args(action="branch"), ctx)  # listing is a read
    assert listed.branches == ["main"]


async def test_branch_and_commit_when_allowed(repo):
    ctx = ToolContext(workspace=repo, allow_git_write=True)
    branch = await Git()(Git.Args(action="branch", name="bakeoff/faster", checkout=True), ctx)
    assert branch.branch == "bakeoff/faster" and branch.branches == ["bakeoff/faster", "main"]
    commit = await Git()(Git.Args(action="commit", message="Parallel a", paths=["a.c"]), ctx)
    assert commit.ok and commit.files == ["a.c"] and commit.commit == head(repo)
    status = await Git()(Git.Args(action="status"), ctx)
    assert status.files == ["new.c"]  # only the named path was committed
    empty = await Git()(Git.Args(action="commit", message="again", paths=["a.c"]), ctx)
    assert not empty.ok and "nothing to commit" in empty.error


async def test_bad_requests(repo, tmp_path_factory):
    with pytest.raises(ToolError, match="not a git repository"):
        await Git()(Git.Args(action="status"), ToolContext(workspace=tmp_path_factory.mktemp("plain")))
    with pytest.raises(ToolError, match="inside .git"):
        await Git()(Git.Args(action="diff", paths=[".git/config"]), ToolContext(workspace=repo))
    bad_ref = await Git()(Git.Args(action="diff", ref="no-such-ref"), ToolContext(workspace=repo))
    assert not bad_ref.ok and "no-such-ref" in bad_ref.error
