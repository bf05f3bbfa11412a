"""Runs one untrusted Python program on a batch of asserts and calls; started by pyexec.

This file is executed by path with ``python -I`` (never imported by bakeoff), so the
candidate cannot shadow stdlib modules with files next to it. It reads one JSON job on
stdin and writes one JSON line per result on a private copy of stdout, flushing each, so a
candidate that kills its own process still leaves the results it produced before dying.
Only the standard library is used.

``python3 -I child.py batch JOBS OUT WORKERS`` runs every job in JOBS (a JSON list of
``{"job": ..., "wall": seconds}``), ``WORKERS`` at a time, each in a fresh interpreter of
this same file, and appends one JSON line per job to OUT. bakeoff uses this inside a
sandbox, so that a whole batch of programs costs one sandbox command.
"""

import hashlib
import json
import math
import os
import re
import resource
import signal
import sys
import time

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_MAX_ITEMS = 10000
_MAX_LINE = 1 << 20


class _Deadline(BaseException):
    """Raised by the alarm; a BaseException so that ``except Exception`` in a candidate does not swallow it."""


def _alarm(signum, frame):
    raise _Deadline()


def encode(value, depth=0):
    """A JSON form of a result that keeps the distinctions equality makes (tuple vs list, sets)."""
    if depth > 50:
        return {"r": "<too deep>"}
    if value is None or isinstance(value, (bool, int, str)):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**63:
            return {"big": str(value)}
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return {"f": "nan"}
        if math.isinf(value):
            return {"f": "inf" if value > 0 else "-inf"}
        return value
    if isinstance(value, list):
        return [encode(v, depth + 1) for v in value[:_MAX_ITEMS]]
    if isinstance(value, tuple):
        return {"t": [encode(v, depth + 1) for v in value[:_MAX_ITEMS]]}
    if isinstance(value, (set, frozenset)):
        items = [encode(v, depth + 1) for v in list(value)[:_MAX_ITEMS]]
        return {"s": sorted(items, key=lambda x: json.dumps(x, sort_keys=True))}
    if isinstance(value, dict):
        pairs = [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in list(value.items())[:_MAX_ITEMS]]
        return {"d": pairs}
    if isinstance(value, complex):
        return {"c": [value.real, value.imag]}
    if isinstance(value, bytes):
        return {"y": value.hex()}
    try:
        text = repr(value)
    except BaseException:
        text = "<unrepresentable>"
    return {"r": type(value).__name__ + ":" + _ADDRESS.sub("", text)[:2000]}


def _limits(job):
    cpus = job.get("cpus")
    if cpus and hasattr(os, "sched_setaffinity"):
        # Timing at n CPUs: the first n of those allowed, and libraries told so.
        try:
            os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: int(cpus)])
        except OSError:
            pass
        os.environ["OMP_NUM_THREADS"] = str(int(cpus))
    mem = int(job.get("memory_mb", 1024)) * 1024 * 1024  # 0: the sandbox's own limit holds
    for limit, value in (
        (resource.RLIMIT_AS, mem or resource.RLIM_INFINITY),
        (resource.RLIMIT_FSIZE, 16 * 1024 * 1024),
        (resource.RLIMIT_CORE, 0),
    ):
        try:
            resource.setrlimit(limit, (value, value))
        except (ValueError, OSError):
            pass


def _emitter(out):
    """A function that writes one result as a JSON line on ``out`` and flushes it."""
    def emit(obj):
        try:
            line = json.dumps(obj)
        except (TypeError, ValueError):
            obj = {k: v for k, v in obj.items() if k != "v"}
            obj["v"] = {"r": "<unencodable>"}
            line = json.dumps(obj)
        if len(line) > _MAX_LINE:
            # Keep the parent's memory bounded; equal large values still hash alike.
            digest = hashlib.sha256(json.dumps(obj.get("v")).encode()).hexdigest()
            obj = {k: v for k, v in obj.items() if k != "v"}
            obj["v"] = {"r": "sha256:" + digest}
            line = json.dumps(obj)
        out.write(line + "\n")
        out.flush()

    return emit


