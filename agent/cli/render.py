"""How the terminal doors show a run: the plan as it forms, a live board of candidates, cost.

``Progress`` subscribes to a Session's EventBus. On a terminal it keeps a live board of
candidates (state, tests passed, group, speedup, cost) under the scrolling log; elsewhere
(a pipe, a CI log) it prints one plain line per change. Imported only once a command runs,
so ``bakeoff --help`` never pays for rich.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from bakeoff.agent.events import Event
from bakeoff.agent.types import Candidate, RunReport

# A plan's task line or its end, as the planner writes them ("3. read_file(path=...)", "join()").
PLAN_LINE = re.compile(r"\s*(\d+\s*[.)]\s*[A-Za-z_]\w*\s*\(|join\(\s*\))")

STATE_STYLE = {
    "editing": "cyan", "building": "blue", "testing": "magenta", "profiling": "yellow",
    "repairing": "cyan", "done": "green", "failed": "red", "won": "bold green",
}


def money(usd: float | None) -> str:
    return "-" if usd is None else f"${usd:.4f}"


def short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def speedup_text(speedup: float | None, low: float | None = None, high: float | None = None) -> str:
    if speedup is None or math.isnan(speedup):
        return "-"
    if low is not None and high is not None and not (math.isnan(low) or math.isnan(high)):
        return f"{speedup:.2f}x [{low:.2f}, {high:.2f}]"
    return f"{speedup:.2f}x"


def duration(seconds: float) -> str:
    """``3600`` -> ``1h``, ``90`` -> ``1m30s``."""
    from bakeoff.agent.session import format_duration

    return format_duration(seconds)


def tests_text(row: dict[str, Any]) -> str:
    """``passed/total`` when both are known; nothing when the runner did not say (never a bare 0)."""
    passed, failed = row.get("tests_passed"), row.get("tests_failed")
    if passed is None or failed is None or passed + failed == 0:
        return ""
    return f"{passed}/{passed + failed}"


class CandidateBoard:
    """The latest known state of each candidate of the current fan-out."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def update(self, data: dict[str, Any]) -> dict[str, Any]:
        cid = str(data.get("candidate") or data.get("id") or data.get("candidate_id") or "?")
        row = self.rows.setdefault(cid, {"state": "editing"})
        for key, value in data.items():
            if value is not None and key not in ("candidate", "id", "candidate_id"):
                row[key] = value
        return row

    def table(self, title: str = "candidates") -> Table:
        table = Table(title=title, title_justify="left", expand=False)
        for col in ("candidate", "state", "tests", "group", "speedup", "cost", "note"):
            table.add_column(col, justify="right" if col in ("tests", "cost") else "left")
        for cid, row in self.rows.items():
            state = str(row.get("state", ""))
            table.add_row(
                cid,
                Text(state, style=STATE_STYLE.get(state, "")),
                tests_text(row) or "-",
                "-" if row.get("group") is None else str(row["group"]),
                speedup_text(row.get("speedup"), row.get("low"), row.get("high")),
                money(row.get("cost_usd")),
                short(row.get("detail") or "", 40) if state == "failed" else "",
            )
        return table


class RunNotices:
    """What a run says about where it works, beside the work itself: files left out of it, a
    repository without commits, the sandbox image being built, the time limit running out.
    ``Progress`` shows them with its ``_line``."""

    _building = False
    _line: Callable[[str], None]  # Progress's: one line above the live board

    def _on_repo_uncommitted(self, d: dict[str, Any]) -> None:
        paths = ", ".join(d.get("paths") or [])
        self._line(
            f"[yellow]warning[/yellow]: {d.get('count')} file(s) with uncommitted changes ({escape(paths)}) "
            "are not part of this run, which reads the last commit; commit them to include them"
        )

    def _on_sandbox_warning(self, d: dict[str, Any]) -> None:
        self._line(f"[bold yellow]warning[/bold yellow]: {escape(str(d.get('message', '')))}")

    def _on_repo_no_commits(self, d: dict[str, Any]) -> None:
        self._line("[yellow]warning[/yellow]: the repository has no commits yet, so the run reads the files as "
                   "they are; commit them first to apply a result (git add -A && git commit)")

    def _on_run_time_limit(self, d: dict[str, Any]) -> None:
        self._line(f"  [red]time limit[/red] the run's {duration(d.get('time_limit_s') or 0)} ran out; "
                   "stopping its candidates")

    # ------------------------------------------------------------------ sandbox backend

    def _on_sandbox_prepare(self, d: dict[str, Any]) -> None:
        if d.get("state") == "start":
            return
        took = float(d.get("duration_s") or 0.0)
        if self._building or took >= 2.0:
            self._line(f"  [green]ok[/green] sandbox image {escape(str(d.get('image', '')))} ready {took:.1f}s")
        self._building = False

    def _on_sandbox_image_build(self, d: dict[str, Any]) -> None:
        self._building = True
        self._line(f"  [bold]sandbox image[/bold] building {escape(str(d.get('image', '')))} from "
                   f"{escape(str(d.get('dockerfile', '')))}: the first run on this machine takes a few minutes")


