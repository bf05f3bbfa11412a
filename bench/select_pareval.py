#!/usr/bin/env python3
"""Benchmark 2: bakeoff's selection on ParEval serial->OpenMP (or ->MPI) samples, built and run here.

For every (model, problem): each of the 20 samples (prompt + "\\n" + completion) is built
against the problem's serial reference with bakeoff's C++ differential harness
(``agent.differential_c.CHarness``), run on generated inputs at 1, 2 and oversubscribed
thread counts, voted on with the reference (``agent.selection.vote``), and the winners are
timed against the serial reference at 2 threads; ``agent.selection.choose`` picks. The
labels (``are_all_valid``) are used only for scoring.

With ``--data ../shared/bench/pareval-mpi-dev`` the samples call MPI: they run under ``mpirun``
(``agent.harness.mpi_harness.MpiHarness``) at 1, 2, 3, 4 and oversubscribed rank counts, rank
0's result is compared, and winners are timed at 2 ranks; the table and JSON keys are the same.

Each problem's input spec (sizes, how lengths follow from them, value domains) is inferred
from its serial source and doc comment (``agent.harness.c_spec``) and checked against the
reference (``agent.harness.c_spec_check``) before it is used; a problem whose spec cannot be
inferred and checked is reported as untestable, and the pick for it is the first sample.
``--constraints bench/pareval/constraints.json`` uses the hand-written specs instead, for
comparison; the JSON says which (``specs``: ``inferred`` or ``file``).

    python3 bench/select_pareval.py [--data DIR] [--models a,b] [--problems mixed|all]
                                    [--constraints FILE] [--workers N] [--json PATH]
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
from bakeoff.agent.harness.c_signature import SignatureError  # noqa: E402
from bakeoff.agent.harness.c_spec import infer_spec  # noqa: E402
from bakeoff.agent.harness.c_spec_check import settle  # noqa: E402
from bakeoff.agent.harness.mpi_harness import MpiHarness, calls_mpi  # noqa: E402
from bakeoff.agent.selection.choose import choose  # noqa: E402
from bakeoff.agent.selection.vote import vote  # noqa: E402
from bakeoff.agent.types import Candidate, ExecutionMatrix, TestCase, Timing  # noqa: E402

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


async def evaluate_problem(prob: dict, models: list[str], samples, constraints: dict | None, limiter, args) -> dict[str, Any]:
    """Phase 1 of a problem: tests and the execution matrix of every selected model's samples.
    ``constraints``: the hand-written spec, or None to infer one and check it."""
    # The MPI set's prompts include mpi.h: its samples run under mpirun, at rank counts for thread counts.
    kind, counts = (MpiHarness, "ranks") if calls_mpi(prob["prompt"]) else (CHarness, "threads")
    try:
        harness = kind(
            prob["serial_source"], prob["function_name"], language="c++", constraints=constraints,
            compile_flags=("-O3", "-fopenmp"), limiter=limiter, call_timeout=args.call_timeout,
            medium_tests=args.medium_tests if args.medium_tests is not None else (1 if kind is MpiHarness else 3),
            cpus=args.pin or None,
            **({counts: [int(t) for t in args.threads.split(",")]} if args.threads else {}),
        )
    except (SignatureError, ValueError) as exc:
        raise Untestable(f"its signature cannot be driven: {exc}") from None
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
    except (Untestable, RuntimeError) as exc:
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


async def main_async(args) -> int:
    started = time.monotonic()
    data = Path(args.data)
    problems, samples = load(data)
    hand_written = json.loads(Path(args.constraints).read_text())["problems"] if args.constraints else None
    all_models = sorted({m for m, _ in samples})
    models = args.models.split(",") if args.models else all_models
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

    limiter = asyncio.Semaphore(args.workers)
    gate = asyncio.Semaphore(max(2, args.workers))  # problems in flight at once

    untestable: dict[str, str] = {}

    async def phase1(name: str):
        async with gate:
            spec = hand_written.get(name, {}) if hand_written is not None else None
            try:
                return name, await asyncio.wait_for(
                    evaluate_problem(problems[name], pairs[name], samples, spec, limiter, args), args.problem_timeout)
            except TimeoutError:
                log(f"{name}: not finished within {args.problem_timeout:.0f}s; left out of the figures")
                return name, None
            except Untestable as exc:
                log(f"{name}: untestable: {exc}")
                untestable[name] = str(exc)
                return name, None

    evals = {n: ev for n, ev in await asyncio.gather(*(phase1(n) for n in names)) if ev is not None}
    skipped = [n for n in names if n not in evals and n not in untestable]
    names = [n for n in names if n in evals or n in untestable]
    t_matrix = time.monotonic() - started
    log(f"matrices done in {t_matrix:.0f}s; timing winners (nothing else runs now)")

    # Phase 2, alone on the machine: time the winners (what the vote needs) and, for the
    # speed figures, the samples the labels call correct.
    results: dict[str, list[dict]] = defaultdict(list)
    for name in names:
        if name in untestable:
            for model in pairs[name]:
                results[model].append(blind_pick(name, samples[(model, name)]))
            continue
        ev = evals[name]
        prob = problems[name]
        decisions = {model: decide(model, prob, ev, samples) for model in pairs[name]}
        to_time: dict[str, str] = {}
        for model, d in decisions.items():
            by_id = {f"{model}/{s['index']}": s for s in samples[(model, name)]}
            need = set(d["winners"]) if len(d["winners"]) > 1 else set()
            need |= {c for c, s in by_id.items() if s["labels"]["are_all_valid"] and not ev["harness"].build_logs.get(c)}
            for c in need:
                to_time[c] = ev["sources"][c]
        timings: dict[str, Timing] = await ev["harness"].time(to_time, repeats=args.repeats) if to_time else {}
        for model, d in decisions.items():
            ss = samples[(model, name)]
            cands = [Candidate(id=f"{model}/{s['index']}", source=ev["sources"][f"{model}/{s['index']}"]) for s in ss]
            if d["winners"]:
                verdict = choose(d["vote"].model_copy(update={"winners": d["winners"]}), cands, d["matrix"], ev["tests"],
                                 timings={c: t for c, t in timings.items() if c in d["ids"]})
                pick = verdict.winner
            else:
                pick = None
            # Nobody eligible at all: the first sample (what a selector with no signal does).
            chosen = int(pick.split("/")[1]) if pick else 0
            labels = {s["index"]: s["labels"]["are_all_valid"] for s in ss}
            sp = {s["index"]: timings[f"{model}/{s['index']}"].speedup for s in ss if f"{model}/{s['index']}" in timings}
            results[model].append({
                "name": name, "chosen": chosen, "path": d["path"] if pick else "none",
                "correct": labels[chosen], "c": sum(labels.values()), "n": len(ss),
                "speed_pick": sp.get(chosen) if labels[chosen] else None,
                "speed_correct": [sp[i] for i in labels if labels[i] and i in sp],
                "ref_winners": sorted(int(c.split("/")[1]) for c in d["ref_winners"]),
                "labels": labels,
                "flaky": sorted(int(c.split("/")[1]) for c in d["vote"].flaky),
                "built": sum(1 for c in d["ids"] if not ev["harness"].build_logs.get(c)),
                "label_built": sum(s["labels"]["did_build"] for s in ss),
            })
        log(f"{name}: timed {len(set(to_time.values()))} programs; picks " + ", ".join(
            f"{r['name'] and m}:{r['chosen']}{'+' if r['correct'] else '-'}({r['path']})" for m in pairs[name] for r in results[m] if r["name"] == name))
        await ev["harness"].close()

    elapsed = time.monotonic() - started
    figures = report(results, elapsed, t_matrix, data.name)
    figures["left_out_problems"] = skipped
    figures["specs"] = "file" if hand_written is not None else "inferred"
    print(f"\ninput specs: {'hand-written, ' + args.constraints if hand_written is not None else 'inferred from each serial source and checked'}")
    figures["untestable"] = untestable
    if skipped:
        print(f"\nleft out (matrix not finished within {args.problem_timeout:.0f}s): {', '.join(skipped)}")
    if untestable:
        print(f"\nuntestable ({len(untestable)} problems; the pick is the first sample):")
        for name, why in sorted(untestable.items()):
            print(f"  {name}: {why}")
    picks_path = Path(args.picks)
    picks_path.parent.mkdir(parents=True, exist_ok=True)
    with picks_path.open("w") as fh:
        for model, rows in results.items():
            for r in rows:
                fh.write(json.dumps({"name": r["name"], "model": model, "chosen_index": r["chosen"]}) + "\n")
    print(f"\nscore.py's report on the picks ({picks_path}):\n", flush=True)
    out = subprocess.run([sys.executable, str(data / "score.py"), "--select", str(picks_path), str(candidates_file(data))],
                         capture_output=True, text=True)
    sel = out.stdout[out.stdout.find("Selector scoring"):] if "Selector scoring" in out.stdout else out.stdout + out.stderr
    print(sel, flush=True)
    if args.json:
        figures["command"] = " ".join(sys.argv)
        figures["rows"] = {m: [{k: v for k, v in r.items() if k != "labels"} for r in rows] for m, rows in results.items()}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=1, sort_keys=True))
    return 0


def blind_pick(name: str, ss: list[dict]) -> dict[str, Any]:
    """The row of a problem the harness cannot test: the first sample, as a selector with no
    signal would pick."""
    labels = {s["index"]: s["labels"]["are_all_valid"] for s in ss}
    return {"name": name, "chosen": 0, "path": "untestable", "correct": labels[0], "c": sum(labels.values()),
            "n": len(ss), "speed_pick": None, "speed_correct": [], "ref_winners": [], "labels": labels, "flaky": [],
            "built": 0, "label_built": sum(s["labels"]["did_build"] for s in ss)}


def summarize(rows: list[dict]) -> dict[str, Any]:
    n = len(rows)
    sel = sum(r["correct"] for r in rows) / n
    rnd = sum(r["c"] / r["n"] for r in rows) / n
    orc = sum(1 for r in rows if r["c"] > 0) / n
    gap = orc - rnd
    paired = [r for r in rows if r["speed_pick"] is not None and r["speed_correct"]]
    yes_no = sum(1 for r in rows for i, ok in r["labels"].items() if i in r["ref_winners"] and not ok)
    no_yes = sum(1 for r in rows for i, ok in r["labels"].items() if i not in r["ref_winners"] and ok)
    return {
        "problems": n,
        "selected_accuracy": sel,
        "random_accuracy": rnd,
        "oracle": orc,
        "gap_closed": (sel - rnd) / gap if gap > 1e-12 else None,
        "speedup_pick": geomean([r["speed_pick"] for r in paired]),
        "speedup_mean_correct": geomean([sum(r["speed_correct"]) / len(r["speed_correct"]) for r in paired]),
        "speedup_oracle": geomean([max(r["speed_correct"]) for r in paired]),
        "speedup_problems": len(paired),
        "disagree_with_labels": {"bakeoff_correct_label_wrong": yes_no, "bakeoff_wrong_label_correct": no_yes,
                                 "samples": sum(r["n"] for r in rows)},
        "picks_label_wrong": sum(1 for r in rows if not r["correct"] and r["c"] > 0),
        "paths": dict(Counter(r["path"] for r in rows)),
        "built": sum(r["built"] for r in rows), "label_built": sum(r["label_built"] for r in rows),
    }


def fmt(x: Any, d: int = 3) -> str:
    return "n/a" if x is None else (f"{x:.{d}f}" if isinstance(x, float) else str(x))


def report(results: dict[str, list[dict]], elapsed: float, t_matrix: float, dataset: str) -> dict[str, Any]:
    figures: dict[str, Any] = {"models": {}, "dataset": dataset}
    print(f"\n{dataset} selection, measured here ({os.cpu_count()} cores), {elapsed:.0f}s in all ({t_matrix:.0f}s building and running)\n")
    print("| model | problems | selected acc | random (pass@1) | oracle (pass@20) | gap closed | S2 pick | S2 mean-correct | S2 best | speed problems | bakeoff yes/label no | bakeoff no/label yes | wrong picks | vote path | built (labels) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    all_rows = []
    for model in sorted(results):
        s = summarize(results[model])
        figures["models"][model] = s
        all_rows += results[model]
        print_row(model, s)
    s = summarize(all_rows)
    figures["overall"] = s
    print_row("overall", s)
    figures.update({k: s[k] for k in ("selected_accuracy", "random_accuracy", "oracle", "gap_closed", "speedup_pick",
                                       "speedup_mean_correct", "speedup_oracle", "disagree_with_labels")})
    figures["elapsed_s"] = elapsed
    print("\nS2 = serial reference time / sample time at 2 threads, both measured here (median of interleaved runs), "
          "geometric mean over problems where the pick is correct and timed; mean-correct and best over the samples the labels call correct.")
    return figures


def print_row(model: str, s: dict) -> None:
    d = s["disagree_with_labels"]
    print(f"| {model} | {s['problems']} | {fmt(s['selected_accuracy'])} | {fmt(s['random_accuracy'])} | {fmt(s['oracle'])} | "
          f"{fmt(s['gap_closed'])} | {fmt(s['speedup_pick'], 2)} | {fmt(s['speedup_mean_correct'], 2)} | {fmt(s['speedup_oracle'], 2)} | "
          f"{s['speedup_problems']} | {d['bakeoff_correct_label_wrong']}/{d['samples']} | {d['bakeoff_wrong_label_correct']}/{d['samples']} | "
          f"{s['picks_label_wrong']} | {s['paths']} | {s['built']} ({s['label_built']}) |", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="a pareval-omp-dev style folder (or pareval-mpi-dev)")
    ap.add_argument("--constraints", default="", metavar="FILE",
                    help=f"hand-written input specs (e.g. {HAND_WRITTEN.relative_to(ROOT)}) instead of inferred ones")
    ap.add_argument("--models", default="", help="comma-separated; default all")
    ap.add_argument("--problems", choices=["mixed", "all"], default="all",
                    help="mixed: only (model, problem) pairs whose samples are partly correct")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="compile/run processes at once")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved timing pairs per sample")
    ap.add_argument("--call-timeout", type=float, default=10.0)
    ap.add_argument("--medium-tests", type=int, default=None,
                    help="larger inputs per problem, run to expose races (default 3; MPI: 1, every rank holds a copy)")
    ap.add_argument("--threads", default="", help="thread (MPI: rank) counts for correctness runs (default 1, 2, cores, 2x and 4x cores; MPI: 1-4 and cores+1)")
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
