"""Selection on humaneval-codet-dev: choose 1 of 100 CodeGen samples using only model-written asserts.

Runs every distinct program on every distinct generated assert (pass/fail) and on the input
of each assert (the value it returns), then lets bakeoff's vote (agent.selection.vote,
no reference) pick. Labels are read only to score the picks. Prints selected pass@1 next
to a random pick, the oracle and the CodeT rule recomputed from the same execution results.

    python3 bench/select_codet.py [--data DIR] [--problems K] [--workers N] [--json PATH] [--cv]

``--cv`` cross-validates the choice of the vote's rule: the problems are split into 5 folds,
each rule of the family (agent.selection.agreement.FAMILY) is picked on four and scored on
the fifth, and the mean and spread of the fifth folds' gap closed are printed (and written as
``cv_gap_closed_mean`` / ``cv_gap_closed_min`` with ``--json``).

Execution results are cached under bench/out/codet-cache/ keyed by a hash of program, tests
and runner, so a re-run only re-scores.

The programs run on this machine, not in a sandbox (agent.pyexec.run_job: own process, scrubbed
environment, rlimits, wall-clock kill): they are public benchmark data, and 6,000 of them would
pay a sandbox's per-command setup thousands of times. bakeoff's own paths (fan_out, select) run
candidates in a sandbox (agent.pyexec.SandboxRunner).
"""


from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bakeoff.agent.harness.pyexec import PyJob, PyResult, run_job, signature  # noqa: E402
from bakeoff.agent.harness.testgen import call_of, parse_generated_tests, typed_inputs  # noqa: E402
from bakeoff.agent.selection.agreement import FAMILY, RULE, AgreementRule  # noqa: E402
from bakeoff.agent.types import ExecutionMatrix, TestCase  # noqa: E402

# shared/ lies beside the checkout, for developers and CI alike.
DEFAULT_DATA = ROOT.parent / "shared" / "bench" / "humaneval-codet-dev"
CACHE = ROOT / "bench" / "out" / "codet-cache"
RUNNER_VERSION = "2"
HOST_NOTE = "programs run on this machine with rlimits, not in a sandbox: public benchmark data only"


