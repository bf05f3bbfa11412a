"""Every way of being told to stop cleans up, through the real CLI.

SIGINT (Ctrl-C), SIGTERM (``kill``, CI timeouts, systemd, Kubernetes) and SIGHUP (a closed
terminal) are sent to ``bakeoff run`` in each phase of a run (planning, the fan-out with a
candidate waiting for a sandbox slot, the timing of candidates), on bubblewrap and on Docker,
and to ``bakeoff select`` while it builds the C++ driver runtime for the first time. Each
must exit 128 + the signal's number with no traceback and no "Event loop is closed", and
leave nothing behind: the containers, tmpfs mounts, sandboxed processes, sandbox directories
and temporary directories it made are counted before and after.

Every run here keeps what it makes in a private temporary directory (``TMPDIR`` and
``BAKEOFF_SANDBOX_DIR``), so the counts see only its own leftovers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bakeoff.sandboxes.workspace import processes_with_marker
from tests.test_session import GOOD_EDIT, cli_env, make_repo

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
BACKENDS = [pytest.param("local+bwrap", id="bwrap"), pytest.param("docker", id="docker", marks=pytest.mark.docker)]

BENCH = """\
import time
from calc import total

print(total(list(range(100000))))
time.sleep(0.4)
"""


# --------------------------------------------------------------------------- the place and its counts


@pytest.fixture(scope="module")
def place():
    """A private temporary directory that sandboxed users may traverse (they run under uids of
    their own), holding the sandbox root; unmounted and removed at the end."""
    root = Path(tempfile.mkdtemp(prefix="bakeoff-stopping-", dir="/tmp"))
    root.chmod(0o711)
    yield root
    for _ in range(50):  # the interpreter's read-only view is mounted once per sandbox root
        mounted = [p for p in _mounts() if p.startswith(str(root))]
        if not mounted:
            break
        subprocess.run(["umount", "-l", mounted[-1]], check=False)
    shutil.rmtree(root, ignore_errors=True)


def _mounts() -> list[str]:
    return [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]


def docker_up() -> bool:
    from bakeoff.sandboxes.docker import engine_available

    return engine_available()[0]


def containers_of(pids: list[int]) -> list[str]:
    if not docker_up():
        return []
    import docker

    client = docker.from_env()
    found = []
    for pid in pids:
        found += [c.name for c in client.containers.list(all=True, filters={"label": f"bakeoff.owner-pid={pid}"})]
    return found


def leftovers(place: Path, tmp: Path, pids: list[int]) -> dict[str, list[str]]:
    """What runs of ``pids`` left: containers, mounts, processes, sandbox and temporary directories."""
    owners = {str(p) for p in pids}
    sandbox_root = place / "sandboxes"
    marked = processes_with_marker(lambda value: value.split(":")[0] in owners)
    mentioning = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(tmp) in cmdline or (str(place) in cmdline and "pytest" not in cmdline):
                mentioning.append(f"{entry.name}: {cmdline[:120]}")
    view_mounts = [m for m in _mounts() if "/.python-" in m and m.startswith(str(sandbox_root))]
    return {
        "containers": containers_of(pids),
        "mounts": [m for m in _mounts() if m.startswith(str(place)) and "/bakeoff-sb-" in m],
        "stacked view mounts": view_mounts[1:],
        "processes": [str(p) for p in marked] + mentioning,
        "sandbox dirs": sorted(p.name for p in sandbox_root.glob("bakeoff-sb-*")) if sandbox_root.exists() else [],
        # Whatever is in the run's temporary directory, but for the C++ runtime cache (kept on
        # purpose, for the next run) whose half-built entries count.
        "temp dirs": sorted([p.name for p in tmp.iterdir() if not p.name.startswith("bakeoff-cxx-runtime-")]
                            + [str(p.relative_to(tmp)) for p in tmp.glob("bakeoff-cxx-runtime-*/*.tmp*")]),
    }


def nothing_left(before: dict[str, list[str]], count: Callable[[], dict[str, list[str]]]) -> None:
    """``count()`` comes back to ``before``. A process killed with SIGKILL just as bakeoff exited
    may still be on its way out for some milliseconds: a few seconds are allowed for that."""
    deadline = time.monotonic() + 5
    after = count()
    while after != before and time.monotonic() < deadline:
        time.sleep(0.1)
        after = count()
    assert after == before, json.dumps({k: v for k, v in after.items() if v != before[k]}, indent=1)


# --------------------------------------------------------------------------- a run to stop


class Running:
    """A bakeoff command in the background; its JSON-line events (``run --jsonl``) as they come."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, typed: str | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bakeoff", *args], env=env, cwd=cwd,
                                     stdin=subprocess.PIPE if typed is not None else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if typed is not None:  # typed at a prompt; stdin stays open, as a terminal's does
            self.proc.stdin.write(typed)
            self.proc.stdin.flush()
        self.events: list[dict] = []
        self.stderr: list[str] = []
        self._readers = [threading.Thread(target=self._read_events, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_events(self) -> None:
        for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                continue

    def _read_stderr(self) -> None:
        self.stderr.extend(self.proc.stderr)

    def wait_for(self, seen: Callable[[dict], bool], what: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(seen(e) for e in list(self.events)):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"never reached {what} (exit {self.proc.poll()}):\n{''.join(self.stderr)[-3000:]}")

    def stop(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 120) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(10)
        return code, "".join(self.stderr)


def working_sandboxes(place: Path, pid: int) -> int:
    """How many sandboxes of ``pid`` hold a copy of the repository: a fan-out's base and its
    candidates' (the directory the bubblewrap probe makes at start holds none)."""
    sandboxes = place / "sandboxes"
    return sum(1 for d in sandboxes.glob("bakeoff-sb-*")
               if (d / ".bakeoff-owner").is_file() and (d / ".bakeoff-owner").read_text().strip() == str(pid)
               and (d / "fs" / "work").is_dir())


def kind(name: str, **data) -> Callable[[dict], bool]:
    return lambda e: e.get("kind") == name and all(e.get("data", {}).get(k) == v for k, v in data.items())


PHASES = {
    # The planner's answer takes seconds: the signal comes while it is written.
    "planning": kind("run.start"),
    # One sandbox for two candidates: c1 is being edited while c2 waits for the slot.
    "fan-out": kind("candidate.state", id="c1", state="editing"),
    # A candidate is timed against the base, interleaved.
    "timing": kind("candidate.state", state="profiling"),
}


def script(path: Path) -> Path:
    plan = ('1. fan_out(goal="make total in calc.py faster", files=["calc.py"], n=2, entry="total")\n'
            "join()\n")
    doc = {"latency": {"first_token_s": 3.0}, "responses": [
        {"role": "planner", "text": plan, "repeat": True},
        {"role": "editor", "text": GOOD_EDIT, "repeat": True},
        {"role": "joiner", "text": "Finish: done.", "repeat": True},
        {"role": "tester", "text": "```python\nassert total([1, 2, 3]) == 6\n```", "repeat": True},
    ]}
    path.write_text(json.dumps(doc))
    return path


def stop_env(place: Path, tmp: Path, **extra: str) -> dict[str, str]:
    return cli_env(tmp, TMPDIR=str(tmp), BAKEOFF_SANDBOX_DIR=str(place / "sandboxes"), **extra)


def private_tmp(place: Path, name: str) -> Path:
    tmp = place / name
    tmp.mkdir()
    tmp.chmod(0o711)
    return tmp


# --------------------------------------------------------------------------- the tests


# Every phase on bubblewrap; on Docker the phase with the most alive at once (the base and a
# candidate's container, a timing run in each): planning and fan-out differ there only in
# which of those containers exist yet (the Ray batch's Ctrl-C test also stops Docker runs mid-task).
PHASE_RUNS = [pytest.param("local+bwrap", phase, id=f"bwrap-{phase}") for phase in PHASES] + [
    pytest.param("docker", "timing", id="docker-timing", marks=pytest.mark.docker)]


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "phase"), PHASE_RUNS)
def test_each_signal_in_each_phase_leaves_nothing_behind(place, tmp_path, backend, phase):
    if backend == "docker" and not docker_up():
        pytest.skip("no Docker engine answers")
    repo = make_repo(tmp_path / "repo")
    (repo / "bench.py").write_text(BENCH)
    subprocess.run(["git", "-C", str(repo), "add", "bench.py"], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "bench"],
                   check=True)
    answers = script(tmp_path / "s.json")
    tmp = private_tmp(place, f"{backend}-{phase}")
    before = leftovers(place, tmp, [])
    runs = {}
    for sig in SIGNALS:
        env = stop_env(place, tmp, BAKEOFF_STATE_DIR=str(tmp_path / f"state-{sig.name}"), BAKEOFF_MAX_SANDBOXES="1")
        runs[sig] = Running(["run", "--repo", str(repo), "--model", f"scripted:{answers}", "--sandbox", backend,
                             "--jsonl", "make total faster"], env, tmp_path)
    for sig, run in runs.items():
        run.wait_for(PHASES[phase], phase)
        run.stop(sig)
    for sig, run in runs.items():
        code, err = run.finish()
        assert code == 128 + sig, f"{sig.name}: exit {code}\n{err[-3000:]}"
        assert "Traceback" not in err and "Event loop is closed" not in err, err[-3000:]
        assert f"stopped by {sig.name}" in err
    nothing_left(before, lambda: leftovers(place, tmp, [r.proc.pid for r in runs.values()]))


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_first_time_runtime_build_stopped_leaves_no_half_built_files(place, tmp_path, backend):
    if backend == "docker" and not docker_up():
        pytest.skip("no Docker engine answers")
    select = EXAMPLES / "select"
    runs, tmps, before = {}, {}, {}
    for sig in SIGNALS:
        # A temporary directory of its own: its C++ runtime cache is empty, so the build is a first one.
        tmps[sig] = private_tmp(place, f"select-{backend}-{sig.name}")
        before[sig] = leftovers(place, tmps[sig], [])
        runs[sig] = Running(["select", "--sandbox", backend, "--entry", "collatz_total",
                             "--reference", str(select / "serial.c"), "--candidate", str(select / "reduction.c"),
                             "--candidate", str(select / "race.c")], stop_env(place, tmps[sig]), tmp_path)
    for sig, run in runs.items():
        cache = tmps[sig] / f"bakeoff-cxx-runtime-{os.getuid()}"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not list(cache.glob("*.tmp*")) and run.proc.poll() is None:
            time.sleep(0.05)
        assert list(cache.glob("*.tmp*")), f"the runtime build never started:\n{''.join(run.stderr)[-2000:]}"
        run.stop(sig)
    for sig, run in runs.items():
        code, err = run.finish()
        assert code == 128 + sig, f"{sig.name}: exit {code}\n{err[-3000:]}"
        assert "Traceback" not in err and "Event loop is closed" not in err, err[-3000:]
        cache = tmps[sig] / f"bakeoff-cxx-runtime-{os.getuid()}"
        assert not list(cache.glob("*.tmp*")), "a half-built runtime was left behind"
        assert all((d / "bk_main.o").exists() for d in cache.iterdir()), "a runtime without its object"
        nothing_left(before[sig], lambda: leftovers(place, tmps[sig], [run.proc.pid]))


