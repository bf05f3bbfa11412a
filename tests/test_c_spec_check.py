"""Specs checked against the reference with real compilers: sanitizers catch a wrong length,
the smallest sizes are repaired, a spec whose sizes drive no work is dropped, and the tester
model's proposal is checked (and repaired once) the same way, through ``make_tests`` too."""

from __future__ import annotations

import copy

import pytest

from bakeoff.agent.events import EventBus
from bakeoff.agent.fanout.settings import FanOutSettings
from bakeoff.agent.fanout.tests import make_tests, pick_harness
from bakeoff.agent.harness.c_harness import CHarness
from bakeoff.agent.harness.c_spec import SpecDraft, infer_spec
from bakeoff.agent.harness.c_spec_check import _scale, settle
from bakeoff.agent.harness.c_spec_model import parse_spec, settle_spec
from bakeoff.agent.models.scripted import ScriptedModel, ScriptedResponse
from tests.test_c_spec import GEMV, IFFT

GAP = "/* The gap between the first two values of x. */\ndouble gap(std::vector<double> const& x) {\n  return x[1] - x[0];\n}\n"
SPIN = """/* A fixed amount of work, whatever x holds. */
double spin(std::vector<double> const& x) {
  volatile double s = 0;
  for (long i = 0; i < 4000000; ++i) s = s + (double)(i % 7);
  return s + (double)x.size();
}
"""
FFT = ("void fft(std::vector<std::complex<double>> &x) {\\n  const size_t n = x.size(); if (n <= 1) return;\\n"
       "  std::vector<std::complex<double>> even(n / 2), odd(n / 2);\\n"
       "  for (size_t i = 0; i < n / 2; ++i) { even[i] = x[2 * i]; odd[i] = x[2 * i + 1]; }\\n  fft(even); fft(odd);\\n"
       "  for (size_t k = 0; k < n / 2; ++k) {\\n    std::complex<double> t = std::polar(1.0, -2 * M_PI * k / n) * odd[k];\\n"
       "    x[k] = even[k] + t; x[k + n / 2] = even[k] - t;\\n  }\\n}\\n")


def _harness(source: str, fn: str) -> CHarness:
    return CHarness(source, fn, language="c++", small_tests=2, medium_tests=0, threads=[1, 2], repeats=1)


@pytest.mark.slow
async def test_a_wrong_length_breaks_the_reference_under_the_sanitizers_and_the_inferred_spec_passes():
    draft = infer_spec(GEMV, "gemv")
    wrong = SpecDraft(constraints=copy.deepcopy(draft.constraints), degree=draft.degree)
    wrong.constraints["args"]["A"]["len"] = "N"  # A is MxN: gemv reads past an N-element A
    h = _harness(GEMV, "gemv")
    try:
        dropped = await settle(h, [("given", wrong)])
        assert not dropped.testable
        assert any("AddressSanitizer" in p or "Assertion" in p for p in dropped.problems), dropped.problems
        kept = await settle(h, [("given", wrong), ("inferred", draft)])
        assert kept.testable and kept.source == "inferred"
        assert h.constraints["args"]["A"]["len"] == "M*N" and h.draft is None
        assert any("runs clean under ASan/UBSan" in n for n in kept.notes)
        assert any("given spec dropped" in n for n in kept.notes)
        tests = await h.make_tests()
        assert len(tests) == 2 and not h.notes
    finally:
        await h.close()


@pytest.mark.slow
async def test_a_spec_whose_expression_breaks_on_a_drawn_size_is_dropped_not_raised():
    draft = infer_spec(GAP, "gap")
    broken = SpecDraft(constraints=copy.deepcopy(draft.constraints), degree=draft.degree)
    broken.constraints["vars"]["n"]["small"] = [2, 16]
    broken.constraints["args"] = {"x": {"range": ["0", "1/(n-2)"]}}  # n = 2 is drawn: a division by zero
    broken.constraints["edge"] = [{"vars": {"n": 2}}]
    h = _harness(GAP, "gap")
    try:
        kept = await settle(h, [("given", broken), ("inferred", draft)])
        assert kept.testable and kept.source == "inferred", kept.notes
        assert any("given spec dropped" in n and "cannot drive the function" in n for n in kept.notes), kept.notes
    finally:
        await h.close()


