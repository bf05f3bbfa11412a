"""Model-proposed edge inputs: parsing real-looking tester answers (table-driven), then the real
C++ and Python differential harnesses and ``make_tests`` turning them into tests.

The tester is a ``ScriptedModel``; the harnesses compile and run for real.
"""

from __future__ import annotations

import pytest

from bakeoff.agent.harness.c_plan import ConstraintError, build_plan
from bakeoff.agent.harness.c_signature import parse_signature
from bakeoff.agent.harness.c_harness import CHarness
from bakeoff.agent.harness.c_edge_inputs import parse_c_inputs
from bakeoff.agent.harness.edge_inputs import make_tests_with, parse_python_inputs, propose_inputs
from bakeoff.agent.harness.edge_text import MAX_INPUTS, json_items
from bakeoff.agent.models.scripted import ScriptExhausted, ScriptedModel, ScriptedResponse
from bakeoff.agent.harness.python_harness import PythonHarness
from bakeoff.agent.fanout.settings import FanOutSettings
from bakeoff.agent.fanout.tests import make_tests

SUM = "int total(std::vector<int> const& x) {\n  int s = 0;\n  for (int v : x) s += v;\n  return s;\n}\n"
# Correct on every input but the empty one: what random sizes from 1 up never show.
SUM_WRONG_ON_EMPTY = "int total(std::vector<int> const& x) {\n  int s = x.empty() ? 1 : 0;\n  for (int v : x) s += v;\n  return s;\n}\n"
POINTER = "double mean(const double *x, size_t n) {\n  double s = 0;\n  for (size_t i = 0; i < n; ++i) s += x[i];\n  return n ? s / n : 0;\n}\n"
POINTS = "struct Point {\n  double x, y;\n};\ndouble area(std::vector<Point> const& points) {\n  return 0;\n}\n"
GEMM = ("void gemm(std::vector<double> const& A, std::vector<double> const& B, std::vector<double> &C, "
        "size_t M, size_t K, size_t N) {}\n")
GEMM_CONSTRAINTS = {"vars": {v: {"small": [1, 6], "medium": 96, "large": 256} for v in "MKN"},
                    "args": {"A": {"len": "M*K"}, "B": {"len": "K*N"}, "C": {"len": "M*N"}}}
SORTED = "int find(std::vector<int> const& x, int key) {\n  return 0;\n}\n"
SORTED_CONSTRAINTS = {"vars": {"n": {"small": [1, 8], "medium": 64, "large": 4096, "pow2": True}},
                      "args": {"x": {"sorted": True, "unique": True, "range": [0, 100]}}}


def plan(source: str, function: str, constraints: dict | None = None):
    return build_plan(parse_signature(source, function), constraints or {})


# --------------------------------------------------------------------------- parsing, C/C++

