"""The C++ ``main`` of an MPI differential driver, and what every MPI side gets after its includes.

The driver provides ``MPI_Init``/``MPI_Finalize`` (candidates must not call them) and runs
under ``mpirun`` with as many ranks as the largest rank count it tests. For each rank count
``k`` it splits off a communicator of the first ``k`` ranks and runs the candidate on it:
each side's ``MPI_COMM_WORLD`` is that communicator (``PRELUDE``), the other ranks wait.
So one launch tests 1, 2, 3, 4 and an oversubscribed number of ranks. Every rank builds the
same inputs from the seed; the reference runs alone on rank 0, and rank 0's result is what
is compared (what other ranks hold is not checked). Every candidate run is under an alarm on
every rank: a deadlock (a collective only some ranks call) ends the job, and the harness
reads it as a timeout.

It reuses the OpenMP driver's support code (comparison, digests, the protocol's output) by
including that driver's text with its ``main`` renamed. Modes and output are the same:
  ``drv ref``                        rank 0: ``T idx ok <digest> <preview> <s>`` or ``T idx exc``
  ``drv check REL ABS UNORD RANKS REPEATS ALARM``   per test ``B``, ``L``, ``T idx <status> ...``
                                     as the OpenMP driver's, with rank counts for thread counts:
                                     ``flaky`` when a rank count's runs disagree, ``fail`` when
                                     the result is wrong at some rank count
  ``drv probe ALARM``                 rank 0, the reference at one rank: ``P idx <s> <peak KiB>``
  ``drv time RANKS REPEATS WARMUP [CAP]``  ``R``/``L``/``X ref``/``X cand`` lines; the
                                     candidate on every rank, the reference on rank 0; RANKS is
                                     one count (the launch's), ``L`` and ``X cand`` end with it
"""

from __future__ import annotations

from bakeoff.agent.harness.c_runtime import RUNTIME_MAIN

# After each side's includes: its MPI_COMM_WORLD is the communicator the driver hands it.
PRELUDE = r"""
#include <mpi.h>
#ifdef __cplusplus
extern "C" MPI_Comm bk_mpi_world;
#else
extern MPI_Comm bk_mpi_world;
#endif
#undef MPI_COMM_WORLD
#define MPI_COMM_WORLD bk_mpi_world
"""

# Before and after the timed call of a candidate: the time is the slowest rank's.
SYNC = "MPI_Barrier(bk_mpi_world);"