@pytest.mark.slow
async def test_sizes_only_the_smallest_inputs_break_are_repaired_and_idle_sizes_are_dropped():
    h = _harness(GAP, "gap")
    try:
        draft = SpecDraft({"vars": {"n": {"small": [0, 6], "medium": 1000, "large": 8000}}})
        fixed = await settle(h, [("given", draft)])
        assert fixed.testable and fixed.constraints["vars"]["n"]["small"] == [2, 6], fixed.notes
        assert any("small sizes start at 2" in n for n in fixed.notes)
    finally:
        await h.close()
    h = _harness(SPIN, "spin")
    try:
        idle = SpecDraft({"vars": {"n": {"small": [1, 4], "medium": 100, "large": 800}}, "args": {"x": {"len": 3}}})
        out = await settle(h, [("given", idle)])
        assert not out.testable and "drive no work" in " ".join(out.problems)
    finally:
        await h.close()


def test_sizes_scale_to_the_budget_by_the_works_degree():
    spec = {"vars": {"N": {"small": [1, 8], "medium": 1000, "large": 4000}, "k": {"small": [1, 4], "medium": 64, "pow2": True}}}
    _scale(spec, "medium", 1 / 8, degree=3)  # an eighth of the work: half of each size
    assert spec["vars"]["N"]["medium"] == 500 and spec["vars"]["k"]["medium"] == 32
    _scale(spec, "medium", 1e-9, degree=1)
    assert spec["vars"]["N"]["medium"] == 9  # never below the small sizes
    assert spec["vars"]["N"]["large"] == 4000


def test_parse_spec_reads_leniently_and_rejects_what_cannot_drive_the_function():
    h = _harness(IFFT, "ifft")
    draft = infer_spec(IFFT, "ifft")
    good, notes = parse_spec('Here:\n```json\n{"vars": {"n": {"small": [1, 8], "pow2": true,}}, "support": "void fft(std::vector<std::complex<double>> &x) {}", "why": "x"}\n```', h, draft)
    assert good is not None and good.missing == [] and good.constraints["vars"]["n"]["pow2"] is True
    assert notes == ["spec proposal: key 'why' left out (not in the vocabulary)"]
    bad, why = parse_spec('```json\n{"args": {"y": {"len": "n"}}}\n```', h, draft)
    assert bad is None and "argument 'y'" in why[-1]
    none, why = parse_spec("I cannot help with that.", h, draft)
    assert none is None and "no JSON object" in why[0]
    unknown, why = parse_spec('{"vars": {"n": {"small": [1, 8]}}, "args": {"x": {"len": "m*2"}}}', h, draft)
    assert unknown is None and "unknown name 'm'" in why[-1]


@pytest.mark.slow
async def test_the_tester_supplies_a_missing_helper_after_one_repair():
    first = '```json\n{"args": {"y": {"len": "n"}}}\n```'
    fixed = ('```json\n{"vars": {"n": {"small": [1, 16], "medium": 4096, "large": 32768, "pow2": true}}, '
             f'"support": "{FFT}"}}\n```')
    tester = ScriptedModel([
        ScriptedResponse(match=r"(?s)input spec of a C\+\+ function.*spec proposal rejected", text=fixed),
        ScriptedResponse(match=r"(?s)input spec of a C\+\+ function.*fft\(\), declared but defined nowhere", text=first),
    ])
    h = pick_harness("cpp", "ifft", IFFT, None, EventBus())
    assert isinstance(h, CHarness) and h.draft is not None and h.draft.missing == ["fft"]
    try:
        made = await make_tests(h, tester, "make ifft parallel", IFFT, "ifft", "cpp", FanOutSettings(test_samples=1))
        assert not made.harness_failed, made.notes
        assert "input spec proposed by the tester model (the inferred one failed its check)" in made.notes
        assert h.constraints["vars"]["n"]["medium"] == 4096 and "void fft" in h.constraints["support"]
        assert made.tests and all(t.valid for t in made.tests)
    finally:
        await h.close()
    # No tester, or one that cannot answer: nothing passes its check, so no differential tests.
    h = pick_harness("cpp", "ifft", IFFT, None, EventBus())
    try:
        outcome = await settle_spec(h)
        assert not outcome.testable and "declared but defined nowhere" in outcome.problems[0]
        h.draft = infer_spec(IFFT, "ifft")
        made = await make_tests(h, ScriptedModel([]), "make ifft parallel", IFFT, "ifft", "cpp", FanOutSettings(test_samples=1))
        assert made.harness_failed and made.tests == []
        assert made.notes[0].startswith("no differential tests: the inferred input spec failed its check")
    finally:
        await h.close()


