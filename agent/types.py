"""Plain data passed between bakeoff's components. Everything here serializes to JSON."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field

# --------------------------------------------------------------------------- planning


class Task(BaseModel):
    """One node of a plan: call ``tool`` with ``args`` once ``deps`` have finished.

    An argument value may reference an earlier task's result: ``"$3"`` is task 3's whole
    result, ``"$3.path"`` one field of it. A reference keeps the referenced value's type.
    """

    id: int
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    deps: list[int] = Field(default_factory=list)
    thought: str = ""


class Plan(BaseModel):
    tasks: list[Task] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)  # bad lines, reported back to the planner


class ToolCall(BaseModel):
    """The trace of one executed task."""

    task_id: int
    tool: str
    args: dict[str, Any]
    status: Literal["ok", "error", "skipped", "timeout"]
    started_at: float = 0.0
    ended_at: float = 0.0
    result: Any = None
    error: str | None = None
    result_chars: int = 0
    tokens: int = 0
    cost_usd: float = 0.0


# --------------------------------------------------------------------------- candidates


class CurvePoint(BaseModel):
    """The speedup over the original at ``threads`` (ParEval's speedup_n) and its interval."""

    threads: int
    speedup: float | None = None  # None: no timing at this count (the run failed)
    low: float | None = None
    high: float | None = None
    censored: bool = False  # stopped at its time limit: the speedup is at most ``high``

    @computed_field  # type: ignore[prop-decorator]
    @property
    def efficiency(self) -> float | None:
        """ParEval's efficiency_n = speedup_n / n."""
        return None if self.speedup is None else self.speedup / self.threads


class Timing(BaseModel):
    """Interleaved timing of a candidate against the baseline (A B A B ...).

    ``speedup``, ``low`` and ``high`` are at ``threads``, the target parallelism; ``curve``
    holds the speedup at each thread count measured (1, 2, 4, ... up to the target), the
    target's point included.
    """

    baseline_s: list[float] = Field(default_factory=list)
    candidate_s: list[float] = Field(default_factory=list)
    speedup: float | None = None  # median(baseline) / median(candidate)
    low: float | None = None  # bootstrap interval of the speedup
    high: float | None = None
    threads: int | None = None
    curve: list[CurvePoint] = Field(default_factory=list)

    @property
    def faster(self) -> bool:
        """Faster only when the whole interval lies above 1."""
        return self.low is not None and self.low > 1.0


class TargetParallelism(BaseModel):
    """How many threads (or processes) candidates are timed at, and who said so."""

    threads: int = Field(ge=1)
    source: str  # e.g. "--threads", "config threads", "cgroup CPU quota", "CPU affinity"


class TimingSetup(BaseModel):
    """What the timings of one fan-out or selection mean: the parallelism they were measured
    at, the thread counts of the scaling curve, and the input they ran on."""

    threads: int
    threads_source: str = ""
    curve_threads: list[int] = Field(default_factory=list)
    size: dict[str, float] = Field(default_factory=dict)  # the timing input's size variables
    reference_s: float | None = None  # the original's time per call at one thread on that input
    sizing: str = ""  # how the size was reached, e.g. "grown until the original took 0.2 s"


class Candidate(BaseModel):
    """One candidate edit and everything known about it."""

    id: str
    patch: str = ""  # unified diff against the base
    source: str | None = None  # for function-level candidates: the candidate's code
    model: str = ""
    strategy: str = ""
    temperature: float | None = None
    built: bool | None = None  # None: not built yet
    build_log: str = ""
    tests_passed: int | None = None
    tests_failed: int | None = None
    timing: Timing | None = None
    cost_usd: float = 0.0
    tokens: int = 0
    rounds: int = 0  # repair rounds used
    error: str | None = None  # why the candidate failed, if it did
    messages: list[dict[str, str]] = Field(default_factory=list)


# --------------------------------------------------------------------------- selection

Outcome = Literal["pass", "fail", "error", "timeout", "flaky"]


class TestCase(BaseModel):
    """A test every candidate runs. ``code`` is what runs; ``input`` is for differential cases."""

    __test__ = False  # not a pytest class

    id: str
    kind: Literal["given", "generated", "differential", "distinguishing"]
    code: str = ""
    input: Any = None
    expected: Any = None
    weight: int = 1  # a test generated k times counts k times (CodeT)
    valid: bool | None = None  # after validation against the reference; None: not checked


class ExecutionMatrix(BaseModel):
    """``cells[candidate][test]``: the outcome; ``outputs``: what it printed or returned."""

    candidates: list[str] = Field(default_factory=list)
    tests: list[str] = Field(default_factory=list)
    cells: dict[str, dict[str, Outcome]] = Field(default_factory=dict)
    outputs: dict[str, dict[str, str]] = Field(default_factory=dict)

    def set(self, cand: str, test: str, outcome: Outcome, output: str | None = None) -> None:
        if cand not in self.cells:
            self.cells[cand] = {}
            if cand not in self.candidates:
                self.candidates.append(cand)
        if test not in self.tests:
            self.tests.append(test)
        self.cells[cand][test] = outcome
        if output is not None:
            self.outputs.setdefault(cand, {})[test] = output

    def passed(self, cand: str) -> frozenset[str]:
        return frozenset(t for t, o in self.cells.get(cand, {}).items() if o == "pass")

    def flaky(self, cand: str) -> bool:
        return any(o == "flaky" for o in self.cells.get(cand, {}).values())


class ReportRow(BaseModel):
    candidate: str
    model: str = ""  # the model that wrote it
    built: bool | None = None
    gate: bool | None = None  # passed the repo's own tests that passed at base
    tests_passed: int = 0
    tests_total: int = 0
    group: int | None = None
    flaky: bool = False
    correct: bool | None = None
    speedup: float | None = None  # at the target parallelism
    low: float | None = None
    high: float | None = None
    threads: int | None = None  # the target parallelism the speedup is at
    curve: list[CurvePoint] = Field(default_factory=list)  # speedup at 1, 2, 4, ... target
    cost_usd: float = 0.0
    note: str = ""


class Verdict(BaseModel):
    """The outcome of selection: who won, why, and the table behind it."""

    winner: str | None = None
    correct: list[str] = Field(default_factory=list)
    method: Literal["reference", "dual-agreement", "majority", "none"] = "none"
    reason: str = ""
    rows: list[ReportRow] = Field(default_factory=list)
    groups: list[list[str]] = Field(default_factory=list)
    # A speed task ships only a winner whose interval at the target lies above 1; otherwise
    # ``winner`` is None, ``not_faster`` is set and ``best`` names the correct candidate that
    # is offered without being applied.
    speed_task: bool = False
    not_faster: bool = False
    best: str | None = None
    timing: TimingSetup | None = None


class FanOutResult(BaseModel):
    """What a fan-out produced: the verdict, every candidate, the winner and its patch, the table."""

    verdict: Verdict
    candidates: list[Candidate] = Field(default_factory=list)
    winner: Candidate | None = None
    patch: str = ""
    report_table: str = ""


class RunReport(BaseModel):
    """What a whole run produced; the front doors render this."""

    task: str
    # success: a verified winner (or a question answered without an edit); unverified: an
    # edit no fan-out checked (no tests, no harness), never shipped as a success.
    # not-faster: a speed task whose correct candidates are not faster than the original;
    # the best of them is offered (``patch``), never applied as a success.
    status: Literal["success", "unverified", "no-correct-candidate", "not-faster", "budget-exhausted", "error"]
    answer: str = ""
    verdict: Verdict | None = None
    winner: Candidate | None = None
    candidates: list[Candidate] = Field(default_factory=list)
    patch: str = ""
    cost_usd: float = 0.0
    tokens: int = 0
    # The share of cost and tokens that is estimated: streams that broke before their usage arrived.
    estimated_usd: float = 0.0
    estimated_tokens: int = 0
    duration_s: float = 0.0
    trace: list[ToolCall] = Field(default_factory=list)
    fan_outs: list[FanOutResult] = Field(default_factory=list)  # every fan-out of the run, in order
    error: str | None = None
    run_id: str | None = None  # names the run's saved event log and report
    base_commit: str | None = None  # the commit the run read; apply refuses if the repo moved
