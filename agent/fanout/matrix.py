"""Every candidate on every test: the gate (the repository's own suite), the benchmark's
output, then the differential harness's cases and the generated tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bakeoff.agent.fanout.baseline import Baseline
from bakeoff.agent.fanout.source import same_output
from bakeoff.agent.harness.protocol import DifferentialHarness
from bakeoff.agent.types import Candidate, ExecutionMatrix, TestCase

REPO_TESTS = "repo-tests"  # the matrix column for the repository's own suite
BENCH_OUTPUT = "bench-output"  # what the benchmark printed, compared with the base's


def gate(candidates: Sequence[Candidate]) -> dict[str, bool]:
    """Step 1: a candidate passes the gate when it built and the repository's tests that passed
    at base still pass (its trajectory ends without an error) and it changed something."""
    return {c.id: c.error is None and bool(c.patch) for c in candidates}


def scored_tests(baseline: Baseline, made: Sequence[TestCase], *, reference: bool = True) -> list[TestCase]:
    """The tests the vote counts: the gate's column, the benchmark's output (the base's is the
    right one only when the base is the reference), the made tests."""
    bench = [TestCase(id=BENCH_OUTPUT, kind="differential", expected=baseline.profile_output, valid=True)]
    return [
        TestCase(id=REPO_TESTS, kind="given", valid=True),
        *(bench if baseline.profile_output is not None and reference else []),
        *made,
    ]


def as_probe(test: TestCase) -> TestCase:
    """``test`` for a goal that changes behaviour: a differential case keeps its input but not
    the base's answer (candidates are compared with each other), and nothing is validated
    against the base."""
    if test.kind == "differential":
        return test.model_copy(update={"expected": None, "valid": None})
    return test.model_copy(update={"valid": None})


async def run_matrix(
    candidates: Sequence[Candidate], tests: list[TestCase], harness: DifferentialHarness | None,
    sources: Mapping[str, str], profile_outputs: Mapping[str, str | None], baseline: Baseline,
    *, reference: bool = True,
) -> ExecutionMatrix:
    """``M[candidate][test]``. ``sources`` holds each candidate's version of the entry file and,
    when it is the ``reference``, the base's as ``"base"``: a test the base fails is marked
    invalid (the reference is right by definition). ``profile_outputs``: what each
    candidate's benchmark printed."""
    matrix = ExecutionMatrix()
    passed_gate = gate(candidates)
    for c in candidates:
        matrix.set(c.id, REPO_TESTS, "pass" if passed_gate[c.id] else "fail")
        if baseline.profile_output is not None and reference:
            out = profile_outputs.get(c.id)
            ok = passed_gate[c.id] and same_output(out, baseline.profile_output)
            matrix.set(c.id, BENCH_OUTPUT, "pass" if ok else ("error" if out is None else "fail"), output=out)
    if harness is None or not tests:
        return matrix
    run = await harness.run_matrix(sources, tests)
    for t in tests:
        if "base" in run.cells and t.valid is None:
            t.valid = run.cells["base"].get(t.id) == "pass"
    for c in candidates:
        for t in tests:
            outcome = run.cells.get(c.id, {}).get(t.id, "error")
            matrix.set(c.id, t.id, outcome, output=run.outputs.get(c.id, {}).get(t.id))
    return matrix