# (name, source, function, constraints, model answer, expected inputs, substrings the notes hold)
C_CASES = [
    ("fenced JSON with prose around it", SUM, "total", None,
     'Here are edge cases for `total`:\n\n```json\n[\n  {"vars": {"n": 0}, "why": "empty vector"},\n'
     '  {"vars": {"n": 1}, "why": "one element"}\n]\n```\n\nThe empty input is the most likely to break.',
     [{"vars": {"n": 0}}, {"vars": {"n": 1}}], []),
    ("unfenced, prose, trailing commas", SUM, "total", None,
     'Sure. Sizes just past a multiple of 8 threads: [{"vars": {"n": 17},}, {"vars": {"n": 33}},] Hope this helps!',
     [{"vars": {"n": 17}}, {"vars": {"n": 33}}], []),
    ("a single object", SUM, "total", None, '```json\n{"vars": {"n": 0}}\n```', [{"vars": {"n": 0}}], []),
    ("a wrapping object", SUM, "total", None, '{"inputs": [{"vars": {"n": 2}}, {"vars": {"n": 9}}]}',
     [{"vars": {"n": 2}}, {"vars": {"n": 9}}], []),
    ("Python-style quotes", SUM, "total", None, "```\n[{'vars': {'n': 0}}, {'vars': {'n': 5}}]\n```",
     [{"vars": {"n": 0}}, {"vars": {"n": 5}}], []),
    ("one broken item among good ones", SUM, "total", None,
     '```json\n[{"vars": {"n": 2}}, {"vars": {"n": }}, {"vars": {"n": 5}}]\n```',
     [{"vars": {"n": 2}}, {"vars": {"n": 5}}], ["not valid JSON"]),
    ("bad items dropped, good ones kept", SUM, "total", None,
     '```json\n[{"vars": {"n": 0}}, {"vars": {"m": 3}}, {"vars": {"n": -1}}, {"vars": {"n": 100000000}},\n'
     ' {"vars": {"n": "lots"}}, {"vars": {"n": 2.5}}, {"vars": {"n": 0}}, {"values": {"x": [1, NaN]}}, {"why": "?"}, 7]\n```',
     [{"vars": {"n": 0}}],
     ["unknown size variable 'm'", "n=-1 is negative", "over 2048", "'lots' is not a whole number",
      "2.5 is not a whole number", "more left out"]),
    ("names matched ignoring case; sizes as strings", SUM, "total", None, '[{"vars": {"N": "3"}}]',
     [{"vars": {"n": 3}}], []),
    ("a literal list sets its size", SUM, "total", None, '[{"values": {"x": [5, 5, -1]}}]',
     [{"vars": {"n": 3}, "values": {"x": [5, 5, -1]}}], []),
    ("a literal that disagrees with its size", SUM, "total", None,
     '[{"vars": {"n": 2}, "values": {"x": [5, 5, -1]}}, {"values": {"x": [1, true]}}, {"values": {"y": [1]}}]',
     [], ["size n is 2, but x's 3 elements", "x[1]=True is not a whole number", "unknown parameter 'y'"]),
    ("a scalar that is a size moves to the sizes", POINTER, "mean", None,
     '[{"values": {"n": 4}}, {"values": {"x": [1.5, -2], "n": 2}}, {"values": {"x": [1.5], "n": 2}}, '
     '{"values": {"x": [1, Infinity]}}]',
     [{"vars": {"n": 4}}, {"vars": {"n": 2}, "values": {"x": [1.5, -2.0]}}],
     ["size n is 1, but n=2 makes it 2", "x[1] must be a finite number, not inf"]),
    ("struct literals written out field by field", POINTS, "area", None,
     '[{"values": {"points": [{"x": 1}, [2, 3]]}}, {"values": {"points": [{"z": 1}]}}]',
     [{"vars": {"n": 2}, "values": {"points": [{"x": 1.0, "y": 0.0}, {"x": 2.0, "y": 3.0}]}}],
     ["struct Point has no field 'z'"]),
    ("several sizes, a length expression, the constraints' domain", GEMM, "gemm", GEMM_CONSTRAINTS,
     '[{"vars": {"M": 1, "K": 1, "N": 7}}, {"vars": {"M": 2, "K": 1, "N": 1}, "values": {"A": [1, 2], "B": [3]}},'
     ' {"values": {"A": [1, 2]}}, {"vars": {"M": 0}}, {"vars": {"N": 97}}, {"values": {"M": 3, "K": 2, "N": 1}}]',
     [{"vars": {"M": 1, "K": 1, "N": 7}}, {"vars": {"M": 2, "K": 1, "N": 1}, "values": {"A": [1.0, 2.0], "B": [3.0]}},
      {"vars": {"M": 3, "K": 2, "N": 1}}],
     ["A has 2 elements but the sizes make it M*K", "M=0 is under 1, the smallest the constraints allow",
      "N=97 is over 96"]),
    ("sorted, unique, ranged and power-of-two inputs", SORTED, "find", SORTED_CONSTRAINTS,
     '[{"values": {"x": [1, 5, 9, 40]}}, {"values": {"x": [5, 1]}}, {"values": {"x": [3, 3]}},'
     ' {"values": {"x": [1, 500]}}, {"vars": {"n": 3}}, {"values": {"key": -7}, "vars": {"n": 1}}]',
     [{"vars": {"n": 4}, "values": {"x": [1, 5, 9, 40]}}, {"vars": {"n": 1}, "values": {"key": -7}}],
     ["x must be sorted", "x must hold no duplicates", "500, outside its range [0, 100]", "n=3 is not a power of two"]),
    ("garbage", SUM, "total", None, "I'm sorry, I can't determine edge cases without more context.",
     [], ["proposed no input in JSON"]),
    ("an empty list", SUM, "total", None, "```json\n[]\n```", [], ["proposed no input in JSON"]),
    ("empty answer", SUM, "total", None, "", [], ["proposed no input in JSON (empty)"]),
]


@pytest.mark.parametrize(("source", "function", "constraints", "answer", "expected", "notes"),
                         [c[1:] for c in C_CASES], ids=[c[0] for c in C_CASES])
def test_parse_c_inputs(source, function, constraints, answer, expected, notes):
    inputs, got_notes = parse_c_inputs(answer, plan(source, function, constraints))
    assert inputs == expected, got_notes
    joined = "\n".join(got_notes)
    for want in notes:
        assert want in joined, joined
    if not notes:
        assert got_notes == []


