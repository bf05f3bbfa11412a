"""Runs at default settings finish, through the real CLI with the scripted model: no deadlock
for any workers, n and max_sandboxes (the planner's scratch sandbox and each fan-out's base
are held beside the candidates' slots, not in them). A file of its own so that the slowest
runs of the suite go to another worker than ``test_cli_runs_finish``'s."""

from __future__ import annotations

import json

import pytest

from tests.test_cli_runs_finish import defaults_repo, plan_script, results
from tests.test_session import bakeoff, cli_env

# --------------------------------------------------------------------------- no deadlock


@pytest.mark.slow
@pytest.mark.parametrize("workers", [4])  # one task alone is the run in one sandbox slot below
def test_batch_at_default_settings_finishes(tmp_path, workers):
    repo = defaults_repo(tmp_path / "repo")
    script = plan_script(tmp_path / "s.json")
    tasks = tmp_path / "tasks.jsonl"
    ids = [f"t{i}" for i in range(workers)]  # as many tasks as run at once: each holds its sandboxes
    tasks.write_text("".join(json.dumps({"id": i, "repo": str(repo), "instruction": "make total faster"}) + "\n"
                             for i in ids))
    out = tmp_path / "out"
    # A deadlock would run into the time limit; each task needs well under a minute.
    proc = bakeoff("batch", str(tasks), "--out", str(out), "--workers", str(workers), "--model", f"scripted:{script}",
                   "--time-limit", "240", env=cli_env(tmp_path), cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = results(out)
    assert [r["id"] for r in done] == ids and {r["status"] for r in done} == {"success"}
    for r in done:
        report = json.loads((out / "tasks" / r["id"] / "report.json").read_text())
        assert len(report["candidates"]) == 4  # the default n, every one developed


@pytest.mark.slow
# The tightest: the planner's scratch sandbox and the fan-out's base held beside one candidate slot.
@pytest.mark.parametrize("max_sandboxes", [1])
def test_a_run_of_four_candidates_in_one_sandbox_slot_finishes(tmp_path, max_sandboxes):
    repo = defaults_repo(tmp_path / "repo")
    script = plan_script(tmp_path / "s.json")
    env = cli_env(tmp_path, BAKEOFF_MAX_SANDBOXES=str(max_sandboxes))
    proc = bakeoff("run", "--repo", str(repo), "--model", f"scripted:{script}", "--n", "4", "--json",
                   "--time-limit", "240", "make total faster", env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["status"] == "success" and len(doc["report"]) == 4
    assert all(c["error"] is None for c in doc["report"])
