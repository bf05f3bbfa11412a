"""The C/C++ differential harness: the original function is the reference for every candidate.

``CHarness`` reads the function's signature (``agent.c_signature``), generates a driver that
builds random inputs from the types and the constraints (``agent.c_driver``), and compiles
the reference and each candidate into one program per candidate, each in its own namespace
(C++) or with its global symbols renamed (C). The driver runs the reference once per test,
then the candidate at every thread count several times, and compares inside the process:
exact for integers, relative/absolute tolerance for floats, order-insensitive when asked.
A result that changes between runs or thread counts is ``flaky`` (a race).

Processes run through a ``Sandbox`` when one is given; otherwise as plain subprocesses in a
temporary directory, with the same timeouts (faster, and what the benchmarks use).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import random
import re
import shlex
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from bakeoff.agent.harness import c_driver, c_runtime, race_check
from bakeoff.agent.harness.c_signature import Signature, defined_functions, guess_language, parse_signature
from bakeoff.agent.events import EventBus
from bakeoff.agent.seams import ExecResult, Sandbox
from bakeoff.agent.stats import timing_from_samples
from bakeoff.agent.types import ExecutionMatrix, Outcome, TestCase, Timing

_LOG_LIMIT = 4000
_SIGALRM_CODES = (128 + signal.SIGALRM, -signal.SIGALRM)


def _h(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def _cap(text: str, limit: int = 65536) -> str:
    return text if len(text) <= limit else text[: limit // 2] + "\n[... cut ...]\n" + text[-limit // 2 :]


# --------------------------------------------------------------------------- where commands run


class _LocalRunner:
    """Plain subprocesses in a directory of our own; each in its own process group."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, name: str) -> str:
        return str(self.root / name)

    async def write(self, name: str, text: str) -> None:
        (self.root / name).write_text(text)

    async def exists(self, name: str) -> bool:
        return (self.root / name).exists()

    async def run(self, cmd: str, timeout: float) -> ExecResult:
        start = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", cmd, cwd=self.root, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )
        timed_out = False
        out, err = b"", b""
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            # Bounded too: a lost exit notification must not hang the whole run.
            with contextlib.suppress(TimeoutError):
                out, err = await asyncio.wait_for(proc.communicate(), 10)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        return ExecResult(
            exit_code=proc.returncode, stdout=_cap(out.decode(errors="replace")),
            stderr=_cap(err.decode(errors="replace")), duration_s=time.monotonic() - start, timed_out=timed_out,
        )


class _SandboxRunner:
    """The same through the Sandbox seam, in a subdirectory of the sandbox's workspace."""

    def __init__(self, sandbox: Sandbox, subdir: str = ".bakeoff-diff"):
        self.sandbox = sandbox
        self.subdir = subdir

    def path(self, name: str) -> str:
        return name

    async def write(self, name: str, text: str | bytes) -> None:
        await self.sandbox.write_file(f"{self.subdir}/{name}", text)

    async def exists(self, name: str) -> bool:
        res = await self.sandbox.exec(f"test -e {shlex.quote(self.subdir + '/' + name)}", timeout=30)
        return res.exit_code == 0

    async def run(self, cmd: str, timeout: float) -> ExecResult:
        return await self.sandbox.exec(["bash", "-c", f"mkdir -p {self.subdir} && cd {self.subdir} && {cmd}"], timeout=timeout)


def _cc1plus_digest() -> str | None:
    """sha256 of this machine's C++ compiler proper (what a precompiled header is bound to)."""
    import subprocess

    try:
        path = subprocess.run(["g++", "-print-prog-name=cc1plus"], capture_output=True, text=True, timeout=30).stdout.strip()
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
    except (OSError, subprocess.SubprocessError):
        return None