class Progress(RunNotices):
    """Renders a Session's events on ``console`` (stderr for the headless door)."""

    def __init__(self, console: Console, *, live: bool | None = None, stream_model: bool = False,
                 verbose: bool = False) -> None:
        self.console = console
        self.live_enabled = console.is_terminal if live is None else live
        self.stream_model = stream_model
        self.verbose = verbose
        self.board = CandidateBoard()
        self.plan: list[str] = []
        self.cost_usd = 0.0
        self._live: Live | None = None
        self._lock = threading.RLock()
        self._building = False  # the sandbox image is being built (its ready line is shown)
        self._pending = ""  # the planner's streamed text since its last newline
        self._verdict = ""  # a fan-out's verdict line, shown after its candidates' results

    # The EventBus calls this for every event.
    def __call__(self, event: Event) -> None:
        with self._lock:
            if event.kind != "candidate.result":
                self._flush_verdict()
            handler = getattr(self, "_on_" + event.kind.replace(".", "_"), None)
            if handler is not None:
                handler(event.data)
            elif self.verbose:
                self._line(f"[dim]{event.kind} {escape(short(event.data, 100))}[/dim]")

    def _line(self, markup: str) -> None:
        if self._live is not None:
            self._live.console.print(markup)
        else:
            self.console.print(markup, highlight=False)

    def stop(self) -> None:
        with self._lock:
            if self._live is not None:
                self._live.stop()
                self._live = None
            self._flush_verdict()

    def _flush_verdict(self) -> None:
        # A fan-out's verdict line comes after its candidates' results, which follow it.
        if self._verdict:
            if self._live is not None:  # the board as it ended stays on screen, above the verdict
                self._live.stop()
                self._live = None
            line, self._verdict = self._verdict, ""
            self._line(line)

    # ------------------------------------------------------------------ run

    def _on_run_start(self, d: dict[str, Any]) -> None:
        self.board = CandidateBoard()
        self.plan = []
        models = d.get("models") or {}
        names = sorted(set(models.values())) if isinstance(models, dict) else []
        limit = d.get("time_limit_s")
        self._line(
            f"[bold]run {d.get('run_id', '')}[/bold] n={d.get('n')} model={escape(', '.join(names) or '?')} "
            f"sandbox={d.get('sandbox', '?')}" + (f" time limit {duration(limit)}" if limit else "")
        )

    def _on_run_end(self, d: dict[str, Any]) -> None:
        self.stop()
        status = d.get("status", "?")
        style = "green" if status == "success" else "yellow" if status in ("no-correct-candidate", "not-faster") else "red"
        winner = f" winner {d['winner']}" if d.get("winner") else ""
        err = f" ({escape(str(d['error']))})" if d.get("error") and status != "success" else ""
        self._line(
            f"[{style}]{status}[/{style}]{winner}{err} · cost {money(d.get('cost_usd'))} · "
            f"{d.get('tokens', 0)} tokens · {d.get('duration_s', 0):.1f}s"
        )

    # ------------------------------------------------------------------ plan and tasks

    def _on_plan_task(self, d: dict[str, Any]) -> None:
        task = d.get("task", d)
        deps = task.get("deps") or []
        args = ", ".join(f"{k}={short(v, 50)}" for k, v in (task.get("args") or {}).items())
        line = f"{task.get('id')}. {task.get('tool')}({short(args, 90)})"
        if deps:
            line += f" after {', '.join(map(str, deps))}"
        self.plan.append(line)
        self._line(f"  [cyan]plan[/cyan] {escape(line)}")

    def _on_plan_error(self, d: dict[str, Any]) -> None:
        self._line(f"  [yellow]plan line rejected[/yellow] {escape(short(d.get('message', d), 100))}")

    def _on_join(self, d: dict[str, Any]) -> None:
        if d.get("action") == "replan":
            self._line(f"  [yellow]replan[/yellow] {escape(short(d.get('text', ''), 90))}")

    def _on_fanout_start(self, d: dict[str, Any]) -> None:
        self.board = CandidateBoard()
        self._line(f"  [bold]fan-out[/bold] {d.get('n')} candidates on {', '.join(d.get('files') or [])}")

    def _on_task_start(self, d: dict[str, Any]) -> None:
        if self.verbose:
            self._line(f"  [dim]start {d.get('task_id', d.get('id'))} {d.get('tool', '')}[/dim]")

    def _on_task_end(self, d: dict[str, Any]) -> None:
        status = d.get("status", "ok")
        style = "green" if status == "ok" else "red"
        took = d.get("duration_s")
        if took is None and d.get("ended_at") and d.get("started_at"):
            took = d["ended_at"] - d["started_at"]
        took_text = f" {took:.1f}s" if isinstance(took, (int, float)) else ""
        err = f" {escape(short(d['error'], 80))}" if d.get("error") else ""
        self._line(f"  [{style}]{status}[/{style}] {d.get('task_id', d.get('id'))} {d.get('tool', '')}{took_text}{err}")

    # ------------------------------------------------------------------ candidates

    def _on_candidate_state(self, d: dict[str, Any]) -> None:
        row = self.board.update(d)
        if self.live_enabled:
            if self._live is None:
                self._live = Live(self.board.table(), console=self.console, refresh_per_second=8, transient=False)
                self._live.start()
            self._live.update(self.board.table())
        else:
            cid = d.get("candidate") or d.get("id") or d.get("candidate_id")
            extra = []
            tests = tests_text(row)
            if tests:
                extra.append(f"repo tests {tests}")
            if row.get("speedup") is not None and not math.isnan(row["speedup"]):
                extra.append(f"speedup {row['speedup']:.2f}x")
            if d.get("detail") and row.get("state") == "failed":
                extra.append(short(d["detail"], 80))
            self._line(f"  candidate {cid}: {row.get('state')}" + escape(f" ({', '.join(extra)})" if extra else ""))

    def _on_candidate_result(self, d: dict[str, Any]) -> None:
        """After the vote: the tests each candidate passed, as the report's table counts them."""
        row = self.board.update({**d, "tests_failed": None})
        row["tests_failed"] = int(d.get("tests_total") or 0) - int(d.get("tests_passed") or 0)
        if d.get("winner"):
            row["state"] = "won"
        if self._live is not None:
            self._live.update(self.board.table())
            return
        verdict = "correct" if d.get("correct") else "not correct"
        if d.get("flaky"):
            verdict += ", flaky"
        speed = speedup_text(d.get("speedup"), d.get("low"), d.get("high"))
        mark = " [green](winner)[/green]" if d.get("winner") else ""
        self._line(f"  candidate {escape(str(d.get('id')))}: {verdict}, tests {d.get('tests_passed')}/"
                   f"{d.get('tests_total')}" + (f", speedup {speed}" if speed != "-" else "") + mark)

    def _on_fanout_end(self, d: dict[str, Any]) -> None:
        if self.live_enabled and self._live is not None:
            self._live.update(self.board.table())
        if d.get("winner"):
            self._verdict = f"  [green]winner[/green] {d['winner']}: {escape(short(d.get('reason', ''), 120))}"
        elif d.get("best"):
            self._verdict = f"  [yellow]not faster[/yellow] {escape(short(d.get('reason', ''), 160))}"
        else:
            self._verdict = f"  [yellow]no correct candidate[/yellow] {escape(short(d.get('reason', ''), 120))}"

    # ------------------------------------------------------------------ model

    def _on_model_delta(self, d: dict[str, Any]) -> None:
        """The planner's thinking, a line at a time as it streams. Its task lines are left out:
        each is shown once, as the ``plan`` line the parser makes of it; other roles' text
        (candidates write at once, the joiner's answer ends the run) is not streamed."""
        if not self.stream_model or d.get("role") != "planner":
            return
        self._pending += str(d.get("text", ""))
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if line.strip() and not PLAN_LINE.match(line):
                self._line(f"[dim]{escape(line.strip())}[/dim]")

    def _on_model_call(self, d: dict[str, Any]) -> None:
        self.cost_usd += float(d.get("cost_usd") or 0.0)

    def _on_model_status(self, d: dict[str, Any]) -> None:
        """Retries, fallbacks, open circuits, cut-off answers, slow calls: one line each."""
        style = "dim" if d.get("what") == "waiting" else "yellow"
        self._line(f"  [{style}]model[/{style}] {escape(short(d.get('message', ''), 160))}")


