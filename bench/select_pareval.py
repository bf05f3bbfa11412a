#!/usr/bin/env python3
"""Benchmark 2: bakeoff's selection on ParEval serial->OpenMP (or ->MPI) samples, built and run here.

For every (model, problem): each of the 20 samples (prompt + "\\n" + completion) is built
against the problem's serial reference with bakeoff's C++ differential harness
(``agent.differential_c.CHarness``), run on generated inputs at 1, 2 and oversubscribed
thread counts, voted on with the reference (``agent.selection.vote``), and the winners are
timed against the serial reference at the target parallelism (``--timing-threads``, default
the CPUs this process may use) and at 2 threads, on an input grown until the reference takes
0.2 s per call at one thread; ``agent.selection.choose`` picks by the speedup at the target.
Timings run alone, or several at once on disjoint pinned CPU sets when there are enough CPUs
(base and candidate always on the same set, interleaved). The labels (``are_all_valid``) are
used only for scoring.

With ``--data ../shared/bench/pareval-mpi-dev`` the samples call MPI: they run under ``mpirun``
(``agent.harness.mpi_harness.MpiHarness``) at 1, 2, 3, 4 and oversubscribed rank counts, rank
0's result is compared, and winners are timed at the target parallelism as a rank count, on
the large input grown until the serial reference takes ``--min-time`` per call at one rank
(there is no curve, so the columns at 2 threads stay empty); the table and JSON keys are the
same.

Each problem's input spec (sizes, how lengths follow from them, value domains) is inferred
from its serial source and doc comment (``agent.harness.c_spec``) and checked against the
reference (``agent.harness.c_spec_check``) before it is used; a problem whose spec cannot be
inferred and checked is reported as untestable, and the pick for it is the first sample.
``--constraints bench/pareval/constraints.json`` uses the hand-written specs instead, for
comparison; the JSON says which (``specs``: ``inferred`` or ``file``).

    python3 bench/select_pareval.py [--data DIR] [--models a,b] [--problems mixed|all]
                                    [--constraints FILE] [--timing-threads N] [--workers N]
                                    [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bakeoff.agent.harness.c_harness import CHarness  # noqa: E402
from bakeoff.agent.harness.c_plan import ConstraintError  # noqa: E402
from bakeoff.agent.harness.c_signature import SignatureError  # noqa: E402
from bakeoff.agent.harness.c_spec import infer_spec  # noqa: E402
from bakeoff.agent.harness.c_spec_check import settle  # noqa: E402
from bakeoff.agent.harness.c_timing import CpuSlots, TimingOptions  # noqa: E402
from bakeoff.agent.harness.parallelism import allowed_cpus, core_sets, cpu_list, local_view  # noqa: E402
from bakeoff.agent.harness.mpi_harness import MpiHarness, calls_mpi  # noqa: E402
from bakeoff.agent.harness.sizing import SizingLimits  # noqa: E402
from bakeoff.agent.selection.choose import choose  # noqa: E402
from bakeoff.agent.selection.vote import vote  # noqa: E402
from bakeoff.agent.types import Candidate, ExecutionMatrix, TargetParallelism, Timing  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "bench" / "pareval-omp-dev"
HAND_WRITTEN = ROOT / "bench" / "pareval" / "constraints.json"  # for --constraints: the comparison row


class Untestable(Exception):
    """The harness cannot test this problem (no spec passes its check, the reference does not
    build, or it rejects every input): reported, and the pick is made without a signal."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def geomean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def candidates_file(data: Path) -> Path:
    """``candidates.jsonl``, or its gzipped copy (the MPI set ships that)."""
    plain = data / "candidates.jsonl"
    return plain if plain.exists() else data / "candidates.jsonl.gz"


def load(data: Path) -> tuple[dict[str, dict], dict[tuple[str, str], list[dict]]]:
    problems = {}
    for line in (data / "problems.jsonl").read_text().splitlines():
        if line.strip():
            p = json.loads(line)
            problems[p["name"]] = p
    samples: dict[tuple[str, str], list[dict]] = defaultdict(list)
    path = candidates_file(data)
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    for line in text.splitlines():
        if line.strip():
            c = json.loads(line)
            samples[(c["model"], c["name"])].append(c)
    for v in samples.values():
        v.sort(key=lambda c: c["index"])
    return problems, samples


