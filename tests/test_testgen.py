"""Parsing model-written tests (pure, table-driven) and the Python differential harness on real processes."""

from __future__ import annotations

import pytest

from bakeoff.agent.harness.protocol import DifferentialHarness
from bakeoff.agent.models.scripted import ScriptedModel, ScriptedResponse
from bakeoff.agent.harness.pyexec import PyJob, decode, run_job, values_equal
from bakeoff.agent.harness.python_harness import PythonHarness
from bakeoff.agent.harness.testgen import call_of, generate_tests, parse_generated_tests, parse_inputs, typed_inputs

PARSE_CASES = [
    ("plain", "assert f(1) == 2\nassert f(2) == 3\n", ["assert f(1) == 2", "assert f(2) == 3"]),
    ("fenced with prose", "Here are tests:\n```python\nassert f(1) == 2\n```\nThey cover it.", ["assert f(1) == 2"]),
    ("assert then newline", "assert \n    f([], 1) == False, 'empty'\n", ["assert f([], 1) == False, 'empty'"]),
    ("truncated last line", "assert f(1) == 2\nassert f([1, 2", ["assert f(1) == 2"]),
    ("other function dropped", "assert g(1) == 2\nassert f(3) == 4", ["assert f(3) == 4"]),
    ("placeholder kept (it runs, and fails)", "assert ____ == f(1)", ["assert ____ == f(1)"]),
    ("stop at def/print", "assert f(1) == 1\nprint('done')\ndef helper(): pass", ["assert f(1) == 1"]),
    ("multi-line assert", "assert f([1,\n          2]) == 3\n", ["assert f([1,\n          2]) == 3"]),
    ("trailing indented junk", "assert f(1) == 1\n    pass\n", ["assert f(1) == 1"]),
    ("nothing", "I cannot write tests for this.", []),
    ("word inside a name is no assert", "reassert_all = f(1)\nassert f(2) == 2", ["assert f(2) == 2"]),
]


@pytest.mark.parametrize("name,text,expected", PARSE_CASES, ids=[c[0] for c in PARSE_CASES])
def test_parse_generated_tests(name, text, expected):
    assert [t.code for t in parse_generated_tests(text, "f")] == expected


def test_duplicates_kept_with_weight():
    tests = parse_generated_tests("assert f(1) == 2\nassert f(1) == 2\nassert f(2) == 3\nassert f(1) == 2", "f")
    assert [(t.code, t.weight) for t in tests] == [("assert f(1) == 2", 3), ("assert f(2) == 3", 1)]
    assert len({t.id for t in tests}) == 2


def test_pytest_functions_become_tests():
    text = "```python\ndef test_small():\n    assert f(1) == 2\n\ndef test_other():\n    assert g(1)\n```"
    tests = parse_generated_tests(text, "f")
    assert len(tests) == 1 and tests[0].code.endswith("test_small()")
    namespace: dict = {}
    exec("def f(x): return x + 1\n" + tests[0].code, namespace)  # runs cleanly: it is real code


def test_call_of_and_parse_inputs():
    assert call_of("assert 3 == f(g(1), [f(2)])", "f") == "f(g(1), [f(2)])"
    assert call_of("assert x == 1", "f") is None
    text = "```python\nf([1, 2], 0)\nf('a')\nf([1, 2], 0)\n```"
    assert parse_inputs(text, "f") == ["f([1, 2], 0)", "f('a')"]


def test_typed_inputs_follow_hints():
    src = "from typing import List, Tuple\ndef f(xs: List[float], k: int, p: Tuple[str, bool]) -> float: ..."
    calls = typed_inputs(src, "f", count=10, size=5)
    assert len(calls) == 10 and calls[0].startswith("f([]")
    for c in calls:
        xs, k, p = eval(c.replace("f(", "(", 1))
        assert isinstance(xs, list) and all(isinstance(x, float) for x in xs)
        assert isinstance(k, int) and isinstance(p, tuple) and isinstance(p[0], str) and isinstance(p[1], bool)


def test_typed_inputs_guess_unannotated_parameters_from_their_names():
    calls = typed_inputs("def f(arr, k, s, thing):\n    pass\n", "f", count=12, size=5)
    assert len(calls) == 12
    for c in calls:
        arr, k, s, thing = eval(c.replace("f(", "(", 1))
        assert isinstance(arr, list) and all(isinstance(x, int) for x in arr)
        assert isinstance(k, int) and isinstance(s, str) and isinstance(thing, int)


