"""``bakeoff batch --ray`` on a real Ray cluster of two nodes on loopback (``tests/ray_cluster``):
tasks spread over both nodes, one budget across them that fails closed, a killed node whose
tasks run again elsewhere with nothing lost or duplicated, and Ctrl-C that leaves nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.test_session import bakeoff, cli_env, make_repo, write_script

ray = pytest.importorskip("ray", reason="the cluster tests need the ray extra: pip install 'bakeoff[ray]'")

from tests.ray_cluster import local_cluster  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    # A short path: Ray's sockets live under its temp folder, and a socket path has ~100 bytes.
    with local_cluster(Path(tempfile.mkdtemp(prefix="bk-ray-"))) as c:
        yield c


def steady_script(path: Path, **latency) -> Path:
    """The scripted run of tests/test_session, asking for the builtin sum rather than for speed:
    a speed task on a loaded machine may honestly end not-faster, which is not what these
    tests are about."""
    write_script(path, **latency)
    path.write_text(path.read_text().replace("make total in calc.py faster", "make total in calc.py use the builtin sum"))
    return path


def task_file(tmp_path: Path, ids: list[str], repo: Path) -> Path:
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps({"id": i, "repo": str(repo), "instruction": "make total use the builtin sum"}) + "\n"
                            for i in ids))
    return path


def results(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_without_ray_installed_the_flag_says_what_to_install(tmp_path):
    repo = make_repo(tmp_path / "repo")
    script = steady_script(tmp_path / "s.json")
    code = ("import sys; sys.modules['ray'] = None; from bakeoff.agent.cli.main import main; "
            "sys.argv = ['bakeoff'] + sys.argv[1:]; main()")
    proc = subprocess.run([sys.executable, "-c", code, "batch", str(task_file(tmp_path, ["t1"], repo)), "--out",
                           str(tmp_path / "out"), "--ray", "auto", "--model", f"scripted:{script}"],
                          env=cli_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'bakeoff[ray]'" in proc.stderr and "Traceback" not in proc.stderr


def test_tasks_spread_over_both_nodes_and_only_the_driver_writes_out(cluster, tmp_path):
    repo = make_repo(tmp_path / "repo")
    ids = [f"t{i}" for i in range(6)]
    script = steady_script(tmp_path / "s.json")
    out = tmp_path / "out"
    args = ("batch", str(task_file(tmp_path, ids, repo)), "--out", str(out), "--ray", cluster.address,
            "--model", f"scripted:{script}", "--jsonl")
    proc = bakeoff(*args, env=cli_env(tmp_path), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    done = results(out)
    assert sorted(r["id"] for r in done) == ids and all(r["status"] == "success" for r in done)
    labels = cluster.node_labels()
    ran_on = {labels[r["node"].rsplit(":", 1)[1]] for r in done}
    assert ran_on == {"node_head", "node_b"}, done
    for i in ids:  # every task's files, from the driver
        assert {p.name for p in (out / "tasks" / i).iterdir()} >= {"result.json", "report.json", "patch.diff", "events.jsonl"}
        assert "return sum(xs)" in (out / "tasks" / i / "patch.diff").read_text()
    stream = events(proc.stdout)
    starts = [e for e in stream if e["kind"] == "task.start"]
    assert sorted(e["task"] for e in starts) == ids and all(":" in e["node"] for e in starts)
    assert any(e["kind"] == "task.event" and e["event"].get("kind") == "fanout.end" for e in stream)
    assert "node_" not in proc.stderr and "2 node(s)" in proc.stderr
    # Run again: everything is finished, nothing runs twice.
    again = bakeoff(*args, env=cli_env(tmp_path), cwd=tmp_path, timeout=300)
    assert again.returncode == 0 and "6 already finished, 0 to run" in again.stderr
    assert [r["id"] for r in results(out)] == sorted(ids)


def keeper_test(address: str) -> str:
    """A script: 5 Ray tasks spread over the nodes, 8 threads each (40 model calls at once),
    reserve 10 tokens at a time from one 1,000-token budget until it refuses."""
    return f"""
import json, threading, ray
from bakeoff.agent.batch.ray_budget import ClusterBudget, start_keeper
from bakeoff.agent.models.budget import BudgetExceeded
ray.init(address={address!r}, log_to_driver=False)
keeper = start_keeper(None, 1000, "bk-test-keeper")

@ray.remote(num_cpus=0, scheduling_strategy="SPREAD")
def calls(keeper):
    budget = ClusterBudget(keeper, None, 1000)
    won = []
    def one():
        while True:
            try:
                r = budget.reserve(10, 0.0, "editor")
            except BudgetExceeded:
                return
            budget.settle(r, 10, 0.0)
            won.append(1)
    threads = [threading.Thread(target=one) for _ in range(8)]
    [t.start() for t in threads]; [t.join() for t in threads]
    return ray.get_runtime_context().get_node_id()[:8], len(won)

