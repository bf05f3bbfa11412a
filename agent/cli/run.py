"""``bakeoff run "TASK"``: one task, headless, for scripts and CI.

Progress goes to stderr, the result to stdout. Also home of the helpers every terminal door
shares: loading settings and opening a Session, with user-fixable errors turned into a
message and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import typer

EXIT_OK = 0
EXIT_NO_CORRECT = 1
EXIT_USAGE = 2
EXIT_BUDGET = 3
EXIT_UNVERIFIED = 4

EXIT_CODES_HELP = (
    "Exit codes: 0 a correct candidate was found (or the question answered); "
    "1 no correct candidate, or (for a speed task) none faster than the original, or the run failed; 2 usage or configuration error "
    "(bad flag, missing repository, no model configured, no Docker); 3 budget exhausted; "
    "4 unverified: the planner changed files without a fan-out, so nothing checked the change; "
    "130, 143, 129 stopped by SIGINT, SIGTERM, SIGHUP (sandboxes removed first)."
)

STATUS_EXIT = {
    "success": EXIT_OK,
    "no-correct-candidate": EXIT_NO_CORRECT,
    "not-faster": EXIT_NO_CORRECT,
    "error": EXIT_NO_CORRECT,
    "budget-exhausted": EXIT_BUDGET,
    "unverified": EXIT_UNVERIFIED,
}


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """A user-fixable problem: say what to do, exit with ``code``."""
    from bakeoff.agent.cli.checks import fail as say_and_exit

    say_and_exit(message, code)


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean the user must change something (exit 2), not a bug
    (``session.user_errors``)."""
    from bakeoff.agent.session import user_errors as errors

    return errors()


def load(repo: Path, flags: dict[str, Any]):
    """Settings for ``repo`` with ``flags`` on top; exit 2 with the reason when invalid."""
    import os

    from bakeoff.agent.config import ConfigError, load_settings

    if not repo.is_dir():
        fail(f"repository {repo} does not exist: pass --repo PATH to a checkout")
    try:
        settings, provenance = load_settings(repo, os.environ, flags)
    except ConfigError as exc:
        fail(str(exc))
    for spec in {getattr(settings.model, role) or settings.model.default for role in ("planner", "editor", "tester", "judge")}:
        if spec is not None and spec.strip().rstrip(":") == "scripted":
            fail("the scripted model needs its file of answers: --model scripted:PATH (see examples/scripted/)")
    return settings, provenance


def open_session(repo: Path, flags: dict[str, Any], events, *, model_override=None, **kwargs):
    """A Session on ``repo``, its state directory checked; exit 2 with the reason when it cannot be."""
    from bakeoff.agent.cli.checks import writable_dir
    from bakeoff.agent.session import Session

    settings, _ = load(repo, flags)
    try:
        session = Session(settings, repo, events=events, model_override=model_override, **kwargs)
    except user_errors() as exc:
        fail(str(exc))
    writable_dir(session.state, "the state directory (BAKEOFF_STATE_DIR)")
    return session


def register(app: typer.Typer) -> None:
    app.command("run", help=f"Run one task headless: progress to stderr, result to stdout.\n\n{EXIT_CODES_HELP}")(run_command)