# --------------------------------------------------------------------------- results


def report_table(report: RunReport) -> Table:
    """The selection table: one row per candidate, the same data as the JSON report. The
    speedup is at the target parallelism; "scaling" is the curve at 1, 2, 4, ... threads."""
    from bakeoff.agent.selection.table import curve_text

    table = Table(title="bake-off", title_justify="left")
    setup = report.verdict.timing if report.verdict else None
    at = f" @{setup.threads}" if setup else ""
    # Which model wrote each candidate, when several editor models shared the work.
    models = {c.id: c.model for c in report.candidates}
    several = len(set(models.values())) > 1
    for col in ("candidate", *(("model",) if several else ()), "built", "tests", "group", "flaky", "correct",
                f"speedup{at}", "scaling", "cost", "note"):
        table.add_column(col)
    winner = report.winner.id if report.winner else None
    best = report.verdict.best if report.verdict else None
    rows = report.verdict.rows if report.verdict else []
    if rows:
        for r in rows:
            mark, style = (" *", "bold green") if r.candidate == winner else (" ?", "yellow") if r.candidate == best else ("", "")
            table.add_row(
                Text(r.candidate + mark, style=style),
                *((r.model or models.get(r.candidate, ""),) if several else ()),
                _yes_no(r.built), f"{r.tests_passed}/{r.tests_total}",
                "-" if r.group is None else str(r.group), "yes" if r.flaky else "no", _yes_no(r.correct),
                speedup_text(r.speedup, r.low, r.high), curve_text(r.curve) if r.curve else "-", money(r.cost_usd), r.note,
            )
    else:
        for c in report.candidates:
            table.add_row(
                c.id + (" *" if c.id == winner else ""), *((c.model,) if several else ()), _yes_no(c.built),
                "-" if c.tests_passed is None else str(c.tests_passed), "-", "-", "-",
                speedup_text(c.timing.speedup, c.timing.low, c.timing.high) if c.timing else "-",
                curve_text(c.timing.curve) if c.timing and c.timing.curve else "-", money(c.cost_usd), c.error or "",
            )
    return table


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "no"