def test_bakeoff_select_reports_a_function_it_cannot_test(tmp_path):
    from typer.testing import CliRunner

    from bakeoff.agent.cli.main import app

    (tmp_path / "ref.cpp").write_text(IFFT)
    (tmp_path / "cand.cpp").write_text(IFFT)
    result = CliRunner().invoke(app, ["select", "--reference", str(tmp_path / "ref.cpp"), "--candidate",
                                      str(tmp_path / "cand.cpp"), "--entry", "ifft", "--sandbox", "local"])
    assert result.exit_code == 2
    assert "no input spec for ifft() passed its check" in result.output and "--spec FILE" in result.output
    assert "fft(), declared but defined nowhere" in result.output


async def test_growth_blurred_by_a_busy_machine_is_measured_once_more(monkeypatch):
    """A spec fails the growth check only when a second measurement agrees: on a loaded
    machine one medium run can take as long as the large one."""
    from bakeoff.agent.harness import c_spec_check

    def measured(*runs):
        it = iter(runs)

        async def timed(_harness, _sizes):
            return next(it)

        monkeypatch.setattr(c_spec_check, "_timed_run", timed)

    measured({"medium": 0.43, "large": 0.83}, {"medium": 0.11, "large": 0.80})
    assert (await c_spec_check._check_growth(None, {"vars": {}}, 1)).ok
    measured({"medium": 0.43, "large": 0.50}, {"medium": 0.40, "large": 0.52})
    check = await c_spec_check._check_growth(None, {"vars": {}}, 1)
    assert not check.ok and "takes no longer on the large input" in check.problems[0]


WORK = """/* n * n units of work on x. */
double work(std::vector<double> const& x) {
  volatile double s = 0;
  const long n = (long)x.size();
  for (long i = 0; i < n * n; ++i) s = s + (double)(i % 7);
  return s;
}
"""


@pytest.mark.parametrize(("large", "rounds"), [(100, 3), (120000, 1)])
async def test_an_input_over_its_budget_is_timed_once_not_three_times(large, rounds, monkeypatch):
    """The growth check times each size three times, the least counting; an input already over
    its budget is scaled and checked again, so its further runs would only cost."""
    from bakeoff.agent.harness import c_spec_check

    monkeypatch.setattr(c_spec_check, "LARGE_BUDGET_S", 0.25)  # its alarm: 1 s
    h = _harness(WORK, "work")
    commands: list[str] = []
    try:
        h.use_constraints({"vars": {"x": {"small": [1, 4], "medium": 100, "large": large}}})
        run = h.workdir.run

        async def counted(cmd, timeout):
            commands.append(cmd)
            return await run(cmd, timeout)

        h.workdir.run = counted
        times = await c_spec_check._timed_run(h, ["medium", "large"])
    finally:
        await h.close()
    timed = [c for c in commands if " ref 1 < spec_" in c]
    assert len(timed) == rounds, commands
    assert times["medium"] is not None and times["medium"] < c_spec_check.MEDIUM_BUDGET_S
    if rounds == 1:  # 1.4e10 steps: cut off by its alarm, past the large budget
        assert times["large"] is None or times["large"] > c_spec_check.LARGE_BUDGET_S