def sub_matrix(m: ExecutionMatrix, cands: list[str]) -> ExecutionMatrix:
    return ExecutionMatrix(
        candidates=list(cands), tests=list(m.tests),
        cells={c: dict(m.cells.get(c, {})) for c in cands},
        outputs={c: dict(m.outputs.get(c, {})) for c in cands if c in m.outputs},
    )


def plurality(m: ExecutionMatrix, eligible: list[str]) -> list[str]:
    """Largest group of candidates whose outputs agree on every test (used only when the
    reference vote and the agreement vote both find nobody)."""
    groups: dict[tuple, list[str]] = defaultdict(list)
    for c in eligible:
        cells = m.cells.get(c, {})
        if all(o in ("pass", "fail") for o in cells.values()):
            groups[tuple(m.outputs.get(c, {}).get(t, "") for t in m.tests)].append(c)
    if not groups:
        return []
    return max(groups.values(), key=len)


def _match_rate(harness: CHarness, m: ExecutionMatrix, cid: str) -> float:
    """Share of a candidate's runs whose output matched the reference's, over every test; a
    candidate whose outputs all matched but ThreadSanitizer reported a race counts 1."""
    if cid in harness.races:
        return 1.0
    counts = [harness.matched.get(cid, {}).get(t, (0, 1)) for t in m.tests]
    runs = sum(b for _, b in counts)
    return sum(a for a, _ in counts) / runs if runs else 0.0


def least_wrong(harness: CHarness, m: ExecutionMatrix, built: list[str]) -> list[str]:
    """When no candidate is correct, race-free and steady, a selector that must still answer
    takes the ones most often right: the highest share of runs matching the reference, then
    the fewest race reports. bakeoff itself ships none of them (``choose`` has no winner)."""
    scored = {c: (_match_rate(harness, m, c), -harness.race_counts.get(c, 0)) for c in built}
    scored = {c: k for c, k in scored.items() if k[0] > 0}
    if not scored:
        return []
    best = max(scored.values())
    return [c for c in built if scored.get(c) == best]


def make_harness(prob: dict, constraints: dict | None, limiter, args, timing: TimingOptions) -> CHarness:
    """The problem's harness: ``MpiHarness`` when its prompt calls MPI (the MPI set's include
    mpi.h; its samples run under mpirun, at rank counts for thread counts), else ``CHarness``."""
    kind, counts = (MpiHarness, "ranks") if calls_mpi(prob["prompt"]) else (CHarness, "threads")
    try:
        return kind(
            prob["serial_source"], prob["function_name"], language="c++", constraints=constraints,
            compile_flags=("-O3", "-fopenmp"), limiter=limiter, call_timeout=args.call_timeout,
            medium_tests=args.medium_tests if args.medium_tests is not None else (1 if kind is MpiHarness else 3),
            cpus=args.pin or None, timing=timing, **({"sizes": args.mpi_sizes} if kind is MpiHarness else {}),
            **({counts: [int(t) for t in args.threads.split(",")]} if args.threads else {}),
        )
    except (SignatureError, ValueError) as exc:
        raise Untestable(f"its signature cannot be driven: {exc}") from None


async def evaluate_problem(prob: dict, models: list[str], samples, constraints: dict | None, limiter, args,
                           timing: TimingOptions) -> dict[str, Any]:
    """Phase 1 of a problem: tests and the execution matrix of every selected model's samples.
    ``constraints``: the hand-written spec, or None to infer one and check it."""
    harness = make_harness(prob, constraints, limiter, args, timing)
    sources = {}
    for model in models:
        for s in samples[(model, prob["name"])]:
            sources[f"{model}/{s['index']}"] = prob["prompt"] + "\n" + s["completion"]
    t0 = time.monotonic()
    try:
        if constraints is None:
            outcome = await settle(harness, [("inferred", infer_spec(prob["serial_source"], prob["function_name"]))])
            if not outcome.testable:
                raise Untestable("no spec passes its check: " + "; ".join(outcome.problems))
        tests = await harness.make_tests()
        if not tests:
            raise Untestable("the reference rejects every input: " + "; ".join(harness.notes)[:300])
    except (Untestable, RuntimeError, ConstraintError) as exc:
        await harness.close()
        raise Untestable(str(exc)[:600]) from None
    matrix = await harness.run_matrix(sources, tests)
    log(f"{prob['name']}: {len(tests)} tests, {len(set(sources.values()))} distinct programs, "
        f"{time.monotonic() - t0:.0f}s")
    return {"harness": harness, "tests": tests, "matrix": matrix, "sources": sources}


