"""Validating a C/C++ input spec against the reference before anyone trusts it.

A spec (inferred by ``c_spec``, proposed by the tester model, or written by a person) passes
when, driven by it, the reference

1. builds (with every helper it calls linked);
2. runs clean under AddressSanitizer, UndefinedBehaviorSanitizer and libstdc++'s bounds
   assertions on its small inputs and one medium one: an input that reads past a container or
   overflows is outside the function's domain, so the spec is wrong;
3. accepts the inputs: a reference that throws on every one of them rejects the spec;
4. takes longer as sizes grow (the large input against the medium one), within a time
   budget: a size variable that drives no work, or sizes the reference cannot finish, are
   the spec's mistakes too.

A spec that fails is repaired where the failure says how (the smallest sizes raised when
only they break the reference; sizes scaled to the budget), else dropped. ``settle`` adopts
the first spec of a list that passes into the harness.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bakeoff.agent.harness import c_plan
from bakeoff.agent.harness.c_build import DriverBuilds, DriverRuntime
from bakeoff.agent.harness.c_runs import DriverRuns, spec_lines
from bakeoff.agent.harness.c_spec import SpecDraft
from bakeoff.agent.harness.c_workdir import digest, run_limited
from bakeoff.agent.types import TestCase

if TYPE_CHECKING:
    from bakeoff.agent.harness.c_harness import CHarness

SANITIZE = ("-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
            "-D_GLIBCXX_ASSERTIONS")
SANITIZE_ENV = "ASAN_OPTIONS=detect_leaks=0:exitcode=86 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=0 "
MEDIUM_BUDGET_S = 0.5  # the reference on a race-exposing input, run at every thread count
LARGE_BUDGET_S = 3.0  # the reference on the timing input, run on every timing repeat
GROWTH = 2.0  # the large input must take at least this much longer than the medium one (it holds ~8x the work)
TIMES = 3  # runs of each size; the least time counts
MEASURABLE_S = 2e-3  # below this, a time says nothing about growth
ZERO = "spec-zero"  # the probe of empty inputs: it decides how small edge cases may go, it fails nothing
_UB_ONLY = re.compile(r"runtime error")
_MEMORY = re.compile(r"AddressSanitizer|Assertion|out of bounds|index \S+ out of")
_SANITIZER = re.compile(r"AddressSanitizer|runtime error|Assertion .* failed|LeakSanitizer|stack-overflow")


@dataclass
class SpecOutcome:
    """What ``settle`` decided: the spec the harness now uses, or why none could be trusted."""

    constraints: dict[str, Any] | None
    source: str = ""  # "inferred", "model", "given": who wrote the spec adopted
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # why the last spec tried failed

    @property
    def testable(self) -> bool:
        return self.constraints is not None


@dataclass
class _Check:
    ok: bool
    constraints: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    retry: bool = False  # the constraints were repaired: check them again


def _corner(spec: dict[str, Any], top: bool) -> float:
    lo, hi = spec.get("small") or [1, 16]
    v = int(hi if top else lo)
    if spec.get("pow2"):
        v = 1 << (max(v, 1).bit_length() - 1)
    return float(v)


def _tests(constraints: dict[str, Any], small: int, seed: int) -> list[TestCase]:
    """Small inputs (every size at the bottom of its range, then at the top, then drawn) and
    one medium one."""
    vars_spec = dict(constraints.get("vars") or c_plan.DEFAULT_VARS)
    rng = random.Random(seed)
    out = []
    for k in range(small):
        drawn = c_plan.draw_vars(vars_spec, rng, "small")
        if k < 2:
            drawn = {name: _corner(spec, top=k == 1) for name, spec in vars_spec.items()}
        out.append(TestCase(id=f"spec-small-{k}", kind="differential", input={"seed": rng.randrange(1 << 31), "vars": drawn}))
    out.append(TestCase(id="spec-medium", kind="differential",
                        input={"seed": rng.randrange(1 << 31), "vars": c_plan.draw_vars(vars_spec, rng, "medium")}))
    if not any(spec.get("pow2") for spec in vars_spec.values()):
        out.append(TestCase(id=ZERO, kind="differential", input={"seed": rng.randrange(1 << 31),
                                                                 "vars": dict.fromkeys(vars_spec, 0.0)}))
    return out


async def _sanitized_run(harness: CHarness, constraints: dict[str, Any], tests: list[TestCase]) -> dict[int, list[str]] | str:
    """The reference's answers on ``tests``, built with the sanitizers; a string when the
    sanitized build itself is impossible here (the check is then skipped, with a note)."""
    plan = c_plan.build_plan(harness.signature, constraints)
    flags = [*SANITIZE, *(f for f in harness.flags if f.startswith("-fopenmp") or f.startswith("-std="))]
    runtime = DriverRuntime(harness.workdir, harness.rt_dir, flags, harness.limiter, harness.build_timeout)
    builds = DriverBuilds(language=harness.language, flags=flags, reference_source=harness.reference_source, plan=plan,
                          support=str(constraints.get("support", "")), workdir=harness.workdir, runtime=runtime,
                          limiter=harness.limiter, build_timeout=harness.build_timeout)
    try:
        binary = await builds.reference_binary([])
    except RuntimeError as exc:
        return f"sanitizer check skipped: the reference does not build with {' '.join(SANITIZE[3:4])}: {str(exc)[-300:]}"
    runs = DriverRuns(harness.workdir, harness.limiter, plan, max(harness.call_timeout, 30.0), SANITIZE_ENV)
    return await runs.protocol(binary, "ref", tests, 1)


def _read_sanitized(results: dict[int, list[str]], tests: list[TestCase], constraints: dict[str, Any]) -> _Check:
    """Problems of a sanitized run; when only the smallest inputs break the reference, the
    repair (their floor raised by one) to try."""
    check = _Check(ok=True, constraints=constraints)
    broken, rejected = [], 0
    probe = next((i for i, t in enumerate(tests) if t.id == ZERO), None)
    if probe is not None:
        tests = tests[:probe]
        if results.get(probe, ["error"])[0] in ("ok", "exc"):
            # Empty inputs run clean: edge cases may go down to size 0 (a throw only drops that test).
            for spec in (constraints.get("vars") or {}).values():
                spec["min"] = 0
    for i, t in enumerate(tests):
        r = results.get(i, ["error", "no result"])
        if r[0] == "exc":
            rejected += 1
        elif r[0] != "ok":
            why = " ".join(r[1:])
            m = _SANITIZER.search(why)
            excerpt = why[m.start():][:200] if m else why[-200:]
            broken.append((t, f"{t.id} {_sizes(t)}: the reference {'hangs' if r[0] == 'timeout' else 'breaks'}: {excerpt}"))
    if rejected == len(tests):
        check.ok = False
        check.problems.append("the reference rejects (throws on) every input the spec makes")
    if broken and len(broken) == len(tests) and all(_UB_ONLY.search(why) and not _MEMORY.search(why) for _, why in broken):
        # Undefined behaviour on every input, the smallest too, and no memory error: the
        # reference's own (``__builtin_ctz(0)``), not the spec's; its outputs are what they are.
        check.notes.append(f"the reference has undefined behaviour on every input, not held against the spec: "
                           f"{broken[0][1][:160]}")
        broken = []
    if broken:
        check.ok = False
        check.problems += [why for _, why in broken[:3]]
        largest = max(max((t.input.get("vars") or {"n": 0}).values()) for t, _ in broken)
        if largest < 2 and _raise_floors(constraints, int(largest) + 1):
            check.retry = True
            check.notes.append(f"inputs of size {int(largest)} or less break the reference: small sizes start at "
                               f"{int(largest) + 1}")
    return check


def _sizes(t: TestCase) -> str:
    return "(" + ", ".join(f"{k}={int(v)}" for k, v in (t.input.get("vars") or {}).items()) + ")"


def _raise_floors(constraints: dict[str, Any], floor: int) -> bool:
    """Every size variable's smallest size raised to ``floor`` (1 or 2): the repair for a
    reference that needs a non-empty (or two-element) input."""
    raised = False
    vars_spec = constraints.setdefault("vars", copy.deepcopy(c_plan.DEFAULT_VARS))
    for spec in vars_spec.values():
        lo, hi = spec.get("small") or [1, 16]
        if lo < floor < hi:
            spec["small"] = [floor, hi]
            raised = True
    return raised


# --------------------------------------------------------------------------- growth


_T_LINE = re.compile(r"@@BK T (\d+) (\w+)(?: \S+ \S+ ([0-9.eE+-]+))?")


def _budget(size: str) -> float:
    return MEDIUM_BUDGET_S if size == "medium" else LARGE_BUDGET_S


async def _timed_run(harness: CHarness, sizes: Sequence[str]) -> dict[str, float | None]:
    """Seconds the reference takes to build each input and run on it, the least of ``TIMES``
    runs (None: it did not finish within the budget's allowance, or threw). The runs go in
    rounds, one of each size; once a size is over its budget the rest are not run: the sizes
    are scaled and checked again, and more runs of an input that large would only cost."""
    vars_spec = harness.plan.vars
    rng = random.Random(harness.seed + 7)
    drawn = {size: c_plan.draw_vars(vars_spec, rng, size) for size in sizes}
    tests = [TestCase(id=f"spec-{size}", kind="differential", input={"seed": 7, "vars": drawn[size]}) for size in sizes]
    binary = await harness.builds.reference_binary([])
    name = f"spec_{digest(binary, *sizes)}.txt"
    await harness.workdir.write(name, spec_lines(harness.plan, tests, range(len(tests))))
    found: dict[str, float | None] = dict.fromkeys(sizes)
    for _ in range(TIMES):
        res = await run_limited(harness.workdir, harness.limiter,
                                f"{harness.runs.pin}./{binary} ref {int(4 * LARGE_BUDGET_S)} < {name}",
                                4 * LARGE_BUDGET_S + 4 * MEDIUM_BUDGET_S + 30)
        seen = dict.fromkeys(sizes, False)
        for m in _T_LINE.finditer(res.stdout):
            size = sizes[int(m.group(1))]
            if m.group(2) == "ok" and m.group(3):
                seen[size] = True
                found[size] = min(float(m.group(3)), found[size] or float("inf"))
        if not all(seen.values()) or any((found[s] or 0) > _budget(s) for s in sizes):
            break
    return found


def _scale(constraints: dict[str, Any], size: str, factor: float, degree: int) -> None:
    """Every size variable's ``size`` (medium or large) times ``factor`` ** (1 / degree): the
    work scales by ``factor``; never below the top of the small range."""
    for spec in (constraints.get("vars") or {}).values():
        value = spec.get(size)
        if not isinstance(value, int | float):
            continue
        small = spec.get("small") or [1, 16]
        new = max(int(small[-1]) + 1, int(value * factor ** (1.0 / max(degree, 1))))
        spec[size] = 1 << (new.bit_length() - 1) if spec.get("pow2") else new


async def _check_growth(harness: CHarness, constraints: dict[str, Any], degree: int) -> _Check:
    """The reference, driven by the spec, takes longer on the large input than on the medium
    one, and each within its budget (else the sizes are scaled to fit, and checked again)."""
    check = _Check(ok=True, constraints=constraints)
    times = await _timed_run(harness, ["medium", "large"])
    medium, large = times["medium"], times["large"]
    for size, t in (("medium", medium), ("large", large)):
        budget = _budget(size)
        if t is None or t > budget:
            _scale(constraints, size, budget / 2 / (t or 4 * budget), degree)
            check.ok, check.retry = False, True
            took = f"the reference takes {'over ' + str(4 * budget) if t is None else f'{t:.2f}'} s on the {size} input"
            check.problems.append(f"{took}, over its budget of {budget:g} s")
            check.notes.append(f"{took}: its sizes scaled to the budget ({budget:g} s)")
    if check.ok and medium is not None and large is not None and large >= MEASURABLE_S and large < GROWTH * medium:
        again = await _timed_run(harness, ["medium", "large"])  # a busy machine can blur one measurement
        medium, large = min(medium, again["medium"] or medium), min(large, again["large"] or large)
    if check.ok and medium is not None and large is not None and large >= MEASURABLE_S and large < GROWTH * medium:
        check.ok = False
        check.problems.append(f"the reference takes no longer on the large input ({large:.4f} s) than on the medium one "
                              f"({medium:.4f} s): the spec's sizes drive no work")
    if check.ok:
        check.notes.append(f"the reference takes {medium:.4f} s on the medium input, {large:.4f} s on the large one")
    return check


# --------------------------------------------------------------------------- check and settle


async def check_spec(harness: CHarness, draft: SpecDraft, *, tries: int = 4) -> _Check:
    """``draft`` checked against the harness's reference (and repaired where the failure says
    how); on success the harness uses the checked spec."""
    constraints = copy.deepcopy(draft.constraints)
    notes: list[str] = []
    if draft.missing:
        return _Check(False, constraints, [f"the reference calls {', '.join(draft.missing)}(), declared but defined "
                                           f"nowhere in its source: its definition must be given"])
    problems: list[str] = []
    for _ in range(tries):
        result = await _check_once(harness, constraints, draft.degree)
        notes += result.notes
        if result.ok or not result.retry:
            return _Check(result.ok, constraints, result.problems, notes)
        problems = result.problems
    return _Check(False, constraints, ["the spec still failed after its repairs", *problems], notes)


async def _check_once(harness: CHarness, constraints: dict[str, Any], degree: int) -> _Check:
    """One round of the check with the harness driven by ``constraints`` (repairs land in them)."""
    try:
        harness.use_constraints(constraints)
        await harness.builds.reference_binary([])
    except RuntimeError as exc:  # the reference does not build, or its driver runtime does not
        return _Check(False, constraints, [str(exc)[:600]])
    except (c_plan.ConstraintError, ValueError, TypeError, ArithmeticError) as exc:
        return _Check(False, constraints, [f"the spec cannot drive the function: {exc}"])
    tests = _tests(constraints, small=6, seed=harness.seed)
    try:
        answers = await _sanitized_run(harness, constraints, tests)
    except (c_plan.ConstraintError, ValueError, TypeError, ArithmeticError) as exc:  # a size that breaks an expression
        return _Check(False, constraints, [f"the spec cannot drive the function on its own inputs: {exc}"])
    if isinstance(answers, str):
        check = _Check(True, constraints, notes=[answers])
    else:
        check = _read_sanitized(answers, tests, constraints)
        if not check.ok:
            return check
        if not any("undefined behaviour on every input" in n for n in check.notes):
            check.notes.append(f"the reference runs clean under ASan/UBSan on {len(tests)} inputs")
    try:
        growth = await _check_growth(harness, constraints, degree)
    except (c_plan.ConstraintError, ValueError, TypeError, ArithmeticError) as exc:
        return _Check(False, constraints, [f"the spec cannot drive the function on its large input: {exc}"])
    growth.notes = check.notes + growth.notes
    return growth


async def settle(harness: CHarness, drafts: Sequence[tuple[str, SpecDraft]]) -> SpecOutcome:
    """The first of ``drafts`` (who wrote it, the draft) that passes its check, adopted by the
    harness; when none passes, the harness keeps no trusted spec and the outcome says why."""
    notes: list[str] = []
    problems: list[str] = []
    for who, draft in drafts:
        check = await check_spec(harness, draft)
        notes += [f"{who} spec: {n}" for n in check.notes]
        if check.ok:
            harness.use_constraints(check.constraints)
            return SpecOutcome(check.constraints, who, notes)
        problems = check.problems
        notes.append(f"{who} spec dropped: {'; '.join(check.problems)[:400]}")
    return SpecOutcome(None, "", notes, problems)
