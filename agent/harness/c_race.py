"""The race check of a C/C++ candidate that passed every test: its driver under ThreadSanitizer.

The candidate's side is built again with clang and ``-fsanitize=thread`` (``race_check``),
linked with the sanitized driver main and reference, and run at 4 threads on the first small
and the first medium test. A race the timing-bound runs missed is then found whatever the
scheduling. A missing toolchain skips the check (``on_skip`` says why), never the candidate.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bakeoff.agent.harness import c_runtime, race_check
from bakeoff.agent.harness.c_build import DriverBuilds
from bakeoff.agent.harness.c_runs import spec_lines
from bakeoff.agent.harness.c_workdir import WorkDir, run_limited
from bakeoff.agent.harness.race_check import RaceReport
from bakeoff.agent.seams import ExecResult
from bakeoff.agent.types import TestCase

THREADS = 4


def race_inputs(tests: Sequence[TestCase]) -> list[int]:
    """A small input, and the first medium one: races between threads need every thread to
    have work, and a small input may give some threads none (or no two of them the same
    output element)."""
    first: dict[str, int] = {}
    for i, t in enumerate(tests):
        for kind in ("small", "medium"):
            if kind in t.id:
                first.setdefault(kind, i)
    return sorted(first.values()) or [0]


class RaceCheck:
    """ThreadSanitizer runs of candidates; the driver's main and the reference are sanitized
    once per harness (and the runtime header precompiled for clang): most of each side's
    compile time."""

    def __init__(self, builds: DriverBuilds, workdir: WorkDir, limiter: asyncio.Semaphore, *, build_timeout: float,
                 pin: str, on_skip: Callable[[str], None]):
        self.builds = builds
        self.workdir = workdir
        self.limiter = limiter
        self.build_timeout = build_timeout
        self.pin = pin
        self.on_skip = on_skip
        self._common: dict[str, list[str]] = {}  # sanitized main and reference objects, per literal set
        self._pch = ""  # the flag that uses clang's precompiled runtime header, once built
        self._lock = asyncio.Lock()

    async def _run(self, cmd: str, timeout: float) -> ExecResult:
        return await run_limited(self.workdir, self.limiter, cmd, timeout)

    async def _side(self, name: str, source: str, stem: str, literals: Sequence[Mapping[str, Any]]) -> tuple[str, list[str]]:
        """The command that builds one side sanitized (the usual one, with clang), and its objects."""
        flags = self.builds.flags
        files, cmd, objs = self.builds.side_cmd(name, source, literals, stem, ".")
        for fname, text in files.items():
            await self.workdir.write(fname, text)
        cxx, gcc = self.builds.cxx, shlex.join(["gcc", *flags])
        return cmd.replace(cxx, race_check.tsan_cxx(flags) + self._pch).replace(gcc, race_check.tsan_cc(flags)), objs

    async def _common_objects(self, literals: Sequence[Mapping[str, Any]]) -> list[str]:
        """The sanitized driver main and reference objects; empty when they do not build."""
        tcxx = race_check.tsan_cxx(self.builds.flags)
        async with self._lock:
            key = self.builds.stem("tsanref", self.builds.reference_source, literals)
            if key not in self._common:
                await self.workdir.write("bk_rt.h", c_runtime.RUNTIME_HEADER)
                await self.workdir.write("bk_tsan_main.cpp", c_runtime.RUNTIME_MAIN)
                if not self._pch:
                    pch = await self._run(f"{tcxx} -x c++-header bk_rt.h -o bk_rt.h.pch", self.build_timeout)
                    self._pch = " -include-pch bk_rt.h.pch" if pch.ok else ""
                ref_cmd, ref_objs = await self._side("ref", self.builds.reference_source, key, literals)
                res = await self._run(f"{tcxx} -I . -c bk_tsan_main.cpp -o bk_tsan_main.o && {ref_cmd}", self.build_timeout)
                self._common[key] = ["bk_tsan_main.o", *ref_objs] if res.ok else []
                if not res.ok:
                    self.on_skip("clang++ is missing where the check runs" if res.exit_code == 127 else
                                 f"the driver or the reference does not build with clang++ -fsanitize=thread: {res.summary(300)}")
            return self._common[key]

    async def report(self, source: str, tests: Sequence[TestCase], literals: Sequence[Mapping[str, Any]],
                     args: str) -> RaceReport | None:
        """What ThreadSanitizer says about ``source`` on the race inputs, run once at ``THREADS``
        threads with the driver's ``args``; None when it could not say."""
        common = await self._common_objects(literals)
        if not common:
            return None
        stem = self.builds.stem("tsan", source, literals)
        cand_cmd, cand_objs = await self._side("cand", source, stem, literals)
        tcxx = race_check.tsan_cxx(self.builds.flags)
        cmds = [cand_cmd, f"{tcxx} {' '.join([*common, *cand_objs])}{self.builds.lib} -o {stem}.bin"]
        spec = f"{stem}.spec"
        await self.workdir.write(spec, spec_lines(self.builds.plan, tests, race_inputs(tests)))
        return await race_check.tsan_run(" && ".join(cmds), f"{self.pin}./{stem}.bin {args} < {spec}",
                                         run=self._run, threads=THREADS, timeout=max(60.0, self.build_timeout),
                                         only=("cand.c", "bk_cand"), on_skip=self.on_skip)