def decide(model: str, prob: dict, ev: dict, samples) -> dict[str, Any]:
    """The vote for one (model, problem); which samples must be timed."""
    ids = [f"{model}/{s['index']}" for s in samples[(model, prob["name"])]]
    m = sub_matrix(ev["matrix"], ids)
    built = {c: not ev["harness"].build_logs.get(c) for c in ids}
    v = vote(m, ev["tests"], reference=True, gate=built)
    path = "reference"
    winners = list(v.winners)
    if not winners:
        probes = [t.model_copy(update={"expected": None}) for t in ev["tests"]]
        v2 = vote(m, probes, reference=False, gate=built)
        if v2.winners:
            v, winners, path = v2, list(v2.winners), "agreement"
        else:
            eligible = [c for c in ids if built[c] and not m.flaky(c)]
            winners = plurality(m, eligible)
            path = "plurality" if winners else "none"
            if not winners:
                winners = least_wrong(ev["harness"], m, [c for c in ids if built[c]])
                path = "least-wrong" if winners else "none"
            v = v.model_copy(update={"winners": winners})
    return {"ids": ids, "matrix": m, "vote": v, "winners": winners, "path": path, "ref_winners": set(v.winners) if path == "reference" else set()}


def timing_plan(args) -> tuple[TargetParallelism, list[int], TimingOptions]:
    """The target, the thread counts timed (2 and the target) and the CPU sets timings run on."""
    target = (TargetParallelism(threads=args.timing_threads, source="--timing-threads") if args.timing_threads
              else local_view())
    counts = sorted({2, target.threads}) if target.threads >= 2 else [1]
    cpus = [int(c) for c in expand_cpus(args.pin)] if args.pin else allowed_cpus()
    sets = [cpu_list(s) for s in core_sets(cpus, target.threads)]
    options = TimingOptions(curve=tuple(counts), slots=CpuSlots(sets), budget_s=args.timing_budget or None,
                            sizing=SizingLimits(min_time_s=args.min_time))
    return target, counts, options


def expand_cpus(spec: str) -> list[int]:
    """"0-3,8" -> [0, 1, 2, 3, 8]."""
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def select_pairs(samples, args) -> tuple[dict[str, list[str]], list[str]]:
    """The models of each problem to score, and the problems, as the flags ask."""
    models = args.models.split(",") if args.models else sorted({m for m, _ in samples})
    pairs: dict[str, list[str]] = defaultdict(list)
    for (model, name), ss in sorted(samples.items()):
        if model not in models:
            continue
        c = sum(s["labels"]["are_all_valid"] for s in ss)
        if args.problems == "all" or 0 < c < len(ss):
            pairs[name].append(model)
    names = sorted(pairs)
    if args.only:
        names = [n for n in names if any(n.startswith(k) for k in args.only.split(","))]
    if args.limit:
        names = names[: args.limit]
    log(f"{sum(len(pairs[n]) for n in names)} (model, problem) pairs over {len(names)} problems, models {models}")
    return pairs, names


