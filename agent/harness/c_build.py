"""Building the C/C++ differential driver: the shared runtime, each side's objects, one binary
per distinct candidate.

The runtime (the precompiled header and the driver's ``main``) is built once per compiler
flag set and machine, in a cache directory other processes may share; the reference's
objects once per set of literal inputs; each distinct candidate source once, however many
candidates share it. C++ sides are compiled in their own namespace, C sides get their global
symbols renamed after compiling (``c_driver``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shlex
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bakeoff.agent.harness import c_driver, c_runtime
from bakeoff.agent.harness.c_plan import DriverPlan, literal_digest
from bakeoff.agent.harness.c_signature import defined_functions
from bakeoff.agent.harness.c_workdir import LOG_LIMIT, LocalDir, SandboxDir, WorkDir, cap, digest, run_limited

# (the build log when it failed, else None; the binary, or the objects joined by spaces, else None)
BuildResult = tuple[str | None, str | None]


def cxx_command(flags: Sequence[str], compiler: str = "g++") -> str:
    std = [] if any(f.startswith("-std=") for f in flags) else ["-std=c++17"]
    return shlex.join([compiler, *std, *flags])


@dataclass(frozen=True)
class Dialect:
    """What a parallel model changes in a driver build: the compilers, the driver's ``main``,
    code each side gets after its includes (``prelude``) and around the timed call (``sync``)."""

    cxx: str = "g++"
    cc: str = "gcc"
    main: str = c_runtime.RUNTIME_MAIN
    prelude: str = ""
    sync: str = ""  # on candidate sides only: the reference runs alone
    suffix: str = ".cpp"  # of a C++ side's file: ".cu" makes nvcc compile it as CUDA
    pch: bool = True  # precompile the runtime header (g++'s .gch; nvcc reads the header itself)


OPENMP = Dialect()


def default_runtime_dir() -> str:
    return str(Path(tempfile.gettempdir()) / f"bakeoff-cxx-runtime-{os.getuid()}")


def _cc1plus_digest() -> str | None:
    """sha256 of this machine's C++ compiler proper (what a precompiled header is bound to)."""
    import subprocess

    try:
        path = subprocess.run(["g++", "-print-prog-name=cc1plus"], capture_output=True, text=True, timeout=30).stdout.strip()
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
    except (OSError, subprocess.SubprocessError):
        return None


