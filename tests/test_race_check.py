"""ThreadSanitizer + Archer through the C/C++ differential harness: races found by analysis,
correct OpenMP synchronization left alone."""

from __future__ import annotations

import os

import pytest

from bakeoff.agent.harness.c_harness import CHarness
from bakeoff.agent.harness.race_check import parse_reports, tsan_available

REFERENCE = """
#include <vector>
double smallest_sum(const std::vector<double>& x) {
  double best = 1e300, s = 0;
  for (size_t i = 0; i < x.size(); ++i) { if (x[i] < best) best = x[i]; s += x[i]; }
  return best + 0 * s;
}
"""

RACY_MIN = """
#include <vector>
double smallest_sum(const std::vector<double>& x) {
  double best = 1e300;
  #pragma omp parallel for
  for (long i = 0; i < (long)x.size(); ++i) { if (x[i] < best) best = x[i]; }
  return best;
}
"""

RACY_SUM_REF = """
#include <vector>
double total(const std::vector<double>& x) {
  double s = 0;
  for (size_t i = 0; i < x.size(); ++i) s += x[i];
  return s;
}
"""

MISSING_REDUCTION = """
#include <vector>
double total(const std::vector<double>& x) {
  double s = 0;
  #pragma omp parallel for
  for (long i = 0; i < (long)x.size(); ++i) s += x[i];
  return s;
}
"""

REDUCTION = """
#include <vector>
double total(const std::vector<double>& x) {
  double s = 0;
  #pragma omp parallel for reduction(+:s)
  for (long i = 0; i < (long)x.size(); ++i) s += x[i];
  return s;
}
"""

CRITICAL_MIN = """
#include <vector>
double smallest_sum(const std::vector<double>& x) {
  double best = 1e300;
  #pragma omp parallel for
  for (long i = 0; i < (long)x.size(); ++i) {
    #pragma omp critical
    { if (x[i] < best) best = x[i]; }
  }
  return best;
}
"""

ATOMIC_SUM = """
#include <vector>
double total(const std::vector<double>& x) {
  double s = 0;
  #pragma omp parallel for
  for (long i = 0; i < (long)x.size(); ++i) {
    #pragma omp atomic
    s += x[i];
  }
  return s;
}
"""

PER_THREAD_MIN = """
#include <vector>
#include <omp.h>
double smallest_sum(const std::vector<double>& x) {
  std::vector<double> part(omp_get_max_threads(), 1e300);
  #pragma omp parallel
  {
    int t = omp_get_thread_num();
    #pragma omp for
    for (long i = 0; i < (long)x.size(); ++i) if (x[i] < part[t]) part[t] = x[i];
  }
  double best = 1e300;
  for (double p : part) if (p < best) best = p;
  return best;
}
"""

# The plain runs at one thread cannot see a race (as most runs on two cores do not): whatever
# is flaky here was found by ThreadSanitizer's run at 4 threads.
CONSTRAINTS = {"vars": {"n": {"small": [24, 48], "medium": 64}}, "args": {"x": {"elem": {"range": [-5, 5]}}}}


def _toolchain() -> None:
    ok, why = tsan_available()
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"CI installs clang and libomp-dev (.ci/run), yet: {why}")
        pytest.skip(why)


async def _outcomes(reference: str, function: str, candidates: dict[str, str], race_check: bool = True) -> tuple[dict[str, set[str]], CHarness]:
    h = CHarness(reference, function, constraints=CONSTRAINTS, threads=[1], repeats=1,
                 small_tests=2, medium_tests=0, race_check=race_check)
    tests = await h.make_tests()
    m = await h.run_matrix(candidates, tests)
    return {c: set(m.cells[c].values()) for c in candidates}, h


async def test_unprotected_min_and_missing_reduction_are_flaky_correct_sync_passes():
    _toolchain()
    try:
        got, h = await _outcomes(REFERENCE, "smallest_sum",
                                 {"racy": RACY_MIN, "critical": CRITICAL_MIN, "per_thread": PER_THREAD_MIN})
        assert got["racy"] == {"flaky"}, h.details
        assert "data race" in h.races["racy"] and h.race_counts["racy"] >= 1
        assert "critical" not in h.race_counts
        assert got["critical"] == {"pass"}, h.notes
        assert got["per_thread"] == {"pass"}, h.notes
    finally:
        await h.close()
    try:
        got, h = await _outcomes(RACY_SUM_REF, "total",
                                 {"missing": MISSING_REDUCTION, "reduction": REDUCTION, "atomic": ATOMIC_SUM})
        assert got["missing"] == {"flaky"}, h.details
        assert got["reduction"] == {"pass"}, h.notes
        assert got["atomic"] == {"pass"}, h.notes
    finally:
        await h.close()


async def test_race_check_off_leaves_the_timing_bound_verdict():
    _toolchain()
    got, h = await _outcomes(REFERENCE, "smallest_sum", {"racy": RACY_MIN}, race_check=False)
    await h.close()
    assert got["racy"] == {"pass"}
    assert h.races == {}


def test_reports_elsewhere_are_not_blamed_on_the_candidate():
    text = ("==================\nWARNING: ThreadSanitizer: data race (pid=1)\n  #0 bk_ref::f ref.cpp:3\n"
            "==================\n")
    assert parse_reports(text).racy
    assert not parse_reports(text, only=("cand.c", "bk_cand")).racy


def test_every_report_on_the_candidate_is_counted():
    one = "==================\nWARNING: ThreadSanitizer: data race (pid=1)\n  #0 bk_cand::f cand.cpp:{}\n==================\n"
    elsewhere = "==================\nWARNING: ThreadSanitizer: data race (pid=1)\n  #0 bk_ref::f ref.cpp:3\n==================\n"
    report = parse_reports(one.format(3) + elsewhere + one.format(7), only=("cand.c", "bk_cand"))
    assert report.racy and report.count == 2 and "(2 reports in all)" in report.summary
    assert parse_reports("", only=("bk_cand",)).count == 0


@pytest.mark.docker
async def test_races_are_found_inside_a_docker_sandbox(tmp_path):
    """The Action runs candidates in Docker: the image carries clang, libomp and Archer too."""
    from bakeoff.agent.seams import Workspace
    from bakeoff.sandboxes import create_sandbox
    from bakeoff.sandboxes.docker import engine_available

    up, why = engine_available()
    if not up:
        pytest.skip(why)
    (tmp_path / "ws").mkdir()
    sb = await create_sandbox(Workspace(path=tmp_path / "ws"), kind="docker")
    h = CHarness(RACY_SUM_REF, "total", constraints=CONSTRAINTS, threads=[1], repeats=1,
                 small_tests=2, medium_tests=0, sandbox=sb)
    try:
        tests = await h.make_tests()
        m = await h.run_matrix({"missing": MISSING_REDUCTION, "reduction": REDUCTION}, tests)
        assert set(m.cells["missing"].values()) == {"flaky"}, (h.details, h.notes)
        assert set(m.cells["reduction"].values()) == {"pass"}, h.notes
    finally:
        await h.close()
        await sb.close()
