"""The differential harness seam: the original code is the reference for every candidate.

Where a task keeps behaviour (parallelize, optimize, refactor), a harness feeds the same
inputs to the reference and to each candidate and compares what they produce. One
implementation per language, each declaring that it implements this Protocol
(``c_harness.CHarness`` for C/C++, ``python_harness.PythonHarness`` for Python); selection
only sees the ``ExecutionMatrix`` and ``Timing``s they return.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from bakeoff.agent.types import ExecutionMatrix, TargetParallelism, TestCase, Timing, TimingSetup


@runtime_checkable
class DifferentialHarness(Protocol):
    language: str
    timing_setup: TimingSetup | None  # what the last ``time`` measured at and on

    async def make_tests(self, extra_inputs: Sequence[Any] = ()) -> list[TestCase]:
        """Inputs from the function's types plus ``extra_inputs`` (model-proposed edge cases),
        run on the reference; an input the reference cannot handle is dropped. Each returned
        test carries the reference's output as ``expected``."""
        ...

    async def run_matrix(self, sources: Mapping[str, str], tests: Sequence[TestCase]) -> ExecutionMatrix:
        """Every candidate (id -> source) on every test, repeated and at several thread
        counts; a result that changes between runs is ``flaky``; a build failure is ``error``
        on every test."""
        ...

    async def time(self, sources: Mapping[str, str], *, repeats: int = 5,
                   target: TargetParallelism | None = None) -> dict[str, Timing]:
        """Interleaved timing of each candidate against the reference on an input grown until
        the reference takes long enough, at the ``target`` parallelism (default: the CPUs
        this process may use), with the scaling curve at 1, 2, 4, ... below it."""
        ...
