"""The C/C++ differential harness on real compilers and real processes."""

from __future__ import annotations

import asyncio
import time
import shutil

import pytest

from bakeoff.agent.harness.c_signature import SignatureError, guess_language, parse_signature
from bakeoff.agent.harness.cuda import build_and_run_cuda
from bakeoff.agent.harness.c_harness import CHarness
from bakeoff.agent.harness.c_timing import TimingOptions
from bakeoff.agent.harness.protocol import DifferentialHarness
from bakeoff.agent.harness.sizing import SizingLimits

# --------------------------------------------------------------------------- parsing

POINT = "struct Point {\n\tdouble x, y;\n};\n"
COO = "struct COOElement {\n   size_t row, column;\n   double value;\n};\n"
BOOK = "struct Book {\n   std::string title;\n   int pages;\n};\n"

# Real signatures from pareval-omp-dev's problems.jsonl: (source prefix, signature, expected).
SIGNATURES = [
    ("", "void luFactorize(std::vector<double> &A, size_t N)", "void", [("A", "std::vector<double>", "ref"), ("N", "size_t", "value")]),
    ("", "void gemm(std::vector<double> const& A, std::vector<double> const& B, std::vector<double> &C, size_t M, size_t K, size_t N)",
     "void", [("A", "std::vector<double>", "cref"), ("B", "std::vector<double>", "cref"), ("C", "std::vector<double>", "ref"),
              ("M", "size_t", "value"), ("K", "size_t", "value"), ("N", "size_t", "value")]),
    ("", "void axpy(double alpha, std::vector<double> const& x, std::vector<double> const& y, std::vector<double> &z)",
     "void", [("alpha", "double", "value"), ("x", "std::vector<double>", "cref"), ("y", "std::vector<double>", "cref"), ("z", "std::vector<double>", "ref")]),
    ("", "void ifft(std::vector<std::complex<double>> &x)", "void", [("x", "std::vector<std::complex<double>>", "ref")]),
    ("", "void fft(std::vector<std::complex<double>> const& x, std::vector<double> &r, std::vector<double> &i)",
     "void", [("x", "std::vector<std::complex<double>>", "cref"), ("r", "std::vector<double>", "ref"), ("i", "std::vector<double>", "ref")]),
    (POINT, "double smallestArea(std::vector<Point> const& points)", "double", [("points", "std::vector<Point>", "cref")]),
    ("", "int shortestPathLength(std::vector<int> const& A, size_t N, int source, int dest)",
     "int", [("A", "std::vector<int>", "cref"), ("N", "size_t", "value"), ("source", "int", "value"), ("dest", "int", "value")]),
    ("", " void pixelCounts(std::vector<int> const& image, std::array<size_t, 256> &bins)",
     "void", [("image", "std::vector<int>", "cref"), ("bins", "std::array<size_t, 256>", "ref")]),
    ("", "void firstLetterCounts(std::vector<std::string> const& s, std::array<size_t, 26> &bins)",
     "void", [("s", "std::vector<std::string>", "cref"), ("bins", "std::array<size_t, 26>", "ref")]),
    ("", "bool reduceLogicalXOR(std::vector<bool> const& x)", "bool", [("x", "std::vector<bool>", "cref")]),
    ("", "void partialMinimums(std::vector<float> &x)", "void", [("x", "std::vector<float>", "ref")]),
    (BOOK, "size_t findLastShortBook(std::vector<Book> const& books)", "size_t", [("books", "std::vector<Book>", "cref")]),
    ("", "void ranks(std::vector<float> const& x, std::vector<size_t> &ranks)",
     "void", [("x", "std::vector<float>", "cref"), ("ranks", "std::vector<size_t>", "ref")]),
    (COO, "void spmv(double alpha, std::vector<COOElement> const& A, std::vector<double> const& x, double beta, std::vector<double> &y, size_t M, size_t N)",
     "void", [("alpha", "double", "value"), ("A", "std::vector<COOElement>", "cref"), ("x", "std::vector<double>", "cref"),
              ("beta", "double", "value"), ("y", "std::vector<double>", "ref"), ("M", "size_t", "value"), ("N", "size_t", "value")]),
    ("", "void mapPowersOfTwo(std::vector<int> const& x, std::vector<bool> &mask)",
     "void", [("x", "std::vector<int>", "cref"), ("mask", "std::vector<bool>", "ref")]),
    ("", "double sum(const double *x, size_t n)", "double", [("x", "double", "cpointer"), ("n", "size_t", "value")]),
    ("", "void scale(float * restrict y, const float a[], unsigned long long n)",
     "void", [("y", "float", "pointer"), ("a", "float", "cpointer"), ("n", "unsigned long long", "value")]),
    ("", "int count(const std::vector<std::vector<int>>& grid)", "int", [("grid", "std::vector<std::vector<int>>", "cref")]),
]