def load(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


PER_GENERATION = 5  # asserts kept per raw generation, as CodeT keeps


def problem_tests(gen: dict, entry: str) -> tuple[Counter, Counter, set[str]]:
    """(CodeT's parsed asserts, bakeoff's parse of the raw generations, every assert parsed),
    the first two with counts. Every parsed assert's input is a probe.

    bakeoff's parse also recovers asserts CodeT's drops (``assert`` then a line break, fenced
    or truncated text); like CodeT it keeps the first few of each generation, so that one
    long generation does not outvote the others."""
    codet = Counter(gen["tests"])
    ours: Counter = Counter()
    parsed: set[str] = set(codet)
    for raw in gen["raw_generations"]:
        # Each raw generation continues a prompt that ends in "assert ".
        kept = [t.code for t in parse_generated_tests("assert " + raw, entry) for _ in range(t.weight)]
        parsed.update(kept)
        for code in kept[:PER_GENERATION]:
            ours[code] += 1
    return codet, ours, parsed


SIGNATURE_PROBES = 8  # inputs from the signature, when no generated assert gives one


def signature_probes(prompt: str, entry: str) -> list[str]:
    """Inputs drawn from the function's signature (type hints, else parameter names): the
    probes of a problem none of whose generated asserts parses, so that the vote can still
    compare what the samples return."""
    for source in (prompt, prompt + "\n    pass\n"):
        try:
            return typed_inputs(source, entry, count=SIGNATURE_PROBES, size=6)
        except (SyntaxError, ValueError):
            continue
    return []


def _key(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def outcome_record(res: PyResult) -> dict:
    calls = []
    for c in res.calls:
        calls.append(signature(c.value) if c.outcome == "pass" else "!" + c.outcome)
    return {"load_error": res.load_error, "asserts": list(res.asserts), "calls": calls}


def execute(problems: list[dict], by_task: dict, gens: dict, workers: int, cache: Path = CACHE) -> dict:
    """task_id -> {asserts, calls, programs: {program_key: record}, index_program: [...]}."""
    from concurrent.futures import ThreadPoolExecutor

    cache.mkdir(parents=True, exist_ok=True)
    plans = {}
    jobs: list[tuple[str, str, PyJob]] = []
    for p in problems:
        tid, entry = p["task_id"], p["entry_point"]
        codet, ours, parsed = problem_tests(gens[tid], entry)
        asserts = sorted(parsed)
        calls = sorted({c for c in (call_of(a, entry) for a in asserts) if c}) or signature_probes(p["prompt"], entry)
        cache_file = cache / (tid.replace("/", "_") + ".json")
        cached = json.loads(cache_file.read_text()) if cache_file.exists() else {}
        index_program = []
        programs: dict[str, dict] = {}
        for cand in sorted(by_task[tid], key=lambda c: c["index"]):
            source = p["prompt"] + cand["completion"]
            key = _key(RUNNER_VERSION, source, *asserts, "|", *calls)
            index_program.append(key)
            if key in programs:
                continue
            if key in cached:
                programs[key] = cached[key]
            else:
                programs[key] = {}
                jobs.append((tid, key, PyJob(source=source, entry=entry, asserts=asserts, calls=calls, timeout_s=1.0,
                                             max_timeouts=3)))
        plans[tid] = {
            "entry": entry, "asserts": asserts, "calls": calls, "codet": codet, "ours": ours,
            "programs": programs, "index_program": index_program, "cache_file": cache_file,
        }
    if jobs:
        print(f"executing {len(jobs)} jobs (distinct programs x test batches) on {workers} workers ...", flush=True)
        print(f"note: {HOST_NOTE}", flush=True)
        done = 0
        start = time.time()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for (tid, key, _), res in zip(jobs, pool.map(lambda j: run_job(j[2]), jobs)):
                plans[tid]["programs"][key] = outcome_record(res)
                done += 1
                if done % 1000 == 0:
                    print(f"  {done}/{len(jobs)} jobs, {time.time() - start:.0f} s", flush=True)
        for tid, plan in plans.items():
            plan["cache_file"].write_text(json.dumps(plan["programs"]))
    return plans


def matrix_for(plan: dict, which: str) -> tuple[ExecutionMatrix, list[TestCase]]:
    """The execution matrix of one problem: the asserts of the ``which`` parse, and for
    bakeoff's vote also probes (the inputs of every parsed assert) whose returned values are
    compared across candidates."""
    weights: Counter = plan[which]
    a_index = {a: i for i, a in enumerate(plan["asserts"])}
    tests = [TestCase(id=f"a{a_index[a]}", kind="generated", code=a, weight=w) for a, w in sorted(weights.items())]
    probes = []
    if which == "ours":
        probes = [TestCase(id=f"c{i}", kind="differential", code=c) for i, c in enumerate(plan["calls"])]
    m = ExecutionMatrix()
    for n, key in enumerate(plan["index_program"]):
        rec = plan["programs"][key]
        cid = str(n)
        for t in tests:
            m.set(cid, t.id, rec["asserts"][int(t.id[1:])])
        for t in probes:
            sig = rec["calls"][int(t.id[1:])]
            outcome = "pass" if not sig.startswith("!") else ("timeout" if sig == "!timeout" else "error")
            m.set(cid, t.id, outcome, sig)
    return m, tests + probes


def codet_rule(m: ExecutionMatrix, tests: list[TestCase]) -> list[str]:
    """CodeT's paper formula: group by the set of passed tests; score = group size x weighted tests passed."""
    weight = {t.id: t.weight for t in tests if t.kind == "generated"}
    groups: dict[frozenset, list[str]] = {}
    for c in m.candidates:
        groups.setdefault(frozenset(t for t in m.passed(c) if t in weight), []).append(c)
    scored = [(len(g) * sum(weight[t] for t in ps), g) for ps, g in groups.items()]
    best = max((s for s, _ in scored), default=0)
    if best <= 0:
        return []
    return [c for s, g in scored if s == best for c in g]


def expected(picks: list[str], labels: dict[str, bool]) -> float:
    """Mean label over tied picks; no pick falls back to a random sample."""
    pool = picks or list(labels)
    return sum(labels[c] for c in pool) / len(pool)


# --------------------------------------------------------------------------- cross-validation

FOLDS = 5


def folds_of(task_ids: list[str], k: int = FOLDS) -> list[list[int]]:
    """k folds of problem positions, dealt round-robin in an order fixed by a hash of the task
    ids (not by their order in the file), so that the folds are even and reproducible."""
    order = sorted(range(len(task_ids)), key=lambda i: hashlib.sha256(task_ids[i].encode()).hexdigest())
    return [sorted(order[f::k]) for f in range(min(k, len(task_ids)))]


def gap_closed(rows: list[dict], values: list[float], idx: list[int]) -> float | None:
    """(selected - random) / (oracle - random) over the problems ``idx``; None when they have no gap."""
    rnd = sum(rows[i]["random"] for i in idx)
    gap = sum(rows[i]["oracle"] for i in idx) - rnd
    return (sum(values[i] for i in idx) - rnd) / gap if gap > 1e-12 else None


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _sd(xs: list[float]) -> float:
    return (sum((x - _mean(xs)) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0


def pick_rule(per_fold: dict[AgreementRule, list[float]]) -> AgreementRule:
    """The rule to use given each rule's gap closed on the same folds: the best mean, unless a
    rule with fewer departures from CodeT's is within one standard error of it (the standard
    error of the paired per-fold differences): then the simplest such rule (ties: the better
    mean, then the family's order). The folds cannot tell those apart, so simpler is safer."""
    family = list(per_fold)
    best = max(family, key=lambda r: (_mean(per_fold[r]), -r.departures))
    close = []
    for r in family:
        diff = [b - x for b, x in zip(per_fold[best], per_fold[r])]
        if _mean(diff) <= _sd(diff) / len(diff) ** 0.5:
            close.append(r)
    return min(close, key=lambda r: (r.departures, -_mean(per_fold[r]), family.index(r)))


def cross_validate(rows: list[dict], by_rule: dict[AgreementRule, list[float]], task_ids: list[str]) -> dict:
    """Each fold scored with the rule ``pick_rule`` chooses on the other folds. ``by_rule``:
    rule -> expected pass@1 on each problem (rows' order); rows carry random, oracle, codet."""
    folds = [f for f in folds_of(task_ids) if gap_closed(rows, [r["oracle"] for r in rows], f) is not None]
    if len(folds) < 2:
        return {"cv_folds": [], "cv_gap_closed_mean": None, "cv_gap_closed_min": None, "cv_rule": None,
                "product_rule": RULE.name, "cv_note": "fewer than two folds have a random-to-oracle gap"}
    gaps = {r: [gap_closed(rows, v, f) for f in folds] for r, v in by_rule.items()}
    codet = [r["codet"] for r in rows]
    out = []
    for k, f in enumerate(folds):
        rule = pick_rule({r: [g for j, g in enumerate(gs) if j != k] for r, gs in gaps.items()})
        out.append({"fold": k + 1, "problems": len(f), "rule": rule.name, "gap_closed": gaps[rule][k],
                    "codet_gap_closed": gap_closed(rows, codet, f)})
    held = [o["gap_closed"] for o in out]
    chosen = pick_rule(gaps)
    return {
        "cv_folds": out,
        "cv_gap_closed_mean": _mean(held),
        "cv_gap_closed_min": min(held),
        "cv_gap_closed_sd": _sd(held),
        "cv_codet_gap_closed_mean": _mean([o["codet_gap_closed"] for o in out]),
        "cv_above_codet_every_fold": all(o["gap_closed"] > o["codet_gap_closed"] for o in out),
        "cv_rule": chosen.name,
        "product_rule": RULE.name,
        "cv_family": [{"rule": r.name, "departures": r.departures, "fold_gap_closed": gs, "mean": _mean(gs)}
                      for r, gs in sorted(gaps.items(), key=lambda kv: -_mean(kv[1]))],
    }


def print_cv(cv: dict, n: int) -> None:
    if not cv["cv_folds"]:
        print(f"\ncross-validation: not possible on these {n} problems ({cv['cv_note']})")
        return
    print(f"\ncross-validation: {len(cv['cv_folds'])} folds of the {n} problems; each fold scored with the rule "
          "picked on the others")
    print(f"{'fold':<6}{'problems':>9}  {'rule picked on the other folds':<48}{'gap closed':>11}{'CodeT rule':>12}")
    for o in cv["cv_folds"]:
        print(f"{o['fold']:<6}{o['problems']:>9}  {o['rule']:<48}{o['gap_closed']:>11.2f}{o['codet_gap_closed']:>12.2f}")
    print(f"held-out folds: gap closed mean {cv['cv_gap_closed_mean']:.3f}, min {cv['cv_gap_closed_min']:.3f}, "
          f"sd {cv['cv_gap_closed_sd']:.3f} (CodeT rule mean {cv['cv_codet_gap_closed_mean']:.3f}; above it on every fold: "
          f"{'yes' if cv['cv_above_codet_every_fold'] else 'no'})")
    print("best rules by mean over the folds:")
    for fam in cv["cv_family"][:5]:
        print(f"  {fam['rule']:<48}{fam['mean']:>7.3f}  " + " ".join(f"{g:.2f}" for g in fam["fold_gap_closed"]))
    print(f"rule picked on all folds: {cv['cv_rule']}; the product's rule (agent.selection.agreement.RULE): "
          f"{cv['product_rule']}" + ("" if cv["cv_rule"] == cv["product_rule"] else "  <- they differ"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=HOST_NOTE)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--problems", type=int, default=None, help="only the first K problems")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=CACHE, help="where execution results are kept between runs")
    ap.add_argument("--cv", action="store_true", help=f"cross-validate the choice of the vote's rule ({FOLDS} folds)")
    args = ap.parse_args(argv)

    start = time.time()
    problems = load(args.data / "problems.jsonl")[: args.problems]
    by_task: dict[str, list] = {}
    for c in load(args.data / "candidates.jsonl"):
        by_task.setdefault(c["task_id"], []).append(c)
    gens = {g["task_id"]: g for g in load(args.data / "generated_tests.jsonl")}
    plans = execute(problems, by_task, gens, args.workers, args.cache)
    from bakeoff.agent.selection.vote import vote

    exec_s = time.time() - start

    # Labels are read only now, to score picks made above.
    labels: dict[str, dict[str, bool]] = {}
    for row in load(args.data / "labels.jsonl"):
        labels.setdefault(row["task_id"], {})[str(row["index"])] = bool(row["passed"])

    rows = []
    by_rule: dict[AgreementRule, list[float]] = {r: [] for r in (FAMILY if args.cv else ())}
    for p in problems:
        tid = p["task_id"]
        plan = plans[tid]
        lab = labels[tid]
        m_codet, t_codet = matrix_for(plan, "codet")
        m_ours, t_ours = matrix_for(plan, "ours")
        v = vote(m_ours, t_ours, reference=False)
        for rule, picks in by_rule.items():
            picks.append(expected(vote(m_ours, t_ours, reference=False, rule=rule).winners, lab))
        rows.append({
            "task_id": tid,
            "random": sum(lab.values()) / len(lab),
            "oracle": float(any(lab.values())),
            "codet": expected(codet_rule(m_codet, t_codet), lab),
            "selected": expected(v.winners, lab),
            "winners": len(v.winners),
            "close_call": v.close_call,
        })
    n = len(rows)
    mean = {k: sum(r[k] for r in rows) / n for k in ("random", "oracle", "codet", "selected")}
    gap = mean["oracle"] - mean["random"]
    closed = (mean["selected"] - mean["random"]) / gap if gap else 0.0
    codet_closed = (mean["codet"] - mean["random"]) / gap if gap else 0.0
    cv = cross_validate(rows, by_rule, [r["task_id"] for r in rows]) if args.cv else {}
    total_s = time.time() - start

    print(f"\nhumaneval-codet ({args.data}): {n} problems, {sum(len(by_task[p['task_id']]) for p in problems)} samples")
    print(f"{'rule':<52}{'pass@1':>9}{'gap closed':>12}")
    print(f"{'random sample (mean pass rate)':<52}{mean['random']:>9.2%}{0:>12.2f}")
    print(f"{'oracle (any sample correct)':<52}{mean['oracle']:>9.2%}{1:>12.2f}")
    print(f"{'CodeT rule (own execution, CodeT asserts)':<52}{mean['codet']:>9.2%}{codet_closed:>12.2f}")
    print(f"{'bakeoff vote (' + RULE.name + ')':<52}{mean['selected']:>9.2%}{closed:>12.2f}")
    if cv:
        print_cv(cv, n)
    print(f"close calls: {sum(r['close_call'] for r in rows)}; execution {exec_s:.0f} s, total {total_s:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "problems": n,
            "selected_pass1": mean["selected"],
            "random_pass1": mean["random"],
            "oracle": mean["oracle"],
            "codet_rule": mean["codet"],
            "gap_closed": closed,
            "codet_gap_closed": codet_closed,
            "execution_s": exec_s,
            "total_s": total_s,
            "rule": RULE.name,
            **cv,
            "per_problem": rows,
        }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
