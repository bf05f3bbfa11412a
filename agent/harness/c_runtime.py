"""The C++ text every differential driver shares: headers, a seeded RNG, the canonical
serialization of outputs, tolerant comparison, digests, and ``main`` with its three modes.

It is compiled once per harness as a precompiled header (``bk_rt.h``) and one object
(``bk_main.o``); each side (the reference, each candidate) only compiles its own code.

Protocol (``@@BK`` lines on a private copy of stdout; the program's own stdout goes to
/dev/null so a candidate's debug prints cannot corrupt it):
  ``drv ref``                        per test: ``T idx ok <digest> <preview> <s>`` (s: building the
                                     inputs and the call) or ``T idx exc``
  ``drv check REL ABS UNORD THREADS REPEATS ALARM`` (a candidate call may take 20x the
                                     reference's time plus 0.25 s, at most ALARM seconds; after
                                     a test that did not pass, later tests run once, at THREADS[0])
                                     per test: ``B idx`` before, ``L idx <s>`` the candidate's
                                     limit, ``T idx <status> <ref> <cand> <matches>/<runs>
                                     <detail>`` after
  ``drv time THREADS REPEATS WARMUP [CAP [BUDGET]]`` THREADS is a list ("1,2,4"): the candidate
                                     runs at each count, the reference at the last (the target),
                                     one reference call per round: ``ref, 1, 2, 4`` then
                                     ``4, 2, 1, ref``, alternating; ``X ref <s> <t>`` / ``X cand <s>
                                     <t>`` per recorded call, ``R <s>`` after every reference call,
                                     ``L <s> <t>`` before every candidate call: its limit (10x the
                                     reference plus 0.25 s, at most CAP); past it the process ends
                                     with SIGALRM. After 2 recorded rounds it stops once BUDGET
                                     seconds have passed.
  ``drv probe ALARM``                per test, the reference once at one thread: ``P idx <s> <peak
                                     resident KiB>``, or ``E idx <why>``
Tests come on stdin, one per line: ``idx seed literal nP P0 P1 ...``.
"""

