"""Runs that finish and say the truth, through the real CLI with the scripted model.

(No deadlock at default settings: ``test_cli_runs_no_deadlock``.) A run bounded by its time
limit, shown in the header; no success without verification (exit 4, never applied, never
delivered by the Action); progress that agrees with the result (the header's n is the number
of candidates run, each candidate's tests are the table's); the first Docker image build is a
step of its own.
"""

from __future__ import annotations

import json
import textwrap
import uuid
from pathlib import Path

import pytest

from tests.test_session import CALC, GOOD_EDIT, bakeoff, cli_env, git, make_repo


def plan_script(path: Path, *, n: int = 4, read_first: bool = True, first_token_s: float = 0.0,
                plan: str | None = None) -> Path:
    """The planner reads calc.py (so the run's scratch sandbox is made and held), then fans out
    ``n`` candidates that all make the right edit."""
    if plan is None:
        fan = f'fan_out(goal="make total in calc.py faster", files=["calc.py"], n={n}, entry="total")'
        plan = (f'1. read_file(path="calc.py")\n2. {fan} deps=[1]\njoin()\n' if read_first
                else f"1. {fan}\njoin()\n")
    responses = [
        {"role": "planner", "text": plan, "repeat": True},
        {"role": "editor", "text": GOOD_EDIT, "repeat": True},
        {"role": "joiner", "text": "Finish: total now uses the builtin sum.", "repeat": True},
        {"role": "tester", "text": "```python\nassert total([1, 2, 3]) == 6\n```", "repeat": True},
    ]
    path.write_text(json.dumps({"latency": {"first_token_s": first_token_s}, "responses": responses}))
    return path


def defaults_repo(path: Path) -> Path:
    """A repository whose bakeoff.toml sets only the test command: every other setting is the default."""
    repo = make_repo(path)
    (repo / "bakeoff.toml").write_text('test = "python3 check.py"\n')
    git(repo, "commit", "-qam", "defaults")
    return repo


def header(stderr: str) -> str:
    """The run's first line, as one line however the console wrapped it."""
    text = " ".join(stderr.split())
    return text[text.index("run "):text.index(" plan ") if " plan " in text else None]


def results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- time limit


def test_the_time_limit_bounds_a_run_and_is_in_the_header(tmp_path):
    repo = make_repo(tmp_path / "repo")
    script = plan_script(tmp_path / "s.json", n=2, read_first=False, first_token_s=30.0)
    proc = bakeoff("run", "--repo", str(repo), "--model", f"scripted:{script}", "--time-limit", "3", "--json",
                   "make total faster", env=cli_env(tmp_path), timeout=120)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "error" and "time limit (3s)" in doc["error"] and "--time-limit" in doc["error"]
    assert "time limit 3s" in header(proc.stderr)
    assert doc["duration_s"] < 60


# --------------------------------------------------------------------------- unverified


PLANNER_EDITS = textwrap.dedent('''\
    1. edit(blocks=[{"path": "calc.py", "search": "    s = 0\\n    for x in xs:\\n        s = s + x\\n    return s\\n", "replace": "    return sum(xs)\\n"}])
    join()
''')


def test_an_edit_no_fan_out_checked_is_unverified_exit_4_and_never_applied(tmp_path):
    repo = make_repo(tmp_path / "repo")
    script = plan_script(tmp_path / "s.json", plan=PLANNER_EDITS)
    base = git(repo, "rev-parse", "HEAD")
    proc = bakeoff("run", "--repo", str(repo), "--model", f"scripted:{script}", "--json", "--apply",
                   "make total faster", env=cli_env(tmp_path))
    assert proc.returncode == 4, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "unverified" and doc["winner"] is None
    assert "return sum(xs)" in doc["patch"]  # kept for the user to read, not offered as a result
    assert "not applied" in proc.stderr
    assert git(repo, "rev-parse", "HEAD") == base and (repo / "calc.py").read_text() == CALC