async def main_async(args) -> int:
    started = time.monotonic()
    data = Path(args.data)
    problems, samples = load(data)
    hand_written = json.loads(Path(args.constraints).read_text())["problems"] if args.constraints else None
    pairs, names = select_pairs(samples, args)
    target, counts, timing = timing_plan(args)
    log(f"timing at {target.threads} threads ({target.source}), thread counts {counts}, "
        f"{len(timing.slots.cpu_sets) if timing.slots else 1} at once on CPUs {timing.slots.cpu_sets if timing.slots else '-'}")
    evals, untestable = await run_matrices(problems, names, pairs, samples, hand_written, timing, args)
    skipped = [n for n in names if n not in evals and n not in untestable]
    t_matrix = time.monotonic() - started
    log(f"matrices done in {t_matrix:.0f}s; timing winners (only timings run now)")

    # Phase 2, with nothing but timings running: time the winners (what the vote needs) and,
    # for the speed figures, the samples the labels call correct; problems share the CPU sets.
    # A problem the harness cannot test gets the first sample, as a selector with no signal would.
    results: dict[str, list[dict]] = defaultdict(list)
    for name in (n for n in names if n in untestable):
        for model in pairs[name]:
            results[model].append(blind_pick(name, samples[(model, name)], counts))
    await asyncio.gather(*(time_problem(name, evals[name], problems[name], pairs[name], samples, target, counts,
                                        results, args) for name in names if name in evals))
    t_timing = time.monotonic() - started - t_matrix
    elapsed = time.monotonic() - started
    mpi = any(calls_mpi(problems[n]["prompt"]) for n in names)
    figures = report(results, elapsed, t_matrix, target, counts, data.name, mpi)
    figures.update({"left_out_problems": skipped, "timing_s": t_timing, "timing_threads": target.threads,
                    "timing_threads_source": target.source, "timing_counts": counts,
                    "timing_cpu_sets": timing.slots.cpu_sets if timing.slots else [],
                    "specs": "file" if hand_written is not None else "inferred", "untestable": untestable,
                    **({"mpi_sizes": args.mpi_sizes} if mpi else {})})
    if mpi and args.mpi_sizes == "even":
        print("\nMPI sizes: even (powers of two, 1, 2, 4 and 8 ranks, no edge cases): ParEval's own conditions, "
              "a comparison row for its labels, which do not see a remainder of n / ranks dropped")
    print(f"\ninput specs: {'hand-written, ' + args.constraints if hand_written is not None else 'inferred from each serial source and checked'}")
    if skipped:
        print(f"\nleft out (matrix not finished within {args.problem_timeout:.0f}s): {', '.join(skipped)}")
    if untestable:
        print(f"\nuntestable ({len(untestable)} problems; the pick is the first sample):")
        for name, why in sorted(untestable.items()):
            print(f"  {name}: {why}")
    write_picks(results, Path(args.picks))
    print(f"\nscore.py's report on the picks ({args.picks}):\n", flush=True)
    out = subprocess.run([sys.executable, str(data / "score.py"), "--select", str(args.picks), str(candidates_file(data))],
                         capture_output=True, text=True)
    sel = out.stdout[out.stdout.find("Selector scoring"):] if "Selector scoring" in out.stdout else out.stdout + out.stderr
    print(sel, flush=True)
    if args.json:
        figures["command"] = " ".join(sys.argv)
        figures["rows"] = {m: [{k: v for k, v in r.items() if k != "labels"} for r in rows] for m, rows in results.items()}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=1, sort_keys=True))
    return 0


async def run_matrices(problems, names, pairs, samples, hand_written: dict | None, timing: TimingOptions,
                       args) -> tuple[dict[str, dict], dict[str, str]]:
    """Phase 1 of every problem, several at once: the evaluations that finished in time, and
    why each untestable problem is."""
    limiter = asyncio.Semaphore(args.workers)
    gate = asyncio.Semaphore(max(2, args.workers))  # problems in flight at once
    untestable: dict[str, str] = {}

    async def phase1(name: str):
        async with gate:
            spec = hand_written.get(name, {}) if hand_written is not None else None
            try:
                return name, await asyncio.wait_for(
                    evaluate_problem(problems[name], pairs[name], samples, spec, limiter, args, timing),
                    args.problem_timeout)
            except TimeoutError:
                log(f"{name}: not finished within {args.problem_timeout:.0f}s; left out of the figures")
                return name, None
            except Untestable as exc:
                log(f"{name}: untestable: {exc}")
                untestable[name] = str(exc)
                return name, None

    evals = {n: ev for n, ev in await asyncio.gather(*(phase1(n) for n in names)) if ev is not None}
    return evals, untestable


