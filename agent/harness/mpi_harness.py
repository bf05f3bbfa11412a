"""The differential harness for MPI candidates: the C/C++ harness, run under ``mpirun``.

A candidate that calls MPI is built with ``mpicxx`` against a driver that provides
``MPI_Init``/``MPI_Finalize`` (``mpi_runtime``) and is run at several rank counts in one
launch: 1, 2, 3, 4 and more ranks than cores. Inputs are sized so they do not divide evenly
by those counts; rank 0's result is compared with the serial reference's; a deadlock ends
at a time limit (a timeout), a wrong result at any rank count is a failure, results that
differ between runs at one rank count are flaky. Winners are timed against the reference at
the target rank count, on the large input grown until the reference takes the sizing's time
per call at one rank (every rank holds a copy of the input, so the memory cap is shared by the
ranks timed). Everything else (tests, specs, the vote's matrix) is ``CHarness``'s.

Launches use shared memory only (``OMPI_MCA_btl=self,vader``), so they need no network and
run inside sandboxes that have none; as root, Open MPI needs its run-as-root switches.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from bakeoff.agent.harness.c_build import Dialect
from bakeoff.agent.harness.c_harness import CHarness
from bakeoff.agent.harness.c_runs import spec_lines
from bakeoff.agent.harness.c_timing import read_timing
from bakeoff.agent.harness.c_workdir import digest
from bakeoff.agent.harness.mpi_runtime import MPI_MAIN, PRELUDE, SYNC
from bakeoff.agent.types import TargetParallelism, TestCase, Timing, TimingSetup

MPI = Dialect(cxx="mpicxx", cc="mpicc", main=MPI_MAIN, prelude=PRELUDE, sync=SYNC)
# Shared memory only; no spinning while idle (the ranks oversubscribe the cores); one thread
# per rank; and Open MPI's consent to run as root (containers, CI).
MPI_ENV = ("OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_mpi_yield_when_idle=1 "
           "OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
           "OMPI_MCA_plm=isolated OMP_NUM_THREADS=1 HWLOC_HIDE_ERRORS=1")
SKIP_CXX_BINDINGS = ("-DOMPI_SKIP_MPICXX", "-DMPICH_SKIP_MPICXX")
UNEVEN = 60  # medium and large sizes are 7 more than a multiple of this: no rank count up to 6 divides them

_CALLS_MPI = re.compile(r"\bMPI_[A-Z][A-Za-z_]*\s*\(|#\s*include\s*[<\"]mpi\.h[>\"]")


def calls_mpi(source: str) -> bool:
    return bool(_CALLS_MPI.search(source))


def wants_mpi(source: str | None, goal: str = "") -> bool:
    """MPI candidates are expected: the code already calls MPI, or the task asks for it."""
    return bool(source and calls_mpi(source)) or bool(re.search(r"\bMPI\b", goal))


def default_ranks() -> list[int]:
    """1, 2, 3, 4 and more ranks than cores."""
    cores = os.cpu_count() or 2
    return sorted({1, 2, 3, 4, max(5, cores + 1)})


def uneven(constraints: Mapping[str, Any]) -> dict[str, Any]:
    """The constraints with medium and large sizes that no small rank count divides (powers of
    two stay as they are)."""
    out = dict(constraints)
    if not out.get("vars"):
        return out
    out["vars"] = {name: dict(spec) for name, spec in out["vars"].items()}
    for spec in out["vars"].values():
        for size in ("medium", "large"):
            value = spec.get(size)
            if isinstance(value, int | float) and not spec.get("pow2") and value > UNEVEN:
                spec[size] = int(value) - int(value) % UNEVEN + 7
    return out


EVEN_RANKS = [1, 2, 4, 8]


def even(constraints: Mapping[str, Any]) -> dict[str, Any]:
    """The constraints under the conditions ParEval's labels were made in, for a comparison row
    in the benchmark, never for a user's code: every size a power of two of at least 8 (so the
    rank counts of ``EVEN_RANKS`` all divide it) and no edge cases. A candidate that drops the
    remainder of ``n / ranks`` passes here and fails under ``uneven``."""
    out = dict(constraints)
    out.pop("edge", None)
    if not out.get("vars"):
        return out
    out["vars"] = {}
    for name, given in constraints["vars"].items():
        spec = {**given, "pow2": True}
        small = spec.get("small", [1, 16])
        if isinstance(small, list):
            spec["small"] = [max(EVEN_RANKS[-1], int(small[0])), max(EVEN_RANKS[-1], int(small[1]))]
        for size in ("medium", "large"):
            value = spec.get(size)
            if isinstance(value, int | float) and value >= EVEN_RANKS[-1]:
                spec[size] = 1 << int(math.log2(value))
        out["vars"][name] = spec
    return out


class MpiHarness(CHarness):
    """Differential harness for one C/C++ function whose candidates use MPI."""

    dialect = MPI

    def __init__(self, reference_source: str, function: str, *, ranks: Sequence[int] | None = None,
                 repeats: int = 2, compile_flags: Sequence[str] = ("-O2", "-fopenmp"),
                 sizes: str = "uneven", **kwargs: Any):
        if sizes not in ("uneven", "even"):
            raise ValueError(f"sizes must be 'uneven' or 'even', not {sizes!r}")
        self.sizes = sizes
        self.ranks = sorted(set(ranks or (EVEN_RANKS if sizes == "even" else default_ranks())))
        kwargs["race_check"] = False  # ThreadSanitizer does not understand MPI's processes
        kwargs.pop("threads", None)
        # Without the deprecated C++ bindings mpi.h compiles in a third of the time.
        flags = [*compile_flags, *(f for f in SKIP_CXX_BINDINGS if f not in compile_flags)]
        super().__init__(reference_source, function, threads=self.ranks, repeats=repeats, compile_flags=flags, **kwargs)

    def use_constraints(self, constraints: Mapping[str, Any]) -> None:
        super().use_constraints(even(constraints) if self.sizes == "even" else uneven(constraints))
        self.runs.death_ends_all = True

    def launcher(self, pin: str, ranks: int | None = None) -> str:
        # ``env``: the prefix may follow ``timeout`` or ``taskset``, which run commands, not assignments.
        return f"{pin}env {MPI_ENV} mpirun -np {ranks or max(self.ranks)} --bind-to none "

    async def timing_input(self, pin: str | None = None, ranks: int = 1) -> tuple[TestCase, TimingSetup]:
        """The large input, grown until the reference takes ``sizing.min_time_s`` per call at one
        rank (probed under ``mpirun -np 1``); its memory cap is shared by the ``ranks`` that
        will each hold a copy. Sized once."""
        launch = self.launcher(self.timing.pin if pin is None else pin, 1)
        memory = self.sizing.memory_bytes
        limits = dataclasses.replace(self.sizing, memory_bytes=memory / max(1, ranks) if memory else None)
        return await super().timing_input(launch, limits)

    async def time(self, sources: Mapping[str, str], *, repeats: int = 5,
                   target: TargetParallelism | None = None) -> dict[str, Timing]:
        """Each candidate against the reference on the sized input, interleaved, at the target's
        thread count as the rank count (no scaling curve). Distinct sources are timed once
        each, one per CPU slot at a time (one at a time without slots)."""
        goal = self.target(target)
        ranks = max(1, goal.threads)
        test, setup = await self.timing_input(ranks=ranks)
        self.timing_setup = setup.model_copy(update={"threads": ranks, "threads_source": goal.source,
                                                     "curve_threads": [ranks]})
        slots = self.timing_options.slots
        done: dict[str, Timing | str] = {}

        async def one(src: str) -> None:
            async with slots.take() if slots else contextlib.nullcontext(None) as pin:
                done[src] = await self._time_source(src, test, repeats, ranks, pin)

        distinct = list(dict.fromkeys(sources.values()))
        if slots:
            await asyncio.gather(*(one(src) for src in distinct))
        else:
            for src in distinct:
                await one(src)
        out: dict[str, Timing] = {}
        for cid, src in sources.items():
            result = done[src]
            if isinstance(result, Timing):
                out[cid] = result
            else:
                self.timing_errors[cid] = result
        return out

    async def _time_source(self, source: str, test: TestCase, repeats: int, ranks: int,
                           pin: str | None) -> Timing | str:
        binary, log = await self.builds.candidate(source, [])
        if binary is None:
            return f"does not build: {log}"
        name = f"timing_{digest(binary)}.txt"
        await self.workdir.write(name, spec_lines(self.plan, [test], [0]))
        if pin is None:
            pin = f"taskset -c {shlex.quote(self.cpus)} " if self.cpus else ""
        cap = max(1, int(round(self.call_timeout)))
        res = await self.workdir.run(f"{self.launcher(pin, ranks)}./{binary} time {ranks} {repeats} 1 {cap} < {name}",
                                     self.call_timeout * (2 * repeats + 3) + 60)
        return read_timing(res, [ranks])
