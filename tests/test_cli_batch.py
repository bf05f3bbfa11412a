"""``bakeoff batch`` on real git repositories: outputs, branches, and a killed then resumed batch."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.test_session import bakeoff, cli_env, git, make_repo, write_script


def finished(out):
    path = out / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_batch_yaml_two_repos_with_branches(tmp_path):
    one = make_repo(tmp_path / "one")
    two = make_repo(tmp_path / "two")
    git(two, "checkout", "-q", "-b", "dev")
    (two / "extra.txt").write_text("on dev\n")
    git(two, "add", "extra.txt")
    git(two, "commit", "-q", "-m", "dev work")
    dev = git(two, "rev-parse", "dev")
    git(two, "checkout", "-q", "main")
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(yaml.safe_dump([
        {"id": "one", "repo": "one", "base": "HEAD", "instruction": "make total faster"},
        {"id": "two-dev", "repo": f"file://{two}", "base": "dev", "instruction": "make total faster",
         "test": "python3 -B check.py"},
    ]))
    script = write_script(tmp_path / "s.json")
    out = tmp_path / "out"
    proc = bakeoff("batch", str(tasks), "--out", str(out), "--workers", "2", "--branch", "faster",
                   "--model", f"scripted:{script}", env=cli_env(tmp_path), cwd=tmp_path, timeout=150)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    results = {r["id"]: r for r in finished(out)}
    assert set(results) == {"one", "two-dev"}
    assert all(r["status"] == "success" for r in results.values())
    assert results["two-dev"]["base_commit"] == dev
    for tid in ("one", "two-dev"):
        tdir = out / "tasks" / tid
        assert "return sum(xs)" in (tdir / "patch.diff").read_text()
        assert json.loads((tdir / "report.json").read_text())["status"] == "success"
        assert "run.end" in (tdir / "events.jsonl").read_text()
        clone = tdir / "clone"
        assert "return sum(xs)" in git(clone, "show", "faster:calc.py")
    assert git(out / "tasks" / "two-dev" / "clone", "show", "faster:extra.txt") == "on dev"
    # The user's repositories are untouched.
    assert git(one, "status", "--porcelain") == "" and "faster" not in git(one, "branch")
    summary = (out / "summary.txt").read_text()
    assert "one" in summary and "two-dev" in summary and "success" in summary
    # Re-running does nothing new: every task is finished.
    again = bakeoff("batch", str(tasks), "--out", str(out), "--model", f"scripted:{script}",
                    env=cli_env(tmp_path), cwd=tmp_path)
    assert again.returncode == 0 and "2 already finished, 0 to run" in again.stderr


def test_bad_task_files_exit_2(tmp_path):
    bad = tmp_path / "tasks.jsonl"
    bad.write_text('{"id": "a", "repo": ".", "instruction": "x"}\n{"id": "a/b", "repo": ".", "instruction": "x"}\n')
    proc = bakeoff("batch", str(bad), "--model", "scripted:/x", env=cli_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and "task 2" in proc.stderr and "id" in proc.stderr
    bad.write_text('{"id": "a", "repo": ".", "instruction": "x", "colour": 1}\n')
    proc = bakeoff("batch", str(bad), "--model", "scripted:/x", env=cli_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and "colour" in proc.stderr


@pytest.mark.slow
# Alone (the serial pass, tests/conftest.py): every task must ship, and a task ships only when its
# candidate's speedup interval lies above 1, which two loaded cores can blur (a 3.2x median with
# an interval from 0.87 was seen in the parallel pass).
@pytest.mark.serial
def test_killed_batch_resumes_without_redoing_finished_tasks(tmp_path):
    repo = make_repo(tmp_path / "repo")
    tasks = tmp_path / "tasks.jsonl"
    ids = ["t1", "t2"]
    tasks.write_text("".join(json.dumps({"id": i, "repo": str(repo), "instruction": "make total faster"}) + "\n" for i in ids))
    # Each model call waits 0.3 s, so a task takes a few seconds: time to kill it mid-task.
    script = write_script(tmp_path / "s.json", first_token_s=0.3)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "bakeoff", "batch", str(tasks), "--out", str(out), "--workers", "1",
            "--model", f"scripted:{script}"]
    proc = subprocess.Popen(args, env=cli_env(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not finished(out):
        time.sleep(0.1)
    assert finished(out), proc.stderr.read().decode() if proc.poll() is not None else "no task finished in time"
    time.sleep(0.5)  # into the second task
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    done_before = [r["id"] for r in finished(out)]
    assert done_before == ["t1"]
    first = out / "tasks" / done_before[0] / "result.json"
    first_text, first_mtime = first.read_text(), first.stat().st_mtime_ns
    # The interrupted task worked in its scratch folder; --out has no result of it, half or whole.
    interrupted = ids[len(done_before)]
    assert (out / "scratch" / interrupted).is_dir() and not (out / "tasks" / interrupted).exists()

    proc = subprocess.run(args, env=cli_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"{len(done_before)} already finished" in proc.stderr
    results = finished(out)
    assert [r["id"] for r in results] == ids and all(r["status"] == "success" for r in results)
    assert first.read_text() == first_text and first.stat().st_mtime_ns == first_mtime  # not redone
    assert not [p for p in out.rglob("*.tmp")]  # no half-written file anywhere
    assert not (out / "scratch" / interrupted).exists()  # the killed run's scratch went when it ran again


def test_a_task_on_a_missing_repository_fails_alone(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"id": "gone", "repo": "nowhere", "instruction": "x"}) + "\n")
    script = write_script(tmp_path / "s.json")
    out = tmp_path / "out"
    proc = bakeoff("batch", str(tasks), "--out", str(out), "--model", f"scripted:{script}", env=cli_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr  # its only task failed for a reason the user must fix
    [result] = finished(out)
    assert result["status"] == "error" and "does not exist" in result["error"]
    assert "gone" in (out / "summary.txt").read_text()