@pytest.mark.parametrize(("prefix", "sig", "ret", "params"), SIGNATURES, ids=[s[1].split("(")[0].split()[-1] for s in SIGNATURES])
def test_signature_table(prefix, sig, ret, params):
    parsed = parse_signature(f"/* doc */\n{prefix}\n{sig} {{\n  return {{}};\n}}\n", sig.split("(")[0].split()[-1])
    assert parsed.returns.spell() == ret
    assert [(p.name, p.type.spell(), p.passing) for p in parsed.params] == params


def test_struct_fields_are_read_from_the_source():
    sig = parse_signature(COO + "void f(std::vector<COOElement> const& A) {}", "f")
    assert [(n, t.spell()) for n, t in sig.structs["COOElement"].fields] == [("row", "size_t"), ("column", "size_t"), ("value", "double")]


def test_unknown_types_and_missing_functions_are_named():
    with pytest.raises(SignatureError, match="Matrix"):
        parse_signature("void f(Matrix const& m) {}", "f")
    with pytest.raises(SignatureError, match="no definition of g"):
        parse_signature("void g(int x);\nvoid f(int x) {}", "g")


def test_language_guess():
    assert guess_language("double f(const double *x, int n) { return x[0]; }") == "c"
    assert guess_language("double f(std::vector<double> const& x) { return x[0]; }") == "c++"


# --------------------------------------------------------------------------- running

REFERENCE = """
/* Return the sum of x. */
double total(std::vector<double> const& x) {
  double s = 0;
  for (size_t i = 0; i < x.size(); ++i) s += x[i];
  return s;
}
"""
REDUCTION = """#include <omp.h>
double total(std::vector<double> const& x) {
  double s = 0;
  #pragma omp parallel for reduction(+:s)
  for (size_t i = 0; i < x.size(); ++i) s += x[i];
  return s;
}
"""
RACE = """#include <omp.h>
double total(std::vector<double> const& x) {
  double s = 0;
  #pragma omp parallel for
  for (size_t i = 0; i < x.size(); ++i) s += x[i];
  return s;
}
"""
OFF_BY_ONE = """#include <omp.h>
double total(std::vector<double> const& x) {
  double s = 0;
  #pragma omp parallel for reduction(+:s)
  for (size_t i = 1; i < x.size(); ++i) s += x[i];
  return s;
}
"""
SERIAL = """
double total(std::vector<double> const& x) {
  double s = 0;
  for (double v : x) s += v;
  return s;
}
"""
REVERSED = """
double total(std::vector<double> const& x) {
  double s = 0;
  for (size_t i = x.size(); i-- > 0;) s += x[i];
  return s;
}
"""
SLIGHTLY_OFF = """
double total(std::vector<double> const& x) {
  double s = 0;
  for (double v : x) s += v;
  return s * (1 + 1e-3);
}
"""
NO_BRACE = """#include <omp.h>
double total(std::vector<double> const& x) {
  double s = 0;
  for (double v : x) s += v;
  return s;
"""

SUM_CONSTRAINTS = {"vars": {"n": {"small": [1, 40], "medium": 8000000, "large": 2000000}}}


