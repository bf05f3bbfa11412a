"""Vote and choose, table-driven: each case is a small execution matrix and what must win."""

from __future__ import annotations

import pytest

from bakeoff.agent.models.scripted import ScriptedModel, ScriptedResponse
from bakeoff.agent.selection.choose import choose, select
from bakeoff.agent.selection.close_call import parse_judgement, resolve_close_call
from bakeoff.agent.selection.table import render_table
from bakeoff.agent.selection.agreement import CODET_RULE, FAMILY, RULE, AgreementRule, group_support
from bakeoff.agent.selection.vote import Group, Vote, vote
from bakeoff.agent.seams import ExecResult
from bakeoff.agent.types import Candidate, ExecutionMatrix, TestCase, Timing


def build(rows: dict[str, str], weights: dict[str, int] | None = None, outputs: dict[str, list[str]] | None = None):
    """rows: candidate -> one letter per test (p pass, f fail, e error, t timeout, x flaky).
    outputs: candidate -> one value per probe (probes are extra tests named q0, q1, ...)."""
    letter = {"p": "pass", "f": "fail", "e": "error", "t": "timeout", "x": "flaky"}
    n = len(next(iter(rows.values())))
    tests = [TestCase(id=f"t{i}", kind="generated", code=f"assert f({i})", weight=(weights or {}).get(f"t{i}", 1))
             for i in range(n)]
    m = ExecutionMatrix()
    for cand, cells in rows.items():
        for i, ch in enumerate(cells):
            m.set(cand, f"t{i}", letter[ch])
    if outputs:
        k = len(next(iter(outputs.values())))
        tests += [TestCase(id=f"q{i}", kind="differential", code=f"f({i})") for i in range(k)]
        for cand, outs in outputs.items():
            for i, o in enumerate(outs):
                m.set(cand, f"q{i}", "error" if o.startswith("!") else "pass", o)
    return m, tests


VOTE_CASES = [
    # (name, rows, kwargs, expected winners)
    ("reference: all validated tests", {"a": "ppp", "b": "ppf", "c": "ppp"}, {"reference": True}, ["a", "c"]),
    ("reference: flaky disqualifies", {"a": "ppx", "b": "ppp"}, {"reference": True}, ["b"]),
    ("reference: nobody correct", {"a": "fpp", "b": "ppf"}, {"reference": True}, []),
    ("reference: gate drops", {"a": "ppp", "b": "ppp"}, {"reference": True, "gate": {"a": False, "b": True}}, ["b"]),
    ("dual agreement: big group wins", {"a": "ppf", "b": "ppf", "c": "ppf", "d": "ppp"}, {"reference": False},
     ["a", "b", "c"]),
    ("dual agreement: more tests beat size", {"a": "pff", "b": "pff", "c": "ppp"}, {"reference": False}, ["c"]),
    ("dual agreement: flaky never wins", {"a": "ppp", "b": "ppp", "c": "xpp", "d": "xpp", "e": "xpp"},
     {"reference": False}, ["a", "b"]),
    ("dual agreement: nothing passes", {"a": "fff", "b": "eee"}, {"reference": False}, []),
    ("all gated", {"a": "ppp"}, {"reference": True, "gate": {"a": False}}, []),
]


@pytest.mark.parametrize("name,rows,kwargs,winners", VOTE_CASES, ids=[c[0] for c in VOTE_CASES])
def test_vote_table(name, rows, kwargs, winners):
    m, tests = build(rows)
    v = vote(m, tests, **kwargs)
    assert sorted(v.winners) == sorted(winners), v.reason
    assert v.reason


def test_reference_vote_ignores_tests_the_reference_rejected():
    m, tests = build({"a": "ppf", "b": "ppp"})
    tests[2] = tests[2].model_copy(update={"valid": False})
    v = vote(m, tests, reference=True)
    assert sorted(v.winners) == ["a", "b"]


def test_weights_count_like_repeated_tests():
    # b passes one test written 5 times; a passes two written once each.
    m, tests = build({"a": "ppf", "b": "ffp"}, weights={"t2": 5})
    assert vote(m, tests, reference=False).winners == ["b"]