def test_c_inputs_are_capped():
    answer = "[" + ", ".join(f'{{"vars": {{"n": {k}}}}}' for k in range(20)) + "]"
    inputs, notes = parse_c_inputs(answer, plan(SUM, "total"))
    assert inputs == [{"vars": {"n": k}} for k in range(MAX_INPUTS)]
    assert notes == [f"edge inputs: {20 - MAX_INPUTS} past the first {MAX_INPUTS} left out"]


def test_json_items_flags_broken_json():
    assert json_items('[{"a": 1}, {"b": 2}]') == ([{"a": 1}, {"b": 2}], True)
    items, whole = json_items('```json\n[{"a": 1}, {"b": oops}]\n```')
    assert items == [{"a": 1}] and whole is False


# --------------------------------------------------------------------------- parsing, Python

PY_CASES = [
    ("fenced calls with prose", "Edge cases:\n```python\nspan([])\nspan([7])\nspan([3, -2, 3])\n```\nDone.",
     ["span([])", "span([7])", "span([3, -2, 3])"], []),
    ("asserts and trailing commas, duplicates once", "assert span([]) == 0\nspan([1, 1]),\nspan([1, 1]);\n",
     ["span([])", "span([1, 1])"], []),
    ("non-literal arguments dropped", "```python\nspan(list(range(10)))\nspan([0] * 5)\nspan([-1])\n```",
     ["span([-1])"], ["span(list(range(10))) left out: its arguments are not all literals",
                      "span([0] * 5) left out"]),
    ("calls of other functions ignored", "```python\nprint(span([2]))\nother([1])\n```", ["span([2])"], []),
    ("garbage", "The function looks correct to me.", [], ["held no call of span"]),
]


@pytest.mark.parametrize(("answer", "expected", "notes"), [c[1:] for c in PY_CASES], ids=[c[0] for c in PY_CASES])
def test_parse_python_inputs(answer, expected, notes):
    calls, got_notes = parse_python_inputs(answer, "span")
    assert calls == expected
    joined = "\n".join(got_notes)
    for want in notes:
        assert want in joined, joined
    if not notes:
        assert got_notes == []


# --------------------------------------------------------------------------- real harnesses


async def test_cxx_harness_records_the_reference_on_a_proposed_empty_input():
    answer = ('Edge cases for total:\n```json\n[\n  {"vars": {"n": 0}, "why": "empty"},\n'
              '  {"values": {"x": [5, 5, -3]}, "why": "duplicates and a negative"},\n  {"vars": {"n": -4}},\n]\n```')
    # The prompt must show the function and its size variable: the script answers only then.
    tester = ScriptedModel([ScriptedResponse(match=r"(?s)edge-case inputs.*int total\(std::vector<int> const& x\).*`n`",
                                             text=answer)])
    h = CHarness(SUM, "total", language="c++", small_tests=2, medium_tests=0, threads=[1, 2], repeats=1)
    try:
        inputs, notes = await propose_inputs(tester, goal="make total parallel", source=SUM, entry="total",
                                             language="cpp", harness=h)
        assert inputs == [{"vars": {"n": 0}}, {"vars": {"n": 3}, "values": {"x": [5, 5, -3]}}]
        assert notes == ["edge input 3 left out: size n=-4 is negative"]
        tests = await h.make_tests(inputs)
        by_id = {t.id: t for t in tests}
        assert set(by_id) == {"diff-small-0", "diff-small-1", "diff-edge-0", "diff-edge-1"}, h.notes
        assert by_id["diff-edge-0"].input["vars"]["n"] == 0
        # The reference's return value ("O-1"): the sum of nothing, and of the literal's elements.
        assert by_id["diff-edge-0"].expected["preview"] == "O-1,0"
        assert by_id["diff-edge-1"].expected["preview"] == "O-1,7"
        # The edge test is what tells a version that is wrong only on the empty input apart.
        m = await h.run_matrix({"wrong_on_empty": SUM_WRONG_ON_EMPTY}, tests)
        cells = m.cells["wrong_on_empty"]
        assert cells["diff-edge-0"] == "fail"
        assert all(cells[t] == "pass" for t in ("diff-small-0", "diff-small-1", "diff-edge-1")), h.details
    finally:
        await h.close()


SPAN = "def span(xs: list[int]) -> int:\n    return max(xs) - min(xs) if xs else 0\n"


async def test_python_harness_gets_the_proposed_calls_as_tests():
    answer = "Edge cases:\n```python\nspan([])\nspan([7])\nspan([3, -2, 3])\nspan(list(range(3)))\n```"
    tester = ScriptedModel([ScriptedResponse(match=r"(?s)edge-case inputs.*def span\(xs: list\[int\]\)", text=answer)])
    h = PythonHarness(SPAN, "span", count=3, size=3, timeout_s=1.0, repeats=1)
    inputs, notes = await propose_inputs(tester, goal="make span faster", source=SPAN, entry="span",
                                         language="python", harness=h)
    assert inputs == ["span([])", "span([7])", "span([3, -2, 3])"]
    assert notes == ["edge input span(list(range(3))) left out: its arguments are not all literals"]
    tests = await h.make_tests(inputs)
    expected = {t.input: t.expected for t in tests}
    assert expected["span([])"] == 0 and expected["span([7])"] == 0 and expected["span([3, -2, 3])"] == 5