@pytest.mark.slow
@pytest.mark.parametrize("door", ["batch", "chat"])
def test_the_other_doors_stop_alike(place, tmp_path, door):
    """``batch`` and ``chat`` stopped while candidates work: the same exit codes, nothing left
    (a chat step stopped by Ctrl-C only cancels that step: see test_cli_chat)."""
    repo = make_repo(tmp_path / "repo")
    answers = script(tmp_path / "s.json")
    tmp = private_tmp(place, f"door-{door}")
    before = leftovers(place, tmp, [])
    runs = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        env = stop_env(place, tmp, BAKEOFF_STATE_DIR=str(tmp_path / f"state-{sig.name}"))
        if door == "batch":
            tasks = tmp_path / f"tasks-{sig.name}.jsonl"
            tasks.write_text(json.dumps({"id": "t", "repo": str(repo), "instruction": "make total faster"}) + "\n")
            args = ["batch", str(tasks), "--out", str(tmp_path / f"out-{sig.name}"), "--model", f"scripted:{answers}"]
        else:
            args = ["chat", "--repo", str(repo), "--model", f"scripted:{answers}"]
        runs[sig] = Running(args, env, tmp_path, typed="make total faster\n" if door == "chat" else None)
    for sig, run in runs.items():
        # Stopped while candidates work: the fan-out's base and a candidate's sandbox exist.
        deadline = time.monotonic() + 240
        while (working := working_sandboxes(place, run.proc.pid)) < 2 and run.proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert working >= 2, f"{sig.name}: no candidate's sandbox (exit {run.proc.poll()}):\n{''.join(run.stderr)[-3000:]}"
        run.stop(sig)
    for sig, run in runs.items():
        code, err = run.finish()
        assert code == 128 + sig, f"{sig.name}: exit {code}\n{err[-3000:]}"
        assert "Traceback" not in err and "Event loop is closed" not in err, err[-3000:]
        assert f"{sig.name}: stopping: candidates are stopped" in err, err[-3000:]  # the running step was cancelled
    nothing_left(before, lambda: leftovers(place, tmp, [r.proc.pid for r in runs.values()]))


LOST_IN_A_FINALIZER = """
import os, signal
from bakeoff.agent.cli.stopping import Stopped, StoppableLoop, install

class SignalledInAFinalizer:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # Python runs the signal's handler here, inside the finalizer
            pass

install()
SignalledInAFinalizer()
started = []

async def step():
    started.append(True)

with StoppableLoop() as loop:
    try:
        loop.run(step())
        print("not stopped")
    except Stopped as stop:
        print("stopped by", stop.name, "before the step started" if not started else "after it started")
"""


def test_a_signal_between_steps_is_kept_for_the_next_one(tmp_path):
    """A signal that comes while no step runs (starting up, between a chat's steps) stops the
    next one before it starts. It is never raised in the middle of the main thread's work: an
    exception raised in a finalizer, or in the hook Python runs after each fork, is only printed,
    and the stop would be lost (a chat then ran its task and waited at its prompt for ever)."""
    proc = subprocess.run([sys.executable, "-c", LOST_IN_A_FINALIZER], env=cli_env(tmp_path), capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout.strip() == "stopped by SIGTERM before the step started", proc.stdout + proc.stderr
    assert "Exception ignored" not in proc.stderr, proc.stderr