def test_outputs_split_a_pass_set_group():
    # Same pass-set, but c and d return different values on a probe than a, b and e do.
    rows = {"a": "pf", "b": "pf", "c": "pf", "d": "pf", "e": "pf", "w": "pp"}
    outs = {"a": ["1"], "b": ["1"], "e": ["1"], "c": ["2"], "d": ["3"], "w": ["1"]}
    m, tests = build(rows, outputs=outs)
    v = vote(m, tests, reference=False)
    groups = {tuple(sorted(g.members)) for g in v.groups}
    assert ("a", "b", "e") in groups and ("c",) in groups


MAJORITY_CASES = [
    # (name, rows, probe outputs, expected winners): no generated test is passed by anyone.
    ("biggest group of equal outputs", {c: "ff" for c in "abcd"}, {"a": ["1", "2"], "b": ["1", "2"], "c": ["1", "2"],
                                                                       "d": ["1", "3"]}, ["a", "b", "c"]),
    ("a behaviour of one is no majority", {"a": "f", "b": "f"}, {"a": ["1"], "b": ["2"]}, []),
    ("errors on every probe never vote", {c: "f" for c in "abcde"}, {"a": ["!error"], "b": ["!error"], "c": ["!error"],
                                                                       "d": ["5"], "e": ["5"]}, ["d", "e"]),
    ("a passed test still outweighs numbers", {"a": "pf", "b": "ff", "c": "ff"}, {"a": ["1"], "b": ["2"], "c": ["2"]},
     ["a"]),
]


@pytest.mark.parametrize("name,rows,outs,winners", MAJORITY_CASES, ids=[c[0] for c in MAJORITY_CASES])
def test_majority_when_no_test_speaks(name, rows, outs, winners):
    m, tests = build(rows, outputs=outs)
    v = vote(m, tests, reference=False)
    assert sorted(v.winners) == winners, v.reason
    if winners and name != "a passed test still outweighs numbers":
        assert v.method == "majority" and "behaviour alone" in v.reason
    if not winners:
        assert v.method == "none"


def test_a_tie_on_the_tests_goes_to_the_outputs_most_candidates_share():
    rows = {"a": "pf", "b": "pf", "c": "fp", "d": "fp", "e": "ff", "f": "ff"}
    outs = {"a": ["1"], "b": ["1"], "c": ["2"], "d": ["2"], "e": ["1"], "f": ["1"]}
    m, tests = build(rows, outputs=outs)
    v = vote(m, tests, reference=False)
    assert sorted(v.winners) == ["a", "b"] and v.close_call and "tied on the tests" in v.reason
    # Without probes nothing separates them: both groups win.
    m, tests = build(rows)
    assert sorted(vote(m, tests, reference=False).winners) == ["a", "b", "c", "d"]


def test_majority_without_any_generated_test():
    # Only probes (inputs drawn from the signature): the vote is the majority of behaviours.
    m = ExecutionMatrix()
    probes = [TestCase(id=f"q{i}", kind="differential", code=f"f({i})") for i in range(2)]
    for cand, outs in {"a": ["1", "4"], "b": ["1", "4"], "c": ["0", "0"]}.items():
        for i, o in enumerate(outs):
            m.set(cand, f"q{i}", "pass", o)
    v = vote(m, probes, reference=False)
    assert v.method == "majority" and sorted(v.winners) == ["a", "b"] and not v.close_call


def test_close_call_flagged_when_scores_near():
    m, tests = build({"a": "ppf", "b": "ppf", "c": "pfp", "d": "pfp"})
    v = vote(m, tests, reference=False)
    assert v.close_call


def timing(s: float, lo: float, hi: float) -> Timing:
    return Timing(baseline_s=[1.0], candidate_s=[1.0 / s], speedup=s, low=lo, high=hi)