class _Checks:
    """The asserts and calls of one job on the loaded candidate, each under its own alarm;
    after ``max_timeouts`` timeouts the rest are abandoned."""

    def __init__(self, job, emit):
        self.emit = emit
        self.timeout = float(job.get("timeout_s", 1.0))
        self.max_timeouts = int(job.get("max_timeouts", 3))
        self.repeat_calls = int(job.get("call_repeats", 1))
        self.timeouts = 0
        self.namespace = {"__name__": "__candidate__"}

    def guarded(self, fn):
        signal.setitimer(signal.ITIMER_REAL, self.timeout)
        try:
            return fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def load(self, job):
        """Run the candidate's module code; False (and the reason emitted) when it did not load."""
        try:
            code = compile(job["source"], "<candidate>", "exec")
            self.guarded(lambda: exec(code, self.namespace))
        except _Deadline:
            self.emit({"k": "load", "error": "timeout"})
            return False
        except BaseException as exc:
            self.emit({"k": "load", "error": type(exc).__name__ + ": " + str(exc)[:300]})
            return False
        entry = job.get("entry")
        if entry and not callable(self.namespace.get(entry)):
            self.emit({"k": "load", "error": "entry function %r not defined" % entry})
            return False
        self.emit({"k": "load", "error": None})
        return True

    def abandoned(self):
        if self.timeouts >= self.max_timeouts:
            self.emit({"k": "abandon"})
            return True
        return False

    def check_assert(self, i, text):
        try:
            test_code = compile(text, "<test>", "exec")
        except SyntaxError:
            self.emit({"k": "a", "i": i, "o": "error", "e": "SyntaxError"})
            return
        try:
            self.guarded(lambda: exec(test_code, dict(self.namespace)))
            self.emit({"k": "a", "i": i, "o": "pass"})
        except _Deadline:
            self.timeouts += 1
            self.emit({"k": "a", "i": i, "o": "timeout"})
        except AssertionError:
            self.emit({"k": "a", "i": i, "o": "fail"})
        except BaseException as exc:
            self.emit({"k": "a", "i": i, "o": "error", "e": type(exc).__name__})

    def check_call(self, i, text):
        import ast

        try:
            tree = ast.parse(text, mode="eval")
            call_code = compile(tree, "<call>", "eval")
        except (SyntaxError, ValueError):
            self.emit({"k": "c", "i": i, "o": "error", "e": "SyntaxError"})
            return
        split = _split_call(tree.body)
        try:
            elapsed = []
            value = None
            for _ in range(self.repeat_calls):
                scope = dict(self.namespace)
                fn = scope.get(split[0]) if split is not None else None
                if fn is None:
                    start = time.perf_counter()
                    value = self.guarded(lambda: eval(call_code, scope))
                else:
                    # The arguments are built before the clock starts: only the call is timed.
                    args, kwargs = self.guarded(lambda: eval(split[1], scope))
                    start = time.perf_counter()
                    value = self.guarded(lambda: fn(*args, **kwargs))
                elapsed.append(time.perf_counter() - start)
            self.emit({"k": "c", "i": i, "o": "pass", "v": encode(value), "t": elapsed})
        except _Deadline:
            self.timeouts += 1
            self.emit({"k": "c", "i": i, "o": "timeout"})
        except BaseException as exc:
            self.emit({"k": "c", "i": i, "o": "error", "e": type(exc).__name__})


def _split_call(node):
    """A call ``f(a, b, k=c)`` as ("f", code of ``((a, b), {"k": c})``), or None for any other shape."""
    import ast

    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        return None
    if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
        return None
    pair = ast.Tuple(elts=[ast.Tuple(elts=list(node.args), ctx=ast.Load()),
                           ast.Dict(keys=[ast.Constant(k.arg) for k in node.keywords],
                                    values=[k.value for k in node.keywords])], ctx=ast.Load())
    return node.func.id, compile(ast.fix_missing_locations(ast.Expression(pair)), "<call>", "eval")


def main():
    job = json.loads(sys.stdin.read())
    out = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    _limits(job)
    signal.signal(signal.SIGALRM, _alarm)
    checks = _Checks(job, _emitter(out))
    if not checks.load(job):
        return
    for i, text in enumerate(job.get("asserts", [])):
        if checks.abandoned():
            return
        checks.check_assert(i, text)
    for i, text in enumerate(job.get("calls", [])):
        if checks.abandoned():
            return
        checks.check_call(i, text)
    checks.emit({"k": "done"})


def _run_one(path, job, wall):
    """One job in a fresh interpreter with a scrubbed environment, its own process group and
    working directory, killed whole at ``wall`` seconds: (its output, killed, seconds)."""
    import shutil
    import subprocess
    import tempfile

    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONHASHSEED": str(job.get("hash_seed", 0)),
        "OMP_NUM_THREADS": "1",
        "LANG": "C.UTF-8",
    }
    start = time.perf_counter()
    cwd = tempfile.mkdtemp(prefix="bakeoff-py-")
    killed = False
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, cwd=cwd, env=env, start_new_session=True,
        )
        try:
            raw, _ = proc.communicate(json.dumps(job).encode(), timeout=wall)
        except subprocess.TimeoutExpired:
            killed = True
            raw = b""
        finally:
            if proc.poll() is None or killed:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    out, _ = proc.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    out = b""
                raw = raw or out or b""
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    return raw.decode("utf-8", "replace"), killed, time.perf_counter() - start


def batch(jobs_path, out_path, workers):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    with open(jobs_path) as f:
        entries = json.load(f)
    os.unlink(jobs_path)
    path = os.path.abspath(__file__)
    lock = threading.Lock()
    with open(out_path, "w") as out:

        def one(i):
            text, killed, seconds = _run_one(path, entries[i]["job"], float(entries[i]["wall"]))
            line = json.dumps({"i": i, "out": text, "killed": killed, "d": seconds})
            with lock:
                out.write(line + "\n")
                out.flush()

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(one, range(len(entries))))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "batch":
        batch(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
