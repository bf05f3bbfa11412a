"""The Session end to end with the scripted model, on real git repositories in tmp dirs.

Also home of the small repository and script every front-door test uses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CALC = """\
def total(xs):
    s = 0
    for x in xs:
        s = s + x
    return s
"""

CHECK = """\
from calc import total

assert total([1, 2, 3]) == 6
assert total([]) == 0
print("2 passed")
"""

GOOD_EDIT = """\
The builtin is faster than the loop.

calc.py
<<<<<<< SEARCH
    s = 0
    for x in xs:
        s = s + x
    return s
=======
    return sum(xs)
>>>>>>> REPLACE
"""

WRONG_EDIT = """\
Start from one.

calc.py
<<<<<<< SEARCH
    s = 0
    for x in xs:
        s = s + x
    return s
=======
    return sum(xs) + 1
>>>>>>> REPLACE
"""

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          env={**os.environ, **GIT_ENV})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def make_repo(path: Path, *, extra_config: str = "") -> Path:
    """A small Python project with a passing check, committed on branch main."""
    path.mkdir(parents=True)
    (path / "calc.py").write_text(CALC)
    (path / "check.py").write_text(CHECK)  # the repository's test suite: plain asserts start fast
    (path / "bakeoff.toml").write_text('sandbox = "local"\nrounds = 0\nn = 2\ntest = "python3 check.py"\n' + extra_config)
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "base")
    return path


def write_script(path: Path, *, editors: list[str] | None = None, first_token_s: float = 0.0,
                 plans: int = 1, planner_delay_s: float = 0.0) -> Path:
    """A scripted model: the planner fans out two candidates, one right and one wrong."""
    editors = editors if editors is not None else [GOOD_EDIT, WRONG_EDIT]
    plan = textwrap.dedent("""\
        1. fan_out(goal="make total in calc.py faster", files=["calc.py"], n=2, entry="total")
        join()
    """)
    responses = []
    for _ in range(plans):
        responses.append({"role": "planner", "text": plan})
        responses += [{"role": "editor", "text": e} for e in editors]
    responses += [
        {"role": "joiner", "text": "Finish: total now uses the builtin sum.", "repeat": True},
        {"role": "tester", "text": "```python\nassert total([1, 2, 3]) == 6\nassert total([5]) == 5\n```", "repeat": True},
    ]
    doc = {"latency": {"first_token_s": first_token_s}, "responses": responses}
    path.write_text(json.dumps(doc, indent=1))
    return path


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAKEOFF_", "XDG_"))}
    env.update(GIT_ENV)
    env.update(BAKEOFF_STATE_DIR=str(tmp_path / "state"), HOME=str(tmp_path / "home"), COLUMNS="120",
               BAKEOFF_SANDBOX="local")
    # The checkout's own code, whatever the current directory and however it was installed.
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def bakeoff(*args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bakeoff", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, input=input)


# --------------------------------------------------------------------------- Session


@pytest.fixture
def repo(tmp_path):
    return make_repo(tmp_path / "repo")


def session_for(repo: Path, script: Path, state: Path, **flags):
    from bakeoff.agent.config import load_settings
    from bakeoff.agent.events import EventBus
    from bakeoff.agent.session import Session

    settings, _ = load_settings(repo, {"HOME": str(state / "home")}, {"model.default": f"scripted:{script}", **flags})
    events = EventBus()
    seen: list = []
    events.subscribe(seen.append)
    return Session(settings, repo, events=events, state=state), seen


async def test_run_picks_the_correct_candidate_and_leaves_the_tree_alone(repo, tmp_path):
    session, seen = session_for(repo, write_script(tmp_path / "s.json"), tmp_path / "state")
    head = git(repo, "rev-parse", "HEAD")
    report = await session.run("make total faster")
    await session.close()

    assert report.status == "success", report.error
    assert report.winner is not None and "return sum(xs)\n" in report.patch and "+ 1" not in report.patch
    assert {c.id for c in report.candidates} == {"c1", "c2"}
    assert report.base_commit == head and report.run_id
    # Nothing of the user's changed, and nothing was written into the repository.
    assert git(repo, "rev-parse", "HEAD") == head and git(repo, "status", "--porcelain") == ""
    # The run is saved under the state directory: its events and its report.
    run_dir = tmp_path / "state" / "runs" / report.run_id
    saved = json.loads((run_dir / "report.json").read_text())
    assert saved["status"] == "success" and saved["patch"] == report.patch
    kinds = [json.loads(line)["kind"] for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert kinds[0] == "run.start" and kinds[-1] == "run.end"
    assert "plan.task" in kinds and "candidate.state" in kinds
    assert [e.kind for e in seen][-1] == "run.end"


async def test_apply_commits_once_refuses_a_moved_tree_and_undo_restores(repo, tmp_path):
    session, _ = session_for(repo, write_script(tmp_path / "s.json"), tmp_path / "state")
    head = git(repo, "rev-parse", "HEAD")
    report = await session.run("make total faster")
    await session.close()

    (repo / "notes.txt").write_text("mine, untracked\n")
    session.apply(report)
    assert git(repo, "rev-list", "--count", f"{head}..HEAD") == "1"
    assert "return sum(xs)" in (repo / "calc.py").read_text()
    assert (repo / "notes.txt").read_text() == "mine, untracked\n"
    session.undo()
    assert git(repo, "rev-parse", "HEAD") == head
    assert (repo / "calc.py").read_text() == CALC
    assert (repo / "notes.txt").read_text() == "mine, untracked\n"

    # The user commits something after the run: applying that run's result is refused.
    (repo / "other.txt").write_text("x\n")
    git(repo, "add", "other.txt")
    git(repo, "commit", "-q", "-m", "user work")
    from bakeoff.agent.session import SessionError

    with pytest.raises(SessionError, match="moved"):
        session.apply(report)
    assert (repo / "calc.py").read_text() == CALC


async def test_budget_exhausted_is_its_own_status(repo, tmp_path):
    session, _ = session_for(repo, write_script(tmp_path / "s.json"), tmp_path / "state", budget_tokens=50)
    report = await session.run("make total faster")
    await session.close()
    assert report.status == "budget-exhausted"
    assert "budget" in (report.error or "")
    assert report.patch == ""


def test_a_missing_repository_and_no_model_are_user_errors(tmp_path):
    from bakeoff.agent.config import Settings
    from bakeoff.agent.events import EventBus
    from bakeoff.agent.config import ModelNotConfigured
    from bakeoff.agent.session import Session, SessionError

    with pytest.raises(SessionError, match="does not exist"):
        Session(Settings(), tmp_path / "nope", events=EventBus(), state=tmp_path / "state")
    with pytest.raises(ModelNotConfigured, match="BAKEOFF_MODEL"):
        Session(Settings(), tmp_path, events=EventBus(), state=tmp_path / "state")


def test_update_between_runs_is_validated_and_all_or_nothing(repo, tmp_path, monkeypatch):
    from pydantic import ValidationError

    from bakeoff.agent.models.scripted import ScriptFileError
    from bakeoff.sandboxes import SandboxUnavailable

    session, _ = session_for(repo, write_script(tmp_path / "s.json"), tmp_path / "state")
    names = session.model_names
    session.update(n=3, budget_tokens=1000)
    assert session.settings.n == 3 and session.budget.max_tokens == 1000
    with pytest.raises(ValidationError):
        session.update(n=0)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    with pytest.raises(SandboxUnavailable, match="--sandbox local"):
        session.update(sandbox="docker")
    with pytest.raises(ScriptFileError):
        session.update(model=f"scripted:{tmp_path / 'missing.yaml'}")
    assert session.settings.n == 3 and session.settings.sandbox == "local" and session.model_names == names
    other = write_script(tmp_path / "other.json")
    session.update(model=f"scripted:{other}")
    assert set(session.model_names.values()) == {f"scripted:{other}"}


async def test_react_planner_runs_the_same_pipeline(repo, tmp_path):
    script = tmp_path / "react.json"
    script.write_text(json.dumps({"responses": [
        {"role": "planner", "text": 'Thought: fan out.\nAction: fan_out(goal="make total faster", files=["calc.py"], n=2, entry="total")'},
        {"role": "planner", "text": "Final Answer: total uses sum now."},
        {"role": "editor", "text": GOOD_EDIT},
        {"role": "editor", "text": WRONG_EDIT},
        {"role": "tester", "text": "```python\nassert total([2, 2]) == 4\n```", "repeat": True},
    ]}))
    session, _ = session_for(repo, script, tmp_path / "state", planner="react")
    report = await session.run("make total faster")
    await session.close()
    assert report.status == "success", report.error
    assert [c.tool for c in report.trace] == ["fan_out"]
    assert "return sum(xs)" in report.patch and report.answer == "total uses sum now."