CHOOSE_CASES = [
    # (name, timings, diff sizes, expected winner)
    ("faster only with a separated interval", {"a": timing(2.0, 1.8, 2.2), "b": timing(3.0, 2.5, 3.5)}, {"a": 1, "b": 50},
     "b"),
    ("overlapping intervals and close medians tie: smaller diff", {"a": timing(2.0, 1.5, 2.6), "b": timing(2.05, 1.9, 2.8)},
     {"a": 3, "b": 10}, "a"),
    ("overlapping intervals, a clearly better median: the faster", {"a": timing(2.0, 1.5, 2.6),
                                                                     "b": timing(2.3, 1.9, 2.8)}, {"a": 3, "b": 10}, "b"),
    ("no timings: smaller diff", {}, {"a": 9, "b": 2}, "b"),
    ("untimed loses to a proven speed-up", {"a": timing(1.5, 1.2, 1.8)}, {"a": 40, "b": 1}, "a"),
    ("untimed ties with an unproven one", {"a": timing(1.1, 0.9, 1.3)}, {"a": 40, "b": 1}, "b"),
]


@pytest.mark.parametrize("name,timings,diffs,expected", CHOOSE_CASES, ids=[c[0] for c in CHOOSE_CASES])
def test_choose_table(name, timings, diffs, expected):
    m, tests = build({"a": "pp", "b": "pp", "c": "pf"})
    v = vote(m, tests, reference=True)
    verdict = choose(v, [Candidate(id=c) for c in "abc"], m, tests, timings=timings, diff_sizes=diffs)
    assert verdict.winner == expected
    assert verdict.reason.startswith(f"{expected} won")
    row = {r.candidate: r for r in verdict.rows}
    assert row["c"].correct is False and row["c"].tests_passed == 1 and row["c"].tests_total == 2
    assert row[expected].correct is True


def test_verdict_serializes_and_renders():
    m, tests = build({"a": "pp", "b": "xp"})
    verdict = select(m, tests, [Candidate(id="a", cost_usd=0.25), Candidate(id="b")], reference=True,
                     timings={"a": timing(2.0, 1.5, 2.5)})
    assert verdict.winner == "a"
    again = type(verdict).model_validate_json(verdict.model_dump_json())
    assert again == verdict
    flaky_row = next(r for r in verdict.rows if r.candidate == "b")
    assert flaky_row.flaky and "flaky" in flaky_row.note
    from rich.console import Console

    console = Console(record=True, width=160)
    console.print(render_table(verdict))
    text = console.export_text()
    assert "2.00x" in text and "$0.2500" in text and "a won" in text


def test_no_winner_says_why():
    m, tests = build({"a": "pf", "b": "fp"})
    verdict = select(m, tests, [], reference=True)
    assert verdict.winner is None and verdict.reason.startswith("no winner")


# --------------------------------------------------------------------------- close calls

def close_vote() -> Vote:
    return Vote(method="dual-agreement", groups=[Group(members=["a", "b"], passed=["t0"], score=4.0),
                                              Group(members=["c", "d"], passed=["t1"], score=4.0)],
                winners=["a", "b", "c", "d"], close_call=True, reason="tied")


OUTPUTS = {  # input -> candidate -> output
    "f(0)": {"a": "0", "b": "0", "c": "1", "d": "1", "ref": "1", "e": "1"},
    "f(1)": {"a": "2", "b": "2", "c": "2", "d": "2", "ref": "2", "e": "2"},
}


async def fake_distinguish(groups):
    assert len(groups) == 2
    return list(OUTPUTS)


async def run_outputs(inputs, ids):
    return {c: {x: OUTPUTS[x][c] for x in inputs} for c in ids}


async def test_close_call_settled_by_reference():
    v = await resolve_close_call(close_vote(), distinguish=fake_distinguish, run=run_outputs, reference="ref")
    assert v.winners == ["c", "d"] and "reference" in v.reason and not v.close_call


