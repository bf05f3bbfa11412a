"""What the Action says: the status comment, the candidate table, and the step outputs."""

from __future__ import annotations

from typing import Any, Literal

from bakeoff.agent.github.trigger import Trigger

STATUS_MARKER = "<!-- bakeoff-status -->"


def status_body(trigger: Trigger, state: Literal["started", "done", "failed"], detail: str = "") -> str:
    head = {
        "started": f"⏳ bakeoff is running on #{trigger.pr} for @{trigger.actor}: fanning out candidates…",
        "done": f"✅ bakeoff finished on #{trigger.pr}.",
        "failed": f"❌ bakeoff could not finish on #{trigger.pr}.",
    }[state]
    return f"{STATUS_MARKER}\n{head}\n\n{settings_note(trigger)}\n\n{detail}".rstrip() + "\n"


def settings_note(trigger: Trigger) -> str:
    """Where the run's settings come from, and what is ignored (said in every status comment)."""
    base = (f"the workflow's inputs and `{trigger.base_settings_source}`" if trigger.base_settings_source
            else "the workflow's inputs only (no settings file read from the base branch)")
    return (f"Settings: {base}. This pull request's own `bakeoff.toml` and `[tool.bakeoff]` are ignored: "
            "a pull request never configures the Action.")


def report_markdown(report: dict[str, Any]) -> str:
    """The candidate table and the cost, as Markdown, from a RunReport's JSON."""
    verdict = report.get("verdict") or {}
    rows = verdict.get("rows") or []
    setup = verdict.get("timing") or {}
    at = f" at {setup['threads']} threads" if setup.get("threads") else ""  # "@16" would read as a mention
    lines = [
        f"**Result:** {report.get('status', '?')}. {verdict.get('reason', '')}".strip(),
        "",
        f"| candidate | built | tests passed | group | flaky | speedup{at} | scaling | cost |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed = "–"
        if r.get("speedup") is not None:
            speed = f"{r['speedup']:.2f}x"
            if r.get("low") is not None and r.get("high") is not None:
                speed += f" [{r['low']:.2f}, {r['high']:.2f}]"
        mark = " 🏆" if r.get("candidate") == verdict.get("winner") else " (best, not faster)" \
            if r.get("candidate") == verdict.get("best") else ""
        lines.append(
            f"| {r.get('candidate')}{mark} | {_yes(r.get('built'))} | {r.get('tests_passed', 0)}/{r.get('tests_total', 0)}"
            f" | {r.get('group') if r.get('group') is not None else '–'} | {_yes(r.get('flaky'))} | {speed}"
            f" | {_curve(r.get('curve') or [])} | ${r.get('cost_usd', 0.0):.4f} |"
        )
    if setup:
        lines += ["", f"Timing: {_setup(setup)}."]
    lines += ["", f"Total cost: ${report.get('cost_usd', 0.0):.4f} ({report.get('tokens', 0)} tokens)."]
    return "\n".join(lines)


def _curve(points: list[dict[str, Any]]) -> str:
    """The scaling curve from the report's JSON, as the terminal table shows it."""
    from bakeoff.agent.selection.table import curve_text
    from bakeoff.agent.types import CurvePoint

    return curve_text([CurvePoint.model_validate(p) for p in points]) if points else "–"


def _setup(setup: dict[str, Any]) -> str:
    from bakeoff.agent.selection.table import setup_text
    from bakeoff.agent.types import TimingSetup

    return setup_text(TimingSetup.model_validate(setup))


def _yes(value: Any) -> str:
    return "–" if value is None else ("yes" if value else "no")


def write_outputs(path: str | None, values: dict[str, str]) -> None:
    """Append step outputs to $GITHUB_OUTPUT, using delimiters so values may hold newlines."""
    if not path:
        return
    with open(path, "a", encoding="utf-8") as fh:
        for key, value in values.items():
            delimiter = f"BAKEOFF_EOF_{abs(hash((key, value))) % 10**12}"
            fh.write(f"{key}<<{delimiter}\n{value}\n{delimiter}\n")