def run_command(
    task: str = typer.Argument(..., help="What to do, e.g. \"make the loop in kernel.c parallel and faster\"."),
    repo: Path = typer.Option(Path("."), "--repo", help="The repository to work on (read-only until --apply)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document: status, verdict, winner, patch, report, cost."),
    jsonl: bool = typer.Option(False, "--jsonl", help="Stream every event as a JSON line on stdout; the last line is the result."),
    apply: bool = typer.Option(False, "--apply", help="Commit the winning patch to the repository."),
    branch: str | None = typer.Option(None, "--branch", help="With --apply: commit on this new branch."),
    patch: Path | None = typer.Option(None, "--patch", help="Write the winning patch to this file."),
    model: str | None = typer.Option(None, "--model", help="Model for every role (a litellm model string or scripted:PATH)."),
    n: int | None = typer.Option(None, "--n", help="Candidates developed in parallel."),
    budget: float | None = typer.Option(None, "--budget", help="Dollars this run may spend."),
    budget_tokens: int | None = typer.Option(None, "--budget-tokens", help="Tokens this run may spend."),
    sandbox: str | None = typer.Option(None, "--sandbox", help="auto (docker when an engine answers, else bubblewrap), docker, local (bubblewrap) or unsafe-local (no isolation)."),
    docker_host: str | None = typer.Option(None, "--docker-host", help="The Docker engine sandboxes run on: tcp://HOST:PORT, ssh://USER@HOST, unix:///PATH or a docker context name (default: DOCKER_HOST, else this machine's)."),
    docker_cert_path: Path | None = typer.Option(None, "--docker-cert-path", metavar="DIR", help="Folder of ca.pem, cert.pem and key.pem: TLS to a tcp:// --docker-host."),
    planner: str | None = typer.Option(None, "--planner", help="compiler (parallel plan) or react (one call per turn)."),
    threads: int | None = typer.Option(None, "--threads", min=1,
                                       help="Threads candidates are timed at (default: the CPUs the sandbox may use)."),
    time_limit: float | None = typer.Option(None, "--time-limit", metavar="SECONDS", help="Wall-clock seconds the run may take (default 3600)."),
    gpus: bool | None = typer.Option(None, "--gpus/--no-gpus", help="Hand this machine's NVIDIA GPUs to the sandboxes: CUDA candidates then run and are timed (default: off, built only)."),
) -> None:
    from rich.console import Console

    from bakeoff.agent.cli.checks import patch_target, task_text
    from bakeoff.agent.events import EventBus

    if branch and not apply:
        fail("--branch needs --apply")
    if json_out and jsonl:
        fail("choose one of --json and --jsonl")
    task = task_text(task)
    patch_target(patch)
    flags = {"model.default": model, "n": n, "budget_usd": budget, "budget_tokens": budget_tokens,
             "sandbox": sandbox, "planner": planner, "threads": threads, "time_limit_s": time_limit,
             "gpus": gpus, "docker_host": docker_host, "docker_cert_path": str(docker_cert_path) if docker_cert_path else None}
    events = EventBus()
    err = Console(stderr=True)
    stop_progress = show_progress(events, err, jsonl=jsonl)
    session = open_session(repo, flags, events)
    if apply:
        try:
            session.check_can_apply()  # before any model is paid for
        except user_errors() as exc:
            fail(f"cannot --apply: {exc}")
    if session.sandbox_choice is not None and session.sandbox_choice.warning:
        err.print(f"warning: {session.sandbox_choice.warning}", style="yellow", markup=False)
    try:
        report = execute(session, task)
    finally:
        stop_progress()
    applied = deliver(session, report, patch=patch, apply=apply, branch=branch, err=err)
    print_outcome(report, applied, json_out=json_out, jsonl=jsonl)
    raise typer.Exit(STATUS_EXIT.get(report.status, EXIT_NO_CORRECT))


def show_progress(events, err, *, jsonl: bool):
    """Events as JSON lines on stdout, or as progress on stderr; returns how to stop showing them."""
    if jsonl:
        def emit_line(event) -> None:
            sys.stdout.write(event.model_dump_json() + "\n")
            sys.stdout.flush()

        events.subscribe(emit_line)
        return lambda: None
    from bakeoff.agent.cli.render import Progress

    progress = Progress(err)
    events.subscribe(progress)
    return progress.stop


def execute(session, task: str):
    """Run ``task`` to its report; the session's sandboxes are closed however it ends.

    INT, TERM and HUP stop it: candidates are stopped, sandboxes removed, and the command
    exits 128 + the signal's number (``stopping``)."""
    from bakeoff.agent.cli.stopping import Stopped, leave_now, run_stoppable

    async def go():
        try:
            return await session.run(task)
        finally:
            await session.close()

    try:
        return run_stoppable(go())
    except user_errors() as exc:
        fail(str(exc))
    except Stopped as stop:
        leave_now(stop, f"stopped by {stop.name}: sandboxes removed, the repository untouched "
                        f"(events so far in {session.state / 'runs'})")


def deliver(session, report, *, patch: Path | None, apply: bool, branch: str | None, err):
    """Write the patch file and apply the winner when asked; the applied change, if any."""
    if patch is not None and report.patch:
        patch.write_text(report.patch, encoding="utf-8")
    if not apply:
        return None
    if report.status != "success" or not report.patch:
        err.print("not applied: no verified winner with a change", style="yellow")
        return None
    try:
        applied = session.apply(report, branch=branch)
    except user_errors() as exc:
        fail(f"not applied: {exc}")
    err.print(where_applied(applied), markup=False, highlight=False)
    return applied


def where_applied(change) -> str:
    """Where the commit went, as git would say it; on a detached HEAD, how to keep it."""
    commit = change.head_after[:10]
    if change.branch_after:
        return f"applied as commit {commit} on branch {change.branch_after}"
    return (f"applied as commit {commit} on a detached HEAD (no branch points to it): keep it with "
            f"git branch NAME {commit}, or use --apply --branch NAME next time")


def print_outcome(report, applied, *, json_out: bool, jsonl: bool) -> None:
    import json

    from rich.console import Console

    from bakeoff.agent.cli.render import print_result, result_document

    doc = result_document(report, applied)
    if json_out:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    elif jsonl:
        sys.stdout.write(json.dumps({"kind": "result", "data": doc}) + "\n")
    else:
        print_result(Console(), report)