async def test_close_call_settled_by_judge_with_scripted_model():
    judge = ScriptedModel(responses=[ScriptedResponse(text="f(0) counts zeros, so 0.\nANSWER: A")])
    v = await resolve_close_call(close_vote(), distinguish=fake_distinguish, run=run_outputs, judge=judge, task="t")
    assert v.winners == ["a", "b"] and "judge" in v.reason


async def test_close_call_stays_open_without_distinguishing_inputs():
    async def nothing(groups):
        return []

    v = await resolve_close_call(close_vote(), distinguish=nothing, run=run_outputs)
    assert v.close_call and sorted(v.winners) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("text,n,expected", [
    ("ANSWER: B", 3, [1]), ("reasoning...\nanswer: a, c", 3, [0, 2]), ("ANSWER: NONE", 2, []),
    ("no verdict", 2, []), ("ANSWER: Z", 2, []),
])
def test_parse_judgement(text, n, expected):
    assert parse_judgement(text, n) == expected


# --------------------------------------------------------------------------- speed at the target


def driver_answer(candidate_s, counts, rounds: int = 5, reference_s: float = 1.0) -> ExecResult:
    """What the C driver's ``time`` mode prints for a candidate of known speed: rounds of the
    reference (at the target) and the candidate at each thread count, in the driver's order,
    with a little deterministic jitter."""
    lines = [f"@@BK R {reference_s:.9f}"]
    for r in range(-1, rounds):
        jitter = 1.0 + 0.01 * ((r * 7) % 3 - 1)
        order = [0, *counts] if r % 2 == 0 else [*reversed(counts), 0]
        for t in order:
            secs = (reference_s if t == 0 else candidate_s(t)) * jitter
            if t:
                lines.append(f"@@BK L 20.25 {t}")
            else:
                lines.append(f"@@BK R {secs:.9f}")
            if r >= 0:
                lines.append(f"@@BK X {'ref' if t == 0 else 'cand'} {secs:.9f} {t or counts[-1]}")
    return ExecResult(exit_code=0, stdout="\n".join(lines))


def plateau(t: int) -> float:
    """Fastest at 2 threads, then it stops scaling (a critical section, a serial phase)."""
    return 1.0 / min(t, 2) * 0.55


def scales(t: int) -> float:
    """Slower at 2 threads, but it keeps scaling."""
    return 1.0 / t * 1.3


@pytest.mark.parametrize("target,expected", [(16, "scales"), (2, "plateau")])
def test_the_choice_is_by_the_speedup_at_the_target_not_at_two_threads(target, expected):
    from bakeoff.agent.harness.c_timing import read_timing
    from bakeoff.agent.stats import curve_threads

    counts = curve_threads(target)
    timings = {name: read_timing(driver_answer(fn, counts), counts) for name, fn in
               (("plateau", plateau), ("scales", scales))}
    assert [p.threads for p in timings["scales"].curve] == counts
    two = {name: next(p for p in t.curve if p.threads == 2) for name, t in timings.items()}
    assert two["plateau"].speedup > two["scales"].speedup  # at 2 threads the plateau is ahead
    m, tests = build({"plateau": "pp", "scales": "pp"})
    verdict = choose(vote(m, tests, reference=True), [Candidate(id="plateau"), Candidate(id="scales")], m, tests,
                     timings=timings, diff_sizes={"plateau": 1, "scales": 50}, speed_task=True)
    assert verdict.winner == expected and "it is the fastest" in verdict.reason
    row = {r.candidate: r for r in verdict.rows}[expected]
    assert row.threads == target and row.speedup == timings[expected].speedup
    assert row.curve[-1].efficiency == pytest.approx(row.curve[-1].speedup / target)


SLOWER = Timing(baseline_s=[1.0, 1.0], candidate_s=[1.25, 1.25], speedup=0.80, low=0.76, high=0.95, threads=2)


