"""How long bakeoff takes to stop: seconds from a signal to its exit, cleanup included.

For each backend and each phase of a ``bakeoff run`` on a small Python repository with the
scripted model (planning: the planner's answer is being written; fan-out: candidate c1 is
being edited while c2 waits for the only sandbox slot; timing: a candidate is timed against
the base), SIGINT, SIGTERM and SIGHUP are sent in turn and the time to exit is measured, with
the exit code (130, 143, 129 expected). Everything a run makes lives in a private temporary
directory, removed at the end.

    python3 bench/stop_latency.py [--backends local+bwrap,docker] [--repeat N] [--json PATH]

The JSON has ``rows`` (backend, phase, signal, exit code, seconds per run) and ``worst_s``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CALC = "def total(xs):\n    s = 0\n    for x in xs:\n        s = s + x\n    return s\n"
CHECK = "from calc import total\n\nassert total([1, 2, 3]) == 6\nprint('1 passed')\n"
BENCH = "import time\nfrom calc import total\n\nprint(total(list(range(100000))))\ntime.sleep(0.4)\n"
EDIT = "calc.py\n<<<<<<< SEARCH\n    s = 0\n    for x in xs:\n        s = s + x\n    return s\n=======\n    return sum(xs)\n>>>>>>> REPLACE\n"
PHASES = {
    "planning": lambda e: e["kind"] == "run.start",
    "fan-out": lambda e: e["kind"] == "candidate.state" and e["data"].get("id") == "c1" and e["data"].get("state") == "editing",
    "timing": lambda e: e["kind"] == "candidate.state" and e["data"].get("state") == "profiling",
}
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@bakeoff.invalid"]


def make_place(work: Path) -> tuple[Path, Path]:
    repo = work / "repo"
    repo.mkdir()
    for name, text in {"calc.py": CALC, "check.py": CHECK, "bench.py": BENCH,
                       "bakeoff.toml": 'rounds = 0\ntest = "python3 check.py"\n'}.items():
        (repo / name).write_text(text)
    subprocess.run([*GIT, "init", "-q", str(repo)], check=True)
    subprocess.run([*GIT, "-C", str(repo), "add", "-A"], check=True)
    subprocess.run([*GIT, "-C", str(repo), "commit", "-qm", "base"], check=True)
    plan = '1. fan_out(goal="make total in calc.py faster", files=["calc.py"], n=2, entry="total")\njoin()\n'
    script = work / "answers.json"
    script.write_text(json.dumps({"latency": {"first_token_s": 3.0}, "responses": [
        {"role": "planner", "text": plan, "repeat": True}, {"role": "editor", "text": EDIT, "repeat": True},
        {"role": "joiner", "text": "Finish: done.", "repeat": True},
        {"role": "tester", "text": "```python\nassert total([1, 2, 3]) == 6\n```", "repeat": True}]}))
    return repo, script


def stop_once(backend: str, phase: str, sig: int, repo: Path, script: Path, tmp: Path) -> tuple[int, float]:
    """(exit code, seconds from the signal to the exit) of one run stopped in ``phase``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BAKEOFF_")}
    env.update(TMPDIR=str(tmp), BAKEOFF_SANDBOX_DIR=str(tmp.parent / "sandboxes"), BAKEOFF_STATE_DIR=str(tmp / "state"),
               BAKEOFF_MAX_SANDBOXES="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "bakeoff", "run", "--repo", str(repo), "--model", f"scripted:{script}",
                             "--sandbox", backend, "--jsonl", "make total faster"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    reached = threading.Event()

    def watch() -> None:
        for line in proc.stdout:
            try:
                if PHASES[phase](json.loads(line)):
                    reached.set()
            except (ValueError, KeyError):
                continue

    threading.Thread(target=watch, daemon=True).start()
    if not reached.wait(300):
        proc.kill()
        raise RuntimeError(f"{backend} never reached {phase}")
    started = time.monotonic()
    proc.send_signal(sig)
    code = proc.wait(120)
    return code, time.monotonic() - started


def unmount_below(path: Path) -> None:
    for _ in range(50):
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        below = [m for m in mounts if m.startswith(str(path))]
        if not below:
            return
        subprocess.run(["umount", "-l", below[-1]], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="local+bwrap,docker")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    place = Path(tempfile.mkdtemp(prefix="bakeoff-stop-latency-", dir="/tmp"))
    place.chmod(0o711)  # sandboxed users traverse it to their own directories
    rows = []
    try:
        repo, script = make_place(place)
        for backend in args.backends.split(","):
            for phase in PHASES:
                for sig in SIGNALS:
                    runs = []
                    for i in range(args.repeat):
                        tmp = place / f"{backend}-{phase}-{sig.name}-{i}"
                        tmp.mkdir()
                        tmp.chmod(0o711)
                        runs.append(stop_once(backend, phase, sig, repo, script, tmp))
                    seconds = [round(s, 2) for _, s in runs]
                    rows.append({"backend": backend, "phase": phase, "signal": sig.name,
                                 "exit_codes": [c for c, _ in runs], "seconds": seconds})
                    print(f"{backend:<12} {phase:<8} {sig.name:<8} exit {runs[0][0]}  "
                          f"median {statistics.median(seconds):.2f} s  ({', '.join(map(str, seconds))})", flush=True)
    finally:
        unmount_below(place)
        shutil.rmtree(place, ignore_errors=True)
    worst = max(s for r in rows for s in r["seconds"])
    print(f"worst: {worst:.2f} s")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "worst_s": worst}, indent=2))


if __name__ == "__main__":
    main()