RUNTIME_HEADER = r"""
#pragma once
#include <bits/stdc++.h>
#include <omp.h>
#include <unistd.h>
#include <signal.h>
#include <sys/time.h>
#include <sys/resource.h>

namespace bk {

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull) {}
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return (next() >> 11) * (1.0 / 9007199254740992.0); }
  double real(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  long long integer(double lo, double hi) {
    long long a = (long long)std::llround(lo), b = (long long)std::llround(hi);
    if (b < a) return a;
    return a + (long long)(next() % (uint64_t)(b - a + 1));
  }
  bool bit() { return next() & 1; }
};

// One output, flattened: 'i' signed, 'f' float, 'L' list of n elements, 'S' struct of n fields,
// 'O' the start of output number n.
struct Atom { char k; long long i; double f; };
struct Val {
  std::vector<Atom> a;
  void put_i(long long v) { a.push_back({'i', v, 0.0}); }
  void put_f(double v) { a.push_back({'f', 0, v}); }
  void open(char k, long long n) { a.push_back({k, n, 0.0}); }
};

extern bool g_unordered;

inline void bk_put(Val& v, bool x) { v.put_i(x ? 1 : 0); }
inline void bk_put(Val& v, char x) { v.put_i((long long)x); }
inline void bk_put(Val& v, signed char x) { v.put_i((long long)x); }
inline void bk_put(Val& v, unsigned char x) { v.put_i((long long)x); }
inline void bk_put(Val& v, short x) { v.put_i(x); }
inline void bk_put(Val& v, unsigned short x) { v.put_i(x); }
inline void bk_put(Val& v, int x) { v.put_i(x); }
inline void bk_put(Val& v, unsigned x) { v.put_i((long long)x); }
inline void bk_put(Val& v, long x) { v.put_i(x); }
inline void bk_put(Val& v, unsigned long x) { v.put_i((long long)x); }
inline void bk_put(Val& v, long long x) { v.put_i(x); }
inline void bk_put(Val& v, unsigned long long x) { v.put_i((long long)x); }
inline void bk_put(Val& v, float x) { v.put_f(x); }
inline void bk_put(Val& v, double x) { v.put_f(x); }
inline void bk_put(Val& v, long double x) { v.put_f((double)x); }
inline void bk_put(Val& v, const std::string& x) {
  v.open('L', (long long)x.size());
  for (char c : x) v.put_i((long long)c);
}
template <class T> void bk_put(Val& v, const std::complex<T>& x) {
  v.open('S', 2); v.put_f((double)x.real()); v.put_f((double)x.imag());
}
bool less_atoms(const Atom* a, size_t na, const Atom* b, size_t nb);
template <class It> void bk_put_range(Val& v, It first, It last, size_t n, int depth);
template <class T> void bk_put(Val& v, const std::vector<T>& x, int depth = 1) {
  bk_put_range(v, x.begin(), x.end(), x.size(), depth);
}
template <class T, size_t N> void bk_put(Val& v, const std::array<T, N>& x, int depth = 1) {
  bk_put_range(v, x.begin(), x.end(), N, depth);
}
template <class T> void bk_put_elem(Val& v, const T& x) { bk_put(v, x); }
template <class It> void bk_put_range(Val& v, It first, It last, size_t n, int depth) {
  v.open('L', (long long)n);
  if (!(g_unordered && depth == 0)) {
    for (It it = first; it != last; ++it) bk_put_elem(v, *it);
    return;
  }
  // Order-insensitive output: serialize each element alone, then sort the elements.
  std::vector<Val> parts;
  for (It it = first; it != last; ++it) { parts.emplace_back(); bk_put_elem(parts.back(), *it); }
  std::sort(parts.begin(), parts.end(), [](const Val& x, const Val& y) {
    return less_atoms(x.a.data(), x.a.size(), y.a.data(), y.a.size());
  });
  for (auto& p : parts) v.a.insert(v.a.end(), p.a.begin(), p.a.end());
}
template <class T> void bk_put_ptr(Val& v, const T* p, size_t n) {
  bk_put_range(v, p, p + n, n, 0);
}

// Where two outputs first differ beyond the tolerance (-1: they agree).
long long mismatch(const Val& x, const Val& y, double rel, double abs_tol);
std::string digest(const Val& v);
std::string preview(const Val& v, size_t atoms = 8);

typedef int (*RunFn)(uint64_t seed, const double* P, int literal, int threads, Val* out, double* secs,
                     std::string* err);
}  // namespace bk

int bk_ref_run(uint64_t seed, const double* P, int literal, int threads, bk::Val* out, double* secs,
               std::string* err);
int bk_cand_run(uint64_t seed, const double* P, int literal, int threads, bk::Val* out, double* secs,
                std::string* err);
"""