def test_a_speed_task_never_ships_a_winner_that_is_not_faster():
    m, tests = build({"a": "pp", "b": "pf"})
    v = vote(m, tests, reference=True)
    verdict = choose(v, [Candidate(id="a"), Candidate(id="b")], m, tests, timings={"a": SLOWER}, speed_task=True)
    assert verdict.winner is None and verdict.best == "a" and verdict.not_faster and verdict.correct == ["a"]
    assert verdict.reason.startswith("correct, but no candidate is faster than the original (best 0.80x [0.76, 0.95])")
    assert "at 2 threads: a is offered, not applied" in verdict.reason
    # Not a speed task: the correct candidate is the answer, whatever its speed.
    assert choose(v, [Candidate(id="a")], m, tests, timings={"a": SLOWER}).winner == "a"
    # A speed task whose winner could not be timed makes no claim either.
    untimed = choose(v, [Candidate(id="a")], m, tests, speed_task=True)
    assert untimed.winner is None and "none could be timed" in untimed.reason


def test_a_faster_winner_of_a_speed_task_ships():
    m, tests = build({"a": "pp"})
    verdict = choose(vote(m, tests, reference=True), [Candidate(id="a")], m, tests,
                     timings={"a": timing(1.3, 1.1, 1.5)}, speed_task=True)
    assert verdict.winner == "a" and not verdict.not_faster and verdict.best is None


@pytest.mark.parametrize("goal,speed", [
    ("make total in calc.py faster", True), ("parallelize the loop in kernel.c", True),
    ("port this kernel to OpenMP", True), ("make the slow function quicker", True),
    ("fix the failing test", False), ("rename total to grand_total", False),
])
def test_which_tasks_ask_for_speed(goal, speed):
    from bakeoff.agent.selection.choose import is_speed_task

    assert is_speed_task(goal) is speed


def test_the_table_shows_the_target_the_curve_and_the_offered_candidate():
    from rich.console import Console

    from bakeoff.agent.types import CurvePoint, TimingSetup

    m, tests = build({"a": "pp"})
    curve = [CurvePoint(threads=1, speedup=0.5, low=0.4, high=0.6), CurvePoint(threads=2, speedup=0.8, low=0.76, high=0.95)]
    setup = TimingSetup(threads=2, threads_source="CPU affinity (2 CPUs)", curve_threads=[1, 2], size={"n": 4096.0},
                        reference_s=0.31, sizing="scaled x8 until the original took 0.31 s per call at one thread")
    verdict = choose(vote(m, tests, reference=True), [Candidate(id="a")], m, tests,
                     timings={"a": SLOWER.model_copy(update={"curve": curve})}, speed_task=True, setup=setup)
    console = Console(record=True, width=200)
    console.print(render_table(verdict))
    text = console.export_text()
    assert "speedup @2" in text and "1:0.5 2:0.8" in text and "? a" in text
    assert "timed at 2 threads (CPU affinity (2 CPUs)); input n=4096; scaled x8" in text
# --------------------------------------------------------------------------- the rule family

def test_the_family_holds_codet_and_the_product_rule():
    assert CODET_RULE in FAMILY and RULE in FAMILY and len(FAMILY) == 48
    assert len({r.name for r in FAMILY}) == len(FAMILY)
    assert CODET_RULE.departures == 0 and CODET_RULE.name == "codet"
    assert AgreementRule(grouping="outputs", fallback=True).departures == 2
    with pytest.raises(ValueError):
        AgreementRule(grouping="pass-set")


def test_the_default_no_reference_vote_is_the_product_rule():
    m, tests = build({"a": "pf", "b": "pf", "c": "fp", "d": "ff"}, outputs={"a": ["1"], "b": ["2"], "c": ["1"], "d": ["1"]})
    assert vote(m, tests, reference=False) == vote(m, tests, reference=False, rule=RULE)


def test_grouping_by_outputs_splits_a_pass_set_that_agrees_only_by_accident():
    # a, b, c pass the same test but return three different values; d and e agree on both.
    rows = {"a": "pf", "b": "pf", "c": "pf", "d": "fp", "e": "fp"}
    outs = {"a": ["1"], "b": ["2"], "c": ["3"], "d": ["4"], "e": ["4"]}
    m, tests = build(rows, outputs=outs)
    assert sorted(vote(m, tests, reference=False, rule=CODET_RULE).winners) == ["a", "b", "c"]
    assert sorted(vote(m, tests, reference=False, rule=AgreementRule(grouping="outputs")).winners) == ["d", "e"]