class DriverRuntime:
    """The precompiled runtime header and the driver's main object, built once per flag set and machine."""

    def __init__(self, workdir: WorkDir, rt_dir: str, flags: Sequence[str], limiter: asyncio.Semaphore,
                 build_timeout: float, dialect: Dialect = OPENMP):
        self.workdir = workdir
        self.rt_dir = rt_dir
        self.flags = list(flags)
        self.dialect = dialect
        self.limiter = limiter
        self.build_timeout = build_timeout
        self.lock = asyncio.Lock()
        self._ready = False

    async def ensure(self) -> str:
        """The runtime's directory, built there first when no one has built it yet."""
        async with self.lock:
            cxx = cxx_command(self.flags, self.dialect.cxx)
            rt = f"{self.rt_dir}/{digest(cxx, c_runtime.RUNTIME_HEADER, self.dialect.main)}"
            if self._ready:
                return rt
            if isinstance(self.workdir, LocalDir):
                Path(self.rt_dir).mkdir(parents=True, exist_ok=True)
                ready = (Path(rt) / "bk_main.o").exists() and (not self.dialect.pch or (Path(rt) / "bk_rt.h.gch").exists())
            else:
                ready = await self.workdir.exists(f"{rt}/bk_main.o") or (self.dialect.pch and await self._seed(rt))
            if not ready:
                await self._build(rt, cxx)
            self._ready = True
            return rt

    async def _build(self, rt: str, cxx: str) -> None:
        # Build in a private directory, then rename: other processes may share the cache.
        tmp = f"{rt}.tmp{os.getpid()}.{random.randrange(1 << 30)}"
        pch = f"{cxx} -x c++-header -c bk_rt.h -o bk_rt.h.gch && " if self.dialect.pch else ""
        cmd = (
            # The compiler's own temporary files in the build's directory too: one that is killed
            # cannot remove them, and the directory goes as a whole.
            f"cd {shlex.quote(tmp)} && export TMPDIR=\"$PWD\" && {pch}"
            f"{cxx} -c bk_main.cpp -o bk_main.o && cd .. && "
            f"(mv -T {shlex.quote(Path(tmp).name)} {shlex.quote(Path(rt).name)} 2>/dev/null || rm -rf {shlex.quote(Path(tmp).name)})"
        )
        try:
            await self.workdir.run(f"mkdir -p {shlex.quote(tmp)}", 30)
            await self.workdir.write(f"{tmp}/bk_rt.h", c_runtime.RUNTIME_HEADER)
            await self.workdir.write(f"{tmp}/bk_main.cpp", self.dialect.main)
            res = await run_limited(self.workdir, self.limiter, cmd, self.build_timeout)
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM): the half-built directory goes; the cache keeps only
            # whole runtimes. In a sandbox it goes with the sandbox.
            if isinstance(self.workdir, LocalDir):
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if not res.ok:
            raise RuntimeError(f"the driver runtime does not build with {cxx}: {res.summary()}")

    async def _seed(self, rt: str) -> bool:
        """Copy the runtime built on this machine into the sandbox, when the sandbox's compiler
        is this machine's (same cc1plus): it is bakeoff's own code, not a candidate's, and its
        precompiled header takes seconds to build in every new sandbox."""
        assert isinstance(self.workdir, SandboxDir)
        mine = await asyncio.to_thread(_cc1plus_digest)
        if mine is None:
            return False
        res = await self.workdir.run('sha256sum "$(g++ -print-prog-name=cc1plus)"', 30)
        if not res.ok or res.stdout.split()[:1] != [mine]:
            return False
        scratch = Path(tempfile.mkdtemp(prefix="bakeoff-diff-"))
        host = DriverRuntime(LocalDir(scratch), default_runtime_dir(), self.flags,
                             asyncio.Semaphore(os.cpu_count() or 2), self.build_timeout, self.dialect)
        try:
            built = Path(await host.ensure())
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        for name in ("bk_rt.h", "bk_rt.h.gch", "bk_main.o"):
            data = await asyncio.to_thread((built / name).read_bytes)
            # The object last: its presence is what marks the runtime as ready.
            await self.workdir.write(f"{rt}/{name}", data)
        return True


