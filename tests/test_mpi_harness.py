"""MPI candidates under mpirun, for real: the mistakes typical of MPI rewrites (a dropped
remainder, the result left on another rank, a collective only some ranks call, calling
MPI_Init again) are failures, timeouts and errors; a correct rewrite passes at every rank
count and is timed at the target rank count; the local sandbox (no network) runs it too; fan-out
and ``bakeoff select`` pick the MPI harness for code that calls MPI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bakeoff.agent.cli.main import app
from bakeoff.agent.events import EventBus
from bakeoff.agent.fanout.tests import pick_harness
from bakeoff.agent.harness.c_harness import CHarness
from bakeoff.agent.harness.c_timing import TimingOptions
from bakeoff.agent.harness.mpi_harness import EVEN_RANKS, MpiHarness, calls_mpi, default_ranks, even, uneven, wants_mpi
from bakeoff.agent.harness.sizing import SizingLimits

REFERENCE = """/* Return the sum of the vector x. */
double total(std::vector<double> const& x) {
  double s = 0;
  for (size_t i = 0; i < x.size(); ++i) s += x[i];
  return s;
}
"""
GOOD = """#include <mpi.h>

/* Return the sum of the vector x. Every rank has a complete copy of x. Store the result on rank 0. */
double total(std::vector<double> const& x) {
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  size_t n = x.size(), lo = n * rank / size, hi = n * (rank + 1) / size;
  double mine = 0, all = 0;
  for (size_t i = lo; i < hi; ++i) mine += x[i];
  MPI_Reduce(&mine, &all, 1, MPI_DOUBLE, MPI_SUM, 0, MPI_COMM_WORLD);
  return all;
}
"""
DROPS_REMAINDER = GOOD.replace("lo = n * rank / size, hi = n * (rank + 1) / size", "lo = n / size * rank, hi = lo + n / size")
WRONG_RANK = GOOD.replace("MPI_SUM, 0, MPI_COMM_WORLD", "MPI_SUM, size - 1, MPI_COMM_WORLD")
DEADLOCK = GOOD.replace("  MPI_Reduce(", "  if (rank == 0) MPI_Reduce(")
INITS = GOOD.replace("  int rank, size;\n", "  int rank, size;\n  MPI_Init(nullptr, nullptr);\n")


def test_which_code_wants_mpi_and_sizes_that_do_not_divide():
    assert calls_mpi(GOOD) and not calls_mpi(REFERENCE)
    assert wants_mpi(REFERENCE, "port total to MPI") and not wants_mpi(REFERENCE, "make total faster with OpenMP")
    ranks = default_ranks()
    assert ranks[:4] == [1, 2, 3, 4] and len(ranks) == 5 and ranks[-1] >= 5
    spec = uneven({"vars": {"n": {"small": [1, 16], "medium": 1 << 20, "large": 8000}, "m": {"medium": 1024, "pow2": True}}})
    assert all(spec["vars"]["n"][s] % k for s in ("medium", "large") for k in (2, 3, 4, 5, 6))
    assert spec["vars"]["m"]["medium"] == 1024


def test_even_sizes_are_powers_of_two_every_rank_count_divides_and_drop_edge_cases():
    spec = even({"vars": {"n": {"small": [1, 16], "medium": 100007, "large": 8000}, "k": {"small": [2, 4]}},
                 "edge": [{"vars": {"n": 0}}], "float_rel": 1e-6})
    n, k = spec["vars"]["n"], spec["vars"]["k"]
    assert n["pow2"] and n["small"] == [8, 16] and n["medium"] == 65536 and n["large"] == 4096
    assert k["small"] == [8, 8] and "edge" not in spec and spec["float_rel"] == 1e-6
    assert all(n[s] % r == 0 for s in ("medium", "large") for r in EVEN_RANKS)
    with pytest.raises(ValueError, match="uneven"):
        MpiHarness(REFERENCE, "total", language="c++", sizes="odd")


@pytest.mark.slow
async def test_a_dropped_remainder_passes_only_where_every_size_divides():
    """The comparison row's conditions (ParEval's): the remainder bug that uneven sizes catch
    goes unseen, which is why the benchmark's labels call such samples correct."""
    h = MpiHarness(REFERENCE, "total", language="c++", small_tests=2, medium_tests=1, sizes="even",
                   constraints={"vars": {"n": {"small": [5, 16], "medium": 100000, "large": 400000}}})
    try:
        assert h.ranks == EVEN_RANKS
        tests = await h.make_tests()
        assert all(t.input["vars"]["n"] % 8 == 0 for t in tests)
        m = await h.run_matrix({"good": GOOD, "drops": DROPS_REMAINDER}, tests)
        assert set(m.cells["good"].values()) == {"pass"} and set(m.cells["drops"].values()) == {"pass"}
    finally:
        await h.close()


