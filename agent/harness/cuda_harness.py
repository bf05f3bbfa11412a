"""The differential harness for CUDA candidates: the C/C++ harness, built with nvcc.

The entry function is host code that may launch kernels (``.cu``). Each side's translation
unit is the C/C++ driver's, compiled by ``nvcc`` as CUDA (``CUDA``, a ``Dialect``); the driver
protocol, the comparison with the reference and the interleaved timing are ``CHarness``'s.
Host threads mean nothing to a kernel: candidates run at one host thread, several times (a
result that changes between runs is flaky), and are timed at one. The race check is
``compute-sanitizer --tool racecheck`` (shared-memory hazards) on the first small and medium
tests of a candidate that passed every test.

Whether a CUDA device is visible is asked once per harness, by a probe built with nvcc and run
where the candidates run. Without one nothing is run: the harness says so ("no CUDA device:
candidates are gated on building only"), makes no tests, compiles each candidate's source with
nvcc as it is, without the driver (one that does not build fails with nvcc's log), and times
nothing, so no candidate is called correct or faster.
"""

from __future__ import annotations

import asyncio
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bakeoff.agent.harness.c_build import Dialect
from bakeoff.agent.harness.c_harness import CHarness
from bakeoff.agent.harness.c_race import race_inputs
from bakeoff.agent.harness.c_runs import spec_lines
from bakeoff.agent.harness.c_workdir import LOG_LIMIT, cap, digest, run_limited
from bakeoff.agent.harness.cuda import PROBE, read_probe
from bakeoff.sandboxes.local_isolation import gpu_devices
from bakeoff.agent.seams import ExecResult
from bakeoff.agent.types import ExecutionMatrix, TargetParallelism, TestCase, Timing

CUDA = Dialect(cxx="nvcc", suffix=".cu", pch=False)
CUDA_FLAGS = ("-O2", "-Xcompiler", "-fopenmp")  # the driver's runtime uses OpenMP's clock and thread calls
NO_DEVICE = "no CUDA device: candidates are gated on building only"
ONE_HOST_THREAD = "one host thread: the work runs on the CUDA device"
RACECHECK_EXIT = 86  # compute-sanitizer's exit code when it reports a hazard
_HAZARDS = re.compile(r"RACECHECK SUMMARY:\s*(\d+) hazards?", re.I)


@dataclass(frozen=True)
class Device:
    """Whether the CUDA runtime sees a device where the candidates run, and why not."""

    present: bool
    why: str = ""


@dataclass(frozen=True)
class RacecheckReport:
    racy: bool
    summary: str
    count: int


def read_racecheck(res: ExecResult) -> RacecheckReport:
    """What ``compute-sanitizer --tool racecheck --error-exitcode 86`` said about one run."""
    text = f"{res.stdout}\n{res.stderr}"
    found = _HAZARDS.search(text)
    count = int(found.group(1)) if found else 0
    racy = res.exit_code == RACECHECK_EXIT or count > 0
    lines = [ln.strip(" =") for ln in text.splitlines() if "Race reported" in ln or "hazard" in ln.lower()]
    return RacecheckReport(racy=racy, summary="\n".join(lines[:6]) or "racecheck reported a hazard", count=max(count, int(racy)))


