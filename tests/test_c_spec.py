"""Spec inference read from C/C++ sources alone (no compiler): sizes, lengths, domains, helpers.

The sources are ParEval problems' serial references (``../shared/bench/pareval-omp-dev``),
copied here so each rule has a case of its own; one test reads the whole dev set and holds
the inference to what a person wrote down for it by hand (``bench/pareval/constraints.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

from bakeoff.agent.harness.c_facts import declared_only, doc_comment, loops
from bakeoff.agent.harness.c_spec import LARGE_WORK, MEDIUM_WORK, infer_spec
from tests.shared_data import bench_data

ROOT = Path(__file__).resolve().parents[1]

GEMV = """/* Multiply the matrix A by the vector x. Store the results in the vector y.
   A is an MxN matrix stored in row-major, x has N elements, and y has M elements.
*/
void gemv(std::vector<double> const& A, std::vector<double> const& x, std::vector<double> &y, size_t M, size_t N) {
for (size_t i = 0; i < M; ++i) {
        double sum = 0;
        for (size_t j = 0; j < N; ++j) {
            sum += A[i * N + j] * x[j];
        }
        y[i] = sum;
    }
}
"""

SHORTEST = """/* Return the length of the shortest path from source to dest in the undirected graph defined by the adjacency matrix A.
   A is an NxN adjacency matrix stored in row-major. A is an undirected graph.
*/
int shortestPathLength(std::vector<int> const& A, size_t N, int source, int dest) {
std::vector<int> dist(N, INT_MAX);
	std::queue<int> q;
	q.push(source);
	dist[source] = 0;
	while (!q.empty()) {
		int u = q.front();
		q.pop();
		for (int v = 0; v < N; ++v) {
			if (A[u * N + v] == 1 && dist[v] == INT_MAX) {
				dist[v] = dist[u] + 1;
				q.push(v);
			}
		}
	}
	return dist[dest] == INT_MAX ? -1 : dist[dest];
}
"""

PIXELS = """/* Count the number of pixels in image with each grayscale intensity.
   Store the results in `bins`.
*/
void pixelCounts(std::vector<int> const& image, std::array<size_t, 256> &bins) {
for (auto const& pixel : image) {
        bins[pixel]++;
    }
}
"""

KTH = """/* Find the k-th smallest element of the vector x.
*/
int findKthSmallest(std::vector<int> const& x, int k) {
    std::vector<int> y(x);
    std::sort(y.begin(), y.end());
    return y[k-1];
}
"""

BY_KEY = """struct Result {
   int startTime, duration;
   float value;
};

/* Sort vector of Result structs by start time in ascending order. */
void sortByStartTime(std::vector<Result> &results) {
std::sort(results.begin(), results.end(), [](const Result &a, const Result &b) {
      return a.startTime < b.startTime;
   });
}
"""

SPMV = """struct COOElement {
   size_t row, column;
   double value;
};

/* Compute y = alpha*A*x + beta*y where alpha and beta are scalars, x and y are vectors,
   and A is a sparse matrix stored in COO format.
   A has dimensions MxN, x has N values, and y has M values.
*/
void spmv(double alpha, std::vector<COOElement> const& A, std::vector<double> const& x, double beta, std::vector<double> &y, size_t M, size_t N) {
for (size_t i = 0; i < M; ++i) {
      y[i] *= beta;
   }
   for (size_t i = 0; i < A.size(); ++i) {
      y[A[i].row] += alpha * A[i].value * x[A[i].column];
   }
}
"""

IFFT = """/* forward declare fft. computes fourier transform in-place */
void fft(std::vector<std::complex<double>> &x);

