"""The models of a run as configured, through the real CLI with scripted models: several
editor models share the candidates and the report says which wrote each; on a goal that
changes behaviour the candidates are voted on by agreement, and the judge model settles the
close call on inputs the tester proposes to tell them apart."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from tests.test_session import bakeoff, cli_env, git

CLAMP = """\
def clamp(x: int, low: int, high: int) -> int:
    return max(low, min(x, high))
"""

CHECK = """\
from clamp import clamp

assert clamp(5, 0, 10) == 5
assert clamp(-3, 0, 10) == 0
print("2 passed")
"""


def edit(body: str) -> str:
    """An editor's answer: ``body`` (lines of the function) before its return."""
    return (
        "When the bounds come in the wrong order, decide what to do first.\n\n"
        "clamp.py\n<<<<<<< SEARCH\n    return max(low, min(x, high))\n=======\n"
        + textwrap.indent(body, "    ") + "\n    return max(low, min(x, high))\n>>>>>>> REPLACE\n"
    )


SWAP = "if low > high:\n    low, high = high, low"
KEEP_LOW = "if low > high:\n    return low"


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "clamp.py").write_text(CLAMP)
    (path / "check.py").write_text(CHECK)
    (path / "bakeoff.toml").write_text(
        'sandbox = "local"\nrounds = 0\nn = 2\ntest = "python3 check.py"\n'
        '[model]\neditors = ["scripted:editor_a.json", "scripted:editor_b.json"]\n'
    )
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "base")
    return path


def scripts(where: Path) -> Path:
    plan = ('1. fan_out(goal="make clamp in clamp.py accept its bounds in either order", files=["clamp.py"], n=2, '
            'entry="clamp", keeps_behaviour=false)\njoin()\n')
    main = [
        {"role": "planner", "text": plan},
        {"role": "joiner", "text": "Finish: clamp now takes its bounds in either order.", "repeat": True},
        {"role": "tester", "match": "You write tests", "text": "```python\nassert clamp(5, 0, 10) == 5\n```"},
        {"role": "tester", "match": "You propose edge-case inputs", "text": "```python\nclamp(0, 0, 0)\n```"},
        {"role": "tester", "match": "Propose up to 8 inputs", "text": "```python\nclamp(5, 10, 0)\n```"},
        # The judge sees the real outputs: 5 (bounds swapped) and 10 (the low bound kept).
        {"role": "judge", "match": r'(?m)^A: \{"f":"5"\}', "text": "Either order means the range 0..10.\nANSWER: A",
         "repeat": True},
        {"role": "judge", "match": r'(?m)^B: \{"f":"5"\}', "text": "Either order means the range 0..10.\nANSWER: B",
         "repeat": True},
    ]
    (where / "main.json").write_text(json.dumps({"responses": main}))
    for name, body in (("editor_a.json", SWAP), ("editor_b.json", KEEP_LOW)):
        (where / name).write_text(json.dumps({"responses": [{"role": "editor", "text": edit(body)}]}))
    return where / "main.json"


def test_editor_models_share_the_candidates_and_the_judge_settles_a_close_call(tmp_path):
    repo = make_repo(tmp_path / "repo")
    main = scripts(repo)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "scripts")
    proc = bakeoff("run", "--repo", str(repo), "--model", f"scripted:{main}", "--json",
                   "make clamp accept its bounds in either order", env=cli_env(tmp_path), cwd=repo)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    doc = json.loads(proc.stdout)
    models = {c["id"]: c["model"] for c in doc["report"]}
    assert sorted(models.values()) == ["scripted:editor_a.json", "scripted:editor_b.json"]
    winner = doc["winner"]["id"]
    assert models[winner] == "scripted:editor_a.json" and "low, high = high, low" in doc["patch"]
    verdict = doc["verdict"]
    assert verdict["method"] == "dual-agreement" and verdict["correct"] == [winner]
    assert "close call settled on 1 distinguishing inputs decided by a judge" in verdict["reason"]
    assert {r["candidate"]: r["model"] for r in verdict["rows"]} == models


def test_the_table_names_each_candidates_model(tmp_path):
    from bakeoff.agent.cli.render import report_table
    from bakeoff.agent.types import Candidate, RunReport
    from rich.console import Console

    report = RunReport(task="t", status="success", candidates=[Candidate(id="c1", model="openai/a"),
                                                               Candidate(id="c2", model="openai/b")])
    console = Console(width=160, record=True, color_system=None)
    console.print(report_table(report))
    text = console.export_text()
    assert "model" in text and "openai/a" in text and "openai/b" in text
    one = RunReport(task="t", status="success", candidates=[Candidate(id="c1", model="openai/a")])
    console = Console(width=160, record=True, color_system=None)
    console.print(report_table(one))
    assert "openai/a" not in console.export_text()  # one model: no column for it