@pytest.fixture(scope="module")
def sum_run():
    """One harness, every kind of candidate at once (the driver runtime is built only once)."""

    async def go():
        # Timed at 2 threads whatever the machine has, on an input grown until the reference takes 0.05 s.
        h = CHarness(REFERENCE, "total", constraints=SUM_CONSTRAINTS, small_tests=3, medium_tests=1, repeats=5,
                     timing=TimingOptions(threads=2, sizing=SizingLimits(min_time_s=0.05)))
        assert isinstance(h, DifferentialHarness)
        assert h.threads[-1] >= 4  # oversubscribed beyond the cores
        try:
            tests = await h.make_tests()
            sources = {"reduction": REDUCTION, "off_by_one": OFF_BY_ONE, "serial": SERIAL,
                       "serial_again": SERIAL, "reversed": REVERSED, "slightly_off": SLIGHTLY_OFF, "no_brace": NO_BRACE}
            matrix = await h.run_matrix(sources, tests)
            # A race shows only when the team's threads really overlap: run it with the cores to itself.
            raced = await h.run_matrix({"race": RACE}, tests)
            for t in tests:
                matrix.set("race", t.id, raced.cells["race"][t.id])
            timings = await h.time({"reduction": REDUCTION, "serial": SERIAL}, repeats=3)
            return h, tests, matrix, timings
        finally:
            await h.close()

    return asyncio.run(go())


def test_tests_carry_the_reference_output(sum_run):
    _, tests, _, _ = sum_run
    assert len(tests) == 4
    assert all(t.kind == "differential" and t.expected["digest"] for t in tests)
    assert len({t.expected["digest"] for t in tests}) == 4


def test_reduction_and_serial_pass(sum_run):
    _, tests, m, _ = sum_run
    for cand in ("reduction", "serial", "serial_again"):
        assert all(m.cells[cand][t.id] == "pass" for t in tests), (cand, m.cells[cand])


def test_missing_reduction_is_caught_at_many_threads(sum_run):
    h, tests, m, _ = sum_run
    # Caught on some input (after that, the driver runs the remaining tests only once).
    assert any(m.cells["race"][t.id] in ("flaky", "fail") for t in tests), h.details["race"]


def test_off_by_one_fails(sum_run):
    _, tests, m, _ = sum_run
    assert all(m.cells["off_by_one"][t.id] == "fail" for t in tests)


def test_float_tolerance(sum_run):
    _, tests, m, _ = sum_run
    # A different summation order is within 1e-6 relative; a 1e-3 relative error is not.
    assert all(m.cells["reversed"][t.id] == "pass" for t in tests)
    assert all(m.cells["slightly_off"][t.id] == "fail" for t in tests)


def test_build_error_is_error_everywhere(sum_run):
    h, tests, m, _ = sum_run
    assert all(m.cells["no_brace"][t.id] == "error" for t in tests)
    assert "error" in h.build_logs["no_brace"]


def test_identical_sources_are_built_once(sum_run):
    h, _, m, _ = sum_run
    assert m.cells["serial"] == m.cells["serial_again"]
    # runtime + reference objects + reference binary + 7 distinct candidates
    assert len([k for k in h.builds.tasks if k.startswith("cand_")]) == 7  # six distinct + the race


def test_timing_has_an_interval(sum_run):
    _, _, _, timings = sum_run
    assert set(timings) == {"reduction", "serial"}
    for t in timings.values():
        assert len(t.baseline_s) == 3 and len(t.candidate_s) == 3
        assert t.low <= t.speedup <= t.high
        assert t.threads == 2
        # The scaling curve: 1 and 2 threads, the target's point the timing's own.
        assert [p.threads for p in t.curve] == [1, 2] and t.curve[-1].speedup == t.speedup


CRAWL = """
double total(std::vector<double> const& x) {
  double s = 0;
  for (size_t i = 0; i < x.size(); ++i)
    for (size_t j = 0; j < x.size(); ++j) if (i == j) s += x[j];  // quadratic: same sum, far slower
  return s;
}
"""


