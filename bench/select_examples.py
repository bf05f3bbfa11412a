"""End-to-end selection on the bundled examples with the scripted model.

For each example (a serial C kernel, a slow Python function) this runs the whole pipeline
through a Session on a temporary git copy: the planner's plan, fan_out with its candidates
(realistic wrong ones: a data race, a missing reduction, an off-by-one split, a wrong edge
case; slower-correct ones; a fast correct one), generated and differential tests, the vote
and the timing of the winners, then the joiner. It prints the report table and the reason,
and checks the pick against the expected one: the fastest candidate that is correct.

    python3 bench/select_examples.py [--json PATH] [--n 6] [--sandbox local] [--examples omp_kernel,slow_python]

Timings are real and measured on this machine: on a busy machine the speedups are noisy,
and when intervals overlap the smallest diff wins (selection's tie rule).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EXAMPLES = ROOT / "examples"
TASKS = {
    "omp_kernel": "make collatz_total in kernel.c parallel and faster with OpenMP, keeping its result exact",
    "slow_python": "make count_close_pairs in pairs.py faster without changing its results",
}
# The strategy of the candidate that must win, and those that must not be called correct.
EXPECTED = {"omp_kernel": "omp-reduction", "slow_python": "py-algorithm"}
MUST_REJECT = {
    "omp_kernel": {"omp-manual-split": "off-by-one split", "omp-simd": "data race", "omp-tasks": "missing reduction"},
    "slow_python": {"py-caching": "wrong for a negative radius"},
}


def git_copy(example: str, into: Path) -> Path:
    repo = into / example
    shutil.copytree(EXAMPLES / example, repo, ignore=shutil.ignore_patterns("__pycache__", "bench", "test_kernel"))
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=bench", "-c", "user.email=bench@bakeoff.invalid", "commit", "-qm", "example"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)
    return repo


async def run_example(example: str, n: int, sandbox: str, workdir: Path) -> dict:
    from bakeoff.agent.config import Settings
    from bakeoff.agent.events import EventBus
    from bakeoff.agent.models.scripted import ScriptedModel
    from bakeoff.agent.session import Session

    repo = git_copy(example, workdir)
    model = ScriptedModel.from_file(EXAMPLES / "scripted" / f"{example}.yaml")
    settings = Settings(n=n, sandbox=sandbox, rounds=2, max_sandboxes=4)
    state = workdir / "state"
    session = Session(settings, repo, events=EventBus(), model_override=model, state=state)
    started = time.monotonic()
    try:
        report = await session.run(TASKS[example])
    finally:
        await session.close()
    took = time.monotonic() - started
    strategy = {c.id: c.strategy for c in report.candidates}
    verdict = report.verdict
    correct = set(verdict.correct) if verdict else set()
    # Not faster than the base (a busy machine): bakeoff ships nothing, but its pick is the offered best.
    chosen = report.winner.id if report.winner else (verdict.best if verdict else None)
    picked = strategy.get(chosen) if chosen else None
    wrongly_correct = [s for s in MUST_REJECT[example] if any(strategy[c] == s for c in correct)]
    return {
        "example": example,
        "status": report.status,
        "picked": picked,
        "expected": EXPECTED[example],
        "ok": picked == EXPECTED[example] and not wrongly_correct,
        "wrong_called_correct": wrongly_correct,
        "reason": verdict.reason if verdict else report.error,
        "duration_s": round(took, 1),
        "tokens": report.tokens,
        "candidates": [
            {
                "id": c.id, "strategy": c.strategy, "correct": c.id in correct, "rounds": c.rounds,
                "error": (c.error or "")[:120] or None,
                "speedup": None if c.timing is None or c.timing.speedup is None else round(c.timing.speedup, 2),
                "interval": None if c.timing is None or c.timing.low is None
                else [round(c.timing.low, 2), round(c.timing.high, 2)],
            }
            for c in report.candidates
        ],
        "_verdict": verdict,
        "_strategy": strategy,
    }


def show(result: dict) -> None:
    from rich.console import Console

    from bakeoff.agent.selection.table import render_table

    console = Console(width=150)
    console.rule(f"{result['example']}: {TASKS[result['example']]}")
    verdict = result["_verdict"]
    if verdict is not None:
        console.print(render_table(verdict))
    for c in result["candidates"]:
        flag = "correct" if c["correct"] else "rejected"
        why = MUST_REJECT[result["example"]].get(c["strategy"], "")
        console.print(f"  {c['id']:>3} {c['strategy']:<18} {flag:<9} speedup {c['speedup']} {c['interval'] or ''}"
                      f"{'  (planted: ' + why + ')' if why else ''}")
    console.print(f"reason: {result['reason']}")
    mark = "OK" if result["ok"] else "MISMATCH"
    console.print(f"picked {result['picked']}, expected {result['expected']}: {mark}  ({result['duration_s']} s)")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write picked/expected and the per-candidate figures here")
    parser.add_argument("--n", type=int, default=6, help="candidates per fan_out (the scripts have 6 for C, 4 for Python)")
    parser.add_argument("--sandbox", default="local", choices=["auto", "local", "docker"])
    parser.add_argument("--examples", default=",".join(TASKS), help="comma-separated: " + ", ".join(TASKS))
    args = parser.parse_args()

    import os

    load_before = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="bakeoff-bench-examples-") as tmp:
        for example in [e.strip() for e in args.examples.split(",") if e.strip()]:
            result = await run_example(example, args.n, args.sandbox, Path(tmp))
            show(result)
            results.append(result)
    load_after = os.getloadavg()[0]
    # Speedups on a loaded machine are noise: say how loaded it was.
    print(f"machine: {os.cpu_count()} cores, load average {load_before:.1f} before, {load_after:.1f} after")
    doc = {
        "load_average": [round(load_before, 2), round(load_after, 2)],
        "picked": {r["example"]: r["picked"] for r in results},
        "expected": {r["example"]: r["expected"] for r in results},
        "all_ok": all(r["ok"] for r in results),
        "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results],
    }
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2))
    print(json.dumps({"picked": doc["picked"], "expected": doc["expected"], "all_ok": doc["all_ok"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