@pytest.mark.parametrize("a,b,kw,equal", [
    (1, 1, {}, True), (1, 2, {}, False), (0.1 + 0.2, 0.3, {}, True), (0.3001, 0.3, {}, False),
    ([1, 2], [2, 1], {}, False), ([1, 2], [2, 1], {"unordered": True}, True), ((1,), [1], {}, False),
    ("a", "a", {}, True), (True, 1, {}, False), ({"a": 1.0}, {"a": 1.0 + 1e-13}, {}, True),
])
def test_values_equal(a, b, kw, equal):
    assert values_equal(a, b, **kw) is equal


def test_child_process_survives_hostile_programs():
    died = run_job(PyJob(source="import os\nos._exit(3)\n", asserts=["assert 1"]))
    assert died.load_error and died.asserts == ["error"]
    hang = run_job(PyJob(source="def f():\n    while True: pass\n", calls=["f()"] * 4, timeout_s=0.2, max_timeouts=2))
    assert [c.outcome for c in hang.calls] == ["timeout"] * 4
    loud = run_job(PyJob(source="def f(x):\n    print('noise' * 100)\n    return {x: (x, [x])}\n", calls=["f(2)"]))
    assert decode(loud.calls[0].value) == {2: (2, [2])}


REFERENCE = '''
def count_pairs(xs: list[int], k: int) -> int:
    """Pairs i < j with xs[i] + xs[j] == k."""
    n = 0
    for i in range(len(xs)):
        for j in range(i + 1, len(xs)):
            if xs[i] + xs[j] == k:
                n += 1
    return n
'''

FAST = '''
from collections import Counter
def count_pairs(xs: list[int], k: int) -> int:
    seen = Counter()
    n = 0
    for x in xs:
        n += seen[k - x]
        seen[x] += 1
    return n
'''

OFF_BY_ONE = REFERENCE.replace("range(i + 1, len(xs))", "range(i + 1, len(xs) - 1)")

RANDOM = '''
import random
def count_pairs(xs: list[int], k: int) -> int:
    return random.randint(0, 10**9)
'''

HANGS = '''
def count_pairs(xs: list[int], k: int) -> int:
    while True:
        pass
'''


async def test_python_harness_on_real_functions():
    harness = PythonHarness(REFERENCE, "count_pairs", count=12, size=6, timeout_s=0.5, repeats=2, timing_size=300)
    assert isinstance(harness, DifferentialHarness)
    tests = await harness.make_tests(extra_inputs=["count_pairs([1, 1, 1], 2)", ([5, -5], 0)])
    assert len(tests) >= 12 and all(t.valid and t.expected is not None for t in tests)
    assert any(t.input == "count_pairs([1, 1, 1], 2)" and t.expected == 3 for t in tests)
    sources = {"fast": FAST, "off": OFF_BY_ONE, "random": RANDOM, "hangs": HANGS}
    m = await harness.run_matrix(sources, tests)
    assert set(m.cells["fast"].values()) == {"pass"}
    assert "fail" in m.cells["off"].values()
    assert m.flaky("random")
    assert "timeout" in m.cells["hangs"].values() and m.passed("hangs") == frozenset()
    from bakeoff.agent.selection.vote import vote

    v = vote(m, tests, reference=True)
    assert v.winners == ["fast"] and "random" in v.flaky
    timings = await harness.time({"fast": FAST}, repeats=3)
    t = timings["fast"]
    assert len(t.baseline_s) == 3 and t.speedup is not None and t.speedup > 1.0


async def test_harness_rejects_missing_entry():
    with pytest.raises(ValueError, match="not defined"):
        PythonHarness(REFERENCE, "nope")


async def test_generate_tests_with_scripted_model():
    reply = "Sure!\n```python\nassert count_pairs([1, 1], 2) == 1\nassert count_pairs([], 0) == 0\n```"
    model = ScriptedModel(responses=[ScriptedResponse(texts=[reply, reply])])
    tests = await generate_tests(model, "count pairs", REFERENCE, "count_pairs", n=2)
    assert [(t.code, t.weight) for t in tests] == [
        ("assert count_pairs([1, 1], 2) == 1", 2), ("assert count_pairs([], 0) == 0", 2)]


def test_mutate_inputs_keeps_types_and_skips_non_literals():
    from bakeoff.agent.harness.testgen import mutate_inputs

    out = mutate_inputs(["f([1, 2, 3], 2)", "f('abc')", "f(g(1))", "f(x=1)"], "f", per_call=2)
    assert len(out) == 4 and len(set(out)) == 4
    for call in out:
        args = eval(call.replace("f(", "(", 1) + ("," if call.count(",") == 0 else ""))
        assert isinstance(args[0], (list, str))
    assert "f([1, 2, 3], 2)" not in out and all("g(" not in c for c in out)