async def test_a_candidate_far_slower_than_the_reference_is_timed_only_up_to_its_limit():
    h = CHarness(REFERENCE, "total", constraints={"vars": {"n": {"small": [1, 4], "medium": 100, "large": 400000}}},
                 call_timeout=30.0)
    try:
        start = time.monotonic()
        timings = await h.time({"crawl": CRAWL, "serial": SERIAL}, repeats=3)
        took = time.monotonic() - start
    finally:
        await h.close()
    crawl = timings["crawl"]
    # Stopped at 10x the reference plus 0.25 s and twice the input's building time (the
    # quadratic loop needs minutes here).
    assert crawl.candidate_s and 0.5 <= crawl.candidate_s[0] < 10
    assert crawl.low == 0.0 and crawl.speedup == crawl.high and crawl.high < 0.1
    assert timings["serial"].candidate_s and len(timings["serial"].candidate_s) == 3
    assert took < 60



FIRST = """
#include <vector>
int first(const std::vector<int>& x) { return x.empty() ? 0 : x[0]; }
"""


async def test_building_a_large_input_does_not_count_against_a_candidates_limit():
    """The call takes nanoseconds; building 30M numbers takes over half a second, under the same
    alarm. The candidate (the reference itself) is timed, not cut off at 10x the call."""
    h = CHarness(FIRST, "first", constraints={"vars": {"n": {"small": [1, 4], "medium": 100, "large": 30_000_000}}},
                 call_timeout=30.0, timing=TimingOptions(threads=1, sizing=SizingLimits(min_time_s=0.0)))
    try:
        timings = await h.time({"same": FIRST}, repeats=2)
    finally:
        await h.close()
    same = timings["same"]
    assert not any(p.censored for p in same.curve), same
    assert len(same.candidate_s) == 2 and max(same.candidate_s) < 0.5, same


async def test_past_its_limit_on_an_input_a_candidate_is_not_run_on_those_as_large():
    # The reference sums 200k numbers in well under a millisecond, so the quadratic candidate's
    # limit is 0.5 s, far below the 30 s alarm: it is stopped there, once, not three times.
    h = CHarness(REFERENCE, "total", constraints={"vars": {"n": {"small": [1, 4], "medium": 200000}}},
                 small_tests=2, medium_tests=3, threads=[1, 2], repeats=1, call_timeout=30.0)
    try:
        tests = await h.make_tests()
        start = time.monotonic()
        m = await h.run_matrix({"crawl": CRAWL, "serial": SERIAL}, tests)
        took = time.monotonic() - start
    finally:
        await h.close()
    medium = [t.id for t in tests if "medium" in t.id]
    assert [m.cells["serial"][t] for t in medium] == ["pass"] * 3
    assert [m.cells["crawl"][t] for t in medium] == ["timeout"] * 3
    assert all(m.cells["crawl"][t.id] == "pass" for t in tests if "small" in t.id)
    why = h.details["crawl"]
    assert "its limit: 20x the reference" in why[medium[0]]
    assert all("not run: past its limit on diff-medium-0" in why[t] for t in medium[1:])
    # Runs matching the reference, per test: every run of the serial version, none of crawl's.
    assert [h.matched["serial"][t] for t in medium] == [(2, 2)] * 3
    assert [h.matched["crawl"][t] for t in medium] == [(0, 1)] * 3
    assert took < 20

SLEEPY = """#include <unistd.h>
double total(std::vector<double> const& x) {
  usleep(200000);  // right, but 0.2 s a call whatever the input: far slower than the reference
  double s = 0;
  for (double v : x) s += v;
  return s;
}
"""


async def test_a_far_slower_candidate_runs_once_per_thread_count_after_its_repeat_budget():
    # The reference takes microseconds: the repeats may cost 0.5 s (the floor) per input. The
    # serial copy runs all 2 x 3 times; the sleepy one 0.2, 0.4, 0.6 s at 1 thread, then once at 2.
    h = CHarness(REFERENCE, "total", constraints={"vars": {"n": {"small": [1, 4], "medium": 1000}}},
                 small_tests=1, medium_tests=1, threads=[1, 2], repeats=3, call_timeout=30.0)
    try:
        tests = await h.make_tests()
        m = await h.run_matrix({"sleepy": SLEEPY, "serial": SERIAL}, tests)
    finally:
        await h.close()
    assert all(m.cells[c][t.id] == "pass" for c in ("sleepy", "serial") for t in tests)
    assert all(h.matched["serial"][t.id] == (6, 6) for t in tests)
    assert all(h.matched["sleepy"][t.id] == (4, 4) for t in tests), h.matched["sleepy"]


