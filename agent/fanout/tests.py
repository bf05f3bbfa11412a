"""The tests every candidate runs besides the repository's own: tests the tester model writes,
and the differential harness's cases, which compare each candidate with the base version.

They are made while the candidates develop, from the base version alone.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from bakeoff.agent.events import EventBus
from bakeoff.agent.fanout.settings import FanOutSettings
from bakeoff.agent.harness.protocol import DifferentialHarness
from bakeoff.agent.seams import Model, Sandbox
from bakeoff.agent.types import TestCase


class MadeTests(BaseModel):
    """The tests made for a fan-out, and what could not be made (notes for the report)."""

    tests: list[TestCase] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    harness_failed: bool = False
    # No CUDA device: the candidates were only built, nothing ran, and no one is called correct.
    build_only: bool = False


def pick_harness(language: str, entry: str | None, source: str | None, sandbox: Sandbox | None,
                 events: EventBus, goal: str = "") -> DifferentialHarness | None:
    """The differential harness for the entry function, with the base version as reference.

    None when there is no entry function or no harness for the language: the vote then
    rests on the repo's tests, the benchmark's output and the generated tests. The harness
    compiles and runs candidates in ``sandbox`` when one is given, else on this machine in a
    temporary directory of its own (see ``FanOutSettings.harness_in_sandbox``). C/C++
    candidates run under ``mpirun`` at several rank counts when the code calls MPI or the goal
    asks for it (``mpi_harness``); their input spec is inferred from the source here and
    checked when the tests are made. CUDA candidates are built with nvcc, and run only where
    a CUDA device is visible (``cuda_harness``).
    """
    if entry is None or source is None:
        return None
    if language == "python":
        from bakeoff.agent.harness.pyexec import SandboxRunner
        from bakeoff.agent.harness.python_harness import PythonHarness

        return PythonHarness(source, entry, runner=SandboxRunner(sandbox) if sandbox is not None else None)
    if language in ("c", "cpp"):
        from bakeoff.agent.harness.c_harness import CHarness
        from bakeoff.agent.harness.c_spec import infer_spec
        from bakeoff.agent.harness.mpi_harness import MpiHarness, wants_mpi

        kind = MpiHarness if wants_mpi(source, goal) else CHarness
        harness = kind(source, entry, language="c++" if language == "cpp" else "c", sandbox=sandbox, events=events)
        harness.draft = infer_spec(source, entry)
        return harness
    if language == "cuda":
        from bakeoff.agent.harness.c_spec import infer_spec
        from bakeoff.agent.harness.cuda_harness import CudaHarness

        harness = CudaHarness(source, entry, sandbox=sandbox, events=events)
        harness.draft = infer_spec(source, entry)
        return harness
    return None


async def settle_harness_spec(harness: DifferentialHarness, tester: Model | None, goal: str) -> tuple[bool, list[str]]:
    """A C/C++ harness with an inferred spec gets it checked (the tester proposes one when the
    inferred one fails): (whether the harness can test, notes for the report)."""
    from bakeoff.agent.fanout.trajectory import model_errors
    from bakeoff.agent.harness.c_spec_model import settle_spec

    if getattr(harness, "draft", None) is None:
        return True, []
    try:
        outcome = await settle_spec(harness, tester, goal)  # type: ignore[arg-type]
    except model_errors() as exc:
        return False, [f"no differential tests: the inferred input spec failed its check and the tester could not "
                       f"propose one ({type(exc).__name__}: {exc})"[:300]]
    if not outcome.testable:
        return False, [f"no differential tests: no input spec passed its check ({'; '.join(outcome.problems)})"[:500]]
    if outcome.source == "model":
        return True, ["input spec proposed by the tester model (the inferred one failed its check)"]
    return True, []


async def make_tests(harness: DifferentialHarness | None, tester: Model | None, goal: str, source: str | None,
                     entry: str | None, language: str, settings: FanOutSettings) -> MadeTests:
    """Generated tests (tester model) and differential cases (harness), made while candidates develop."""
    from bakeoff.agent.fanout.trajectory import model_errors

    out = MadeTests()
    if tester is not None and entry and source and language == "python" and settings.test_samples:
        from bakeoff.agent.harness.testgen import generate_tests

        try:
            out.tests.extend(await generate_tests(tester, goal, source, entry, n=settings.test_samples))
        except model_errors() as exc:
            out.notes.append(f"no generated tests: {type(exc).__name__}: {exc}")
    if harness is not None and await built_only(harness, out):
        return out
    if harness is not None:
        from bakeoff.agent.harness.edge_inputs import make_tests_with, propose_inputs

        testable, notes = await settle_harness_spec(harness, tester if settings.test_samples else None, goal)
        out.notes.extend(notes)
        if not testable:
            out.harness_failed = True
            return out

        edge: list = []
        if tester is not None and entry and source and settings.test_samples:
            try:
                edge, notes = await propose_inputs(tester, goal=goal, source=source, entry=entry, language=language,
                                                   harness=harness)
                out.notes.extend(notes)
            except model_errors() as exc:
                out.notes.append(f"no model-proposed edge inputs: {type(exc).__name__}: {exc}"[:200])
        try:
            made, notes = await make_tests_with(harness, edge)
            out.tests.extend(made)
            out.notes.extend(notes)
        except RuntimeError as exc:  # the harness could not build its driver for this function
            out.notes.append(f"no differential tests: {exc}"[:500])
            out.harness_failed = True
    return out


async def built_only(harness: DifferentialHarness, out: MadeTests) -> bool:
    """A CUDA harness that sees no device: the reference is built, no test is made, and the
    report says the candidates are gated on building only (True then)."""
    from bakeoff.agent.harness.cuda_harness import CudaHarness

    if not isinstance(harness, CudaHarness) or not await harness.build_only():
        return False
    out.build_only = True
    try:
        await harness.make_tests()
    except RuntimeError as exc:  # the reference itself does not build
        out.harness_failed = True
        out.notes.append(f"no differential tests: {exc}"[:500])
    out.notes.extend(n for n in harness.notes if n not in out.notes)
    return True
