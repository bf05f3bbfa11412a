"""The repository's state, places two runs share, and why a batch task failed; through the
real CLI with the scripted model.

- ``run --apply`` on a detached HEAD says where the commit went; a repository with no commits
  is named so; a file that is not UTF-8 is named, with its encoding, as why a patch cannot apply.
- A second batch on the same ``--out`` is refused at once, naming the first one's pid, and the
  first finishes untouched; runs may share a state directory, each in its own folder; an
  ``--out`` or state directory that cannot be written is one line and exit 2 before any work.
- A batch names each failed task and its reason on the console and in ``results.jsonl``, and
  exits 2 when every task failed for a reason the user must fix.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_session import CALC, CHECK, bakeoff, cli_env, git, make_repo, write_script


def results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def tasks_file(path: Path, entries: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


@contextlib.contextmanager
def read_only(directory: Path):
    """``directory`` as this user cannot write it: a read-only bind mount for root (who passes
    any permission bits), the permission bits for anyone else."""
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], check=True)
            yield directory
        finally:
            subprocess.run(["umount", str(directory)], check=True)
    else:
        directory.chmod(0o555)
        try:
            yield directory
        finally:
            directory.chmod(0o755)


# --------------------------------------------------------------------------- the repository's state


@pytest.mark.slow
def test_apply_on_a_detached_head_says_where_the_commit_went(tmp_path):
    repo = make_repo(tmp_path / "repo")
    git(repo, "checkout", "-q", "--detach")
    script = write_script(tmp_path / "s.json")
    proc = bakeoff("run", "--repo", str(repo), "--model", f"scripted:{script}", "--apply", "make total faster",
                   env=cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    head = git(repo, "rev-parse", "HEAD")
    said = " ".join(proc.stderr.split())
    assert f"applied as commit {head[:10]} on a detached HEAD" in said and "git branch NAME" in said
    assert "return sum(xs)" in (repo / "calc.py").read_text()

    git(repo, "checkout", "-q", "main")
    proc = bakeoff("run", "--repo", str(repo), "--model", f"scripted:{script}", "--apply", "make total faster",
                   env=cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert f"applied as commit {git(repo, 'rev-parse', 'HEAD')[:10]} on branch main" in " ".join(proc.stderr.split())


def test_a_repository_with_no_commits_is_named_so(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "calc.py").write_text(CALC)
    (repo / "check.py").write_text(CHECK)
    (repo / "bakeoff.toml").write_text('sandbox = "local"\nrounds = 0\nn = 2\ntest = "python3 check.py"\n')
    script = write_script(tmp_path / "s.json")
    proc = bakeoff("run", "--repo", str(repo), "--model", f"scripted:{script}", "--apply", "make total faster",
                   env=cli_env(tmp_path))
    said = " ".join(proc.stderr.split())
    assert proc.returncode == 2, proc.stderr
    assert "has no commits yet" in said and "not a git repository" not in said
    assert "git add -A && git commit" in said
    assert (repo / "calc.py").read_text() == CALC
    assert not (tmp_path / "state" / "runs").exists()  # said before the run: no model was paid for


def test_a_file_that_is_not_utf8_is_named_with_its_encoding(tmp_path):
    repo = make_repo(tmp_path / "repo")
    latin1 = ("# caf\xe9 au lait\n" + CALC).encode("latin-1")
    (repo / "calc.py").write_bytes(latin1)
    git(repo, "commit", "-qam", "a comment in Latin-1")
    script = write_script(tmp_path / "s.json")
    proc = bakeoff("run", "--repo", str(repo), "--model", f"scripted:{script}", "--apply", "make total faster",
                   env=cli_env(tmp_path))
    said = " ".join(proc.stderr.split())
    assert proc.returncode == 2, proc.stderr
    assert "not applied: calc.py is not UTF-8 text (byte 0xe9" in said and "Latin-1" in said
    assert "patch failed" not in said
    assert (repo / "calc.py").read_bytes() == latin1 and git(repo, "status", "--porcelain") == ""


# --------------------------------------------------------------------------- shared places


@pytest.mark.slow
def test_a_second_batch_on_the_same_out_is_refused_and_the_first_finishes(tmp_path):
    repo = make_repo(tmp_path / "repo")
    tasks = tasks_file(tmp_path / "tasks.jsonl", [
        {"id": i, "repo": str(repo), "instruction": "make total faster"} for i in ("a", "b")])
    slow = write_script(tmp_path / "slow.json", plans=2, first_token_s=0.5)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "bakeoff", "batch", str(tasks), "--out", str(out), "--workers", "1",
            "--model", f"scripted:{slow}"]
    first = subprocess.Popen(args, env=cli_env(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (out / "tasks" / "a").is_dir():
            time.sleep(0.1)
        assert (out / "tasks" / "a").is_dir(), "the first batch never started its first task"
        second = bakeoff("batch", str(tasks), "--out", str(out), "--model", f"scripted:{slow}",
                         env=cli_env(tmp_path), cwd=tmp_path, timeout=60)
        assert second.returncode == 2, second.stderr
        assert f"another batch, pid {first.pid}, is using {out}" in " ".join(second.stderr.split())
        assert len(second.stderr.strip().splitlines()) == 1
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    assert first.returncode == 0, err
    assert [r["status"] for r in results(out)] == ["success", "success"]
    assert not list(out.rglob("*.tmp"))


@pytest.mark.slow
def test_runs_share_a_state_directory_each_in_its_own_folder(tmp_path):
    repo = make_repo(tmp_path / "repo")
    script = write_script(tmp_path / "s.json", plans=2)
    script_two = write_script(tmp_path / "s2.json", plans=2)
    env = cli_env(tmp_path)
    runs = [subprocess.Popen([sys.executable, "-m", "bakeoff", "run", "--repo", str(repo), "--model", f"scripted:{s}",
                              "--json", "make total faster"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for s in (script, script_two)]
    docs = []
    for proc in runs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        docs.append(json.loads(out))
    ids = {d["run_id"] for d in docs}
    assert len(ids) == 2
    for run_id in ids:
        folder = tmp_path / "state" / "runs" / run_id
        assert json.loads((folder / "report.json").read_text())["status"] == "success"
        assert "run.end" in (folder / "events.jsonl").read_text()


def test_an_out_or_state_directory_that_cannot_be_written(tmp_path):
    repo = make_repo(tmp_path / "repo")
    script = write_script(tmp_path / "s.json")
    tasks = tasks_file(tmp_path / "tasks.jsonl", [{"id": "a", "repo": str(repo), "instruction": "x"}])
    with read_only(tmp_path / "ro") as ro:
        proc = bakeoff("batch", str(tasks), "--out", str(ro), "--model", f"scripted:{script}",
                       env=cli_env(tmp_path), cwd=tmp_path)
        assert proc.returncode == 2 and "--out" in proc.stderr and "not writable" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        proc = bakeoff("run", "--repo", str(repo), "--model", f"scripted:{script}", "make total faster",
                       env=cli_env(tmp_path, BAKEOFF_STATE_DIR=str(ro / "state")))
        assert proc.returncode == 2 and "state directory" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert list(ro.iterdir()) == []  # nothing was started there


# --------------------------------------------------------------------------- why a task failed


def test_batch_names_each_failed_task_and_its_reason(tmp_path):
    repo = make_repo(tmp_path / "repo")
    tasks = tasks_file(tmp_path / "tasks.jsonl", [
        {"id": "gone", "repo": "nowhere", "instruction": "make total faster"},
        {"id": "unclonable", "repo": f"file://{tmp_path}/no-such-remote.git", "instruction": "make total faster"},
        {"id": "no-base", "repo": str(repo), "base": "no-such-branch", "instruction": "make total faster"},
    ])
    script = write_script(tmp_path / "s.json")
    out = tmp_path / "out"
    proc = bakeoff("batch", str(tasks), "--out", str(out), "--model", f"scripted:{script}",
                   env=cli_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr  # every task failed for a reason the user must fix
    err = " ".join(proc.stderr.split())
    assert "task gone failed:" in err and "does not exist" in err
    assert "task unclonable failed:" in err
    assert "task no-base failed:" in err and "no-such-branch" in err
    recorded = {r["id"]: r for r in results(out)}
    assert {r["status"] for r in recorded.values()} == {"error"}
    assert all(r["cause"] == "user" and r["error"] for r in recorded.values())
    assert "no-such-branch" in recorded["no-base"]["error"]
    summary = " ".join(proc.stdout.split())
    assert "--retry-failed" in summary and "does not exist" in summary

    # One task the user must fix beside one that succeeds: the batch did some work, exit 1.
    tasks_file(tasks, [{"id": "gone", "repo": "nowhere", "instruction": "make total faster"},
                       {"id": "fine", "repo": str(repo), "instruction": "make total faster"}])
    proc = bakeoff("batch", str(tasks), "--out", str(tmp_path / "out2"), "--model", f"scripted:{script}",
                   env=cli_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert {r["id"]: r["status"] for r in results(tmp_path / "out2")} == {"gone": "error", "fine": "success"}
