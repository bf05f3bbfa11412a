"""Candidates that exhaust resources, through the real command line, on Docker and bubblewrap.

A fork bomb, a memory hog, a busy loop and an output flood go into ``bakeoff select`` and
``bakeoff run`` beside one good candidate. Each command must return (within its limits: a
stall fails the test at the subprocess timeout), name each hostile candidate with the limit
it hit, let the good one win, and leave no container, sandbox directory, mount or process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bakeoff.sandboxes.docker import LABEL_OWNER, engine_available
from bakeoff.sandboxes.local import bwrap_status
from bakeoff.sandboxes.workspace import processes_with_marker, sandbox_root
from tests.test_session import CALC, CHECK, cli_env, git

ENGINE_UP, ENGINE_WHY = engine_available()
BACKENDS = [
    pytest.param("docker", marks=[pytest.mark.docker, pytest.mark.skipif(not ENGINE_UP, reason=ENGINE_WHY)]),
    pytest.param("local", marks=pytest.mark.skipif(not bwrap_status()[0], reason="bubblewrap cannot run here")),
]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(500)]  # the subprocess's own timeout (400 s) fires first

GOOD = "return sum(xs)"
# What each hostile body does, and the limit the report must name for it (None: the time
# limit, per call in select and per command in run). One allocation, not many: C code cannot
# be interrupted by the per-call alarm, so the memory limit is what stops it.
HOSTILE = {
    "forkbomb": ("import os\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass",
                 "killed: more than 512 processes"),
    "memhog": ("return len(bytearray(4 * 2**30))", "killed: more than 2 GiB of memory"),
    "busy": ("n = 0\n    while True:\n        n += 1", None),
    "flood": ("while True:\n        print('y' * 65536)", None),
}
MARKS = {"forkbomb": "os.fork", "memhog": "bytearray", "busy": "n += 1", "flood": "print("}


def _leftovers(pid: int) -> dict[str, list[str]]:
    """What a finished bakeoff process ``pid`` could have left: containers, sandbox
    directories, mounts of them, sandboxed processes."""
    out: dict[str, list[str]] = {}
    if ENGINE_UP:
        import docker

        client = docker.from_env()
        try:
            out["containers"] = [c.id for c in client.containers.list(all=True, filters={"label": f"{LABEL_OWNER}={pid}"})]
        finally:
            client.close()
    dirs = [d for d in sandbox_root().glob("bakeoff-sb-*") if (d / ".bakeoff-owner").is_file()
            and (d / ".bakeoff-owner").read_text().strip() == str(pid)]
    out["dirs"] = [str(d) for d in dirs]
    mounts = Path("/proc/self/mounts").read_text()
    out["mounts"] = [str(d) for d in dirs if str(d) in mounts]
    out["processes"] = [str(p) for p in processes_with_marker(lambda v: v.startswith(f"{pid}:"))]
    return out


def _bakeoff(args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> tuple[subprocess.CompletedProcess, int]:
    proc = subprocess.Popen([sys.executable, "-m", "bakeoff", *args], env=env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"bakeoff {args[0]} stalled past {timeout}s on hostile candidates:\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def _function(body: str) -> str:
    return f"def total(xs: list[int]) -> int:\n    {body}\n"


@pytest.mark.parametrize("kind", BACKENDS)
def test_select_names_each_hostile_candidate_and_its_limit(kind: str, tmp_path: Path) -> None:
    (tmp_path / "ref.py").write_text(CALC.replace("def total(xs):", "def total(xs: list[int]) -> int:"))
    args = ["select", "--reference", "ref.py", "--sandbox", kind, "--json", "--repeats", "1", "--timing-repeats", "2"]
    for name, body in [("good", GOOD), *((n, b) for n, (b, _) in HOSTILE.items())]:
        (tmp_path / f"{name}.py").write_text(_function(body))
        args += ["--candidate", f"{name}.py"]
    proc, pid = _bakeoff(args, cli_env(tmp_path), tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    verdict = json.loads(proc.stdout)
    assert verdict["winner"] == "good"  # the others went on
    notes = {row["candidate"]: row["note"] for row in verdict["rows"]}
    for name, (_, limit) in HOSTILE.items():
        assert notes[name] == (limit or "killed: more than 2 s per call"), notes
    assert _leftovers(pid) == {k: [] for k in _leftovers(pid)}


def _script(path: Path, bodies: list[str]) -> Path:
    edits = [("calc.py\n<<<<<<< SEARCH\n    s = 0\n    for x in xs:\n        s = s + x\n    return s\n=======\n    "
              + body + "\n>>>>>>> REPLACE\n") for body in bodies]
    plan = (f'1. fan_out(goal="make total in calc.py faster", files=["calc.py"], n={len(bodies)}, entry="total")\n'
            "join()\n")
    responses = [{"role": "planner", "text": plan}, *({"role": "editor", "text": f"Try.\n\n{e}"} for e in edits),
                 {"role": "joiner", "text": "Finish: total uses sum.", "repeat": True},
                 {"role": "tester", "text": "```python\nassert total([1, 2, 3]) == 6\n```", "repeat": True}]
    path.write_text(json.dumps({"responses": responses}))
    return path


@pytest.mark.parametrize("kind", BACKENDS)
def test_run_names_each_hostile_candidate_and_its_limit(kind: str, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "calc.py").write_text(CALC)
    (repo / "check.py").write_text(CHECK)
    bodies = [GOOD, *(b for b, _ in HOSTILE.values())]
    (repo / "bakeoff.toml").write_text(textwrap.dedent(f"""\
        sandbox = "{kind}"
        rounds = 0
        n = {len(bodies)}
        max_sandboxes = 6
        test = "python3 check.py"
        command_timeout = 30
        """))
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "base"]):
        git(repo, *args)
    script = _script(tmp_path / "s.json", bodies)
    env = cli_env(tmp_path, BAKEOFF_SANDBOX=kind)
    proc, pid = _bakeoff(["run", "--repo", str(repo), "--model", f"scripted:{script}", "--json", "make total faster"],
                         env, tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    rows = {c["id"]: c for c in doc["report"]}
    by_body = {name: next(c for c in rows.values() if mark in (c["source"] or "")) for name, mark in MARKS.items()}
    assert "return sum(xs)" in rows[doc["winner"]["id"]]["source"]  # the others went on
    for name, (_, limit) in HOSTILE.items():
        error = by_body[name]["error"] or ""
        assert error.startswith(f"test: [{limit or 'killed: more than 30 s'}"), (name, error[:300])
    assert "[... output cut ...]" in by_body["flood"]["error"]  # capped, head and tail kept
    assert _leftovers(pid) == {k: [] for k in _leftovers(pid)}
    assert os.path.isdir(repo / ".git") and git(repo, "status", "--porcelain") == ""