MPI_MAIN = r"""
#include "bk_rt.h"
#include <mpi.h>
#define main bk_openmp_main
""" + RUNTIME_MAIN + r"""
#undef main

extern "C" { MPI_Comm bk_mpi_world = MPI_COMM_WORLD; }

static int g_rank = 0;

// Every rank waits for the others without spinning: idle ranks must not take the cores of
// the ranks that work (the rank counts tested oversubscribe the machine).
static void bk_wait_all() {
  MPI_Request req;
  MPI_Ibarrier(MPI_COMM_WORLD, &req);
  int done = 0;
  while (!done) {
    MPI_Test(&req, &done, MPI_STATUS_IGNORE);
    if (!done) usleep(200);
  }
}

// Rank 0 reads the tests; every rank gets them.
static std::vector<Spec> bk_share_specs() {
  std::vector<Spec> specs;
  std::vector<double> flat;
  if (g_rank == 0) {
    specs = read_specs();
    for (auto& s : specs) {
      flat.push_back(s.idx); flat.push_back((double)s.seed); flat.push_back(s.literal); flat.push_back((double)s.P.size());
      flat.insert(flat.end(), s.P.begin(), s.P.end());
    }
  }
  long long n = (long long)flat.size();
  MPI_Bcast(&n, 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD);
  flat.resize((size_t)n);
  MPI_Bcast(flat.data(), (int)n, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  if (g_rank != 0) {
    for (size_t i = 0; i < flat.size();) {
      Spec s;
      s.idx = (int)flat[i]; s.seed = (uint64_t)flat[i + 1]; s.literal = (int)flat[i + 2];
      size_t np = (size_t)flat[i + 3];
      s.P.assign(flat.begin() + i + 4, flat.begin() + i + 4 + np);
      i += 4 + np;
      specs.push_back(s);
    }
  }
  return specs;
}

// The candidate on the ranks of ``comm`` (the others wait), under an alarm on every rank.
// Returns the worst return code over all ranks.
static int bk_run_on(MPI_Comm comm, const Spec& s, bk::Val* out, double* secs, std::string* err, double limit) {
  timer(limit);
  int rc = 0;
  if (comm != MPI_COMM_NULL) {
    bk_mpi_world = comm;
    rc = bk_cand_run(s.seed, s.P.data(), s.literal, 1, g_rank == 0 ? out : nullptr, secs, err);
    bk_mpi_world = MPI_COMM_WORLD;
  }
  bk_wait_all();
  timer(0);
  int worst = 0;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return worst;
}

static MPI_Comm bk_first_ranks(int k) {
  MPI_Comm comm;
  MPI_Comm_split(MPI_COMM_WORLD, g_rank < k ? 0 : MPI_UNDEFINED, g_rank, &comm);
  return comm;
}

// The reference on rank 0 alone; every rank learns whether it ran and the candidate's limit.
static bool bk_reference(const Spec& s, bk::Val* ref, double alarm_s, double* limit) {
  double got[2] = {1, 0};
  if (g_rank != 0) bk_wait_all();  // the others sleep while rank 0 runs the reference
  if (g_rank == 0) {
    double secs = 0; std::string err;
    double began = omp_get_wtime();
    alarm((unsigned)alarm_s);
    int rc = bk_ref_run(s.seed, s.P.data(), s.literal, 1, ref, &secs, &err);
    alarm(0);
    if (rc != 0) proto("T %d referr - - 0/0 %s", s.idx, clean(err).c_str());
    // Collectives on oversubscribed cores cost more than threads do: a wider margin than OpenMP's;
    // and every rank builds its own copy of the input under the limit.
    got[0] = rc; got[1] = std::min(alarm_s, std::max(2.0, 20.0 * secs + 1.0 + bk_setup(began, secs)));
    bk_wait_all();
  }
  MPI_Bcast(got, 2, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  *limit = got[1];
  return got[0] == 0;
}

struct BkVerdict { std::string status, detail = "-"; int matches = 0, runs = 0; std::string digest = "-"; };

// One test at every rank count (once at the first after a test that did not pass).
static BkVerdict bk_check_one(const Spec& s, const bk::Val& ref, const std::vector<int>& ranks,
                              const std::vector<MPI_Comm>& comms, int repeats, bool disqualified, double limit,
                              double rel, double abs_tol) {
  BkVerdict v;
  bool varies = false;
  size_t count = disqualified ? 1 : ranks.size();
  for (size_t ri = 0; ri < count; ++ri) {
    std::vector<bk::Val> outs;
    int stop = 0;
    for (int r = 0; r < (disqualified ? 1 : repeats) && !stop; ++r) {
      bk::Val c; double secs = 0; std::string err;
      int rc = bk_run_on(comms[ri], s, &c, &secs, &err, limit);
      ++v.runs;
      if (g_rank == 0) {
        if (rc != 0) {
          v.status = "error";
          v.detail = "exception at " + std::to_string(ranks[ri]) + " ranks: " + (err.empty() ? "on another rank" : err);
          stop = 1;
        } else {
          long long at = bk::mismatch(ref, c, rel, abs_tol);
          if (at < 0) ++v.matches;
          else if (v.detail == "-") {
            v.detail = "first difference at atom " + std::to_string(at) + " with " + std::to_string(ranks[ri]) +
                       " ranks: expected " + (at < (long long)ref.a.size() ? bk::atom_text(ref.a[at]) : std::string("end")) +
                       " got " + (at < (long long)c.a.size() ? bk::atom_text(c.a[at]) : std::string("end"));
          }
          if (!outs.empty() && bk::mismatch(outs[0], c, rel, abs_tol) >= 0) varies = true;
          if (v.digest == "-") v.digest = bk::digest(c);
          outs.push_back(std::move(c));
        }
      }
      MPI_Bcast(&stop, 1, MPI_INT, 0, MPI_COMM_WORLD);
    }
    int halt = g_rank == 0 && !v.status.empty();
    MPI_Bcast(&halt, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (halt) break;
  }
  if (v.status.empty()) v.status = varies ? "flaky" : (v.matches == v.runs ? "pass" : "fail");
  return v;
}

static int bk_check(int argc, char** argv, const std::vector<Spec>& specs) {
  double rel = atof(argv[2]), abs_tol = atof(argv[3]);
  bk::g_unordered = atoi(argv[4]) != 0;
  std::vector<int> ranks;
  for (char* p = strtok(argv[5], ","); p; p = strtok(nullptr, ",")) ranks.push_back(atoi(p));
  int repeats = atoi(argv[6]);
  double alarm_s = atof(argv[7]);
  std::vector<MPI_Comm> comms;
  for (int k : ranks) comms.push_back(bk_first_ranks(k));
  bool disqualified = false;
  for (auto& s : specs) {
    if (g_rank == 0) proto("B %d", s.idx);
    bk::Val ref; double limit = 0;
    if (!bk_reference(s, &ref, alarm_s, &limit)) continue;
    if (g_rank == 0) proto("L %d %.3f", s.idx, limit);
    BkVerdict v = bk_check_one(s, ref, ranks, comms, repeats, disqualified, limit, rel, abs_tol);
    int failed = v.status != "pass";
    MPI_Bcast(&failed, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (failed) disqualified = true;
    if (g_rank == 0)
      proto("T %d %s %s %s %d/%d %s", s.idx, v.status.c_str(), bk::digest(ref).c_str(), v.digest.c_str(), v.matches,
            v.runs, clean(v.detail).c_str());
  }
  return 0;
}

static int bk_ref_mode(const std::vector<Spec>& specs) {
  MPI_Comm alone = bk_first_ranks(1);
  for (auto& s : specs) {
    if (g_rank == 0) {
      bk::Val v; double secs = 0; std::string err;
      proto("B %d", s.idx);
      bk_mpi_world = alone;
      double t0 = omp_get_wtime();
      int rc = bk_cand_run(s.seed, s.P.data(), s.literal, 1, &v, &secs, &err);
      bk_mpi_world = MPI_COMM_WORLD;
      if (rc != 0) proto("T %d exc %s", s.idx, clean(err).c_str());
      else proto("T %d ok %s %s %.6f", s.idx, bk::digest(v).c_str(), clean(bk::preview(v, 12)).c_str(), omp_get_wtime() - t0);
    }
    bk_wait_all();
  }
  return 0;
}

// The reference once on each test at one rank (rank 0; the others wait): its time and the
// process's peak resident memory (``P idx <s> <KiB>``), or ``E idx <why>``: what sizing reads.
static int bk_probe(int argc, char** argv, const std::vector<Spec>& specs) {
  unsigned alarm_s = argc >= 3 ? (unsigned)atoi(argv[2]) : 0;
  for (auto& s : specs) {
    if (g_rank == 0) {
      double secs = 0; std::string err;
      alarm(alarm_s);
      int rc = bk_ref_run(s.seed, s.P.data(), s.literal, 1, nullptr, &secs, &err);
      alarm(0);
      if (rc != 0) {
        proto("E %d %s", s.idx, clean(err).c_str());
      } else {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        proto("P %d %.9f %ld", s.idx, secs, (long)ru.ru_maxrss);
      }
    }
    bk_wait_all();
  }
  return 0;
}

// Interleaved timing at the launch's rank count: the reference on rank 0, the candidate on all.
static int bk_time(int argc, char** argv, const std::vector<Spec>& specs) {
  int ranks = atoi(argv[2]), repeats = atoi(argv[3]), warmup = atoi(argv[4]);
  double cap = argc >= 6 ? atof(argv[5]) : 3600.0;
  const Spec& s = specs[0];
  double last_ref = 0, setup = 0;  // setup: see bk_setup, from the first reference run
  for (int r = -warmup - 1; r < repeats; ++r) {
    for (int side = 0; side < 2; ++side) {
      bool ref_side = r < -warmup ? side == 0 : (((r & 1) == 0) == (side == 0));
      if (r < -warmup && side == 1) continue;  // the first reference run only sets the limit
      double secs = 0, got[2] = {0, 0}; std::string err;
      int rc = 0;
      if (ref_side) {
        double began = omp_get_wtime(), built = 0;
        if (g_rank == 0) rc = bk_ref_run(s.seed, s.P.data(), s.literal, 1, nullptr, &secs, &err);
        if (g_rank == 0 && r < -warmup) built = bk_setup(began, secs);
        bk_wait_all();
        double all[3] = {(double)rc, secs, built};
        MPI_Bcast(all, 3, MPI_DOUBLE, 0, MPI_COMM_WORLD);
        got[0] = all[0]; got[1] = all[1];
        if (r < -warmup) setup = all[2];
        if (got[0] != 0) { if (g_rank == 0) proto("E ref %s", clean(err).c_str()); return 1; }
        last_ref = got[1];
        if (g_rank == 0) proto("R %.9f", last_ref);
      } else {
        double limit = std::min(cap, std::max(2.0, 20.0 * last_ref + 1.0 + setup));
        if (g_rank == 0) proto("L %.9f %d", limit, ranks);
        rc = bk_run_on(MPI_COMM_WORLD, s, nullptr, &secs, &err, limit);
        if (rc != 0) { if (g_rank == 0) proto("E cand %s", clean(err).c_str()); return 1; }
      }
      if (r >= 0 && g_rank == 0) {
        if (ref_side) proto("X ref %.9f", secs);
        else proto("X cand %.9f %d", secs, ranks);
      }
    }
  }
  return 0;
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  int fd = dup(1);
  g_proto = g_rank == 0 ? fdopen(fd, "w") : fopen("/dev/null", "w");
  if (!freopen("/dev/null", "w", stdout)) return 3;
  std::string mode = argc >= 2 ? argv[1] : "";
  std::vector<Spec> specs = bk_share_specs();
  int rc = 2;
  if (mode == "ref") rc = bk_ref_mode(specs);
  else if (mode == "check" && argc >= 8) rc = bk_check(argc, argv, specs);
  else if (mode == "time" && argc >= 5 && !specs.empty()) rc = bk_time(argc, argv, specs);
  else if (mode == "probe") rc = bk_probe(argc, argv, specs);
  fflush(g_proto);
  MPI_Finalize();
  return rc;
}
"""