RUNTIME_MAIN = r"""
#include "bk_rt.h"

namespace bk {
bool g_unordered = false;

static int cmp_atom(const Atom& a, const Atom& b) {
  if (a.k != b.k) return a.k < b.k ? -1 : 1;
  if (a.k == 'f') {
    if (std::isnan(a.f) || std::isnan(b.f)) return std::isnan(a.f) - std::isnan(b.f);
    return a.f < b.f ? -1 : (a.f > b.f ? 1 : 0);
  }
  return a.i < b.i ? -1 : (a.i > b.i ? 1 : 0);
}
bool less_atoms(const Atom* a, size_t na, const Atom* b, size_t nb) {
  for (size_t i = 0; i < na && i < nb; ++i) {
    int c = cmp_atom(a[i], b[i]);
    if (c) return c < 0;
  }
  return na < nb;
}
long long mismatch(const Val& x, const Val& y, double rel, double abs_tol) {
  size_t n = std::min(x.a.size(), y.a.size());
  for (size_t i = 0; i < n; ++i) {
    const Atom &p = x.a[i], &q = y.a[i];
    if (p.k != q.k) return (long long)i;
    if (p.k == 'f') {
      if (std::isnan(p.f) && std::isnan(q.f)) continue;
      if (p.f == q.f) continue;
      double d = std::fabs(p.f - q.f);
      if (!(d <= abs_tol + rel * std::max(std::fabs(p.f), std::fabs(q.f)))) return (long long)i;
    } else if (p.i != q.i) {
      return (long long)i;
    }
  }
  return x.a.size() == y.a.size() ? -1 : (long long)n;
}
static std::string atom_text(const Atom& a) {
  char buf[64];
  if (a.k == 'f') snprintf(buf, sizeof buf, "%.9g", a.f);
  else if (a.k == 'i') snprintf(buf, sizeof buf, "%lld", a.i);
  else snprintf(buf, sizeof buf, "%c%lld", a.k, a.i);
  return buf;
}
std::string digest(const Val& v) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](const char* s) { for (; *s; ++s) { h ^= (unsigned char)*s; h *= 1099511628211ull; } };
  char buf[64];
  for (auto& a : v.a) {
    // Six significant digits: outputs equal within the tolerance almost always share a digest.
    if (a.k == 'f') snprintf(buf, sizeof buf, "f%.6g;", a.f == 0.0 ? 0.0 : a.f);
    else snprintf(buf, sizeof buf, "%c%lld;", a.k, a.i);
    mix(buf);
  }
  snprintf(buf, sizeof buf, "%016llx", (unsigned long long)h);
  return buf;
}
std::string preview(const Val& v, size_t atoms) {
  std::string s;
  for (size_t i = 0; i < v.a.size() && i < atoms; ++i) { if (i) s += ","; s += atom_text(v.a[i]); }
  if (v.a.size() > atoms) s += ",...";
  return s.empty() ? "-" : s;
}
}  // namespace bk

static FILE* g_proto = nullptr;
static double g_min_limit = 0.5;
static void proto(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("@@BK ", g_proto);
  vfprintf(g_proto, fmt, ap);
  fputc('\n', g_proto);
  fflush(g_proto);
  va_end(ap);
}

static void timer(double secs) {
  struct itimerval v;
  memset(&v, 0, sizeof v);
  v.it_value.tv_sec = (time_t)secs;
  v.it_value.tv_usec = (suseconds_t)((secs - (double)(time_t)secs) * 1e6);
  setitimer(ITIMER_REAL, &v, nullptr);
}

struct Spec { int idx; uint64_t seed; int literal; std::vector<double> P; };
static std::vector<Spec> read_specs() {
  std::vector<Spec> out;
  Spec s;
  int n;
  unsigned long long seed;
  while (std::cin >> s.idx >> seed >> s.literal >> n) {
    s.seed = seed;
    s.P.assign(n, 0.0);
    for (int i = 0; i < n; ++i) std::cin >> s.P[i];
    out.push_back(s);
  }
  return out;
}
// Twice the seconds a run that began at ``began`` spent outside the timed call (``secs``):
// building and copying the input, which a candidate's limit must leave room for.
static double bk_setup(double began, double secs) {
  return 2.0 * std::max(0.0, omp_get_wtime() - began - secs);
}

static std::string clean(std::string s) {
  for (auto& c : s) if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  if (s.size() > 200) s = s.substr(0, 200) + "...";
  return s.empty() ? "-" : s;
}

int main(int argc, char** argv) {
  // The protocol gets its own descriptor; the code under test writes to /dev/null.
  int fd = dup(1);
  g_proto = fdopen(fd, "w");
  if (!freopen("/dev/null", "w", stdout)) return 3;
  if (argc < 2) return 2;
  std::string mode = argv[1];
  std::vector<Spec> specs = read_specs();
  if (mode == "ref") {
    // ``ref [ALARM]``: an input the reference cannot finish within ALARM seconds ends the run
    // (its ``T`` line is missing; those before it are written).
    unsigned alarm_s = argc >= 3 ? (unsigned)atoi(argv[2]) : 0;
    for (auto& s : specs) {
      bk::Val v; double secs = 0; std::string err;
      proto("B %d", s.idx);
      double t0 = omp_get_wtime();
      alarm(alarm_s);
      int rc = bk_cand_run(s.seed, s.P.data(), s.literal, 1, &v, &secs, &err);
      alarm(0);
      if (rc != 0) {
        proto("T %d exc %s", s.idx, clean(err).c_str());
        continue;
      }
      proto("T %d ok %s %s %.6f", s.idx, bk::digest(v).c_str(), clean(bk::preview(v, 12)).c_str(), omp_get_wtime() - t0);
    }
    return 0;
  }
  if (mode == "check" && argc >= 8) {
    double rel = atof(argv[2]), abs_tol = atof(argv[3]);
    bk::g_unordered = atoi(argv[4]) != 0;
    std::vector<int> threads;
    for (char* p = strtok(argv[5], ","); p; p = strtok(nullptr, ",")) threads.push_back(atoi(p));
    int repeats = atoi(argv[6]);
    unsigned alarm_s = (unsigned)atoi(argv[7]);
    // BK_MIN_LIMIT: a floor for the limit, for runs whose tools need time of their own in the
    // call (ThreadSanitizer symbolizing a report); 0.5 s otherwise.
    g_min_limit = getenv("BK_MIN_LIMIT") ? atof(getenv("BK_MIN_LIMIT")) : 0.5;
    bool disqualified = false;
    for (auto& s : specs) {
      proto("B %d", s.idx);
      bk::Val ref; double secs = 0; std::string err;
      double began = omp_get_wtime();
      alarm(alarm_s);
      if (bk_ref_run(s.seed, s.P.data(), s.literal, 1, &ref, &secs, &err) != 0) {
        alarm(0);
        proto("T %d referr - - 0/0 %s", s.idx, clean(err).c_str());
        continue;
      }
      alarm(0);
      // A candidate gets 20x the reference's time (plus a margin), never more than ALARM:
      // one that is that much slower than the serial code is of no use, and it would eat the budget.
      // Building the input is not the call's time, but the limit covers it: it is added.
      double limit = std::min((double)alarm_s, std::max(g_min_limit, 20.0 * secs + 0.25 + bk_setup(began, secs)));
      proto("L %d %.3f", s.idx, limit);
      std::vector<bk::Val> outs;
      std::string status, detail = "-";
      int matches = 0, runs = 0;
      // Once a candidate has failed a test, the rest only need its answers: one run each.
      std::vector<int> ts = disqualified ? std::vector<int>{threads[0]} : threads;
      int reps = disqualified ? 1 : repeats;
      // Repeats look for answers that vary from run to run (a race). Once a candidate's runs on
      // this input have cost what the repeats of one twice as slow as the reference would, it
      // runs once per thread count: a far slower candidate would spend the budget on repeats,
      // and ThreadSanitizer still looks for its races if it passes.
      double repeat_budget = std::max(0.5, 2.0 * secs * (double)(threads.size() * repeats)), spent = 0;
      for (int t : ts) {
        for (int r = 0; r < reps && status.empty(); ++r) {
          if (r > 0 && spent > repeat_budget) break;
          bk::Val c;
          timer(limit);
          int rc = bk_cand_run(s.seed, s.P.data(), s.literal, t, &c, &secs, &err);
          timer(0);
          spent += secs;
          ++runs;
          if (rc != 0) { status = "error"; detail = "exception at " + std::to_string(t) + " threads: " + err; break; }
          long long at = bk::mismatch(ref, c, rel, abs_tol);
          if (at < 0) ++matches;
          else if (detail == "-") {
            detail = "first difference at atom " + std::to_string(at) + " with " + std::to_string(t) + " threads: expected " +
                     (at < (long long)ref.a.size() ? bk::atom_text(ref.a[at]) : std::string("end")) + " got " +
                     (at < (long long)c.a.size() ? bk::atom_text(c.a[at]) : std::string("end"));
          }
          outs.push_back(std::move(c));
        }
      }
      alarm(0);
      if (status.empty()) {
        bool varies = false;
        for (size_t i = 1; i < outs.size(); ++i) if (bk::mismatch(outs[0], outs[i], rel, abs_tol) >= 0) varies = true;
        status = varies ? "flaky" : (matches == runs ? "pass" : "fail");
      }
      if (status != "pass") disqualified = true;
      std::string cd = outs.empty() ? std::string("-") : bk::digest(outs[0]);
      proto("T %d %s %s %s %d/%d %s", s.idx, status.c_str(), bk::digest(ref).c_str(), cd.c_str(), matches, runs,
            clean(detail).c_str());
    }
    return 0;
  }
  if (mode == "probe") {
    unsigned alarm_s = argc >= 3 ? (unsigned)atoi(argv[2]) : 0;
    for (auto& s : specs) {
      double secs = 0; std::string err;
      alarm(alarm_s);
      int rc = bk_ref_run(s.seed, s.P.data(), s.literal, 1, nullptr, &secs, &err);
      alarm(0);
      if (rc != 0) { proto("E %d %s", s.idx, clean(err).c_str()); continue; }
      struct rusage ru;
      getrusage(RUSAGE_SELF, &ru);
      proto("P %d %.9f %ld", s.idx, secs, (long)ru.ru_maxrss);
    }
    return 0;
  }
  if (mode == "time" && argc >= 5 && !specs.empty()) {
    std::vector<int> threads;
    for (char* p = strtok(argv[2], ","); p; p = strtok(nullptr, ",")) threads.push_back(atoi(p));
    if (threads.empty()) return 2;
    int repeats = atoi(argv[3]), warmup = atoi(argv[4]);
    double cap = argc >= 6 ? atof(argv[5]) : 3600.0;
    double budget = argc >= 7 ? atof(argv[6]) : 0.0;
    int target = threads.back(), k = (int)threads.size();
    auto& s = specs[0];
    // The reference once first, so that every candidate call has a limit: 10x the
    // reference's last time plus 0.25 s (``L``), never more than CAP. A candidate that slow
    // is of no use for speed, and timing it to the end would cost minutes.
    double last_ref = 0; std::string err0;
    double began = omp_get_wtime();
    if (bk_ref_run(s.seed, s.P.data(), s.literal, 1, nullptr, &last_ref, &err0) != 0) {
      proto("E ref %s", clean(err0).c_str());
      return 1;
    }
    // A candidate's first call builds its copy of the input (a large one can take far longer
    // than the call itself), under the limit: the time the reference took to do so is added.
    double setup = bk_setup(began, last_ref);
    proto("R %.9f", last_ref);
    double started = omp_get_wtime();
    for (int r = -warmup; r < repeats; ++r) {
      if (r >= 2 && budget > 0 && omp_get_wtime() - started > budget) break;
      for (int j = 0; j <= k; ++j) {
        // Alternate the order (ref first, then ref last) so a drift in machine load does not favour one side.
        bool forward = (r & 1) == 0;
        bool ref_side = forward ? j == 0 : j == k;
        int t = ref_side ? target : (forward ? threads[j - 1] : threads[k - 1 - j]);
        double secs = 0; std::string err;
        if (!ref_side) {
          double limit = std::min(cap, std::max(0.5, 10.0 * last_ref + 0.25 + setup));
          proto("L %.9f %d", limit, t);
          timer(limit);
        }
        int rc = ref_side ? bk_ref_run(s.seed, s.P.data(), s.literal, t, nullptr, &secs, &err)
                          : bk_cand_run(s.seed, s.P.data(), s.literal, t, nullptr, &secs, &err);
        timer(0);
        if (rc != 0) { proto("E %s %s", ref_side ? "ref" : "cand", clean(err).c_str()); return 1; }
        if (ref_side) { last_ref = secs; proto("R %.9f", secs); }
        if (r >= 0) proto("X %s %.9f %d", ref_side ? "ref" : "cand", secs, t);
      }
    }
    return 0;
  }
  return 2;
}
"""
