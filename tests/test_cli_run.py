"""``bakeoff run`` end to end: a real subprocess, a real git repository, the scripted model."""

from __future__ import annotations

import json

import pytest

from tests.test_session import CALC, WRONG_EDIT, bakeoff, cli_env, git, make_repo, write_script

SLOWER_EDIT = """\
The same sum, with five times the additions.

calc.py
<<<<<<< SEARCH
    s = 0
    for x in xs:
        s = s + x
    return s
=======
    s = 0
    for x in xs:
        for _ in range(5):
            s = s + x
        s = s - 4 * x
    return s
>>>>>>> REPLACE
"""


@pytest.fixture
def repo(tmp_path):
    return make_repo(tmp_path / "repo")


def test_json_document_and_patch_file(repo, tmp_path):
    script = write_script(tmp_path / "s.json")
    patch_file = tmp_path / "win.diff"
    proc = bakeoff("run", "--repo", str(repo), "--model", f"scripted:{script}", "--json", "--patch", str(patch_file),
                   "make total faster", env=cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "success"
    assert doc["winner"]["id"] in ("c1", "c2")
    assert "return sum(xs)" in doc["patch"] and "+ 1" not in doc["patch"]
    assert doc["verdict"]["winner"] == doc["winner"]["id"]
    assert sorted(c["id"] for c in doc["report"]) == ["c1", "c2"]
    assert set(doc["cost"]) == {"usd", "tokens", "estimated_usd", "estimated_tokens"} and doc["cost"]["tokens"] > 0
    assert patch_file.read_text() == doc["patch"]
    assert "plan" in proc.stderr  # progress went to stderr, not into the JSON
    assert git(repo, "status", "--porcelain") == "" and (repo / "calc.py").read_text() == CALC


def test_apply_on_a_new_branch_is_one_commit(repo, tmp_path):
    script = write_script(tmp_path / "s.json")
    base = git(repo, "rev-parse", "HEAD")
    proc = bakeoff("run", "--repo", str(repo), "--model", f"scripted:{script}", "--apply", "--branch", "faster",
                   "make total faster", env=cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert git(repo, "rev-list", "--count", f"{base}..faster") == "1"
    assert "return sum(xs)" in git(repo, "show", "faster:calc.py")
    assert git(repo, "rev-parse", "main") == base  # the branch the user was on is untouched
    assert git(repo, "status", "--porcelain") == ""


def test_no_correct_candidate_exits_1(repo, tmp_path):
    script = write_script(tmp_path / "s.json", editors=[WRONG_EDIT, WRONG_EDIT])
    proc = bakeoff("run", "--repo", str(repo), "--model", f"scripted:{script}", "--json", "make total faster",
                   env=cli_env(tmp_path))
    assert proc.returncode == 1, proc.stderr + proc.stdout
    doc = json.loads(proc.stdout)
    assert doc["status"] == "no-correct-candidate" and doc["winner"] is None and doc["patch"] == ""


def test_budget_exhausted_exits_3(repo, tmp_path):
    script = write_script(tmp_path / "s.json")
    proc = bakeoff("run", "--repo", str(repo), "--model", f"scripted:{script}", "--budget-tokens", "40", "--json",
                   "make total faster", env=cli_env(tmp_path))
    assert proc.returncode == 3, proc.stderr
    assert json.loads(proc.stdout)["status"] == "budget-exhausted"


def test_jsonl_streams_events_then_the_result(repo, tmp_path):
    script = write_script(tmp_path / "s.json")
    proc = bakeoff("run", "--repo", str(repo), "--model", f"scripted:{script}", "--jsonl", "make total faster",
                   env=cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    kinds = [line["kind"] for line in lines]
    assert kinds[0] == "run.start" and kinds[-1] == "result"
    assert "plan.task" in kinds and "candidate.state" in kinds and "run.end" in kinds
    assert lines[-1]["data"]["status"] == "success"


def test_plain_output_and_configuration_errors(repo, tmp_path):
    script = write_script(tmp_path / "s.json")
    with (repo / "check.py").open("a") as f:
        f.write("# an edit not committed yet\n")
    proc = bakeoff("run", "--repo", str(repo), "--model", f"scripted:{script}", "make total faster",
                   env=cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "+    return sum(xs)" in proc.stdout and "c1" in proc.stdout
    warning = " ".join(proc.stderr.split())
    assert "uncommitted changes (check.py)" in warning and "not part of this run" in warning
    assert (repo / "check.py").read_text().endswith("# an edit not committed yet\n")
    bad = bakeoff("run", "--repo", str(repo), "--model", f"scripted:{script}", "--n", "0", "x", env=cli_env(tmp_path))
    assert bad.returncode == 2 and "flag --n" in bad.stderr
    missing = bakeoff("run", "--repo", str(repo), "--model", f"scripted:{tmp_path / 'none.yaml'}", "x",
                      env=cli_env(tmp_path))
    assert missing.returncode == 2 and "cannot read it" in missing.stderr
    nodocker = bakeoff("run", "--repo", str(repo), "--branch", "b", "x", env=cli_env(tmp_path))
    assert nodocker.returncode == 2 and "--branch needs --apply" in nodocker.stderr


def test_no_docker_engine_says_what_to_do(repo, tmp_path):
    script = write_script(tmp_path / "s.json")
    env = cli_env(tmp_path, DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock")
    proc = bakeoff("run", "--repo", str(repo), "--model", f"scripted:{script}", "--sandbox", "docker", "x", env=env)
    assert proc.returncode == 2
    assert "no Docker engine reachable" in proc.stderr and "--sandbox local" in proc.stderr


def test_a_correct_but_slower_candidate_is_offered_not_applied_and_exits_1(repo, tmp_path):
    script = write_script(tmp_path / "s.json", editors=[SLOWER_EDIT, WRONG_EDIT])
    proc = bakeoff("run", "--repo", str(repo), "--model", f"scripted:{script}", "--json", "--apply", "--threads", "1",
                   "make total faster", env=cli_env(tmp_path))
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "not-faster" and doc["winner"] is None
    verdict = doc["verdict"]
    assert verdict["best"] == "c1" and verdict["not_faster"] and verdict["correct"] == ["c1"]
    assert verdict["reason"].startswith("correct, but no candidate is faster than the original (best ")
    assert doc["error"] == verdict["reason"]
    assert "range(5)" in doc["patch"]  # offered ...
    assert "not applied" in proc.stderr and (repo / "calc.py").read_text() == CALC  # ... never applied
    assert verdict["timing"]["threads"] == 1 and verdict["timing"]["threads_source"] == "threads setting"


def test_the_result_table_shows_the_target_the_scaling_curve_and_the_input_size():
    from rich.console import Console

    from bakeoff.agent.cli.render import print_result
    from bakeoff.agent.types import CurvePoint, ReportRow, RunReport, TimingSetup, Verdict

    curve = [CurvePoint(threads=1, speedup=0.93), CurvePoint(threads=2, speedup=1.8),
             CurvePoint(threads=4, speedup=3.5, low=3.3, high=3.6)]
    verdict = Verdict(winner=None, best="c1", not_faster=False, method="reference", reason="c1 won: ...",
                      rows=[ReportRow(candidate="c1", correct=True, speedup=3.5, low=3.3, high=3.6, threads=4, curve=curve)],
                      timing=TimingSetup(threads=4, threads_source="--threads", curve_threads=[1, 2, 4], size={"N": 2048.0},
                                         reference_s=0.25, sizing="scaled x4 until the original took 0.25 s per call"))
    console = Console(record=True, width=200)
    print_result(console, RunReport(task="t", status="success", verdict=verdict))
    text = console.export_text()
    assert "speedup @4" in text and "scaling" in text and "1:0.93 2:1.8 4:3.5" in text
    assert "3.50x [3.30, 3.60]" in text
    assert "timed at 4 threads (--threads); input N=2048; scaled x4 until the original took 0.25 s per call" in text
