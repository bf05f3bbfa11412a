"""The bundled examples and their scripted model answers stay what the demo promises.

The examples build and pass their own tests; every scripted editor answer parses (except
the one malformed on purpose) and applies to the example; the wrong candidates are really
wrong and the right ones really right, checked by running them; the planner's scripted plan
parses against the real tool registry.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bakeoff.agent.models.scripted import ScriptFile
from bakeoff.tools.edit import apply_edit_blocks
from bakeoff.tools.edit_blocks import EditParseError, parse_edit_blocks

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = {"omp_kernel": "kernel.c", "slow_python": "pairs.py"}


def responses(example: str) -> list:
    return ScriptFile.model_validate(yaml.safe_load((EXAMPLES / "scripted" / f"{example}.yaml").read_text())).responses


def first_answer(example: str, strategy: str) -> str:
    """The editor's first answer for ``strategy`` (the entry without a repair round)."""
    for r in responses(example):
        if r.match and f"({strategy})" in r.match.replace("\\", "") and "Repair round" not in r.match:
            return r.text
    raise AssertionError(f"no first answer for {strategy} in {example}")


def applied(example: str, strategy: str) -> str:
    path = SCRIPTS[example]
    files = {path: (EXAMPLES / example / path).read_text()}
    return apply_edit_blocks(files, parse_edit_blocks(first_answer(example, strategy)))[path]


def copy(tmp_path: Path, example: str) -> Path:
    dest = tmp_path / example
    shutil.copytree(EXAMPLES / example, dest, ignore=shutil.ignore_patterns("__pycache__", "bench", "test_kernel"))
    return dest


def test_c_example_builds_and_passes_its_tests(tmp_path):
    repo = copy(tmp_path, "omp_kernel")
    out = subprocess.run(["make", "-s", "test"], cwd=repo, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 failed" in out.stdout


def test_python_example_passes_its_tests(tmp_path):
    repo = copy(tmp_path, "slow_python")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                         cwd=repo, capture_output=True, text=True)
    assert out.returncode == 0 and "5 passed" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("example", sorted(SCRIPTS))
def test_every_scripted_answer_parses_except_the_malformed_one(example):
    malformed = []
    for r in responses(example):
        if not (r.match or "").startswith("(?s)Strategy"):
            continue
        try:
            parse_edit_blocks(r.text)
        except EditParseError as exc:
            malformed.append((r.match, str(exc)))
    declines = [r for r in responses(example) if r.repeat]  # "no further edit" answers
    if example == "omp_kernel":
        edits = [m for m in malformed if not any(d.match == m[0] for d in declines)]
        assert len(edits) == 1 and "omp-simd" in edits[0][0] and "=======" in edits[0][1]
    else:
        assert all(any(d.match == m[0] for d in declines) for m in malformed)


@pytest.mark.parametrize(
    ("example", "strategy"),
    [("omp_kernel", s) for s in ("omp-reduction", "omp-schedule", "omp-manual-split", "omp-simd", "omp-tasks", "cache-blocking")]
    + [("slow_python", s) for s in ("py-algorithm", "py-multiprocessing", "py-idioms", "py-caching")],
)
def test_first_answers_apply_to_the_example(example, strategy):
    text = applied(example, strategy)
    assert text != (EXAMPLES / example / SCRIPTS[example]).read_text()


def test_one_answer_is_a_whole_file():
    blocks = parse_edit_blocks(first_answer("omp_kernel", "omp-manual-split"))
    assert len(blocks) == 1 and blocks[0].whole_file and blocks[0].path == "kernel.c"


def _bench(repo: Path, kernel: str, threads: int) -> str:
    (repo / "kernel.c").write_text(kernel)
    subprocess.run(["make", "-s", "bench"], cwd=repo, check=True, capture_output=True)
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": str(threads)}
    return subprocess.run(["./bench"], cwd=repo, env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_c_candidates_are_as_right_or_wrong_as_the_script_says(tmp_path):
    repo = copy(tmp_path, "omp_kernel")
    base = _bench(repo, (EXAMPLES / "omp_kernel" / "kernel.c").read_text(), 1)
    assert base == "52599100"
    kernel = applied("omp_kernel", "omp-reduction").replace("totl", "total")  # after its repair round
    assert _bench(repo, kernel, 2) == base
    assert _bench(repo, applied("omp_kernel", "omp-schedule"), 2) == base
    assert _bench(repo, applied("omp_kernel", "cache-blocking"), 2) == base
    # The block split drops the last element whenever the size is odd, as the benchmark's is.
    assert _bench(repo, applied("omp_kernel", "omp-manual-split"), 2) != base
    assert _bench(repo, applied("omp_kernel", "omp-manual-split"), 1) == base
    # Per-thread partial sums assigned instead of added: only one thread's part survives.
    assert _bench(repo, applied("omp_kernel", "omp-tasks"), 2) != base


def _call(source: str, *args):
    namespace: dict = {}
    exec(compile(source, "pairs.py", "exec"), namespace)
    return namespace["count_close_pairs"](*args)


def test_python_candidates_are_as_right_or_wrong_as_the_script_says():
    base = (EXAMPLES / "slow_python" / "pairs.py").read_text()
    cases = [([], 1.0), ([3.0, 1.0, 2.0, 2.5], 0.5), ([5.0, 5.0, 5.0], 0.0), ([0.1 * i for i in range(40)], 0.35)]
    for strategy in ("py-algorithm", "py-multiprocessing", "py-idioms", "py-caching"):
        source = applied("slow_python", strategy)
        for args in cases:
            assert _call(source, *args) == _call(base, *args), (strategy, args)
    # Equal values are counted whatever the radius: wrong when the radius is negative.
    assert _call(base, [1.0, 1.0, 1.0], -1.0) == 0
    assert _call(applied("slow_python", "py-caching"), [1.0, 1.0, 1.0], -1.0) == 3


@pytest.mark.parametrize("example", sorted(SCRIPTS))
def test_scripted_plan_parses_against_the_real_registry(example):
    from bakeoff.agent.planning.plan import parse_plan
    from bakeoff.agent.fanout.settings import FanOutServices
    from bakeoff.agent.fanout.tool import FanOut
    from bakeoff.agent.seams import Workspace
    from bakeoff.sandboxes.pool import SandboxPool
    from bakeoff.tools.registry import default_registry

    registry = default_registry()
    registry.register(FanOut(FanOutServices(editors=[], pool=SandboxPool(kind="local"), workspace=Workspace(path=EXAMPLES))))
    plan = next(r.text for r in responses(example) if r.match == "You are the planner of bakeoff")
    tasks, errors, joined = parse_plan(plan, registry)
    assert not errors and joined
    fan = next(t for t in tasks if t.tool == "fan_out")
    assert fan.args["files"] == [SCRIPTS[example]] and fan.deps == [1]
    joiner = next(r.text for r in responses(example) if r.match == "You are the joiner of bakeoff")
    assert re.search(r"^Finish: ", joiner, re.M)


def test_tester_answer_holds_one_wrong_assert():
    from bakeoff.agent.harness.testgen import parse_generated_tests

    text = next(r.text for r in responses("slow_python") if r.match == "You write tests for a Python function")
    tests = parse_generated_tests(text, "count_close_pairs")
    base = (EXAMPLES / "slow_python" / "pairs.py").read_text()
    namespace: dict = {}
    exec(base, namespace)
    failing = []
    for t in tests:
        try:
            exec(t.code, dict(namespace))
        except AssertionError:
            failing.append(t.code)
    assert len(tests) == 9 and failing == ["assert count_close_pairs([0.0, 1.0, 2.0], 2.0) == 2"]
