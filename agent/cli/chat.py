"""``bakeoff chat``: a REPL over one Session.

Each line is a task (or a slash command). While a task runs the plan is shown as it forms
and a live board follows the candidates; Ctrl-C cancels that step and returns to the prompt.
Nothing touches the user's files until ``/apply`` (or ``--yes``), and the diff is shown
first. Input is read line by line from stdin, so the REPL works the same on a terminal, a
pseudo-terminal or a pipe. History is kept in the state directory, across sessions.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

import typer

COMMANDS = {
    "/help": "this list",
    "/model [NAME]": "show the models per role, or use NAME for every role",
    "/n [K]": "show or set the number of candidates",
    "/budget [USD]": "show or set the budget in dollars for the next steps",
    "/plan": "the last plan",
    "/candidates": "the last bake-off table",
    "/diff [ID]": "the winner's diff (or candidate ID's)",
    "/apply [ID]": "commit the winner (or candidate ID) after showing its diff",
    "/undo": "revert the last /apply exactly",
    "/cost": "cost of each step and of the session",
    "/sandbox [KIND]": "show the sandbox backends (auto, docker, local, local+bwrap) or choose one",
    "/exit": "leave (Ctrl-D works too)",
}


def register(app: typer.Typer) -> None:
    app.command("chat", help="Talk to bakeoff about a repository; see every candidate race; /apply the winner.")(chat_command)


def chat_command(
    repo: Path = typer.Option(Path("."), "--repo", help="The repository to work on."),
    model: str | None = typer.Option(None, "--model", help="Model for every role (litellm model string or scripted:PATH)."),
    n: int | None = typer.Option(None, "--n", help="Candidates developed in parallel."),
    budget: float | None = typer.Option(None, "--budget", help="Dollars the whole chat session may spend."),
    sandbox: str | None = typer.Option(None, "--sandbox", help="auto (docker when an engine answers, else bubblewrap), docker, local (bubblewrap) or unsafe-local (no isolation)."),
    docker_host: str | None = typer.Option(None, "--docker-host", help="The Docker engine sandboxes run on: tcp://HOST:PORT, ssh://USER@HOST, unix:///PATH or a docker context name (default: DOCKER_HOST, else this machine's)."),
    docker_cert_path: Path | None = typer.Option(None, "--docker-cert-path", metavar="DIR", help="Folder of ca.pem, cert.pem and key.pem: TLS to a tcp:// --docker-host."),
    yes: bool = typer.Option(False, "--yes", help="Apply each winner without asking (its diff is still shown)."),
    branch: str | None = typer.Option(None, "--branch", help="Commit applied changes on this new branch."),
) -> None:
    from bakeoff.agent.cli.run import open_session
    from bakeoff.agent.events import EventBus

    events = EventBus()
    flags = {"model.default": model, "n": n, "budget_usd": budget, "sandbox": sandbox,
             "docker_host": docker_host, "docker_cert_path": str(docker_cert_path) if docker_cert_path else None}
    session = open_session(repo, flags, events)
    Chat(session, events, yes=yes, branch=branch).loop()


class Chat:
    def __init__(self, session: Any, events: Any, *, yes: bool = False, branch: str | None = None) -> None:
        from rich.console import Console

        from bakeoff.agent.cli.render import Progress

        self.session = session
        self.console = Console(highlight=False)
        self.progress = Progress(self.console, stream_model=True)
        events.subscribe(self.progress)
        self.yes = yes
        self.branch = branch
        self.report = None
        self.history_path = session.state / "chat_history"
        self._readline = None
        with contextlib.suppress(AttributeError, ValueError):
            sys.stdin.reconfigure(errors="surrogateescape")  # a line that is not UTF-8 is refused, not a traceback
        if sys.stdin.isatty():
            try:
                import readline

                self.history_path.parent.mkdir(parents=True, exist_ok=True)
                if self.history_path.exists():
                    readline.read_history_file(self.history_path)
                self._readline = readline
            except (ImportError, OSError):
                self._readline = None

    # ------------------------------------------------------------------ input

    def ask(self, prompt: str) -> str | None:
        """One line of input; None at end of input. INT, TERM and HUP interrupt the wait
        (``Stopped``), and one that came since the last step is raised here."""
        from bakeoff.agent.cli.stopping import reading_input

        if self._readline is not None:
            try:
                with reading_input():
                    return input(prompt)
            except EOFError:
                return None
        sys.stdout.write(prompt)
        sys.stdout.flush()
        with reading_input():
            line = sys.stdin.readline()
        return None if line == "" else line.rstrip("\n")

    def remember(self, line: str) -> None:
        """Append to the history file at once: a crash loses no line (input() keeps
        readline's in-memory history itself)."""
        self.history_path.parent.mkdir(parents=True, exist_ok=True)
        with self.history_path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    # ------------------------------------------------------------------ loop

    def loop(self) -> None:
        """Read, run, repeat. Ctrl-C cancels a step (or clears the prompt); TERM and HUP end the
        session: its sandboxes are removed and the command exits 143 or 129."""
        from bakeoff.agent.cli.stopping import Stopped, StoppableLoop, leave_now

        s = self.session
        self.console.print(
            f"bakeoff chat on {s.repo} ({(s.base_commit or 'no git')[:10]}) · "
            f"model {', '.join(sorted(set(s.model_names.values())))} · n={s.settings.n} · "
            f"budget {_usd(s.settings.budget_usd)} · sandbox {s.sandbox_choice.backend if s.sandbox_choice else s.settings.sandbox}. "
            "/help for commands, Ctrl-C cancels a step.",
            markup=False,
        )
        if s.sandbox_choice is not None and s.sandbox_choice.warning:
            self.console.print(f"warning: {s.sandbox_choice.warning}", style="yellow", markup=False)
        stopped: Stopped | None = None
        with StoppableLoop() as runner:
            self.runner = runner
            try:
                self.read_eval()
            except Stopped as stop:
                stopped = stop
            finally:
                runner.finish(self.session.close())  # a signal does not cut the sandboxes' removal short
        if stopped is not None:
            leave_now(stopped, f"stopped by {stopped.name}: sandboxes removed; session cost {_usd(s.cost_usd)}")
        self.console.print(f"session cost {_usd(s.cost_usd)} · {s.tokens} tokens")

    def read_eval(self) -> None:
        from bakeoff.agent.cli.stopping import Stopped, settle_interrupt

        while True:
            try:
                line = self.ask("bakeoff> ")
            except (KeyboardInterrupt, Stopped) as exc:
                if isinstance(exc, Stopped) and exc.signum != signal.SIGINT:
                    raise
                settle_interrupt()
                self.console.print("\n(Ctrl-C: the prompt is cleared; /exit or Ctrl-D leaves)")
                continue
            if line is None:
                self.console.print()
                return
            line = line.strip()
            if not line:
                continue
            if not _is_text(line):
                self.console.print("[red]that line is not UTF-8 text: type it again in UTF-8[/red]")
                continue
            self.remember(line)
            if line.startswith("/"):
                if self.command(line) == "exit":
                    return
            elif meant_as_task(line, self.ask):
                self.step(line)

    def step(self, task: str) -> None:
        from rich.markup import escape

        from bakeoff.agent.cli.render import diff_text, print_result
        from bakeoff.agent.cli.run import user_errors

        from bakeoff.agent.cli.stopping import Stopped, settle_interrupt

        try:
            report = self.runner.run(self.session.run(task))
        except Stopped as stop:
            self.progress.stop()
            if stop.signum != signal.SIGINT:
                raise
            settle_interrupt()
            self.console.print("[yellow]step cancelled[/yellow]: its sandboxes are removed; the session goes on")
            return
        except user_errors() as exc:
            self.progress.stop()
            self.console.print(f"[red]{escape(str(exc))}[/red]")
            return
        self.progress.stop()
        self.report = report
        print_result(self.console, report, show_patch=False)
        if report.winner is not None and report.patch:
            self.console.print(f"[bold]winner {report.winner.id}[/bold]: its diff")
            self.console.print(diff_text(report.patch))
            if self.yes:
                try:
                    self.apply(None, confirmed=True)
                except user_errors() as exc:
                    self.console.print(f"[red]not applied: {escape(str(exc))}[/red]")
            else:
                self.console.print("/apply commits it · /diff ID shows another candidate")
        self.console.print(f"step cost {_usd(report.cost_usd)} · session {_usd(self.session.cost_usd)}")

    # ------------------------------------------------------------------ slash commands

    def command(self, line: str) -> str | None:
        import difflib

        from rich.markup import escape

        name, _, arg = line.partition(" ")
        arg = arg.strip() or None
        handler = {
            "/help": self.help, "/model": self.model, "/n": self.n, "/budget": self.budget,
            "/plan": self.plan, "/candidates": self.candidates, "/diff": self.diff,
            "/apply": self.apply, "/undo": self.undo, "/cost": self.cost, "/sandbox": self.sandbox,
        }.get(name)
        if name in ("/exit", "/quit"):
            return "exit"
        if handler is None:
            names = [c.split()[0] for c in COMMANDS]
            guess = difflib.get_close_matches(name, names, n=1)
            hint = f" Did you mean {guess[0]}?" if guess else ""
            self.console.print(f"[red]unknown command {escape(name)}.[/red]{hint} /help lists them.")
            return None
        from bakeoff.agent.cli.run import user_errors

        try:
            handler(arg)
        except user_errors() as exc:
            self.console.print(f"[red]{escape(str(exc))}[/red]")
        return None

    def help(self, _: str | None) -> None:
        for cmd, text in COMMANDS.items():
            self.console.print(f"  {cmd:<16} {text}", markup=False)
        self.console.print("  anything else is a task for bakeoff")

    def _set(self, key: str, value: Any, shown: str) -> None:
        from pydantic import ValidationError
        from rich.markup import escape

        try:
            self.session.update(**{key: value})
        except ValidationError as exc:
            self.console.print(f"[red]{escape(shown)}: {escape(exc.errors()[0]['msg'])}[/red]")
            return
        self.console.print(f"{shown} set")

    def model(self, arg: str | None) -> None:
        if arg:
            self._set("model", arg, f"model {arg}")
        for role, name in self.session.model_names.items():
            self.console.print(f"  {role:<8} {name}")

    def n(self, arg: str | None) -> None:
        if arg:
            if not arg.isdigit():
                self.console.print("[red]/n takes a whole number, e.g. /n 8[/red]")
                return
            self._set("n", int(arg), f"n = {arg}")
        self.console.print(f"  candidates per fan-out: {self.session.settings.n}")

    def budget(self, arg: str | None) -> None:
        if arg:
            try:
                value = float(arg.lstrip("$"))
            except ValueError:
                self.console.print("[red]/budget takes dollars, e.g. /budget 0.50[/red]")
                return
            self._set("budget_usd", value, f"budget {_usd(value)}")
        self.console.print(
            f"  budget {_usd(self.session.settings.budget_usd)} · spent {_usd(self.session.cost_usd)}"
        )

    def sandbox(self, arg: str | None) -> None:
        from bakeoff.agent.session import docker_host_of
        from bakeoff.sandboxes import KINDS, SandboxUnavailable, choose_backend

        if arg:
            self._set("sandbox", arg, f"sandbox {arg}")
        self.console.print(f"  sandbox: {self.session.settings.sandbox}", markup=False)
        for kind in KINDS:  # every backend, and whether it runs here
            try:
                choice = choose_backend(kind, docker_host_of(self.session.settings))
                state = f"runs here as {choice.backend}" if kind == "auto" else f"available ({choice.reason})"
            except SandboxUnavailable as exc:
                state = f"not available: {exc}"
            self.console.print(f"    {kind:<12} {state}", markup=False)

    def _need_report(self):
        from bakeoff.agent.session import SessionError

        if self.report is None:
            raise SessionError("no run yet: type a task first")
        return self.report

    def plan(self, _: str | None) -> None:
        report = self._need_report()
        for line in self.progress.plan:
            self.console.print(f"  {line}", markup=False)
        for call in report.trace:
            took = call.ended_at - call.started_at
            self.console.print(f"  {call.task_id}. {call.tool}: {call.status} in {took:.1f}s"
                               + (f" ({call.error})" if call.error else ""), markup=False)

    def candidates(self, _: str | None) -> None:
        from bakeoff.agent.cli.render import report_table

        self.console.print(report_table(self._need_report()))

    def diff(self, arg: str | None) -> None:
        from bakeoff.agent.cli.render import diff_text

        cand = self.session.candidate(self._need_report(), arg)
        self.console.print(f"[bold]candidate {cand.id}[/bold]")
        self.console.print(diff_text(cand.patch or "(no change)"))

    def apply(self, arg: str | None, confirmed: bool = False) -> None:
        from bakeoff.agent.cli.render import diff_text

        report = self._need_report()
        cand = self.session.candidate(report, arg)
        if not confirmed:
            self.console.print(diff_text(cand.patch or "(no change)"))
            where = f"a new branch {self.branch}" if self.branch else "the current branch"
            answer = self.ask(f"commit candidate {cand.id} on {where}? [y/N] ")
            if (answer or "").strip().lower() not in ("y", "yes"):
                self.console.print("not applied")
                return
        from bakeoff.agent.cli.run import where_applied

        change = self.session.apply(report, branch=self.branch, yes=True, candidate_id=arg)
        self.console.print(f"candidate {cand.id} {where_applied(change)}; /undo reverts it", markup=False)

    def undo(self, _: str | None) -> None:
        self.session.undo()
        self.console.print("[green]undone[/green]: the repository is as it was before the apply")

    def cost(self, _: str | None) -> None:
        for i, r in enumerate(self.session.history, 1):
            self.console.print(f"  {i}. {_usd(r.cost_usd)} {r.tokens} tokens, {r.status}: {r.task[:50]}", markup=False)
        self.console.print(f"  session {_usd(self.session.cost_usd)} · {self.session.tokens} tokens")


def meant_as_task(line: str, ask) -> bool:
    """A one-word line is more often a slip (``exit``, ``help``, ``diff``) than a task: ``ask`` first."""
    if len(line.split()) > 1:
        return True
    names = [c.split()[0] for c in COMMANDS] + ["/quit"]
    hint = f" (did you mean /{line.lower()}?)" if f"/{line.lower()}" in names else ""
    answer = ask(f"start a run with the task {line!r}{hint}? [y/N] ")
    return (answer or "").strip().lower() in ("y", "yes")


def _is_text(line: str) -> bool:
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _usd(value: float | None) -> str:
    return "no cap" if value is None else f"${value:.4f}"