async def test_a_rejected_proposal_falls_back_to_the_harness_own_tests():
    h = CHarness(SUM, "total", language="c++", small_tests=2, medium_tests=0, threads=[1, 2], repeats=1)
    try:
        for bad, error in (([{"vars": {"n": "many"}}], "ValueError"), (["total({})"], "ConstraintError")):
            tests, notes = await make_tests_with(h, bad)
            assert [t.id for t in tests] == ["diff-small-0", "diff-small-1"]
            assert len(notes) == 1 and f"rejected the 1 proposed ({error}" in notes[0]
        with pytest.raises(ConstraintError):  # what the harness rejects, it rejects: the fallback is needed
            await h.make_tests(["total({})"])
    finally:
        await h.close()


# --------------------------------------------------------------------------- through make_tests


async def test_make_tests_adds_the_proposals_and_notes_what_it_left_out():
    answer = ('```json\n[{"vars": {"n": 0}}, {"vars": {"n": 1}}, {"vars": {"n": 5000000}}, {"vars": {"q": 2}}]\n```')
    tester = ScriptedModel([ScriptedResponse(match="edge-case inputs", text=answer)])
    h = CHarness(SUM, "total", language="c++", small_tests=2, medium_tests=0, threads=[1, 2], repeats=1)
    try:
        made = await make_tests(h, tester, "make total parallel", SUM, "total", "cpp", FanOutSettings())
        by_id = {t.id: t for t in made.tests}
        assert set(by_id) == {"diff-small-0", "diff-small-1", "diff-edge-0", "diff-edge-1"}
        assert by_id["diff-edge-0"].input["vars"]["n"] == 0 and by_id["diff-edge-1"].input["vars"]["n"] == 1
        assert made.notes == ["edge input 3 left out: size n=5000000 is over 2048, the largest the correctness tests use",
                              "edge input 4 left out: unknown size variable 'q' (known: n)"]
        assert not made.harness_failed
        # A tester that fails leaves a note; the harness's own tests still come.
        dead = await make_tests(h, ScriptedModel([]), "make total parallel", SUM, "total", "cpp", FanOutSettings())
        assert [t.id for t in dead.tests] == ["diff-small-0", "diff-small-1"]
        assert len(dead.notes) == 1 and dead.notes[0].startswith(f"no model-proposed edge inputs: {ScriptExhausted.__name__}")
        # No generated tests asked for: the tester is not asked for edge inputs either.
        quiet = await make_tests(h, ScriptedModel([]), "make total parallel", SUM, "total", "cpp",
                                  FanOutSettings(test_samples=0))
        assert [t.id for t in quiet.tests] == ["diff-small-0", "diff-small-1"] and quiet.notes == []
    finally:
        await h.close()


READINGS = """
struct Reading { double value; std::vector<int> tags; };
/* How many readings are above 1e300, plus the number of tags over all readings. */
int weigh(std::vector<Reading> const& r) {
  int s = 0;
  for (auto const& x : r) s += (x.value > 1e300 ? 1 : 0) + (int)x.tags.size();
  return s;
}
"""


async def test_literals_with_infinities_nan_and_a_left_out_vector_field_build_and_run():
    h = CHarness(READINGS, "weigh", language="c++", small_tests=1, medium_tests=0, threads=[1], repeats=1)
    try:
        inf, nan = float("inf"), float("nan")
        tests = await h.make_tests([{"values": {"r": [{"value": inf}, {"value": nan}, {"value": -inf, "tags": [1, 2]}]}}])
        edge = next(t for t in tests if t.id == "diff-edge-0")
        assert edge.expected["preview"] == "O-1,3", h.notes
        slots = len(h.plan.slots)
        await h.run_matrix({"same": READINGS, "again": READINGS.replace("int s = 0;", "int s = 0; ")}, tests)
        assert len(h.plan.slots) == slots  # every side's code reuses the plan's slots
    finally:
        await h.close()


@pytest.mark.parametrize("expr", ["n / 0", "n % 0", "10.0 ** 400", "(0 - n) ** 0.5"])
def test_size_expressions_that_cannot_be_computed_are_constraint_errors(expr):
    from bakeoff.agent.harness.c_plan import evaluate

    with pytest.raises(ConstraintError, match="cannot be computed"):
        evaluate(expr, {"n": 4.0})
