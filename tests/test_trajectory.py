"""Trajectories and fan_out on real copies of the bundled examples, in local sandboxes.

The editor and tester are ``ScriptedModel``s: the bundled scripts of ``examples/scripted/``
or small inline scripts. Everything else is real: sandboxes, make, gcc with OpenMP, pytest,
the differential harnesses, the vote.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bakeoff.agent.events import EventBus
from bakeoff.agent.models.scripted import ScriptedModel, ScriptedResponse
from bakeoff.agent.seams import ToolContext, Workspace
from bakeoff.agent.fanout.strategies import Strategy, strategies_for
from bakeoff.agent.fanout.baseline import Baseline, Commands, FanOutError
from bakeoff.agent.fanout.pipeline import fan_out
from bakeoff.agent.fanout.settings import FanOutServices, FanOutSettings
from bakeoff.agent.fanout.source import guess_entry, inline_includes, same_output
from bakeoff.agent.fanout.tool import FanOut, FanOutArgs
from bakeoff.agent.fanout.trajectory import Trajectory
from bakeoff.agent.types import FanOutResult
from bakeoff.sandboxes.pool import SandboxPool

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
C_GOAL = "make collatz_total in kernel.c parallel and faster with OpenMP, keeping its result exact"
PY_GOAL = "make count_close_pairs in pairs.py faster without changing its results"


def repo_copy(tmp_path: Path, example: str) -> Path:
    repo = tmp_path / example
    shutil.copytree(EXAMPLES / example, repo, ignore=shutil.ignore_patterns("__pycache__", "bench", "test_kernel"))
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)
    return repo


def script(name: str) -> ScriptedModel:
    return ScriptedModel.from_file(EXAMPLES / "scripted" / f"{name}.yaml")


def c_strategy(name: str) -> Strategy:
    return next(s for s in strategies_for("c") if s.name == name)


def recorder(bus: EventBus) -> list:
    seen: list = []
    bus.subscribe(seen.append)
    return seen


def c_trajectory(repo: Path, model, pool, bus, strategy: str, rounds: int = 2, budget=None) -> Trajectory:
    baseline = Baseline(
        commands=Commands(build="make -s", test="make -s test"),  # no benchmark: no timing here
        files={"kernel.c": (repo / "kernel.c").read_text()},
    )
    return Trajectory(
        "c1", goal=C_GOAL, files=["kernel.c"], language="c", entry="collatz_total", strategy=c_strategy(strategy),
        temperature=0.2, model=model, pool=pool, workspace=Workspace(path=repo, commit="HEAD"),
        baseline=baseline, settings=FanOutSettings(rounds=rounds), events=bus, budget=budget,
    )


# --------------------------------------------------------------------------- one trajectory


async def test_build_error_goes_back_to_the_model_and_the_repair_builds(tmp_path):
    repo = repo_copy(tmp_path, "omp_kernel")
    bus = EventBus()
    seen = recorder(bus)
    pool = SandboxPool(kind="local", max_concurrent=2)
    cand = await c_trajectory(repo, script("omp_kernel"), pool, bus, "omp-reduction").run()

    assert cand.error is None, cand.error
    assert cand.built is True and cand.tests_failed == 0
    assert cand.rounds == 1  # the first answer did not build; one repair round fixed it
    assert "reduction(+:total)" in cand.patch and "totl" not in cand.patch
    assert "kernel.c" in cand.patch and cand.source is not None and "reduction(+:total)" in cand.source
    repair = cand.messages[2]["content"]
    assert cand.messages[2]["role"] == "user" and "build failed" in repair and "totl" in repair
    states = [e.data["state"] for e in seen if e.kind == "candidate.state"]
    assert states[:2] == ["editing", "building"] and "testing" in states and states[-1] == "done"
    assert (repo / "kernel.c").read_text() == (EXAMPLES / "omp_kernel" / "kernel.c").read_text()  # never the user's tree


async def test_malformed_answer_is_a_failed_candidate_not_a_crash(tmp_path):
    repo = repo_copy(tmp_path, "omp_kernel")
    broken = (
        "Here is the change.\n\nkernel.c\n<<<<<<< SEARCH\n    long total = 0;\n"
        "    #pragma omp parallel for\n>>>>>>> REPLACE\n"
    )
    model = ScriptedModel([ScriptedResponse(text=broken, repeat=True)])
    bus = EventBus()
    seen = recorder(bus)
    cand = await c_trajectory(repo, model, SandboxPool(kind="local", max_concurrent=2), bus, "omp-simd", rounds=1).run()

    assert cand.error is not None and cand.error.startswith("parse:")
    assert "=======" in cand.error  # the parser's reason, as the model saw it
    assert cand.patch == "" and cand.built is None
    assert [m["role"] for m in cand.messages] == ["user", "assistant", "user", "assistant"]
    assert "could not be read as edits" in cand.messages[2]["content"]
    assert seen[-1].data["state"] == "failed"


async def test_an_edit_that_does_not_apply_gets_did_you_mean(tmp_path):
    repo = repo_copy(tmp_path, "omp_kernel")
    wrong = "kernel.c\n<<<<<<< SEARCH\n    long total = 0u;\n=======\n    long total = 1;\n>>>>>>> REPLACE\n"
    model = ScriptedModel([ScriptedResponse(text=wrong, repeat=True)])
    cand = await c_trajectory(repo, model, SandboxPool(kind="local", max_concurrent=2), EventBus(), "omp-simd", rounds=1).run()

    assert cand.error is not None and cand.error.startswith("apply:")
    assert "long total = 0;" in cand.messages[2]["content"]  # the closest region of the file, shown back


@pytest.mark.parametrize(
    ("path", "why"),
    [("../outside.c", "leaves the repository"), (".git/config", "touches .git/"),
     (".github/workflows/ci.yml", "CI file"), (".g\u0456t/config", "touches .git/"),
     (".github/actions/setup/action.yml", "CI file"), ("GIT~1/hooks/pre-commit", "touches .git/"),
     (".gitmodules", "repository configuration"), ("Makefile", "not one of the files")],
)
async def test_edits_outside_the_task_files_are_refused(tmp_path, path, why):
    repo = repo_copy(tmp_path, "omp_kernel")
    hostile = f"{path}\n<<<<<<< SEARCH\n=======\nall:\n\techo owned\n>>>>>>> REPLACE\n"
    model = ScriptedModel([ScriptedResponse(text=hostile, repeat=True)])
    cand = await c_trajectory(repo, model, SandboxPool(kind="local", max_concurrent=2), EventBus(), "omp-simd", rounds=0).run()
    assert cand.error is not None and cand.error.startswith("apply:") and why in cand.error
    assert cand.patch == ""
    assert not (tmp_path / "outside.c").exists()


async def test_model_errors_fail_the_candidate_alone(tmp_path):
    repo = repo_copy(tmp_path, "omp_kernel")
    model = ScriptedModel([])  # every call raises ScriptExhausted, as a dead API would raise
    cand = await c_trajectory(repo, model, SandboxPool(kind="local", max_concurrent=2), EventBus(), "omp-simd").run()
    assert cand.error is not None and "ScriptExhausted" in cand.error


# --------------------------------------------------------------------------- fan_out


def services(repo: Path, model, bus: EventBus, budget=None, **settings) -> FanOutServices:
    return FanOutServices(
        editors=[model], tester=model, pool=SandboxPool(kind="local", max_concurrent=4),
        workspace=Workspace(path=repo, commit="HEAD"), events=bus, settings=FanOutSettings(**settings), budget=budget,
    )


@pytest.mark.slow
async def test_fan_out_picks_the_correct_fast_candidate_and_rejects_race_and_off_by_one(tmp_path):
    repo = repo_copy(tmp_path, "omp_kernel")
    bus = EventBus()
    seen = recorder(bus)
    order = [c_strategy(n) for n in ("omp-reduction", "omp-manual-split", "omp-simd", "omp-tasks", "omp-schedule")]
    result = await fan_out(
        C_GOAL, ["kernel.c"], 5,
        services=services(repo, script("omp_kernel"), bus, strategies=order, rounds=2, first_wave=1.0,
                          profile_repeats=1, timing_repeats=3),
    )

    by_strategy = {c.strategy: c for c in result.candidates}
    # The reduction is the pick; it ships when it is faster than the base here, and on a busy
    # two-core machine it may not be: then it is offered, not shipped (never a slower "winner").
    chosen = result.winner or next((c for c in result.candidates if c.id == result.verdict.best), None)
    assert chosen is not None and chosen.strategy == "omp-reduction", result.report_table
    assert "reduction(+:total)" in chosen.patch
    assert result.patch == (chosen.patch if result.winner else "")
    assert result.winner is not None or result.verdict.reason.startswith("correct, but no candidate is faster")
    correct = set(result.verdict.correct)
    for wrong in ("omp-manual-split", "omp-simd", "omp-tasks"):  # off-by-one, data race, missing reduction
        assert by_strategy[wrong].id not in correct, result.report_table
    assert by_strategy["omp-schedule"].id in correct  # slower, but correct
    row = {r.candidate: r for r in result.verdict.rows}
    assert row[by_strategy["omp-manual-split"].id].tests_passed < row[chosen.id].tests_passed
    assert all(c.id in result.report_table for c in result.candidates)
    assert f"{'*' if result.winner else '?'} {chosen.id}" in result.report_table  # the pick is marked
    assert chosen.id in result.verdict.reason
    assert row[chosen.id].curve and row[chosen.id].threads == result.verdict.timing.threads
    kinds = {e.kind for e in seen}
    assert {"fanout.start", "fanout.end", "candidate.state"} <= kinds
    assert (repo / "kernel.c").read_text() == (EXAMPLES / "omp_kernel" / "kernel.c").read_text()
    FanOutResult.model_validate_json(result.model_dump_json())  # everything serializes


async def test_fan_out_tool_schema_and_a_missing_editor(tmp_path):
    repo = repo_copy(tmp_path, "slow_python")
    seen: list[FanOutResult] = []
    svc = services(repo, script("slow_python"), EventBus())
    svc.editors = []
    tool = FanOut(svc, on_result=seen.append)
    schema = FanOutArgs.model_json_schema()
    assert tool.name == "fan_out" and set(schema["required"]) == {"goal", "files"}
    assert schema["properties"]["n"]["default"] == 4
    with pytest.raises(FanOutError, match="editor model"):
        await tool(FanOutArgs(goal="g", files=["a.c"]), ToolContext())
    assert seen == []


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("52599100", "52599100", True),
        ("52599100", "52599018", False),
        ("sum = 1.0000000001", "sum = 1.0", True),
        ("sum = 1.01", "sum = 1.0", False),
        ("3 items", "3 things", False),
        (None, "1", False),
    ],
)
def test_same_output(a, b, same):
    assert same_output(a, b) is same


def test_guess_entry_and_inline_includes():
    files = {"kernel.c": (EXAMPLES / "omp_kernel" / "kernel.c").read_text()}
    assert guess_entry("speed up kernel.c", files) == "collatz_total"  # the only public function
    assert guess_entry("make collatz_total faster", files) == "collatz_total"
    inlined = inline_includes(files["kernel.c"], {"kernel.h": "#define MAX_STEPS 7\n"})
    assert '#include "kernel.h"' not in inlined and "#define MAX_STEPS 7" in inlined


def test_settings_from_the_session_settings():
    from bakeoff.agent.config import Settings

    s = FanOutSettings.from_settings(Settings(n=6, rounds=1, test="make check"))
    assert (s.max_n, s.rounds, s.test, s.build) == (6, 1, "make check", None)  # the user's n caps the plan's
