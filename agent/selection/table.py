"""The selection report as a table for people (the same rows as the JSON report)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bakeoff.agent.types import Verdict

if TYPE_CHECKING:
    from rich.table import Table


def render_table(verdict: Verdict) -> Table:
    """The report as a rich table (one row per candidate; the winner marked)."""
    from rich.table import Table

    table = Table(title=f"bakeoff select ({verdict.method})", caption=verdict.reason)
    for col in ("candidate", "built", "tests passed", "group", "flaky", "speedup ± interval", "cost"):
        table.add_column(col, justify="right" if col in ("tests passed", "group", "cost") else "left")

    def yn(v: bool | None) -> str:
        return "-" if v is None else ("yes" if v else "no")

    for r in verdict.rows:
        speed = "-" if r.speedup is None else f"{r.speedup:.2f}x [{r.low:.2f}, {r.high:.2f}]"
        name = f"* {r.candidate}" if r.candidate == verdict.winner else r.candidate
        if r.note:
            name += f" ({r.note})"
        table.add_row(
            name, yn(r.built), f"{r.tests_passed}/{r.tests_total}", "-" if r.group is None else str(r.group),
            yn(r.flaky), speed, f"${r.cost_usd:.4f}",
            style="bold green" if r.candidate == verdict.winner else None,
        )
    return table