class CudaHarness(CHarness):
    """Differential harness for one CUDA host function (see the module doc)."""

    dialect = CUDA

    def __init__(self, reference_source: str, function: str, *, compile_flags: Sequence[str] = CUDA_FLAGS,
                 threads: Sequence[int] | None = None, **kwargs: Any):
        kwargs.pop("language", None)  # CUDA is C++
        super().__init__(reference_source, function, language="c++", compile_flags=compile_flags,
                         threads=threads or [1], **kwargs)
        self._device: Device | None = None
        self._device_lock = asyncio.Lock()

    async def device(self) -> Device:
        """Whether a CUDA device is visible where the candidates run; asked once."""
        async with self._device_lock:
            if self._device is None:
                await self.workdir.write("bk_probe.cu", PROBE)
                res = await run_limited(self.workdir, self.limiter, "nvcc -o bk_probe bk_probe.cu && ./bk_probe",
                                        self.build_timeout)
                present, why = read_probe(res) if res.ok else (False, f"the device probe did not build: {res.summary(300)}")
                if not present and gpu_devices():
                    why += ("; this machine has NVIDIA devices the sandbox was not given: pass --gpus "
                            "(or set gpus = true) for CUDA candidates to run")
                self._device = Device(present, why)
                self._emit("cuda.device", function=self.function, present=present, why=why)
                if not present:
                    self.notes.append(f"{NO_DEVICE} ({why})")
                    self._emit("cuda.no_device", function=self.function, reason=why)
            return self._device

    async def build_only(self) -> bool:
        """True when no CUDA device is visible: candidates are then only built."""
        return not (await self.device()).present

    async def make_tests(self, extra_inputs: Sequence[Any] = ()) -> list[TestCase]:
        """The C harness's tests on a device; without one, none (the reference must still build)."""
        if not await self.build_only():
            return await super().make_tests(extra_inputs)
        log = await self._compile(self.reference_source)
        if log is not None:
            raise RuntimeError(f"the reference does not build with nvcc: {log}")
        return []

    async def run_matrix(self, sources: Mapping[str, str], tests: Sequence[TestCase]) -> ExecutionMatrix:
        if not await self.build_only():
            return await super().run_matrix(sources, tests)
        # Built, never run: a failed build is recorded (``build_logs``) and no test is passed.
        matrix = ExecutionMatrix(candidates=list(sources), tests=[t.id for t in tests])
        logs = await asyncio.gather(*(self._compile(src) for src in dict.fromkeys(sources.values())))
        by_source = dict(zip(dict.fromkeys(sources.values()), logs, strict=True))
        for cid, src in sources.items():
            if by_source[src] is not None:
                self.build_logs[cid] = by_source[src]
            for t in tests:
                matrix.set(cid, t.id, "error", "build failed" if by_source[src] is not None else "not run: no CUDA device")
        return matrix

    async def _compile(self, source: str) -> str | None:
        """Compile one source as it is (no driver: nothing will run it); its log when it fails."""
        stem = f"cu_{digest(source)}"
        await self.workdir.write(f"{stem}.cu", source)
        res = await run_limited(self.workdir, self.limiter,
                                f"{shlex.join(['nvcc', *self.flags])} -c {stem}.cu -o {stem}.o", self.build_timeout)
        return None if res.ok else cap(res.summary(LOG_LIMIT), LOG_LIMIT)

    async def time(self, sources: Mapping[str, str], *, repeats: int = 5,
                   target: TargetParallelism | None = None) -> dict[str, Timing]:
        """Timed at one host thread on a device; without one, nothing is timed."""
        if await self.build_only():
            return {}
        return await super().time(sources, repeats=repeats, target=TargetParallelism(threads=1, source=ONE_HOST_THREAD))

    async def _race_check(self, source: str, cids: list[str], tests: Sequence[TestCase],
                          literals: Sequence[Mapping[str, Any]], matrix: ExecutionMatrix) -> None:
        """The first small and medium tests under compute-sanitizer's racecheck: a hazard makes
        every test of the candidate ``flaky``."""
        binary, _ = await self.builds.candidate(source, literals)
        if binary is None:
            return
        spec = f"{binary}.racecheck.txt"
        await self.workdir.write(spec, spec_lines(self.plan, tests, race_inputs(tests)))
        res = await run_limited(
            self.workdir, self.limiter,
            f"compute-sanitizer --tool racecheck --error-exitcode {RACECHECK_EXIT} ./{binary} "
            f"{self._check_args([1], 1)} < {spec}", max(120.0, 20 * self.call_timeout))
        if res.exit_code == 127:
            self._race_check_skipped("compute-sanitizer is not installed where the candidates run")
            return
        report = read_racecheck(res)
        if not report.racy:
            return
        first = report.summary.splitlines()[0]
        for cid in cids:
            self.races[cid] = report.summary
            self.race_counts[cid] = report.count
            self.notes.append(f"{cid}: compute-sanitizer racecheck found a hazard:\n{report.summary}")
            for t in tests:
                matrix.set(cid, t.id, "flaky", f"flaky: {first}")
                self.details.setdefault(cid, {})[t.id] = f"flaky racecheck {first}"
        self._emit("differential.race", function=self.function, candidates=cids, summary=report.summary)