# Five behaviours (sizes 2, 2, 1, 1, 1); t2 is written twice but passed by one behaviour
# alone, t0 and t1 by three each.
FIVE = ([2, 2, 1, 1, 1], [{"t0", "t1"}, {"t0", "t2"}, {"t0"}, {"t1"}, {"t1", "t3"}])
# A big group passing one test, a lone candidate passing three.
BIG_AND_LONE = ([4, 1], [{"t0"}, {"t0", "t1", "t3"}])
SUPPORT_CASES = [
    # (name, rule, (sizes, pass-sets), expected best group)
    ("CodeT counts a lone test by its weight", CODET_RULE, FIVE, 1),
    ("a test most behaviours pass counts more", AgreementRule(test_power=1.0), FIVE, 0),
    ("CodeT: size times tests", CODET_RULE, BIG_AND_LONE, 0),
    ("size ** 0.5 lets more tests beat more candidates", AgreementRule(size_power=0.5), BIG_AND_LONE, 1),
]


@pytest.mark.parametrize("name,rule,groups,best", SUPPORT_CASES, ids=[c[0] for c in SUPPORT_CASES])
def test_group_support(name, rule, groups, best):
    checks = [TestCase(id=f"t{i}", kind="generated", code="", weight=w) for i, w in enumerate([1, 1, 2, 1])]
    sizes, passes = groups
    scores = group_support(rule, sizes, passes, [True] * len(sizes), checks)
    assert max(range(len(sizes)), key=lambda i: scores[i]) == best, scores
    assert group_support(rule, sizes, passes, [False] * len(sizes), checks) == [0.0] * len(sizes)


def test_without_fallback_nobody_wins_when_no_test_is_passed():
    rows = {c: "ff" for c in "abcd"}
    outs = {"a": ["1"], "b": ["1"], "c": ["1"], "d": ["2"]}
    m, tests = build(rows, outputs=outs)
    assert vote(m, tests, reference=False, rule=AgreementRule(grouping="outputs", fallback=True)).method == "majority"
    v = vote(m, tests, reference=False, rule=AgreementRule(grouping="outputs"))
    assert v.method == "none" and v.winners == [] and "no candidate passes" in v.reason


def test_without_tie_break_tied_groups_all_win():
    rows = {"a": "pf", "b": "pf", "c": "fp", "d": "fp", "e": "ff", "f": "ff"}
    outs = {"a": ["1"], "b": ["1"], "c": ["2"], "d": ["2"], "e": ["1"], "f": ["1"]}
    m, tests = build(rows, outputs=outs)
    rule = AgreementRule(grouping="outputs", tie_break=True)
    assert sorted(vote(m, tests, reference=False, rule=rule).winners) == ["a", "b"]
    no_break = rule.model_copy(update={"tie_break": False})
    assert sorted(vote(m, tests, reference=False, rule=no_break).winners) == ["a", "b", "c", "d"]


def test_tie_break_on_pass_set_groups_uses_the_members_mean_agreement():
    # Grouped by tests only, {a, b} mixes outputs; its members agree with the population less
    # on average than {c, d}, who share e and f's value.
    rows = {"a": "pf", "b": "pf", "c": "fp", "d": "fp", "e": "ff", "f": "ff"}
    outs = {"a": ["2"], "b": ["3"], "c": ["1"], "d": ["1"], "e": ["1"], "f": ["1"]}
    m, tests = build(rows, outputs=outs)
    assert sorted(vote(m, tests, reference=False, rule=AgreementRule(tie_break=True)).winners) == ["c", "d"]


def test_reference_vote_ignores_the_rule():
    m, tests = build({"a": "ppp", "b": "ppf", "c": "ppf", "d": "ppf"})
    for rule in (CODET_RULE, RULE):
        assert vote(m, tests, reference=True, rule=rule).winners == ["a"]