/* Compute the inverse fourier transform of x in-place. */
void ifft(std::vector<std::complex<double>> &x) {
for (auto &elem : x) {
    elem = std::conj(elem);
}
fft(x);
for (auto &elem : x) {
    elem = std::conj(elem) / static_cast<double>(x.size());
}
}
"""

LU = """/* Factorize the matrix A into A=LU where L is a lower triangular matrix and U is an upper triangular matrix.
   A is an NxN matrix stored in row-major.
*/
void luFactorize(std::vector<double> &A, size_t N) {
for (size_t i = 0; i < N; i++) {
    for (size_t j = i + 1; j < N; j++) {
      A[j * N + i] = A[j * N + i] / A[i * N + i];
      for (size_t k = i + 1; k < N; k++) {
        A[j * N + k] = A[j * N + k] - A[j * N + i] * A[i * N + k];
      }
    }
  }
}
"""

PRODUCT = """/* Return the product of the vector x with every odd indexed element inverted. */
double productWithInverses(std::vector<double> const& x) {
double result = 1;
  for (int i = 0; i < x.size(); i++) {
    if (i % 2 == 0) result *= x[i]; else result *= 1 / x[i];
  }
  return result;
}
"""

LIFE = """/* Simulate one generation of Game of Life on `input`. Store the results in `output`.
   `input` and `output` are NxN grids stored in row-major.
*/
void gameOfLife(std::vector<int> const& input, std::vector<int> &output, size_t N) {
  for (size_t i = 0; i < N; ++i) {
    for (size_t j = 0; j < N; ++j) {
      int count = 0;
      for (int x = -1; x <= 1; ++x) for (int y = -1; y <= 1; ++y) if (x || y) count += input[((i + x + N) % N) * N + (j + y + N) % N];
      output[i * N + j] = input[i * N + j] == 1 ? (count == 2 || count == 3) : count == 3;
    }
  }
}
"""

BOOKS = """struct Book {
   std::string title;
   int pages;
};

