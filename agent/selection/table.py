"""The selection report as a table for people (the same rows as the JSON report)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from bakeoff.agent.types import CurvePoint, TimingSetup, Verdict

if TYPE_CHECKING:
    from rich.table import Table


def curve_text(curve: Sequence[CurvePoint]) -> str:
    """The scaling curve, compact: "1:0.98 2:1.91 4:3.52" (threads:speedup; "<" marks a bound)."""
    parts = []
    for p in curve:
        if p.speedup is None:
            parts.append(f"{p.threads}:-")
        else:
            parts.append(f"{p.threads}:{'<' if p.censored else ''}{p.speedup:.3g}")
    return " ".join(parts) or "-"


def setup_text(setup: TimingSetup | None) -> str:
    """What the timings mean, in a line: the target, who set it, the input size and why."""
    if setup is None:
        return ""
    size = ", ".join(f"{k}={v:g}" for k, v in setup.size.items())
    parts = [f"timed at {setup.threads} thread{'s' if setup.threads != 1 else ''} ({setup.threads_source})"]
    if size:
        parts.append(f"input {size}")
    if setup.sizing:
        parts.append(setup.sizing)
    return "; ".join(parts)


def speed_text(speedup: float | None, low: float | None, high: float | None) -> str:
    if speedup is None:
        return "-"
    if low is None or high is None:
        return f"{speedup:.2f}x"
    return f"{speedup:.2f}x [{low:.2f}, {high:.2f}]"


def render_table(verdict: Verdict) -> Table:
    """The report as a rich table (one row per candidate; the winner marked, or the best
    when none is faster than the original)."""
    from rich.table import Table

    caption = "\n".join(x for x in (verdict.reason, setup_text(verdict.timing)) if x)
    table = Table(title=f"bakeoff select ({verdict.method})", caption=caption)
    at = f" @{verdict.timing.threads}" if verdict.timing else ""
    names = [len(r.candidate) + 2 for r in verdict.rows]
    # Names stay whole (a reader looks them up); the other columns wrap.
    table.add_column("candidate", min_width=max([9, *names]), no_wrap=True)
    for col in ("built", "tests passed", "group", "flaky", f"speedup{at} ± interval", "scaling", "cost"):
        table.add_column(col, justify="right" if col in ("tests passed", "group", "cost") else "left")

    def yn(v: bool | None) -> str:
        return "-" if v is None else ("yes" if v else "no")

    for r in verdict.rows:
        mark = "* " if r.candidate == verdict.winner else "? " if r.candidate == verdict.best else ""
        name = f"{mark}{r.candidate}"
        if r.note:
            name += f" ({r.note})"
        table.add_row(
            name, yn(r.built), f"{r.tests_passed}/{r.tests_total}", "-" if r.group is None else str(r.group),
            yn(r.flaky), speed_text(r.speedup, r.low, r.high), curve_text(r.curve) if r.curve else "-",
            f"${r.cost_usd:.4f}",
            style="bold green" if r.candidate == verdict.winner else "yellow" if r.candidate == verdict.best else None,
        )
    return table