got = ray.get([calls.remote(keeper) for _ in range(5)])
state = ray.get(keeper.state.remote())
ray.kill(keeper)
try:
    ClusterBudget(keeper, None, 1000, timeout_s=5).reserve(1)
    closed = "a call started"
except BudgetExceeded as exc:
    closed = str(exc)
print(json.dumps({{"got": got, "spent": state["spent_tokens"], "closed": closed}}))
"""


def test_one_budget_across_the_cluster_holds_at_40_calls_at_once_and_fails_closed(cluster, tmp_path):
    proc = subprocess.run([sys.executable, "-c", keeper_test(cluster.address)], capture_output=True, text=True,
                          timeout=300, env=cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sum(n for _, n in res["got"]) == 100 and res["spent"] == 1000  # exactly the budget, never over
    labels = cluster.node_labels()
    assert {labels[node] for node, _ in res["got"]} == {"node_head", "node_b"}
    assert "cannot be checked" in res["closed"] and "no model call starts" in res["closed"]


def test_a_killed_driver_resumes_without_redoing_finished_tasks(cluster, tmp_path):
    repo = make_repo(tmp_path / "repo")
    ids = [f"r{i}" for i in range(6)]
    script = steady_script(tmp_path / "s.json", first_token_s=0.3)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "bakeoff", "batch", str(task_file(tmp_path, ids, repo)), "--out", str(out), "--ray",
            cluster.address, "--model", f"scripted:{script}", "--workers", "2"]
    proc = subprocess.Popen(args, env=cli_env(tmp_path), cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(results(out)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "no task finished in time"
        time.sleep(0.2)
    proc.kill()  # SIGKILL: no cleanup of its own; the cluster drops the tasks it owned
    proc.wait(30)
    first = {r["id"]: (out / "tasks" / r["id"] / "result.json").stat().st_mtime_ns for r in results(out)}
    again = bakeoff(*args[3:], env=cli_env(tmp_path), cwd=tmp_path, timeout=600)
    assert again.returncode == 0, [(r["id"], r.get("error")) for r in results(out) if r["status"] != "success"]
    assert f"{len(first)} already finished" in again.stderr
    done = results(out)
    assert sorted(r["id"] for r in done) == ids and all(r["status"] == "success" for r in done)
    assert all((out / "tasks" / i / "result.json").stat().st_mtime_ns == t for i, t in first.items())  # not redone


def containers() -> list[str]:
    done = subprocess.run(["docker", "ps", "-aq", "--filter", "label=bakeoff.sandbox"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_ctrl_c_on_the_driver_cancels_the_cluster_and_leaves_no_container(cluster, tmp_path):
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker engine answers here (CI starts one)")
    repo = make_repo(tmp_path / "repo")
    ids = [f"c{i}" for i in range(6)]
    script = steady_script(tmp_path / "s.json", first_token_s=1.0)
    out = tmp_path / "out"
    before = containers()
    proc = subprocess.Popen([sys.executable, "-m", "bakeoff", "batch", str(task_file(tmp_path, ids, repo)), "--out",
                             str(out), "--ray", cluster.address, "--model", f"scripted:{script}", "--sandbox", "docker",
                             "--jsonl"], env=cli_env(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(set(containers()) - set(before)) < 2:  # candidates at work in containers
        assert proc.poll() is None and time.monotonic() < deadline, "no sandbox started"
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-4000:]
    assert "stopped by SIGINT" in err and "Traceback" not in err
    assert set(containers()) <= set(before)  # none left on any node (both use this engine)
    assert len(results(out)) < len(ids)  # it really stopped mid-batch


def test_a_node_killed_mid_batch_loses_and_duplicates_nothing(cluster, tmp_path):
    repo = make_repo(tmp_path / "repo")
    ids = [f"k{i}" for i in range(8)]
    script = steady_script(tmp_path / "s.json", first_token_s=0.5)  # a task takes seconds: time to kill
    out = tmp_path / "out"
    labels = cluster.node_labels()
    node_b = next(i for i, label in labels.items() if label == "node_b")
    proc = subprocess.Popen([sys.executable, "-m", "bakeoff", "batch", str(task_file(tmp_path, ids, repo)), "--out",
                             str(out), "--ray", cluster.address, "--model", f"scripted:{script}", "--jsonl"],
                            env=cli_env(tmp_path), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    seen = []
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        seen.append(line)
        if '"task.start"' in line and node_b in line:
            break
        assert time.monotonic() < deadline, "no task started on the second node"
    cluster.kill("node_b")
    rest, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    done = results(out)
    assert sorted(r["id"] for r in done) == ids and all(r["status"] == "success" for r in done)  # none lost
    assert len(done) == len({r["id"] for r in done})  # none twice
    retried = [r for r in done if r.get("attempts")]
    assert retried and all(node_b in r["attempts"][0]["node"] for r in retried)
    assert all(labels.get(r["node"].rsplit(":", 1)[1]) == "node_head" for r in retried)
    stream = events("".join(seen) + rest)
    assert [e for e in stream if e["kind"] == "task.retry"]
    assert sorted(e["task"] for e in stream if e["kind"] == "task.end") == ids