/* Return the index of the last Book item in the vector books where Book.pages is less than 100. */
size_t findLastShortBook(std::vector<Book> const& books) {
size_t last = 0;
   for (size_t i = 0; i < books.size(); ++i) {
      if (books[i].pages < 100) last = i;
   }
   return last;
}
"""

TRIANGLE = """/* Return the area of the smallest triangle that can be formed by any 3 points. */
double smallestArea(std::vector<double> const& xs) {
double best = 1e300;
  for (int i = 0; i < xs.size(); ++i)
    for (int j = i + 1; j < xs.size(); ++j)
      for (int k = j + 1; k < xs.size(); ++k)
        best = std::min(best, std::abs(xs[i] - xs[j]) * std::abs(xs[j] - xs[k]));
  return best;
}
"""


def args_of(source: str, fn: str) -> dict:
    return infer_spec(source, fn).constraints.get("args", {})


def test_lengths_follow_the_docs_shapes():
    draft = infer_spec(GEMV, "gemv")
    assert set(draft.constraints["vars"]) == {"M", "N"}
    assert {p: a["len"] for p, a in draft.constraints["args"].items()} == {"A": "M*N", "x": "N", "y": "M"}
    assert draft.degree == 2
    assert any("A: length M*N (doc)" in n for n in draft.notes)


def test_an_adjacency_matrix_and_index_arguments():
    args = args_of(SHORTEST, "shortestPathLength")
    assert args["A"]["len"] == "N*N" and args["A"]["symmetric"] == "N" and args["A"]["zero_diagonal"] == "N"
    assert args["A"]["bernoulli"] == "min(0.5, 2/max(1, N))"
    # source and dest index dist(N): they are no sizes, they stay inside [0, N-1].
    assert args["source"]["range"] == [0, "N-1"] and args["dest"]["range"] == [0, "N-1"]
    assert set(infer_spec(SHORTEST, "shortestPathLength").constraints["vars"]) == {"N"}


def test_elements_that_index_a_fixed_array_stay_inside_it():
    assert args_of(PIXELS, "pixelCounts")["image"]["range"] == [0, 255]


def test_a_one_based_index_of_a_copy():
    assert args_of(KTH, "findKthSmallest")["k"]["range"] == [1, "len(x)"]


def test_a_sort_by_one_field_gets_unique_wide_keys():
    results = args_of(BY_KEY, "sortByStartTime")["results"]
    assert results["unique_by"] == ["startTime"]
    assert results["fields"]["startTime"]["range"] == [0, 1_000_000_000]


def test_sparse_coo_entries_and_an_output_the_formula_reads():
    args = args_of(SPMV, "spmv")
    assert args["A"]["coo"] == {"rows": "M", "cols": "N", "density": "min(0.3, 16/max(1, N))", "row": "row",
                                "col": "column"}
    from bakeoff.agent.harness.c_plan import evaluate

    assert evaluate(args["A"]["coo"]["density"], {"M": 0, "N": 0}) == 0.3  # an empty matrix, drawn as an edge case
    assert args["x"]["len"] == "N" and args["y"] == {"len": "M", "init": "random"}


def test_a_declared_helper_nobody_defines_is_missing_unless_given():
    draft = infer_spec(IFFT, "ifft")
    assert draft.missing == ["fft"]
    assert draft.constraints["vars"]["n"]["pow2"] is True
    given = infer_spec(IFFT, "ifft", support="void fft(std::vector<std::complex<double>> &x) {}")
    assert given.missing == [] and "void fft" in given.constraints["support"]


def test_factorizations_get_a_diagonally_dominant_matrix_and_cubic_sizes():
    draft = infer_spec(LU, "luFactorize")
    assert draft.constraints["args"]["A"] == {"len": "N*N", "diag_dominant": "N"}
    assert draft.degree == 3
    n = draft.constraints["vars"]["N"]
    assert n["small"] == [1, 8]
    assert abs(n["medium"] ** 3 - MEDIUM_WORK) / MEDIUM_WORK < 0.1 and abs(n["large"] ** 3 - LARGE_WORK) / LARGE_WORK < 0.1


def test_products_stay_near_one_and_flags_are_zero_or_one():
    assert args_of(PRODUCT, "productWithInverses")["x"]["range"] == [0.9, 1.1]
    life = args_of(LIFE, "gameOfLife")
    assert life["input"] == {"len": "N*N", "range": [0, 1]} and life["output"] == {"len": "N*N"}


def test_thresholds_are_straddled_and_the_loop_nest_sets_the_sizes():
    assert args_of(BOOKS, "findLastShortBook")["books"]["fields"]["pages"]["range"] == [0, 200]
    cubic = infer_spec(TRIANGLE, "smallestArea")
    assert cubic.degree == 3 and cubic.constraints["vars"]["n"]["medium"] < 200  # not a million points


def test_facts_doc_loops_and_prototypes():
    doc, hints = doc_comment(GEMV, "gemv")
    assert doc.strip().startswith("Multiply the matrix A") and "x has N elements" in doc
    nest = loops("for (int i = 0; i < n; i++) for (int j = 0; j < i; ++j) s += j; while (!q.empty()) { q.pop(); }")
    assert [lp.kind for lp in nest] == ["for", "while"] and [c.var for c in nest[0].children] == ["j"]
    # Calls in bodies and variables with constructor arguments are no prototypes.
    src = "void fft(int *x);\nint g(int n) { std::vector<int> v(n, 0); std::swap(v[0], v[1]); throw std::invalid_argument(\"a b\"); }"
    assert declared_only(src) == {"fft"}


def test_the_whole_dev_set_matches_the_hand_written_lengths_and_shapes():
    data = bench_data("pareval-omp-dev")
    problems = [json.loads(x) for x in (data / "problems.jsonl").read_text().splitlines() if x.strip()]
    hand = json.loads((ROOT / "bench" / "pareval" / "constraints.json").read_text())["problems"]
    differs = []
    for p in problems:
        draft = infer_spec(p["serial_source"], p["function_name"])
        mine = draft.constraints.get("args", {})
        theirs = hand.get(p["name"], {})
        if set(draft.constraints["vars"]) != set(theirs.get("vars", {"n": {}})):
            differs.append(f"{p['name']}: vars {set(draft.constraints['vars'])}")
        for arg, spec in (theirs.get("args") or {}).items():
            for key in ("len", "symmetric", "diag_dominant", "unique_by"):
                if key in spec and mine.get(arg, {}).get(key) != spec[key]:
                    differs.append(f"{p['name']}: {arg}.{key} {mine.get(arg, {}).get(key)} != {spec[key]}")
            if "coo" in spec and {k: mine.get(arg, {}).get("coo", {}).get(k) for k in ("rows", "cols")} != \
                    {k: spec["coo"][k] for k in ("rows", "cols")}:
                differs.append(f"{p['name']}: {arg}.coo")
        if "support" in theirs:
            assert draft.missing, p["name"]  # what a person had to supply, inference names as missing
    assert not differs, "\n".join(differs)