def test_the_action_delivers_no_unverified_change(tmp_path):
    from bakeoff.agent.github.deliver import deliver
    from bakeoff.agent.github.trigger import Trigger

    trigger = Trigger.model_validate({"event": "issue_comment", "repo": "o/r", "pr": 1, "actor": "a", "instruction": "x",
                                      "head_sha": "0" * 40})
    report = {"status": "unverified", "patch": "--- a/calc.py\n+++ b/calc.py\n", "verdict": None}
    # No GitHub client is needed: an unverified change is refused before anything is posted.
    said = deliver(None, trigger, report, repo=tmp_path, mode="review")
    assert "never verified" in said


def test_the_planner_is_told_to_fan_out_every_edit():
    from bakeoff.agent.prompting import render

    text = render("planner", tools="(tools)", next_id=1, prior="", feedback="", task="t", context="")
    assert "Every change to the repository's files goes through fan_out" in text
    assert "unverified" in text


# --------------------------------------------------------------------------- progress


def test_the_header_n_is_the_candidates_run_and_their_tests_are_the_tables(tmp_path):
    repo = make_repo(tmp_path / "repo", extra_config="")
    script = plan_script(tmp_path / "s.json", n=2, read_first=False)  # the plan asks for 2
    proc = bakeoff("run", "--repo", str(repo), "--model", f"scripted:{script}", "--n", "3", "--json",
                   "make total faster", env=cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    err = proc.stderr
    assert " n=3 " in header(err) and "time limit 1h" in header(err)
    assert "fan-out 3 candidates" in err
    rows = doc["verdict"]["rows"]
    assert sorted(r["candidate"] for r in rows) == ["c1", "c2", "c3"]
    for r in rows:
        assert f"candidate {r['candidate']}: correct, tests {r['tests_passed']}/{r['tests_total']}" in err
    assert " tests 0" not in err and "repo tests 2/2" in err  # the repository's own two asserts
    assert err.index("candidate c1: correct") < err.index("winner ")  # the verdict after the results


@pytest.mark.slow
@pytest.mark.docker
def test_the_first_image_build_is_a_step_of_its_own(tmp_path):
    from bakeoff.sandboxes.docker import engine_available
    from bakeoff.sandboxes.docker_backend import DockerBackend

    up, why = engine_available()
    if not up:
        pytest.skip(why)
    base = DockerBackend.shared().ensure_image()  # the bundled image, built by docker-up in CI
    dockerfile = tmp_path / "img" / "Dockerfile"
    dockerfile.parent.mkdir()
    dockerfile.write_text(f"FROM {base}\nLABEL bakeoff.test={uuid.uuid4().hex}\n")  # a recipe never built
    repo = make_repo(tmp_path / "repo", extra_config=f'image = "{dockerfile}"\n')
    script = plan_script(tmp_path / "s.json", n=2)
    proc = bakeoff("run", "--repo", str(repo), "--model", f"scripted:{script}", "--sandbox", "docker",
                   "make total faster", env=cli_env(tmp_path), timeout=600)
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = proc.stderr.splitlines()
        building = next(i for i, line in enumerate(lines) if "sandbox image building" in line)
        ready = next(i for i, line in enumerate(lines) if "sandbox image" in line and " ready " in line)
        first_task = next(i for i, line in enumerate(lines) if line.strip().startswith("ok 1 read_file"))
        assert building < ready < first_task
    finally:
        import docker

        client = docker.from_env()
        for image in client.images.list(filters={"label": "bakeoff.test"}):
            client.images.remove(image.id, force=True)


def test_chat_shows_the_streamed_plan_once(tmp_path):
    repo = make_repo(tmp_path / "repo")
    plan = ('Thought: the loop is a plain sum.\n'
            '1. fan_out(goal="make total in calc.py faster", files=["calc.py"], n=2, entry="total")\njoin()\n')
    script = plan_script(tmp_path / "s.json", plan=plan)
    proc = bakeoff("chat", "--repo", str(repo), "--model", f"scripted:{script}",
                   input="make total faster\n/exit\n", env=cli_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count("Thought: the loop is a plain sum.") == 1  # the planner's words, streamed
    assert out.count("fan_out(") == 1 and "plan 1. fan_out(" in out  # its task, shown once, parsed
    assert out.count("join()") == 0