class DriverBuilds:
    """Every build of one harness, each done once: concurrent callers of one stem share the work."""

    def __init__(self, *, language: str, flags: Sequence[str], reference_source: str, plan: DriverPlan, support: str,
                 workdir: WorkDir, runtime: DriverRuntime, limiter: asyncio.Semaphore, build_timeout: float):
        self.language = language
        self.dialect = runtime.dialect
        self.flags = list(flags)
        self.reference_source = reference_source
        self.plan = plan
        self.support = support
        self.support_names = defined_functions(support) if support else set()
        self.workdir = workdir
        self.runtime = runtime
        self.limiter = limiter
        self.build_timeout = build_timeout
        self.tasks: dict[str, asyncio.Future[BuildResult]] = {}  # stem -> its build, running or done

    @property
    def cxx(self) -> str:
        return cxx_command(self.flags, self.dialect.cxx)

    @property
    def lib(self) -> str:
        return " -lm" if self.language == "c" else ""

    def stem(self, kind: str, source: str, literals: Sequence[Mapping[str, Any]]) -> str:
        """The name of a build: a candidate's names the reference too (both are in its binary)."""
        # The plan is in the generated code: a harness that changes its spec builds anew.
        parts = [self.language, self.cxx, source, literal_digest(literals),
                 json.dumps(self.plan.constraints, sort_keys=True, default=str)]
        if kind in ("cand", "tsan"):
            parts.append(self.reference_source)
        return f"{kind}_{digest(*parts)}"

    def support_for(self, source: str) -> str:
        if self.support and not (self.support_names & defined_functions(source)):
            return self.support
        return ""

    def side_cmd(self, side: str, source: str, literals: Sequence[Mapping[str, Any]], stem: str,
                 rt: str) -> tuple[dict[str, str], str, list[str]]:
        """Files to write, the command that makes the side's objects, and those objects."""
        inc = f"-I {shlex.quote(rt)}"
        d = self.dialect
        sync = d.sync if side == "cand" else ""
        if self.language == "c++":
            files = {f"{stem}{d.suffix}": c_driver.cxx_side(self.plan, side, source, self.support_for(source), literals,
                                                            prelude=d.prelude, sync=sync)}
            return files, f"{self.cxx} {inc} -c {stem}{d.suffix} -o {stem}.o", [f"{stem}.o"]
        files = {
            f"{stem}.c": c_driver.c_side(source, self.support_for(source), side, prelude=d.prelude),
            f"{stem}.run.cpp": c_driver.c_runner(self.plan, side, literals, prelude=d.prelude, sync=sync),
        }
        cc = shlex.join([d.cc, *self.flags])
        cmd = (
            f"{cc} -c {stem}.c -o {stem}.raw.o && "
            f"nm -g --defined-only -P {stem}.raw.o | awk '{{print $1\" bk_{side}_\"$1}}' > {stem}.syms && "
            f"objcopy --redefine-syms={stem}.syms {stem}.raw.o {stem}.o && "
            f"{self.cxx} {inc} -c {stem}.run.cpp -o {stem}.run.o"
        )
        return files, cmd, [f"{stem}.o", f"{stem}.run.o"]

    def link_cmd(self, stem: str, rt: str, extra_objs: Sequence[str], objs: Sequence[str]) -> str:
        return f"{self.cxx} {shlex.quote(rt)}/bk_main.o {' '.join(extra_objs)} {' '.join(objs)}{self.lib} -o {stem}.bin"

    async def reference_objects(self, literals: Sequence[Mapping[str, Any]]) -> list[str]:
        rt = await self.runtime.ensure()
        log, objs = await self._build(self.stem("ref", self.reference_source, literals), "ref", self.reference_source,
                                      literals, rt, link=False)
        if objs is None:
            raise RuntimeError(f"the reference does not build: {log}")
        return objs

    async def reference_binary(self, literals: Sequence[Mapping[str, Any]]) -> str:
        """The reference as a candidate against itself: what runs the tests to record its outputs."""
        ref_objs = await self.reference_objects(literals)
        rt = await self.runtime.ensure()
        log, out = await self._build(self.stem("refbin", self.reference_source, literals), "cand", self.reference_source,
                                     literals, rt, link=True, extra_objs=ref_objs)
        if out is None:
            raise RuntimeError(f"the reference does not build: {log}")
        return out[0]

    async def candidate(self, source: str, literals: Sequence[Mapping[str, Any]]) -> tuple[str | None, str]:
        """(binary or None, build log)."""
        ref_objs = await self.reference_objects(literals)
        rt = await self.runtime.ensure()
        log, out = await self._build(self.stem("cand", source, literals), "cand", source, literals, rt, link=True,
                                     extra_objs=ref_objs)
        return (out[0] if out else None), log

    async def _build(self, stem: str, side: str, source: str, literals: Sequence[Mapping[str, Any]], rt: str,
                     link: bool, extra_objs: Sequence[str] = ()) -> tuple[str, list[str] | None]:
        """Compile (and link) once per stem; concurrent callers share the work."""
        task = self.tasks.get(stem)
        if task is None:
            task = asyncio.ensure_future(self._compile(stem, side, source, literals, rt, link, extra_objs))
            self.tasks[stem] = task
        log, out = await task
        if out is None:
            return log or "", None
        return "", out.split(" ")

    async def _compile(self, stem: str, side: str, source: str, literals: Sequence[Mapping[str, Any]], rt: str,
                       link: bool, extra_objs: Sequence[str]) -> BuildResult:
        files, cmd, objs = self.side_cmd(side, source, literals, stem, rt)
        for name, text in files.items():
            await self.workdir.write(name, text)
        if link:
            cmd += f" && {self.link_cmd(stem, rt, extra_objs, objs)}"
        res = await run_limited(self.workdir, self.limiter, cmd, self.build_timeout)
        if not res.ok:
            return cap(res.summary(LOG_LIMIT), LOG_LIMIT), None
        return None, (f"{stem}.bin" if link else " ".join(objs))

    # Each sandbox command costs setup (bubblewrap and a cgroup, or a docker exec), and one
    # command at a time leaves cores idle: in a sandbox, the candidates build in one command,
    # in parallel.

    async def candidates_at_once(self, sources: Sequence[str], literals: Sequence[Mapping[str, Any]]) -> None:
        """Build every candidate not built yet with one command, ``jobs`` compilers at once;
        the results land where ``candidate`` finds them."""
        ref_objs = await self.reference_objects(literals)
        rt = await self.runtime.ensure()
        todo: dict[str, str] = {}
        for source in sources:
            stem = self.stem("cand", source, literals)
            if stem not in self.tasks and stem not in todo:
                todo[stem] = source
        if not todo:
            return
        for stem, source in todo.items():
            files, cmd, objs = self.side_cmd("cand", source, literals, stem, rt)
            cmd += f" && {self.link_cmd(stem, rt, ref_objs, objs)}"
            for name, text in files.items():
                await self.workdir.write(name, text)
            await self.workdir.write(f"{stem}.build.sh", f"rm -f {stem}.rc\n({cmd}) > {stem}.log 2>&1\necho $? > {stem}.rc\n")
        stems = list(todo)
        jobs = max(1, os.cpu_count() or 1)
        res = await run_limited(self.workdir, self.limiter, _batch_cmd(stems, jobs),
                                self.build_timeout * -(-len(stems) // jobs) + 30)
        codes, logs = _read_batch(res.stdout)
        loop = asyncio.get_running_loop()
        for stem in stems:
            done: asyncio.Future[BuildResult] = loop.create_future()
            if codes.get(stem) == "0":
                done.set_result((None, f"{stem}.bin"))
            else:
                status = "timed out" if res.timed_out and codes.get(stem, "none") == "none" else f"exit {codes.get(stem, 'none')}"
                log = "\n".join(logs.get(stem, []))
                done.set_result((cap(f"[{status}]\n{log}".rstrip(), LOG_LIMIT), None))
            self.tasks[stem] = done


def _batch_cmd(stems: Sequence[str], jobs: int) -> str:
    """Run each stem's build script, ``jobs`` at once, then report each one's exit code and,
    for a failed one, the end of its log."""
    report = " ".join(stems)
    return (
        f"printf '%s.build.sh\\n' {report} | xargs -P {jobs} -n 1 bash; "
        f"for s in {report}; do echo \"@@RC $s $(cat $s.rc 2>/dev/null || echo none)\"; "
        f"if [ \"$(cat $s.rc 2>/dev/null)\" != 0 ]; then echo \"@@LOG $s\"; tail -c {LOG_LIMIT} $s.log 2>/dev/null; echo; echo @@END; fi; done"
    )


def _read_batch(stdout: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(stem -> exit code as written, stem -> its log lines) from ``_batch_cmd``'s output."""
    codes: dict[str, str] = {}
    logs: dict[str, list[str]] = {}
    current: str | None = None
    for line in stdout.splitlines():
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
    return codes, logs