def write_picks(results: dict[str, list[dict]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for model, rows in results.items():
            for r in rows:
                fh.write(json.dumps({"name": r["name"], "model": model, "chosen_index": r["chosen"]}) + "\n")


async def time_problem(name: str, ev: dict, prob: dict, models: list[str], samples, target: TargetParallelism,
                       counts: list[int], results: dict[str, list[dict]], args) -> None:
    """Phase 2 of a problem: time what the vote and the figures need, pick, score the pick."""
    decisions = {model: decide(model, prob, ev, samples) for model in models}
    to_time: dict[str, str] = {}
    for model, d in decisions.items():
        by_id = {f"{model}/{s['index']}": s for s in samples[(model, name)]}
        need = set(d["winners"]) if len(d["winners"]) > 1 else set()
        need |= {c for c, s in by_id.items() if s["labels"]["are_all_valid"] and not ev["harness"].build_logs.get(c)}
        for c in need:
            to_time[c] = ev["sources"][c]
    timings: dict[str, Timing] = await ev["harness"].time(to_time, repeats=args.repeats, target=target) if to_time else {}
    races = ev["harness"].races
    for model, d in decisions.items():
        ss = samples[(model, name)]
        cands = [Candidate(id=f"{model}/{s['index']}", source=ev["sources"][f"{model}/{s['index']}"]) for s in ss]
        pick = None
        if d["winners"]:
            # The sample bakeoff would pick; for a speed task it ships it only when it is faster,
            # but either way it is bakeoff's answer to "which of these".
            verdict = choose(d["vote"].model_copy(update={"winners": d["winners"]}), cands, d["matrix"], ev["tests"],
                             timings={c: t for c, t in timings.items() if c in d["ids"]})
            pick = verdict.winner
        # Nobody eligible at all: the first sample (what a selector with no signal does).
        chosen = int(pick.split("/")[1]) if pick else 0
        labels = {s["index"]: s["labels"]["are_all_valid"] for s in ss}
        results[model].append(score_row(name, model, ss, d, chosen, pick, labels, timings, races, ev, counts))
    setup = ev["harness"].timing_setup
    log(f"{name}: timed {len(set(to_time.values()))} programs"
        + (f" on {setup.size}" if setup else "")
        + (f" (reference {setup.reference_s:.3f}s at 1 thread)" if setup and setup.reference_s is not None else "") + "; picks "
        + ", ".join(f"{m}:{r['chosen']}{'+' if r['correct'] else '-'}({r['path']})" for m in models for r in results[m]
                    if r["name"] == name))
    await ev["harness"].close()


def blind_pick(name: str, ss: list[dict], counts: list[int]) -> dict[str, Any]:
    """The row of a problem the harness cannot test: the first sample, as a selector with no
    signal would pick; nothing is timed."""
    labels = {s["index"]: s["labels"]["are_all_valid"] for s in ss}
    row = {"name": name, "chosen": 0, "path": "untestable", "correct": labels[0], "c": sum(labels.values()),
           "n": len(ss), "ref_winners": [], "labels": labels, "flaky": [], "racy": [], "built": 0,
           "label_built": sum(s["labels"]["did_build"] for s in ss)}
    for n in counts:
        suffix = "" if n == counts[-1] else f"_{n}"
        row.update({"speed_pick" + suffix: None, "speed_correct" + suffix: [], "speed_correct_racefree" + suffix: []})
    return row


def score_row(name, model, ss, d, chosen, pick, labels, timings, races, ev, counts) -> dict[str, Any]:
    """One (model, problem)'s pick, its labels and the speeds the figures need."""
    def speed_at(cid: str, threads: int) -> float | None:
        t = timings.get(cid)
        point = next((p for p in t.curve if p.threads == threads), None) if t else None
        return point.speedup if point else None

    target = counts[-1]
    ids = {s["index"]: f"{model}/{s['index']}" for s in ss}
    at = {n: {i: speed_at(c, n) for i, c in ids.items() if speed_at(c, n) is not None} for n in counts}
    row = {
        "name": name, "chosen": chosen, "path": d["path"] if pick else "none",
        "correct": labels[chosen], "c": sum(labels.values()), "n": len(ss),
        "ref_winners": sorted(int(c.split("/")[1]) for c in d["ref_winners"]),
        "labels": labels,
        "flaky": sorted(int(c.split("/")[1]) for c in d["vote"].flaky),
        "racy": sorted(i for i, c in ids.items() if c in races),
        "built": sum(1 for c in d["ids"] if not ev["harness"].build_logs.get(c)),
        "label_built": sum(s["labels"]["did_build"] for s in ss),
    }
    for n in counts:
        suffix = "" if n == target else f"_{n}"
        sp = at[n]
        row["speed_pick" + suffix] = sp.get(chosen) if labels[chosen] else None
        row["speed_correct" + suffix] = [sp[i] for i in labels if labels[i] and i in sp]
        row["speed_correct_racefree" + suffix] = [sp[i] for i in labels if labels[i] and i in sp and ids[i] not in races]
    return row


def summarize(rows: list[dict], counts: list[int]) -> dict[str, Any]:
    n = len(rows)
    sel = sum(r["correct"] for r in rows) / n
    rnd = sum(r["c"] / r["n"] for r in rows) / n
    orc = sum(1 for r in rows if r["c"] > 0) / n
    gap = orc - rnd
    yes_no = sum(1 for r in rows for i, ok in r["labels"].items() if i in r["ref_winners"] and not ok)
    no_yes = sum(1 for r in rows for i, ok in r["labels"].items() if i not in r["ref_winners"] and ok)
    out = {
        "problems": n,
        "selected_accuracy": sel,
        "random_accuracy": rnd,
        "oracle": orc,
        "gap_closed": (sel - rnd) / gap if gap > 1e-12 else None,
        "disagree_with_labels": {"bakeoff_correct_label_wrong": yes_no, "bakeoff_wrong_label_correct": no_yes,
                                 "samples": sum(r["n"] for r in rows)},
        "picks_label_wrong": sum(1 for r in rows if not r["correct"] and r["c"] > 0),
        "paths": dict(Counter(r["path"] for r in rows)),
        "built": sum(r["built"] for r in rows), "label_built": sum(r["label_built"] for r in rows),
    }
    for t in counts:
        suffix = "" if t == counts[-1] else f"_{t}"
        out.update(speed_figures(rows, suffix))
    return out


def speed_figures(rows: list[dict], suffix: str) -> dict[str, Any]:
    """Geometric means over the problems whose pick is label-correct and timed: the pick, the
    mean and the best label-correct sample, and the best one the race check does not flag
    (over the problems that have one), with the pick's ratio to it."""
    pick, correct, racefree = f"speed_pick{suffix}", f"speed_correct{suffix}", f"speed_correct_racefree{suffix}"
    paired = [r for r in rows if r[pick] is not None and r[correct]]
    paired_rf = [r for r in paired if r[racefree]]
    pick_rf, oracle_rf = geomean([r[pick] for r in paired_rf]), geomean([max(r[racefree]) for r in paired_rf])
    return {
        f"speedup_pick{suffix}": geomean([r[pick] for r in paired]),
        f"speedup_mean_correct{suffix}": geomean([sum(r[correct]) / len(r[correct]) for r in paired]),
        f"speedup_oracle{suffix}": geomean([max(r[correct]) for r in paired]),
        f"speedup_oracle_racefree{suffix}": oracle_rf,
        f"pick_vs_oracle_racefree{suffix}": pick_rf / oracle_rf if pick_rf and oracle_rf else None,
        f"speedup_problems{suffix}": len(paired),
    }


def fmt(x: Any, d: int = 3) -> str:
    return "n/a" if x is None else (f"{x:.{d}f}" if isinstance(x, float) else str(x))


def report(results: dict[str, list[dict]], elapsed: float, t_matrix: float, target: TargetParallelism,
           counts: list[int], dataset: str, mpi: bool = False) -> dict[str, Any]:
    figures: dict[str, Any] = {"models": {}, "dataset": dataset}
    cores = len(allowed_cpus())
    t = target.threads
    print(f"\n{dataset} selection, measured here ({cores} CPUs), {elapsed:.0f}s in all ({t_matrix:.0f}s building "
          f"and running); speed at {t} threads ({target.source})\n")
    extra = [n for n in counts if n != t]
    head = ["model", "problems", "selected acc", "random (pass@1)", "oracle (pass@20)", "gap closed",
            f"S{t} pick", f"S{t} mean-correct", f"S{t} best", f"S{t} best race-free", "pick / best race-free",
            *[f"S{n} pick" for n in extra], *[f"S{n} best race-free" for n in extra],
            "speed problems", "bakeoff yes/label no", "bakeoff no/label yes", "wrong picks", "vote path", "built (labels)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    all_rows = []
    for model in sorted(results):
        s = summarize(results[model], counts)
        figures["models"][model] = s
        all_rows += results[model]
        print_row(model, s, extra)
    s = summarize(all_rows, counts)
    figures["overall"] = s
    print_row("overall", s, extra)
    figures.update({k: v for k, v in s.items() if k.startswith(("speedup_", "pick_vs_")) or k in (
        "selected_accuracy", "random_accuracy", "oracle", "gap_closed", "disagree_with_labels")})
    figures["elapsed_s"] = elapsed
    print(f"\nS{t} = serial reference time / sample time at {t} threads, both measured here (median of interleaved runs "
          "on an input grown until the reference takes 0.2 s per call, where memory allows), geometric mean over "
          "problems where the pick is correct and timed; mean-correct and best over the samples the labels call "
          "correct; race-free: and that ThreadSanitizer does not flag."
          + (f" MPI samples: at {t} ranks, on the input sized at one rank; the race check does not run." if mpi else ""))
    return figures


def print_row(model: str, s: dict, extra: list[int]) -> None:
    d = s["disagree_with_labels"]
    cells = [model, s["problems"], fmt(s["selected_accuracy"]), fmt(s["random_accuracy"]), fmt(s["oracle"]),
             fmt(s["gap_closed"]), fmt(s["speedup_pick"], 2), fmt(s["speedup_mean_correct"], 2),
             fmt(s["speedup_oracle"], 2), fmt(s["speedup_oracle_racefree"], 2), fmt(s["pick_vs_oracle_racefree"], 3),
             *[fmt(s[f"speedup_pick_{n}"], 2) for n in extra], *[fmt(s[f"speedup_oracle_racefree_{n}"], 2) for n in extra],
             s["speedup_problems"], f"{d['bakeoff_correct_label_wrong']}/{d['samples']}",
             f"{d['bakeoff_wrong_label_correct']}/{d['samples']}", s["picks_label_wrong"], s["paths"],
             f"{s['built']} ({s['label_built']})"]
    print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="a pareval-omp-dev style folder (or pareval-mpi-dev)")
    ap.add_argument("--constraints", default="", metavar="FILE",
                    help=f"hand-written input specs (e.g. {HAND_WRITTEN.relative_to(ROOT)}) instead of inferred ones")
    ap.add_argument("--models", default="", help="comma-separated; default all")
    ap.add_argument("--problems", choices=["mixed", "all"], default="all",
                    help="mixed: only (model, problem) pairs whose samples are partly correct")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="compile/run processes at once")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved timing rounds per sample, at most")
    ap.add_argument("--timing-threads", type=int, default=0,
                    help="the target parallelism timings are at, threads or MPI ranks (default: the CPUs this process may use)")
    ap.add_argument("--timing-budget", type=float, default=1.5,
                    help="a timing stops after 2 rounds once this many seconds have passed (0: all --repeats)")
    ap.add_argument("--min-time", type=float, default=0.2,
                    help="grow the timing input until the reference takes this long per call at one thread")
    ap.add_argument("--call-timeout", type=float, default=10.0)
    ap.add_argument("--medium-tests", type=int, default=None,
                    help="larger inputs per problem, run to expose races (default 3; MPI: 1, every rank holds a copy)")
    ap.add_argument("--threads", default="", help="thread (MPI: rank) counts for correctness runs (default 1, 2, cores, 2x and 4x cores; MPI: 1-4 and cores+1)")
    ap.add_argument("--mpi-sizes", choices=["uneven", "even"], default="uneven",
                    help="MPI samples: uneven (sizes no small rank count divides, bakeoff's own harness) or even "
                         "(powers of two at 1, 2, 4, 8 ranks, no edge cases: the conditions ParEval's labels were made in)")
    ap.add_argument("--pin", default="", help="run the drivers (not the compilers) on these CPUs, e.g. 0,1")
    ap.add_argument("--problem-timeout", type=float, default=600.0,
                    help="a problem whose matrix takes longer is left out (and counted as such)")
    ap.add_argument("--only", default="", help="comma-separated prefixes of problem names, e.g. 40_,41_")
    ap.add_argument("--limit", type=int, default=0, help="only the first N problems (for a quick look)")
    ap.add_argument("--picks", default=str(ROOT / "bench" / "out" / "pareval_picks.jsonl"))
    ap.add_argument("--json", default="")
    return asyncio.run(main_async(ap.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
