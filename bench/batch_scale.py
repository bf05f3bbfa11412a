"""A batch of many quick tasks on this machine and on a Ray cluster of two nodes, and the same
batch with one node killed halfway: throughput, what Ray adds per task, the driver's memory,
and whether any task was lost or run into the results twice.

Each task asks a question of a one-file repository; the scripted model answers it at once (a
plan with no tool call), so a task is bakeoff's own work: a clone, a session, its report.
The cluster is real: a head and a second node started with ``ray start`` on 127.0.0.1
(``tests/ray_cluster``). Every run is the real CLI (``bakeoff batch``, ``--ray ADDRESS``).

    python3 bench/batch_scale.py [--tasks 1000] [--workers 2] [--json PATH]

Keys: ``tasks``; ``local_tasks_per_s``, ``ray_tasks_per_s`` (finished tasks over the batch's
wall time, start-up included); ``overhead_ms_per_task``: the median over the Ray run's tasks
of the time from submission to the result on the driver minus the task's own run on its node
(scheduling, a worker, moving its arguments and outcome, setting up its sandboxes and its
budget there); ``driver_peak_mb`` per run (the driver's peak resident memory); and, for the
run with the second node killed once half the tasks have finished, ``lost`` (tasks with no
result), ``duplicated`` (results written more than once) and ``retried`` (tasks run again
after their node died).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.ray_cluster import local_cluster  # noqa: E402

QUICK = {"responses": [{"role": "planner", "text": "join()", "repeat": True},
                       {"role": "joiner", "text": "Finish: f returns 1.", "repeat": True}]}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def setup(root: Path, tasks: int) -> tuple[Path, Path, dict[str, str]]:
    repo = root / "repo"
    repo.mkdir()
    (repo / "m.py").write_text("def f():\n    return 1\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b", "BAKEOFF_STATE_DIR": str(root / "state"), "BAKEOFF_SANDBOX": "local",
           "PYTHONPATH": str(ROOT)}
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "one file"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True)
    (root / "quick.json").write_text(json.dumps(QUICK))
    task_file = root / "tasks.jsonl"
    task_file.write_text("".join(json.dumps({"id": f"q{i:05d}", "repo": str(repo), "instruction": "what does f return?"})
                                 + "\n" for i in range(tasks)))
    return task_file, root / "quick.json", env


def batch(task_file: Path, script: Path, out: Path, env: dict[str, str], *extra: str, on_line=None) -> dict:
    """Run ``bakeoff batch``; its wall time, exit code, peak memory and results."""
    args = [sys.executable, "-m", "bakeoff", "batch", str(task_file), "--out", str(out), "--model",
            f"scripted:{script}", "--jsonl", *extra]
    started = time.monotonic()
    proc = subprocess.Popen(args, env=env, cwd=out.parent, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    ends = 0
    for line in proc.stdout:
        if '"task.end"' in line:
            ends += 1
            if on_line is not None:
                on_line(ends)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    lines = (out / "results.jsonl").read_text().splitlines() if (out / "results.jsonl").exists() else []
    results = [json.loads(line) for line in lines]
    return {"wall_s": wall, "exit": os.waitstatus_to_exitcode(status), "peak_mb": usage.ru_maxrss / 1024,
            "results": results}


def summary(run: dict, tasks: int) -> dict:
    ids = [r["id"] for r in run["results"]]
    ok = sum(1 for r in run["results"] if r.get("status") == "success")
    return {"wall_s": round(run["wall_s"], 1), "exit": run["exit"], "succeeded": ok,
            "tasks_per_s": round(len(ids) / run["wall_s"], 2), "driver_peak_mb": round(run["peak_mb"], 1),
            "lost": tasks - len(set(ids)), "duplicated": len(ids) - len(set(ids)),
            "retried": sum(1 for r in run["results"] if r.get("attempts")),
            "nodes": sorted({str(r.get("node")) for r in run["results"]})}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="local workers")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bk-scale-"))
    task_file, script, env = setup(root, args.tasks)
    log(f"{args.tasks} tasks, {os.cpu_count()} CPUs; local batch with {args.workers} workers")
    local = batch(task_file, script, root / "out-local", env, "--workers", str(args.workers))
    figures: dict = {"tasks": args.tasks, "cpus": os.cpu_count(), "local": summary(local, args.tasks)}
    log(f"local: {figures['local']}")
    # Each node offers half the CPUs: the cluster runs as many tasks at once as the local batch.
    with local_cluster(root / "cluster", cpus=max(1, args.workers // 2)) as cluster:
        ray_run = batch(task_file, script, root / "out-ray", env, "--ray", cluster.address)
        figures["ray"] = summary(ray_run, args.tasks)
        overheads = [r["latency_s"] - r["duration_s"] for r in ray_run["results"] if "latency_s" in r]
        figures["ray"]["overhead_ms_median"] = round(1000 * statistics.median(overheads), 1) if overheads else None
        log(f"ray: {figures['ray']}")
        killed = {"done": False}

        def kill_at_half(ends: int) -> None:
            if not killed["done"] and ends >= args.tasks // 2:
                killed["done"] = True
                cluster.kill("node_b")
                log(f"killed node_b after {ends} tasks")

        kill_run = batch(task_file, script, root / "out-kill", env, "--ray", cluster.address, on_line=kill_at_half)
        figures["ray_node_killed"] = summary(kill_run, args.tasks)
        log(f"ray, node_b killed at half: {figures['ray_node_killed']}")
    figures.update({
        "local_tasks_per_s": figures["local"]["tasks_per_s"], "ray_tasks_per_s": figures["ray"]["tasks_per_s"],
        "overhead_ms_per_task": figures["ray"]["overhead_ms_median"],
        "lost": figures["ray_node_killed"]["lost"], "duplicated": figures["ray_node_killed"]["duplicated"],
        "retried": figures["ray_node_killed"]["retried"],
    })
    print(json.dumps({k: v for k, v in figures.items() if not isinstance(v, dict)}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0 if figures["lost"] == 0 and figures["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