UNORDERED_REF = """
/* Store the indices of the positive values of x in out (any order); return how many. */
int positives(std::vector<int> const& x, std::vector<int> &out) {
  out.clear();
  for (int i = 0; i < (int)x.size(); ++i) if (x[i] > 0) out.push_back(i);
  return (int)out.size();
}
"""
UNORDERED_CAND = """
int positives(std::vector<int> const& x, std::vector<int> &out) {
  out.clear();
  for (int i = (int)x.size() - 1; i >= 0; --i) if (x[i] > 0) out.push_back(i);
  return (int)out.size();
}
"""


@pytest.mark.parametrize("unordered", [True, False])
async def test_unordered_outputs(unordered):
    h = CHarness(UNORDERED_REF, "positives", unordered=unordered, small_tests=2, medium_tests=0, threads=[1, 2], repeats=1)
    try:
        tests = await h.make_tests()
        m = await h.run_matrix({"rev": UNORDERED_CAND}, tests)
        expected = "pass" if unordered else "fail"
        assert [m.cells["rev"][t.id] for t in tests] == [expected] * len(tests)
    finally:
        await h.close()


C_REFERENCE = """
typedef struct { double x, y; } Point;
/* Sum of x * y over the points; also doubles every y. */
double weighted(Point *p, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) { s += p[i].x * p[i].y; p[i].y *= 2; }
  return s;
}
"""
C_CANDIDATE = """#include <omp.h>
typedef struct { double x, y; } Point;
static double helper(Point q) { return q.x * q.y; }
double weighted(Point *p, size_t n) {
  double s = 0;
  #pragma omp parallel for reduction(+:s)
  for (size_t i = 0; i < n; i++) { s += helper(p[i]); p[i].y *= 2; }
  return s;
}
"""
C_WRONG = C_CANDIDATE.replace("p[i].y *= 2", "p[i].y *= 3")


async def test_c_pointers_structs_and_renamed_symbols():
    h = CHarness(C_REFERENCE, "weighted", constraints={"args": {"n": {"value": "n"}}}, small_tests=2, medium_tests=1,
                 threads=[1, 2, 4], repeats=2)
    try:
        assert h.language == "c"
        tests = await h.make_tests()
        m = await h.run_matrix({"good": C_CANDIDATE, "wrong": C_WRONG}, tests)
        assert all(m.cells["good"][t.id] == "pass" for t in tests), h.details
        assert all(m.cells["wrong"][t.id] == "fail" for t in tests)
    finally:
        await h.close()


CRASH_REF = "int first(std::vector<int> const& x) {\n  return x.empty() ? -1 : x[0];\n}\n"
CRASH = "#include <cstdlib>\nint first(std::vector<int> const& x) {\n  if (x.size() > 3) abort();\n  return x.empty() ? -1 : x[0];\n}\n"
HANG = "int first(std::vector<int> const& x) {\n  volatile int s = 0; while (x.size() > 3) { s = s + 1; }\n  return x.empty() ? -1 : x[0];\n}\n"


async def test_crash_is_error_and_hang_is_timeout_per_test():
    h = CHarness(CRASH_REF, "first", constraints={"vars": {"n": {"small": [0, 2], "medium": 50}}}, small_tests=2,
                 medium_tests=1, threads=[1, 2], repeats=1, call_timeout=1.0)
    try:
        tests = await h.make_tests()
        m = await h.run_matrix({"crash": CRASH, "hang": HANG}, tests)
        small = [t.id for t in tests if "small" in t.id]
        assert [m.cells["crash"][t] for t in small] == ["pass", "pass"]
        assert m.cells["crash"]["diff-medium-0"] == "error"
        assert [m.cells["hang"][t] for t in small] == ["pass", "pass"]
        assert m.cells["hang"]["diff-medium-0"] == "timeout"
    finally:
        await h.close()