@pytest.mark.slow
async def test_mpi_mistakes_fail_and_a_correct_rewrite_passes_at_every_rank_count():
    h = MpiHarness(REFERENCE, "total", language="c++", small_tests=3, medium_tests=1, ranks=[1, 2, 3, 4, 5],
                   constraints={"vars": {"n": {"small": [5, 16], "medium": 100000, "large": 400000}}},
                   timing=TimingOptions(threads=2, sizing=SizingLimits(min_time_s=0.01, budget_s=5.0)))
    try:
        tests = await h.make_tests()
        assert len(tests) == 4 and tests[-1].input["vars"]["n"] % 60 == 7  # no rank count divides it
        m = await h.run_matrix({"good": GOOD, "drops": DROPS_REMAINDER, "wrong_rank": WRONG_RANK, "deadlock": DEADLOCK,
                                "inits": INITS, "serial": REFERENCE}, tests)
        first = tests[0].id
        assert set(m.cells["good"].values()) == {"pass"} and set(m.cells["serial"].values()) == {"pass"}
        assert m.cells["drops"][tests[-1].id] == "fail" or m.cells["drops"][first] == "fail"
        assert "ranks: expected" in " ".join(h.details["drops"].values())
        assert m.cells["wrong_rank"][first] == "fail" and "with 2 ranks" in h.details["wrong_rank"][first]
        assert m.cells["deadlock"][first] == "timeout" and "no result within" in h.details["deadlock"][first]
        assert set(m.cells["inits"].values()) <= {"error", "timeout"} and "error" in m.cells["inits"].values()
        # Every run of the good one matched: 5 rank counts, 2 runs each, per test.
        assert all(h.matched["good"][t.id] == (10, 10) for t in tests)
        timings = await h.time({"good": GOOD}, repeats=3)
        assert timings["good"].threads == 2 and len(timings["good"].candidate_s) == 3
        assert h.timing_setup.threads == 2 and h.timing_setup.curve_threads == [2]
        # The timing input was grown (probed under mpirun at one rank) until the sum took long enough.
        assert h.timing_setup.size["n"] > 400000 and h.timing_setup.reference_s >= 0.005, h.timing_setup
    finally:
        await h.close()


@pytest.mark.slow
async def test_through_the_local_sandbox_with_no_network(tmp_path):
    local = pytest.importorskip("bakeoff.sandboxes.local")
    from bakeoff.agent.seams import Workspace

    sandbox = await local.LocalSandbox.create(Workspace(path=tmp_path))
    h = pick_harness("cpp", "total", REFERENCE, sandbox, EventBus(), goal="port total to MPI")
    assert isinstance(h, MpiHarness) and h.draft is not None
    try:
        h.use_constraints({"vars": {"n": {"small": [5, 12], "medium": 5000, "large": 20000}}})
        h.draft = None
        h.small_tests, h.medium_tests = 2, 0
        tests = await h.make_tests()
        m = await h.run_matrix({"good": GOOD, "wrong_rank": WRONG_RANK}, tests)
        assert set(m.cells["good"].values()) == {"pass"}, h.details
        assert m.cells["wrong_rank"][tests[0].id] == "fail"
    finally:
        await h.close()
        await sandbox.close()


def test_fan_out_picks_the_openmp_harness_for_openmp_work():
    h = pick_harness("cpp", "total", REFERENCE, None, EventBus(), goal="make total parallel with OpenMP")
    assert type(h) is CHarness and h.draft is not None and h.draft.constraints["vars"]["n"]["medium"] > 2048


@pytest.mark.slow
def test_bakeoff_select_votes_on_mpi_candidates(tmp_path):
    paths = {}
    for name, src in {"serial": REFERENCE, "good": GOOD, "wrong_rank": WRONG_RANK, "drops": DROPS_REMAINDER}.items():
        paths[name] = tmp_path / f"{name}.cpp"
        paths[name].write_text(src)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"vars": {"n": {"small": [5, 16], "medium": 20000, "large": 100000}}}))
    result = CliRunner().invoke(app, ["select", "--reference", str(paths["serial"]), "--entry", "total", "--json",
                                      "--sandbox", "local", "--timing-repeats", "2", "--spec", str(spec),
                                      *[a for c in ("good", "wrong_rank", "drops") for a in ("--candidate", str(paths[c]))]])
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.output)
    assert verdict["winner"] == "good" and verdict["correct"] == ["good"]


def _mpi_answer(source: str) -> str:
    return f"One block of x per rank, combined on rank 0. Here is the whole new file:\n\ntotal.cpp\n```cpp\n#include <vector>\n{source}```\n"


@pytest.mark.slow
async def test_fan_out_votes_on_mpi_candidates_with_the_mpi_harness(tmp_path):
    import subprocess

    from bakeoff.agent.fanout.pipeline import fan_out
    from bakeoff.agent.fanout.settings import FanOutServices, FanOutSettings
    from bakeoff.agent.fanout.strategies import strategies_for
    from bakeoff.agent.models.scripted import ScriptedModel, ScriptedResponse
    from bakeoff.agent.seams import Workspace
    from bakeoff.sandboxes.pool import SandboxPool

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "total.cpp").write_text("#include <vector>\n" + REFERENCE)
    (repo / "Makefile").write_text("all:\n\tmpicxx -std=c++17 -c total.cpp -o total.o\n")
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)
    answers = {"mpi-block": GOOD, "mpi-cyclic": WRONG_RANK, "mpi-hybrid": DROPS_REMAINDER}
    model = ScriptedModel([
        *[ScriptedResponse(match=rf"(?s)Strategy \({name}\).*Repair round", text="I'll keep this version.", repeat=True)
          for name in answers],
        *[ScriptedResponse(match=rf"(?s)Strategy \({name}\)", text=_mpi_answer(src)) for name, src in answers.items()],
    ])
    goal = "port total in total.cpp to MPI"
    order = [s for s in strategies_for("cpp", goal) if s.name in answers]
    services = FanOutServices(
        editors=[model], tester=model, pool=SandboxPool(kind="local", max_concurrent=4),
        workspace=Workspace(path=repo, commit="HEAD"), events=EventBus(),
        settings=FanOutSettings(strategies=order, rounds=1, first_wave=1.0, profile_repeats=1, timing_repeats=2),
    )
    result = await fan_out(goal, ["total.cpp"], 3, entry="total", language="cpp", services=services)
    by_strategy = {c.strategy: c for c in result.candidates}
    assert result.verdict.correct == [by_strategy["mpi-block"].id], result.report_table
    assert result.winner is not None and result.winner.strategy == "mpi-block"
    assert "MPI_Reduce" in result.patch