def print_result(console: Console, report: RunReport, *, show_patch: bool = True) -> None:
    """A finished run for people: answer, table, verdict, winning patch, cost."""
    parts: list[Any] = []
    if report.answer and report.status != "not-faster":  # the verdict, not the model's summary, says what happened
        parts.append(Text(report.answer))
    if report.candidates or (report.verdict and report.verdict.rows):
        parts.append(report_table(report))
    if report.verdict and report.verdict.reason:
        parts.append(Text(f"verdict ({report.verdict.method}): {report.verdict.reason}"))
    if report.verdict and report.verdict.timing:
        from bakeoff.agent.selection.table import setup_text

        parts.append(Text(setup_text(report.verdict.timing), style="dim"))
    if report.error and report.status not in ("success", "not-faster"):
        parts.append(Text(f"{report.status}: {report.error}", style="red"))
    if report.status == "not-faster" and report.verdict and report.verdict.best:
        parts.append(Text(f"not-faster: candidate {report.verdict.best} is correct but not faster than the original; "
                          "it is offered (its patch), not applied", style="yellow"))
    if show_patch and report.patch:
        parts.append(Text(report.patch))
    estimated = (f" (of which {money(report.estimated_usd)} / {report.estimated_tokens} tokens estimated: "
                 "streams that broke before their usage arrived)") if report.estimated_tokens else ""
    parts.append(Text(f"cost {money(report.cost_usd)} · {report.tokens} tokens · {report.duration_s:.1f}s{estimated}"))
    console.print(Group(*parts))


def diff_text(patch: str) -> Text:
    """A unified diff, coloured."""
    text = Text()
    for line in patch.splitlines():
        style = (
            "bold" if line.startswith(("diff ", "+++", "---"))
            else "green" if line.startswith("+") else "red" if line.startswith("-")
            else "cyan" if line.startswith("@@") else ""
        )
        text.append(line + "\n", style=style)
    return text


def result_document(report: RunReport, applied: Any = None) -> dict[str, Any]:
    """The one JSON document ``bakeoff run --json`` prints."""
    return {
        "status": report.status,
        "task": report.task,
        "run_id": report.run_id,
        "base_commit": report.base_commit,
        "answer": report.answer,
        "winner": report.winner.model_dump(mode="json", exclude={"messages"}) if report.winner else None,
        "verdict": report.verdict.model_dump(mode="json") if report.verdict else None,
        "patch": report.patch,
        "report": [c.model_dump(mode="json", exclude={"messages"}) for c in report.candidates],
        "cost": {"usd": report.cost_usd, "tokens": report.tokens, "estimated_usd": report.estimated_usd,
                 "estimated_tokens": report.estimated_tokens},
        "duration_s": report.duration_s,
        "error": report.error,
        "applied": _plain(applied),
    }


def _plain(obj: Any) -> Any:
    if obj is None:
        return None
    dump = getattr(obj, "model_dump", None)
    if dump is not None:
        return dump(mode="json")
    return json.loads(json.dumps(obj, default=str))