@pytest.mark.slow
async def test_through_the_local_sandbox(tmp_path):
    local = pytest.importorskip("bakeoff.sandboxes.local")
    from bakeoff.agent.seams import Workspace

    sandbox = await local.LocalSandbox.create(Workspace(path=tmp_path))
    h = CHarness(REFERENCE, "total", sandbox=sandbox, small_tests=1, medium_tests=0, threads=[1, 2], repeats=1)
    try:
        tests = await h.make_tests()
        m = await h.run_matrix({"reduction": REDUCTION, "off_by_one": OFF_BY_ONE}, tests)
        assert m.cells["reduction"][tests[0].id] == "pass"
        assert m.cells["off_by_one"][tests[0].id] == "fail"
    finally:
        await h.close()
        await sandbox.close()


CUDA = r"""
#include <cstdio>
__global__ void add(int *x) { x[threadIdx.x] += 1; }
int main() {
  int *d, h[4] = {1, 2, 3, 4};
  cudaMalloc(&d, sizeof h);
  cudaMemcpy(d, h, sizeof h, cudaMemcpyHostToDevice);
  add<<<1, 4>>>(d);
  cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
  printf("%d %d %d %d\n", h[0], h[1], h[2], h[3]);
  return 0;
}
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
async def test_cuda_builds_and_says_when_there_is_no_device():
    run = await build_and_run_cuda(CUDA)
    assert run.built, run.build_log
    if run.no_device:
        assert run.message.startswith("no CUDA device")
        assert not run.ran and run.result is None
    else:
        assert run.ran and run.result is not None
        assert run.result.stdout.strip() == "2 3 4 5"
    broken = await build_and_run_cuda(CUDA.replace("add<<<1, 4>>>(d);", "add<<<1, 4>>>(d)"))
    assert not broken.built and "error" in broken.build_log


UNSAFE_REF = "int first(std::vector<int> const& x) {\n  if (x.empty()) throw std::out_of_range(\"empty\");\n  return x[0];\n}\n"


async def test_model_proposed_edge_cases_literal_values_and_dropped_inputs():
    h = CHarness(UNSAFE_REF, "first", constraints={"vars": {"n": {"small": [1, 4]}}}, small_tests=1, medium_tests=0,
                 threads=[1, 2], repeats=1)
    try:
        tests = await h.make_tests([{"values": {"x": [41, 7]}}, {"values": {"x": []}}, {"vars": {"n": 3}}])
        ids = [t.id for t in tests]
        assert ids == ["diff-small-0", "diff-edge-0", "diff-edge-2"]  # the empty vector made the reference throw
        assert tests[1].expected["preview"] == "O-1,41"
        assert any("diff-edge-1 dropped" in n and "empty" in n for n in h.notes)
        wrong = "int first(std::vector<int> const& x) {\n  return x.size() == 2 ? 0 : x[0];\n}\n"
        m = await h.run_matrix({"wrong": wrong}, tests)
        assert m.cells["wrong"] == {"diff-small-0": "pass", "diff-edge-0": "fail", "diff-edge-2": "pass"}
    finally:
        await h.close()


RESULT_SORT_REF = """struct Result {
   int startTime, duration;
   float value;
};
void sortByStartTime(std::vector<Result> &results) {
   std::sort(results.begin(), results.end(), [](const Result &a, const Result &b) { return a.startTime < b.startTime; });
}
"""
RESULT_SORT_GOOD = RESULT_SORT_REF.replace("std::sort", "std::stable_sort")
RESULT_SORT_BAD = RESULT_SORT_REF.replace("a.startTime < b.startTime", "a.duration < b.duration")


async def test_struct_field_constraints_and_unique_keys():
    cons = {"vars": {"n": {"small": [5, 30]}},
            "args": {"results": {"fields": {"startTime": {"range": [0, 40]}}, "unique_by": ["startTime"]}}}
    h = CHarness(RESULT_SORT_REF, "sortByStartTime", constraints=cons, small_tests=2, medium_tests=0, threads=[1, 2], repeats=1)
    try:
        tests = await h.make_tests()
        m = await h.run_matrix({"good": RESULT_SORT_GOOD, "bad": RESULT_SORT_BAD}, tests)
        # With unique keys every correct sort agrees, stable or not.
        assert [m.cells["good"][t.id] for t in tests] == ["pass", "pass"]
        assert [m.cells["bad"][t.id] for t in tests] == ["fail", "fail"]
    finally:
        await h.close()