def censored_timing(reference_s: Sequence[float], limit_s: float, threads: int) -> Timing:
    """A candidate stopped at its limit on the timing input: its speedup is at most the
    reference's median time over the limit (the interval runs from 0 to that bound)."""
    ref = sorted(reference_s)[len(reference_s) // 2]
    bound = ref / limit_s if limit_s > 0 else 0.0
    return Timing(baseline_s=list(reference_s), candidate_s=[limit_s], speedup=bound, low=0.0, high=bound, threads=threads)


# --------------------------------------------------------------------------- the harness


def _no_smaller(tests: Sequence[TestCase], at: int, among: Sequence[int]) -> list[int]:
    """The tests in ``among`` whose size variables are each at least test ``at``'s (inputs with
    literal values are sized by what they hold, so they never count)."""
    def sizes(t: TestCase) -> dict[str, float] | None:
        inp = t.input if isinstance(t.input, dict) else {}
        return None if inp.get("values") else dict(inp.get("vars") or {})

    base = sizes(tests[at])
    if not base:
        return []
    out = []
    for i in among:
        mine = sizes(tests[i])
        if i != at and mine is not None and all(mine.get(k, -math.inf) >= v for k, v in base.items()):
            out.append(i)
    return out


def _default_threads() -> list[int]:
    cores = os.cpu_count() or 2
    # Oversubscription (4x the cores) exposes races that two threads on two cores hide.
    return sorted({1, 2, cores, 2 * cores, 4 * cores})


class CHarness:
    """Differential harness for one C or C++ function (see ``agent.harness``)."""

    def __init__(
        self,
        reference_source: str,
        function: str,
        *,
        language: Literal["c", "c++"] | None = None,
        sandbox: Sandbox | None = None,
        constraints: Mapping[str, Any] | None = None,
        threads: Sequence[int] | None = None,
        repeats: int = 3,
        float_rel: float = 1e-6,
        float_abs: float = 1e-9,
        unordered: bool = False,
        compile_flags: Sequence[str] = ("-O2", "-fopenmp"),
        small_tests: int = 4,
        medium_tests: int = 1,
        seed: int = 0,
        call_timeout: float = 10.0,
        build_timeout: float = 120.0,
        timing_threads: int = 2,
        jobs: int | None = None,
        limiter: asyncio.Semaphore | None = None,
        events: EventBus | None = None,
        cache_dir: Path | None = None,
        cpus: str | None = None,
        race_check: bool = True,
    ):
        self.reference_source = reference_source
        self.function = function
        self.language: str = language or guess_language(reference_source)
        self.constraints: Mapping[str, Any] = dict(constraints or {})
        self.signature: Signature = parse_signature(reference_source, function)
        self.plan = c_driver.build_plan(self.signature, self.constraints)
        self.threads = list(threads or _default_threads())
        self.repeats = repeats
        self.float_rel = float(self.constraints.get("float_rel", float_rel))
        self.float_abs = float(self.constraints.get("float_abs", float_abs))
        self.unordered = bool(self.constraints.get("unordered", unordered))
        self.flags = list(compile_flags)
        self.small_tests, self.medium_tests, self.seed = small_tests, medium_tests, seed
        self.call_timeout, self.build_timeout = call_timeout, build_timeout
        self.timing_threads = timing_threads
        # Driver runs (not compiles) pinned to these CPUs, e.g. "0,1" to measure on two cores.
        self._pin = f"taskset -c {shlex.quote(cpus)} " if cpus else ""
        self.events = events
        # One command at a time in a sandbox: its limits (memory, processes) are for the whole
        # sandbox, and two compilers at once can exceed them.
        self.limiter = limiter or asyncio.Semaphore(jobs or (1 if sandbox is not None else os.cpu_count() or 2))
        self.build_logs: dict[str, str] = {}  # candidate id -> why it did not build
        self.details: dict[str, dict[str, str]] = {}  # candidate id -> test id -> what happened
        self.notes: list[str] = []
        self.timing_errors: dict[str, str] = {}
        # Candidates that passed every test are run once more under ThreadSanitizer (+ Archer).
        self.race_check = race_check
        self.races: dict[str, str] = {}  # candidate id -> the TSan report that made it flaky
        self.race_counts: dict[str, int] = {}  # candidate id -> how many TSan reports it had
        self.matched: dict[str, dict[str, tuple[int, int]]] = {}  # candidate id -> test id -> (runs matching the reference, runs)
        self._tsan_common: dict[str, list[str]] = {}
        self._tsan_pch = ""  # the flag that uses clang's precompiled runtime header, once built
        self._sandbox = sandbox
        self._tmp: Path | None = None
        if sandbox is not None:
            self._runner: _LocalRunner | _SandboxRunner = _SandboxRunner(sandbox)
            self._rt_dir = "rt"
        else:
            self._tmp = Path(tempfile.mkdtemp(prefix="bakeoff-diff-"))
            self._runner = _LocalRunner(self._tmp)
            self._rt_dir = str(cache_dir or Path(tempfile.gettempdir()) / f"bakeoff-cxx-runtime-{os.getuid()}")
        self._rt_lock = asyncio.Lock()
        self._rt_ready = False
        self._builds: dict[str, asyncio.Task[tuple[str | None, str]]] = {}
        self._support = str(self.constraints.get("support", ""))
        self._support_names = defined_functions(self._support) if self._support else set()

    # ------------------------------------------------------------------ building

    def _emit(self, kind: str, **data: Any) -> None:
        if self.events is not None:
            self.events.emit(kind, **data)

    def _cxx(self) -> str:
        std = [] if any(f.startswith("-std=") for f in self.flags) else ["-std=c++17"]
        return shlex.join(["g++", *std, *self.flags])

    async def _ensure_runtime(self) -> str:
        """The precompiled header and the main object, built once per flag set and machine."""
        async with self._rt_lock:
            key = _h(self._cxx(), c_runtime.RUNTIME_HEADER, c_runtime.RUNTIME_MAIN)
            rt = f"{self._rt_dir}/{key}"
            if self._rt_ready:
                return rt
            if isinstance(self._runner, _LocalRunner):
                Path(self._rt_dir).mkdir(parents=True, exist_ok=True)
                ready = (Path(rt) / "bk_main.o").exists() and (Path(rt) / "bk_rt.h.gch").exists()
            else:
                ready = await self._runner.exists(f"{rt}/bk_main.o") or await self._seed_runtime(rt)
            if not ready:
                # Build in a private directory, then rename: other processes may share the cache.
                tmp = f"{rt}.tmp{os.getpid()}.{random.randrange(1 << 30)}"
                await self._runner.run(f"mkdir -p {shlex.quote(tmp)}", 30)
                await self._runner.write(f"{tmp}/bk_rt.h", c_runtime.RUNTIME_HEADER)
                await self._runner.write(f"{tmp}/bk_main.cpp", c_runtime.RUNTIME_MAIN)
                cmd = (
                    f"cd {shlex.quote(tmp)} && {self._cxx()} -x c++-header bk_rt.h -o bk_rt.h.gch && "
                    f"{self._cxx()} -c bk_main.cpp -o bk_main.o && cd .. && "
                    f"(mv -T {shlex.quote(Path(tmp).name)} {shlex.quote(Path(rt).name)} 2>/dev/null || rm -rf {shlex.quote(Path(tmp).name)})"
                )
                async with self.limiter:
                    res = await self._runner.run(cmd, self.build_timeout)
                if not res.ok:
                    raise RuntimeError(f"the driver runtime does not build with {self._cxx()}: {res.summary()}")
            self._rt_ready = True
            return rt

    async def _seed_runtime(self, rt: str) -> bool:
        """Copy the runtime built on this machine into the sandbox, when the sandbox's compiler
        is this machine's (same cc1plus): it is bakeoff's own code, not a candidate's, and its
        precompiled header takes seconds to build in every new sandbox."""
        assert isinstance(self._runner, _SandboxRunner)
        mine = await asyncio.to_thread(_cc1plus_digest)
        if mine is None:
            return False
        res = await self._runner.run('sha256sum "$(g++ -print-prog-name=cc1plus)"', 30)
        if not res.ok or res.stdout.split()[:1] != [mine]:
            return False
        host = CHarness(self.reference_source, self.function, language=self.language,  # type: ignore[arg-type]
                        compile_flags=self.flags, build_timeout=self.build_timeout)
        try:
            built = Path(await host._ensure_runtime())
        finally:
            await host.close()
        for name in ("bk_rt.h", "bk_rt.h.gch", "bk_main.o"):
            data = await asyncio.to_thread((built / name).read_bytes)
            # The object last: its presence is what marks the runtime as ready.
            await self._runner.write(f"{rt}/{name}", data)
        return True

    def _literals(self, tests: Sequence[TestCase]) -> list[dict[str, Any]]:
        return [t.input for t in tests if isinstance(t.input, dict) and t.input.get("values")]

    def _support_for(self, source: str) -> str:
        if self._support and not (self._support_names & defined_functions(source)):
            return self._support
        return ""

    def _side_cmd(self, side: str, source: str, literals: Sequence[Mapping[str, Any]], stem: str, rt: str) -> tuple[dict[str, str], str, list[str]]:
        """Files to write, the command that makes the side's objects, and those objects."""
        inc = f"-I {shlex.quote(rt)}"
        if self.language == "c++":
            files = {f"{stem}.cpp": c_driver.cxx_side(self.plan, side, source, self._support_for(source), literals)}
            return files, f"{self._cxx()} {inc} -c {stem}.cpp -o {stem}.o", [f"{stem}.o"]
        files = {
            f"{stem}.c": c_driver.c_side(source, self._support_for(source), side),
            f"{stem}.run.cpp": c_driver.c_runner(self.plan, side, literals),
        }
        cc = shlex.join(["gcc", *self.flags])
        cmd = (
            f"{cc} -c {stem}.c -o {stem}.raw.o && "
            f"nm -g --defined-only -P {stem}.raw.o | awk '{{print $1\" bk_{side}_\"$1}}' > {stem}.syms && "
            f"objcopy --redefine-syms={stem}.syms {stem}.raw.o {stem}.o && "
            f"{self._cxx()} {inc} -c {stem}.run.cpp -o {stem}.run.o"
        )
        return files, cmd, [f"{stem}.o", f"{stem}.run.o"]

    async def _build_ref(self, literals: Sequence[Mapping[str, Any]]) -> list[str]:
        rt = await self._ensure_runtime()
        stem = "ref_" + _h(self.language, self._cxx(), self.reference_source, c_driver.literal_digest(literals))
        log, objs = await self._build(stem, "ref", self.reference_source, literals, rt, link=False)
        if objs is None:
            raise RuntimeError(f"the reference does not build: {log}")
        return objs

    async def _build(self, stem: str, side: str, source: str, literals: Sequence[Mapping[str, Any]], rt: str,
                     link: bool, extra_objs: Sequence[str] = ()) -> tuple[str, list[str] | None]:
        """Compile (and link) once per stem; concurrent callers share the work."""
        task = self._builds.get(stem)
        if task is None:
            task = asyncio.ensure_future(self._do_build(stem, side, source, literals, rt, link, extra_objs))
            self._builds[stem] = task
        log, out = await task
        if out is None:
            return log or "", None
        return "", out.split(" ")

    async def _do_build(self, stem: str, side: str, source: str, literals: Sequence[Mapping[str, Any]], rt: str,
                        link: bool, extra_objs: Sequence[str]) -> tuple[str | None, str | None]:
        files, cmd, objs = self._side_cmd(side, source, literals, stem, rt)
        for name, text in files.items():
            await self._runner.write(name, text)
        if link:
            lib = " -lm" if self.language == "c" else ""
            cmd += f" && {self._cxx()} {shlex.quote(rt)}/bk_main.o {' '.join(extra_objs)} {' '.join(objs)}{lib} -o {stem}.bin"
        async with self.limiter:
            res = await self._runner.run(cmd, self.build_timeout)
        if not res.ok:
            return _cap(res.summary(_LOG_LIMIT), _LOG_LIMIT), None
        return None, (f"{stem}.bin" if link else " ".join(objs))

    async def _build_candidate(self, source: str, literals: Sequence[Mapping[str, Any]]) -> tuple[str | None, str]:
        """(binary or None, build log)."""
        ref_objs = await self._build_ref(literals)
        rt = await self._ensure_runtime()
        stem = "cand_" + _h(self.language, self._cxx(), source, c_driver.literal_digest(literals), self.reference_source)
        log, out = await self._build(stem, "cand", source, literals, rt, link=True, extra_objs=ref_objs)
        return (out[0] if out else None), log

    # ------------------------------------------------------------------ running

    def _spec_lines(self, tests: Sequence[TestCase], indices: Sequence[int]) -> str:
        literal_ids: dict[int, int] = {}
        k = 0
        for i, t in enumerate(tests):
            if isinstance(t.input, dict) and t.input.get("values"):
                literal_ids[i] = k
                k += 1
        lines = []
        for i in indices:
            inp = tests[i].input
            P = self.plan.values(inp["vars"])
            lines.append(f"{i} {int(inp['seed'])} {literal_ids.get(i, -1)} {len(P)} " + " ".join(repr(float(x)) for x in P))
        return "\n".join(lines) + "\n"

    async def _protocol(self, binary: str, args: str, tests: Sequence[TestCase], per_test_runs: int,
                        first: ExecResult | None = None) -> dict[int, list[str]]:
        """Run ``binary`` over all tests, resuming after a test that crashed or hung.
        Returns test index -> the fields of its ``T`` line after the index (or
        ["error"|"timeout", why] when the process died in that test). ``first``: the
        first pass over all tests, when it already ran (``_first_passes``)."""
        remaining = list(range(len(tests)))
        results: dict[int, list[str]] = {}
        while remaining:
            if first is not None:
                res, first = first, None
            else:
                name = f"specs_{_h(binary, args, str(remaining))}.txt"
                await self._runner.write(name, self._spec_lines(tests, remaining))
                backstop = self.call_timeout * (per_test_runs + 1) * len(remaining) + 30
                async with self.limiter:
                    res = await self._runner.run(f"{self._pin}./{binary} {args} < {name}", backstop)
            began, limit = None, None
            for line in res.stdout.splitlines():
                at = line.find("@@BK ")
                if at < 0:
                    continue
                fields = line[at + 5 :].split(" ")
                if fields[0] == "B":
                    began, limit = int(fields[1]), None
                elif fields[0] == "L" and len(fields) > 2:
                    limit = float(fields[2])
                elif fields[0] == "T":
                    idx = int(fields[1])
                    results[idx] = fields[2:] or ["error"]
                    began = None
            if all(i in results for i in remaining):
                break
            stuck = began if began is not None else next(i for i in remaining if i not in results)
            hung = res.timed_out or res.exit_code in _SIGALRM_CODES
            if not hung:
                why = f"crashed (exit {res.exit_code}): {res.stderr.strip()[-300:]}"
            elif limit is not None and began == stuck and limit < self.call_timeout:
                why = f"no result within {limit:.2f}s (its limit: 20x the reference's time plus 0.25s)"
            else:
                why = f"no result within {self.call_timeout:g}s"
            results[stuck] = ["timeout" if hung else "error", why]
            if hung:
                # A program past its limit on one input is not run on those at least as large:
                # each would cost the limit again, and end the same way.
                for i in _no_smaller(tests, stuck, remaining):
                    results.setdefault(i, ["timeout", f"not run: past its limit on {tests[stuck].id}, an input no larger"])
            remaining = [i for i in remaining if i not in results]
        return results

    # ------------------------------------------------------------------ batches (sandbox)
    # Each sandbox command costs setup (bubblewrap and a cgroup, or a docker exec), and one
    # command at a time leaves cores idle: in a sandbox, the candidates build in one command,
    # in parallel, and their first passes over the tests run in one more.

    async def _build_all(self, sources: Sequence[str], literals: Sequence[Mapping[str, Any]]) -> None:
        """Build every candidate not built yet with one command, ``jobs`` compilers at once;
        the results land where ``_build_candidate`` finds them."""
        ref_objs = await self._build_ref(literals)
        rt = await self._ensure_runtime()
        todo: dict[str, str] = {}
        for source in sources:
            stem = "cand_" + _h(self.language, self._cxx(), source, c_driver.literal_digest(literals), self.reference_source)
            if stem not in self._builds and stem not in todo:
                todo[stem] = source
        if not todo:
            return
        lib = " -lm" if self.language == "c" else ""
        for stem, source in todo.items():
            files, cmd, objs = self._side_cmd("cand", source, literals, stem, rt)
            cmd += f" && {self._cxx()} {shlex.quote(rt)}/bk_main.o {' '.join(ref_objs)} {' '.join(objs)}{lib} -o {stem}.bin"
            for name, text in files.items():
                await self._runner.write(name, text)
            await self._runner.write(f"{stem}.build.sh", f"rm -f {stem}.rc\n({cmd}) > {stem}.log 2>&1\necho $? > {stem}.rc\n")
        stems = list(todo)
        jobs = max(1, os.cpu_count() or 1)
        report = " ".join(stems)
        cmd = (
            f"printf '%s.build.sh\\n' {report} | xargs -P {jobs} -n 1 bash; "
            f"for s in {report}; do echo \"@@RC $s $(cat $s.rc 2>/dev/null || echo none)\"; "
            f"if [ \"$(cat $s.rc 2>/dev/null)\" != 0 ]; then echo \"@@LOG $s\"; tail -c {_LOG_LIMIT} $s.log 2>/dev/null; echo; echo @@END; fi; done"
        )
        async with self.limiter:
            res = await self._runner.run(cmd, self.build_timeout * -(-len(stems) // jobs) + 30)
        codes: dict[str, str] = {}
        logs: dict[str, list[str]] = {}
        current: str | None = None
        for line in res.stdout.splitlines():
            if line.startswith("@@RC "):
                parts = line.split(" ")
                if len(parts) == 3:
                    codes[parts[1]] = parts[2]
            elif line.startswith("@@LOG "):
                current = line[6:]
                logs[current] = []
            elif line == "@@END":
                current = None
            elif current is not None:
                logs[current].append(line)
        loop = asyncio.get_running_loop()
        for stem in stems:
            done: asyncio.Future[tuple[str | None, str | None]] = loop.create_future()
            if codes.get(stem) == "0":
                done.set_result((None, f"{stem}.bin"))
            else:
                status = "timed out" if res.timed_out and codes.get(stem, "none") == "none" else f"exit {codes.get(stem, 'none')}"
                log = "\n".join(logs.get(stem, []))
                done.set_result((_cap(f"[{status}]\n{log}".rstrip(), _LOG_LIMIT), None))
            self._builds[stem] = done  # type: ignore[assignment]

    async def _first_passes(self, binaries: Sequence[str], args: str, tests: Sequence[TestCase],
                            per_test_runs: int) -> dict[str, ExecResult]:
        """Each binary's first pass over all tests, one after another, in one command."""
        name = f"specs_{_h(args, str(len(tests)), *binaries)}.txt"
        await self._runner.write(name, self._spec_lines(tests, range(len(tests))))
        backstop = self.call_timeout * (per_test_runs + 1) * len(tests) + 30
        parts = []
        for b in binaries:
            parts.append(
                f"timeout -k 5 {backstop:g} {self._pin}./{b} {args} < {name} > {b}.out 2> {b}.err; rc=$?; "
                f"echo \"@@OUT {b} $rc\"; grep -a '@@BK ' {b}.out | head -c 200000; echo; "
                f"echo \"@@ERR {b}\"; tail -c 300 {b}.err; echo; echo \"@@END {b}\""
            )
        async with self.limiter:
            res = await self._runner.run("; ".join(parts), backstop * len(binaries) + 30)
        found: dict[str, ExecResult] = {}
        current: str | None = None
        rc: int | None = None
        out: list[str] = []
        err: list[str] = []
        target = out
        for line in res.stdout.splitlines():
            if line.startswith("@@OUT "):
                fields = line.split(" ")
                current, rc, out, err = fields[1], int(fields[2]) if len(fields) > 2 and fields[2].lstrip("-").isdigit() else None, [], []
                target = out
            elif line.startswith("@@ERR ") and current is not None:
                target = err
            elif current is not None and line == f"@@END {current}":
                # Output capped in the middle cannot join two binaries' blocks: both ends name it.
                # ``timeout`` answers 124 (or 137 after its kill) when the backstop ran out.
                found[current] = ExecResult(exit_code=rc, stdout="\n".join(out), stderr="\n".join(err),
                                            timed_out=rc in (124, 137))
                current = None
            else:
                target.append(line)
        return found

    # ------------------------------------------------------------------ the protocol

    async def make_tests(self, extra_inputs: Sequence[Any] = ()) -> list[TestCase]:
        rng = random.Random(self.seed)
        vars_spec = self.plan.vars
        tests: list[TestCase] = []
        for k in range(self.small_tests):
            tests.append(TestCase(id=f"diff-small-{k}", kind="differential",
                                  input={"seed": rng.randrange(1 << 31), "vars": c_driver.draw_vars(vars_spec, rng, "small")}))
        for k in range(self.medium_tests):
            tests.append(TestCase(id=f"diff-medium-{k}", kind="differential",
                                  input={"seed": rng.randrange(1 << 31), "vars": c_driver.draw_vars(vars_spec, rng, "medium")}))
        for k, extra in enumerate([*(self.constraints.get("edge") or []), *extra_inputs]):
            if not isinstance(extra, Mapping):
                raise c_driver.ConstraintError(f"an edge case must be a mapping with 'vars' and/or 'values', not {extra!r}")
            drawn = c_driver.draw_vars(vars_spec, rng, "small")
            drawn.update({k2: float(v) for k2, v in (extra.get("vars") or {}).items()})
            inp: dict[str, Any] = {"seed": rng.randrange(1 << 31), "vars": drawn}
            if extra.get("values"):
                inp["values"] = dict(extra["values"])
            tests.append(TestCase(id=f"diff-edge-{k}", kind="differential", input=inp))
        literals = self._literals(tests)
        ref_objs = await self._build_ref(literals)
        rt = await self._ensure_runtime()
        stem = "refbin_" + _h(self.language, self._cxx(), self.reference_source, c_driver.literal_digest(literals))
        log, out = await self._build(stem, "cand", self.reference_source, literals, rt, link=True, extra_objs=ref_objs)
        if out is None:
            raise RuntimeError(f"the reference does not build: {log}")
        results = await self._protocol(out[0], "ref", tests, 1)
        kept = []
        for i, t in enumerate(tests):
            r = results.get(i, ["error", "no result"])
            if r[0] != "ok":
                why = ("threw: " if r[0] == "exc" else "") + " ".join(r[1:])
                self.notes.append(f"{t.id} dropped: the reference {why}")
                continue
            kept.append(t.model_copy(update={"expected": {"digest": r[1], "preview": r[2]}, "valid": True}))
        self._emit("differential.tests", function=self.function, kept=len(kept), dropped=len(tests) - len(kept))
        return kept

    async def run_matrix(self, sources: Mapping[str, str], tests: Sequence[TestCase]) -> ExecutionMatrix:
        matrix = ExecutionMatrix(candidates=list(sources), tests=[t.id for t in tests])
        literals = self._literals(tests)
        by_source: dict[str, list[str]] = {}
        for cid, src in sources.items():
            by_source.setdefault(src, []).append(cid)
        args = (f"check {self.float_rel!r} {self.float_abs!r} {int(self.unordered)} "
                f"{','.join(map(str, self.threads))} {self.repeats} {max(1, int(round(self.call_timeout)))}")
        runs = len(self.threads) * self.repeats + 1
        first: dict[str, ExecResult] = {}
        if isinstance(self._runner, _SandboxRunner) and tests:
            await self._build_all(list(by_source), literals)
            built = [b for b, _ in [await self._build_candidate(src, literals) for src in by_source] if b is not None]
            first = await self._first_passes(built, args, tests, runs)

        async def one(src: str, cids: list[str]) -> None:
            binary, log = await self._build_candidate(src, literals)
            if binary is None:
                for cid in cids:
                    self.build_logs[cid] = log
                    for t in tests:
                        matrix.set(cid, t.id, "error", "build failed")
                return
            results = await self._protocol(binary, args, tests, runs, first.get(binary))
            for i, t in enumerate(tests):
                r = results[i]
                if len(r) > 5:  # the detail text has spaces
                    r = [*r[:4], " ".join(r[4:])]
                status = r[0]
                outcome: Outcome
                if status in ("pass", "fail", "flaky", "error", "timeout"):
                    outcome = status  # type: ignore[assignment]
                else:  # "referr": the reference threw on an input it handled in make_tests
                    outcome = "error"
                if len(r) >= 5 and isinstance(t.expected, dict) and r[1] not in ("-", t.expected.get("digest")):
                    self.notes.append(f"{t.id}: the reference gave a different output than when the tests were made")
                output = r[2] if len(r) >= 5 and status in ("pass", "fail") else f"{status}: {r[-1]}"
                # "matches/runs" from the driver; a test with no result (the process died, or it was
                # not run) counts as one run that did not match.
                a, _, b = r[3].partition("/") if len(r) >= 5 else ("0", "", "1")
                counts = (int(a), int(b)) if a.isdigit() and b.isdigit() else (0, 1)
                for cid in cids:
                    matrix.set(cid, t.id, outcome, output)
                    self.details.setdefault(cid, {})[t.id] = f"{status} {' '.join(r[1:])}"
                    self.matched.setdefault(cid, {})[t.id] = counts

        await asyncio.gather(*(one(src, cids) for src, cids in by_source.items()))
        if self.race_check and tests:
            await asyncio.gather(*(self._race_check(src, cids, tests, literals, matrix)
                                   for src, cids in by_source.items()
                                   if all(o == "pass" for o in matrix.cells.get(cids[0], {}).values())))
        # Keep the caller's order of candidates and tests.
        matrix.candidates = list(sources)
        matrix.tests = [t.id for t in tests]
        self._emit("differential.matrix", function=self.function, candidates=len(sources), builds=len(by_source))
        return matrix

    async def _race_check(self, source: str, cids: list[str], tests: Sequence[TestCase],
                          literals: Sequence[Mapping[str, Any]], matrix: ExecutionMatrix) -> None:
        """The first small and the first medium test at 4 threads under ThreadSanitizer: a race
        the timing-bound runs missed makes every test of the candidate ``flaky``."""
        async def run(cmd: str, timeout: float) -> ExecResult:
            async with self.limiter:
                return await self._runner.run(cmd, timeout)

        def skip(why: str) -> None:
            if not any(n.startswith("race check skipped") for n in self.notes):
                self.notes.append(f"race check skipped: {why}")
                self._emit("differential.race_check_skipped", function=self.function, reason=why)

        cxx, tcxx = self._cxx(), race_check.tsan_cxx(self.flags)
        gcc, tcc = shlex.join(["gcc", *self.flags]), race_check.tsan_cc(self.flags)

        async def side(name: str, src: str, stem: str) -> tuple[str, list[str]]:
            files, cmd, side_objs = self._side_cmd(name, src, literals, stem, ".")
            for fname, text in files.items():
                await self._runner.write(fname, text)
            return cmd.replace(cxx, tcxx + self._tsan_pch).replace(gcc, tcc), side_objs

        async with self._rt_lock:
            # The driver's main and the reference are sanitized once per harness, and the
            # runtime header precompiled for clang: it is most of each side's compile time.
            key = "tsanref_" + _h(self.language, cxx, self.reference_source, c_driver.literal_digest(literals))
            if key not in self._tsan_common:
                await self._runner.write("bk_rt.h", c_runtime.RUNTIME_HEADER)
                await self._runner.write("bk_tsan_main.cpp", c_runtime.RUNTIME_MAIN)
                if not self._tsan_pch:
                    pch = await run(f"{tcxx} -x c++-header bk_rt.h -o bk_rt.h.pch", self.build_timeout)
                    self._tsan_pch = " -include-pch bk_rt.h.pch" if pch.ok else ""
                ref_cmd, ref_objs = await side("ref", self.reference_source, key)
                res = await run(f"{tcxx} -I . -c bk_tsan_main.cpp -o bk_tsan_main.o && {ref_cmd}", self.build_timeout)
                self._tsan_common[key] = ["bk_tsan_main.o", *ref_objs] if res.ok else []
                if not res.ok:
                    skip("clang++ is missing where the check runs" if res.exit_code == 127 else
                         f"the driver or the reference does not build with clang++ -fsanitize=thread: {res.summary(300)}")
            common = self._tsan_common[key]
        if not common:
            return
        stem = "tsan_" + _h(self.language, cxx, source, c_driver.literal_digest(literals), self.reference_source)
        cand_cmd, cand_objs = await side("cand", source, stem)
        lib = " -lm" if self.language == "c" else ""
        cmds = [cand_cmd, f"{tcxx} {' '.join([*common, *cand_objs])}{lib} -o {stem}.bin"]
        # A small input, and the first medium one: races between threads need every thread to
        # have work, and a small input may give some threads none (or no two of them the same
        # output element).
        first: dict[str, int] = {}
        for i, t in enumerate(tests):
            for kind in ("small", "medium"):
                if kind in t.id:
                    first.setdefault(kind, i)
        spec = f"{stem}.spec"
        await self._runner.write(spec, self._spec_lines(tests, sorted(first.values()) or [0]))
        args = f"check {self.float_rel!r} {self.float_abs!r} {int(self.unordered)} 4 1 {max(1, int(round(self.call_timeout)))}"
        report = await race_check.tsan_run(" && ".join(cmds), f"{self._pin}./{stem}.bin {args} < {spec}", run=run,
                                           threads=4, timeout=max(60.0, self.build_timeout),
                                           only=("cand.c", "bk_cand"), on_skip=skip)
        if report is None or not report.racy:
            return
        first = next((ln.strip() for ln in report.summary.splitlines() if "WARNING" in ln), "data race")
        for cid in cids:
            self.races[cid] = report.summary
            self.race_counts[cid] = report.count
            self.notes.append(f"{cid}: ThreadSanitizer found a race:\n{report.summary}")
            for t in tests:
                matrix.set(cid, t.id, "flaky", f"flaky: {first}")
                self.details.setdefault(cid, {})[t.id] = f"flaky tsan {first}"
        self._emit("differential.race", function=self.function, candidates=cids, summary=report.summary)

    def timing_input(self) -> TestCase:
        rng = random.Random(self.seed + 1)
        return TestCase(id="diff-timing", kind="differential",
                        input={"seed": rng.randrange(1 << 31), "vars": c_driver.draw_vars(self.plan.vars, rng, "large")})

    async def time(self, sources: Mapping[str, str], *, repeats: int = 5) -> dict[str, Timing]:
        """Candidate against reference on the large input at ``timing_threads`` threads, A B A B
        inside one process, timing only the call. Run this with nothing else running."""
        test = self.timing_input()
        out: dict[str, Timing] = {}
        done: dict[str, Timing | str] = {}
        for cid, src in sources.items():
            if src not in done:
                binary, log = await self._build_candidate(src, [])
                if binary is None:
                    done[src] = f"does not build: {log}"
                else:
                    name = f"timing_{_h(binary)}.txt"
                    await self._runner.write(name, self._spec_lines([test], [0]))
                    cap = max(1, int(round(self.call_timeout)))
                    res = await self._runner.run(f"{self._pin}./{binary} time {self.timing_threads} {repeats} 1 {cap} < {name}",
                                                 self.call_timeout * (2 * repeats + 3) + 30)
                    base, cand, refs, limit = [], [], [], None
                    for line in res.stdout.splitlines():
                        m = re.search(r"@@BK (?:X (ref|cand)|(R)|(L)) (\S+)", line)
                        if not m:
                            continue
                        value = float(m.group(4))
                        if m.group(1):
                            (base if m.group(1) == "ref" else cand).append(value)
                        elif m.group(2):
                            refs.append(value)
                        else:
                            limit = value
                    if len(base) == repeats and len(cand) == repeats:
                        done[src] = timing_from_samples(base, cand, self.timing_threads)
                    elif res.exit_code in _SIGALRM_CODES and limit is not None and refs:
                        done[src] = censored_timing(refs, limit, self.timing_threads)
                    else:
                        done[src] = f"timing run failed: {res.summary(500)}"
            result = done[src]
            if isinstance(result, Timing):
                out[cid] = result
            else:
                self.timing_errors[cid] = result
        return out

    async def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
