"""Run untrusted Python candidates on tests, one fresh process per program.

A ``PyJob`` is one program plus a batch of asserts (pass/fail) and calls (the returned
value). The batch runs in one process for speed: the program is loaded once, then each
assert and call runs under its own alarm. The process has a memory cap and a file-size cap
(rlimits set in the child), a scrubbed environment, a throwaway working directory, its own
process group (killed whole at the wall-clock limit), and no access to bakeoff's modules.

Two runners: ``run_jobs`` starts the processes on this machine (rlimits only; what the
benchmarks on public data use), and ``SandboxRunner`` runs each job as one command inside
a ``Sandbox``, under the sandbox's limits (what bakeoff's product path uses: candidates are
hostile).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from bakeoff.agent.seams import Sandbox

CHILD = Path(__file__).with_name("pyexec_child.py")

CellOutcome = Literal["pass", "fail", "error", "timeout"]


class PyJob(BaseModel):
    source: str
    entry: str | None = None
    asserts: list[str] = Field(default_factory=list)
    calls: list[str] = Field(default_factory=list)
    timeout_s: float = 1.0  # per assert and per call
    max_timeouts: int = 3  # abandon the program after this many timeouts
    memory_mb: int = 1024
    hash_seed: int = 0
    call_repeats: int = 1  # times each call runs in the process (for timing)
    cpus: int | None = None  # run on this many of the CPUs the process may use (for timing); None: all


class CallResult(BaseModel):
    outcome: CellOutcome
    value: Any = None  # encoded by pyexec_child.encode; None unless outcome == "pass"
    error: str = ""
    seconds: list[float] = Field(default_factory=list)


class PyResult(BaseModel):
    load_error: str | None = None
    asserts: list[CellOutcome] = Field(default_factory=list)
    calls: list[CallResult] = Field(default_factory=list)
    duration_s: float = 0.0
    killed: bool = False  # the whole process hit the wall-clock limit


def _wall_limit(job: PyJob) -> float:
    # Every item may use its full alarm until the abandon threshold, plus interpreter start.
    return 5.0 + job.timeout_s * (job.max_timeouts + 1) + 0.05 * (len(job.asserts) + len(job.calls) * job.call_repeats)


def run_job(job: PyJob) -> PyResult:
    """Run ``job`` in a fresh interpreter and collect what it reported (blocking).

    The launching itself is the child module's, the same code that runs jobs inside a sandbox.
    """
    from bakeoff.agent.harness import pyexec_child

    text, killed, seconds = pyexec_child._run_one(str(CHILD), job.model_dump(mode="json"), _wall_limit(job))
    result = _collect(job, text, killed=killed)
    result.duration_s = seconds
    return result


def _collect(job: PyJob, text: str, *, killed: bool = False) -> PyResult:
    asserts: list[CellOutcome | None] = [None] * len(job.asserts)
    calls: list[CallResult | None] = [None] * len(job.calls)
    load_error: str | None = "the program died before it loaded"
    abandoned = False
    for line in text.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        kind = msg.get("k")
        if kind == "load":
            load_error = msg.get("error")
        elif kind == "a" and 0 <= msg.get("i", -1) < len(asserts):
            asserts[msg["i"]] = msg["o"]
        elif kind == "c" and 0 <= msg.get("i", -1) < len(calls):
            calls[msg["i"]] = CallResult(
                outcome=msg["o"], value=msg.get("v"), error=msg.get("e", ""), seconds=msg.get("t", [])
            )
        elif kind == "abandon":
            abandoned = True
    # Items with no report: the program was abandoned after timeouts, hung, or killed itself.
    missing: CellOutcome = "timeout" if abandoned or killed else "error"
    if killed and load_error == "the program died before it loaded":
        load_error = "timeout while loading"
    return PyResult(
        load_error=load_error,
        killed=killed,
        asserts=[a or ("error" if load_error else missing) for a in asserts],
        calls=[c or CallResult(outcome="error" if load_error else missing) for c in calls],
    )


def run_jobs(jobs: Sequence[PyJob], *, workers: int | None = None) -> list[PyResult]:
    """Run many jobs, ``workers`` processes at a time (default: one per core)."""
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run_job, jobs))


class SandboxRunner:
    """Runs jobs inside a sandbox, each job as one sandbox command (``pyexec_child.batch`` of
    one job: a fresh interpreter under the job's wall-clock limit), ``workers`` at a time.

    One command per job puts each program under the sandbox's own limits (processes, memory,
    output, wall time), enforced where the program cannot lift them: a program that trips one
    fails alone, reported as ``killed: <the limit>``, and the others go on. Its memory is
    bounded by the sandbox, not by an address-space rlimit. ``sandbox`` is one sandbox for
    every program, or a function giving each program's source a sandbox of its own (so, on
    Docker too, one program's fork bomb cannot take the process slots of another's).
    """

    def __init__(self, sandbox: Sandbox | Callable[[str], Awaitable[Sandbox]], *, workers: int | None = None,
                 root: str = ".bakeoff-py"):
        self._sandbox_for = sandbox if callable(sandbox) and not isinstance(sandbox, Sandbox) else None
        self.sandbox = None if self._sandbox_for is not None else sandbox
        self.workers = workers or os.cpu_count() or 1
        self.root = root
        self._installed: set[int] = set()
        self._serial = 0
        # One batch at a time: the batch already uses every worker.
        self._lock: asyncio.Lock | None = None

    async def __call__(self, jobs: Sequence[PyJob], *, workers: int | None = None) -> list[PyResult]:
        """Results in the order of ``jobs``; ``workers=1`` runs them one after another, in order."""
        if not jobs:
            return []
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            slots = asyncio.Semaphore(min(workers or self.workers, len(jobs)))

            async def one(job: PyJob) -> PyResult:
                async with slots:  # waiters are woken in order: workers=1 keeps the jobs' order
                    return await self._one(job)

            return list(await asyncio.gather(*(one(j) for j in jobs)))

    async def _one(self, job: PyJob) -> PyResult:
        sandbox = await self._sandbox_for(job.source) if self._sandbox_for is not None else self.sandbox
        assert sandbox is not None
        if id(sandbox) not in self._installed:
            await sandbox.write_file(f"{self.root}/child.py", CHILD.read_text())
            self._installed.add(id(sandbox))
        self._serial += 1
        jobs_file, out_file = f"{self.root}/job-{self._serial}.json", f"{self.root}/out-{self._serial}.jsonl"
        wall = _wall_limit(job)
        # The sandbox's memory limit holds, not an address-space rlimit (which sanitizers break on).
        await sandbox.write_file(jobs_file, json.dumps([{"job": job.model_dump() | {"memory_mb": 0}, "wall": wall}]))
        await sandbox.write_file(out_file, "")
        # The job's own wall limit ends it first; the command's is the backstop.
        res = await sandbox.exec(["python3", "-I", f"{self.root}/child.py", "batch", jobs_file, out_file, "1"],
                                 timeout=wall + 10.0)
        try:
            text = (await sandbox.read_file(out_file)).decode("utf-8", "replace")
        except (FileNotFoundError, OSError, ValueError):
            text = ""
        msg = next((m for m in _json_lines(text) if m.get("i") == 0), None)
        if msg is None:
            result = _collect(job, "", killed=res.timed_out)
            result.duration_s = res.duration_s
            if not res.timed_out:
                result.load_error = f"the sandboxed run failed: {res.summary(300)}"
        else:
            result = _collect(job, str(msg.get("out", "")), killed=bool(msg.get("killed")))
            result.duration_s = float(msg.get("d", 0.0))
        if res.limit:  # it ran into a limit of the sandbox: that is its result, whatever it printed
            result = _collect(job, "", killed=True)
            result.load_error, result.duration_s = f"killed: {res.limit}", res.duration_s
        return result


def _json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(msg, dict):
            out.append(msg)
    return out


# --------------------------------------------------------------------------- values


def decode(value: Any) -> Any:
    """Turn pyexec_child.encode's JSON form back into comparable Python values."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict):
        if "t" in value:
            return tuple(decode(v) for v in value["t"])
        if "s" in value:
            return _Unordered(decode(v) for v in value["s"])
        if "d" in value:
            return {_hashable(decode(k)): decode(v) for k, v in value["d"]}
        if "f" in value:
            return float(value["f"])
        if "big" in value:
            return int(value["big"])
        if "c" in value:
            return complex(*value["c"])
        if "y" in value:
            return bytes.fromhex(value["y"])
        return _Opaque(value.get("r", ""))
    return value


