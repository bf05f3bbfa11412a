"""A run's report: what the planner, its tools and its fan-outs did, and the status that says
what it is worth. Nothing is a success unless execution said so."""

from __future__ import annotations

from collections.abc import Sequence

from bakeoff.agent.models.budget import MIN_COMPLETION_TOKENS, Budget
from bakeoff.agent.planning.outcome import AgentResult
from bakeoff.agent.planning.results import summarize_result
from bakeoff.agent.types import Candidate, FanOutResult, RunReport, ToolCall


def run_report(task: str, result: AgentResult, fan_outs: Sequence[FanOutResult], unverified_patch: str,
               budget: Budget, *, run_id: str, base_commit: str | None) -> RunReport:
    """The report of one run. The last fan-out is the run's answer; every one is reported.

    A speed task whose correct candidates are none of them faster than the original is
    ``not-faster``: the best of them is the report's patch, offered but not applied.
    Without a fan-out, an edit the planner made with its own tools is ``unverified`` (no
    test, harness or vote checked it) and a run that changed nothing answered a question.
    """
    trace = [_light(t) for t in result.trace]
    report = RunReport(task=task, status="success", answer=result.answer or "", trace=trace,
                       fan_outs=list(fan_outs), base_commit=base_commit, run_id=run_id)
    fan = fan_outs[-1] if fan_outs else None
    if fan is not None:
        report.verdict, report.candidates, report.winner = fan.verdict, list(fan.candidates), fan.winner
        report.patch = fan.patch or ""
        if fan.winner is None and fan.verdict.not_faster:
            # Correct but not faster: the best is offered as a patch, never shipped as a success.
            best = next((c for c in fan.candidates if c.id == fan.verdict.best), None)
            report.status, report.error = "not-faster", fan.verdict.reason
            report.patch = best.patch if best is not None else ""
        elif fan.winner is None:
            report.status = "no-correct-candidate"
            if budget_ran_out(budget, fan.candidates):
                report.status, report.error = "budget-exhausted", "the budget ran out before a candidate was verified"
        return _explained(report, budget)
    report.patch = unverified_patch
    failed = [t for t in trace if t.tool == "fan_out" and t.status != "ok"]
    if failed:
        report.status, report.error = "error", f"fan_out failed: {failed[-1].error}"
    elif not result.finished:
        report.status, report.error = "error", "the planner stopped without finishing (replans used up)"
        if budget_ran_out(budget, []):
            report.status = "budget-exhausted"
    elif report.patch.strip():
        report.status = "unverified"
        report.error = ("the planner edited files without a fan-out: no test, harness or vote checked the change; "
                        "it is saved as a patch but not offered as a result")
    return _explained(report, budget)


def _explained(report: RunReport, budget: Budget) -> RunReport:
    if report.status == "budget-exhausted" and not report.error:
        report.error = f"budget exhausted: {budget.describe()}"
    return report


def budget_ran_out(budget: Budget, candidates: Sequence[Candidate]) -> bool:
    """True when the budget cannot pay for another call, or every candidate died of it."""
    left = budget.remaining
    if left.usd is not None and left.usd <= 1e-9:
        return True
    if left.tokens is not None and left.tokens < MIN_COMPLETION_TOKENS:
        return True
    return bool(candidates) and all("budget" in (c.error or "").lower() for c in candidates)


def _light(call: ToolCall) -> ToolCall:
    """The trace entry with its result summarized: the report keeps the candidates whole
    already, and a tool's full output (files, logs) would swell every saved report."""
    if call.result is None or isinstance(call.result, (int, float, bool)):
        return call
    return call.model_copy(update={"result": summarize_result(call.result, 2000)})