class _Unordered(list):
    """A set's items; compared ignoring order."""


class _Opaque(str):
    """The repr of a value with no JSON form; compared as text."""


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((repr(k), _hashable(x)) for k, x in v.items()))
    return v


def values_equal(a: Any, b: Any, *, rel: float = 1e-9, abs_tol: float = 1e-12, unordered: bool = False) -> bool:
    """Exact for ints, strs and structure; floats within ``rel``/``abs_tol``; sets and, when
    ``unordered``, top-level sequences compared as multisets."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if isinstance(a, int) and isinstance(b, int):
            return a == b
        fa, fb = float(a), float(b)
        if math.isnan(fa) or math.isnan(fb):
            return math.isnan(fa) and math.isnan(fb)
        return math.isclose(fa, fb, rel_tol=rel, abs_tol=abs_tol)
    if isinstance(a, _Unordered) or isinstance(b, _Unordered) or (unordered and isinstance(a, (list, tuple))):
        if not isinstance(b, (list, tuple)) or not isinstance(a, (list, tuple)) or len(a) != len(b):
            return False
        rest = list(b)
        for x in a:
            for j, y in enumerate(rest):
                if values_equal(x, y, rel=rel, abs_tol=abs_tol):
                    del rest[j]
                    break
            else:
                return False
        return True
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            return False
        return all(values_equal(x, y, rel=rel, abs_tol=abs_tol) for x, y in zip(a, b))
    if isinstance(a, dict) or isinstance(b, dict):
        if not (isinstance(a, dict) and isinstance(b, dict)) or a.keys() != b.keys():
            return False
        return all(values_equal(a[k], b[k], rel=rel, abs_tol=abs_tol) for k in a)
    return type(a) is type(b) and a == b


def signature(value: Any, digits: int = 9) -> str:
    """A canonical text of an encoded value with floats rounded, for grouping equal outputs."""

    def canon(v: Any) -> Any:
        if isinstance(v, float):
            return {"f": format(v, f".{digits}g")} if math.isfinite(v) else {"f": str(v)}
        if isinstance(v, int) and not isinstance(v, bool):
            # 2 and 2.0 compare equal in Python, so they group together.
            return {"f": format(float(v), f".{digits}g")} if abs(v) < 2**53 else v
        if isinstance(v, list):
            return [canon(x) for x in v]
        if isinstance(v, dict):
            return {k: canon(x) for k, x in v.items()}
        return v

    return json.dumps(canon(value), sort_keys=True, separators=(",", ":"))
