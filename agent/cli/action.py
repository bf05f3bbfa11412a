"""``bakeoff action gate|run|deliver``: the three steps of the GitHub Action (see action.yml)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

action_app = typer.Typer(
    help="The GitHub Action's steps. gate and deliver hold GITHUB_TOKEN and run no PR code; "
    "run holds the model key, never GITHUB_TOKEN, and runs PR code only in sandboxes.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(action_app, name="action")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"bakeoff action: {message}", err=True)
    raise typer.Exit(code)


def _client(repo: str, api_url: str | None):
    from bakeoff.agent.github.client import GitHub

    token = os.environ.get("GITHUB_TOKEN", "")
    if not token:
        _fail("GITHUB_TOKEN is not set: pass `github-token` to the action (it defaults to the workflow's token)")
    return GitHub(token, repo, api_url=api_url or os.environ.get("GITHUB_API_URL", "https://api.github.com"))


@action_app.command()
def gate(
    event: Optional[Path] = typer.Option(None, help="webhook payload (default: $GITHUB_EVENT_PATH)"),
    event_name: Optional[str] = typer.Option(None, help="event name (default: $GITHUB_EVENT_NAME)"),
    trigger_out: Path = typer.Option(Path("bakeoff-trigger.json"), help="where to write the trigger for later steps"),
    phrase: str = typer.Option("/bakeoff", help="comment prefix that triggers a run"),
    label: str = typer.Option("bakeoff", help="PR label that triggers a run"),
    instruction: str = typer.Option(
        "Make the code this pull request changes faster without changing its behaviour.",
        help="instruction used when a label triggers the run",
    ),
    allow_bots: bool = typer.Option(False, help="let bots trigger runs"),
    api_url: Optional[str] = typer.Option(None, help="GitHub API URL (default: $GITHUB_API_URL)"),
) -> None:
    """Decide whether to run; read the base branch's settings; post the status comment; write the trigger."""
    from bakeoff.agent.config import ConfigError
    from bakeoff.agent.github.report import status_body, write_outputs
    from bakeoff.agent.github.settings import read_base_settings
    from bakeoff.agent.github.trigger import WRITE_PERMISSIONS, Skip, read_trigger

    event_path = event or (Path(os.environ["GITHUB_EVENT_PATH"]) if os.environ.get("GITHUB_EVENT_PATH") else None)
    name = event_name or os.environ.get("GITHUB_EVENT_NAME")
    if event_path is None or not name:
        _fail("no event: run inside a GitHub workflow, or pass --event FILE and --event-name NAME")
    try:
        payload = json.loads(event_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        _fail(f"cannot read the event payload {event_path}: {err}")

    outputs = os.environ.get("GITHUB_OUTPUT")
    decided = read_trigger(name, payload, phrase=phrase, label=label, default_instruction=instruction, allow_bots=allow_bots)
    if isinstance(decided, Skip):
        return _skip(outputs, decided.reason)
    gh = _client(decided.repo, api_url)
    permission = gh.permission(decided.actor)
    if permission not in WRITE_PERMISSIONS:
        return _skip(outputs, f"{decided.actor} has {permission} access; bakeoff runs only for actors with write access")
    if not decided.head_sha:  # a PR comment's payload names the PR, not its head
        pull = gh.pull(decided.pr)
        decided.head_sha, decided.head_ref = pull["head"]["sha"], pull["head"]["ref"]
        decided.base_ref, decided.base_sha = pull["base"]["ref"], pull["base"].get("sha", "")
        decided.head_repo = (pull["head"].get("repo") or {}).get("full_name", "")
    try:
        decided.base_settings, decided.base_settings_source = read_base_settings(
            gh, decided.base_sha or decided.base_ref, decided.base_ref)
    except ConfigError as err:
        gh.create_comment(decided.pr, status_body(decided, "failed", str(err)))
        return _skip(outputs, str(err))
    decided.status_comment_id = gh.create_comment(decided.pr, status_body(decided, "started"))
    trigger_out.write_text(decided.model_dump_json(indent=2), encoding="utf-8")
    write_outputs(outputs, {"run": "true", "pr": str(decided.pr), "head-sha": decided.head_sha,
                            "head-repo": decided.head_repo or decided.repo, "trigger": str(trigger_out)})
    typer.echo(f"bakeoff: running on #{decided.pr} at {decided.head_sha[:12]} for {decided.actor}", err=True)


def _skip(outputs: str | None, reason: str) -> None:
    from bakeoff.agent.github.report import write_outputs

    typer.echo(f"bakeoff: not running: {reason}", err=True)
    write_outputs(outputs, {"run": "false", "reason": reason})


@action_app.command("run")
def run_step(
    trigger: Path = typer.Option(..., help="the trigger the gate wrote"),
    repo: Path = typer.Option(Path("."), help="checkout of the PR head"),
    out: Path = typer.Option(Path("bakeoff-result"), help="folder for report.json and winner.patch"),
    n: Optional[int] = typer.Option(None, help="candidates"),
    budget: Optional[float] = typer.Option(None, help="budget in dollars"),
    model: Optional[str] = typer.Option(None, help="model for every role"),
    sandbox: str = typer.Option("docker", help="sandbox backend (the Action defaults to docker)"),
    allow_scripted_model: bool = typer.Option(
        False, "--allow-scripted-model", help="let the workflow's own --model name a scripted model (tests, demos)"),
) -> None:
    """Run bakeoff on the PR head with the workflow's and the base branch's settings (never the
    PR's). Refuses to run while GITHUB_TOKEN is in the environment."""
    from bakeoff.agent.config import ConfigError
    from bakeoff.agent.github.settings import action_settings
    from bakeoff.agent.github.trigger import Trigger, load_json

    if os.environ.get("GITHUB_TOKEN"):
        _fail("GITHUB_TOKEN is set in the run step: this step runs pull-request code, so it must not hold it")
    try:
        decided = Trigger.model_validate(load_json(trigger))
    except (OSError, ValueError) as err:
        _fail(f"cannot read the trigger {trigger}: {err}")
    flags = {k: v for k, v in {"n": n, "budget_usd": budget, "model": model, "sandbox": sandbox}.items() if v is not None}
    try:
        settings, _ = action_settings(decided, os.environ, flags, allow_scripted=allow_scripted_model)
    except ConfigError as err:
        _fail(str(err))
    report = _run_quietly(settings, repo, decided)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(report.model_dump_json(indent=2), encoding="utf-8")
    # Only a verified winner is a patch to deliver; an unverified edit stays in the report.
    (out / "winner.patch").write_text(report.patch if report.status == "success" else "", encoding="utf-8")
    typer.echo(f"bakeoff: {report.status}; report in {out}/report.json", err=True)


def _run_quietly(settings, repo: Path, decided):
    """The session's run. Its errors reach the log without their messages (a message may quote a
    file it read; a workflow's log is often public), except those whose words bakeoff wrote."""
    import traceback

    from bakeoff.agent.cli.stopping import Stopped, leave_now, run_stoppable
    from bakeoff.agent.config import ConfigError, ModelNotConfigured
    from bakeoff.agent.events import EventBus
    from bakeoff.agent.github.trigger import task_text
    from bakeoff.agent.session import Session, SessionError, docker_host_of
    from bakeoff.sandboxes import SandboxUnavailable
    from bakeoff.sandboxes.pool import SandboxPool

    events = EventBus()
    events.subscribe(lambda e: print(json.dumps({"kind": e.kind, **e.data}, default=str)[:300], file=sys.stderr))
    # The image as named, never a Dockerfile guessed from a path (see github/settings.py).
    pool = SandboxPool(kind=settings.sandbox, max_concurrent=settings.max_sandboxes, image=settings.image,
                       docker_host=docker_host_of(settings), limits=settings.sandbox_limits())

    async def go():
        try:
            session = Session(settings, repo, events=events, pool=pool)
            try:
                session.check_sandbox()
                return await session.run(task_text(decided))
            finally:
                await session.close()
        finally:
            await pool.close()

    try:
        return run_stoppable(go())  # INT, TERM, HUP: sandboxes removed, exit 128 + the signal
    except (ConfigError, ModelNotConfigured, SessionError, SandboxUnavailable) as err:
        _fail(str(err))
    except Stopped as stop:
        leave_now(stop, f"stopped by {stop.name}: sandboxes removed, the pull request untouched")
    except Exception as err:  # noqa: BLE001 - reported without its message, then the step fails
        frames = "".join(traceback.format_tb(err.__traceback__))
        typer.echo(f"{frames}bakeoff action run: {type(err).__name__} (its message is not shown: it may quote "
                   "a file, and this log may be public)", err=True)
        raise typer.Exit(1) from None


@action_app.command()
def deliver(
    trigger: Path = typer.Option(..., help="the trigger the gate wrote"),
    result: Path = typer.Option(Path("bakeoff-result"), help="the run step's folder"),
    repo: Path = typer.Option(Path("."), help="checkout of the PR head (read only)"),
    mode: str = typer.Option("review", help="review: suggestions on the PR; fix: a commit on a branch and a draft PR"),
    api_url: Optional[str] = typer.Option(None, help="GitHub API URL (default: $GITHUB_API_URL)"),
) -> None:
    """Post the result: a review with suggestions, or a branch and a draft PR; finish the status."""
    from bakeoff.agent.github.deliver import deliver as do_deliver
    from bakeoff.agent.github.report import report_markdown, status_body, write_outputs
    from bakeoff.agent.github.trigger import Trigger, load_json

    if mode not in ("review", "fix"):
        _fail(f"mode must be review or fix, not {mode!r}")
    try:
        decided = Trigger.model_validate(load_json(trigger))
    except (OSError, ValueError) as err:
        _fail(f"cannot read the trigger {trigger}: {err}")
    gh = _client(decided.repo, api_url)
    report_path = result / "report.json"
    if not report_path.exists():
        if decided.status_comment_id:
            gh.update_comment(decided.status_comment_id, status_body(decided, "failed", "The run step produced no report; see the workflow log."))
        write_outputs(os.environ.get("GITHUB_OUTPUT"), {"conclusion": "error", "winner-summary": "", "patch-path": "", "cost": "0"})
        _fail(f"no report at {report_path}: the run step failed", code=1)
    report = load_json(report_path)
    outcome = do_deliver(gh, decided, report, repo=repo, mode=mode)
    state = "done" if report.get("status") in ("success", "not-faster") else "failed"
    if decided.status_comment_id:
        gh.update_comment(decided.status_comment_id, status_body(decided, state, outcome + "\n\n" + report_markdown(report)))
    write_outputs(
        os.environ.get("GITHUB_OUTPUT"),
        {
            "conclusion": report.get("status", "error"),
            "winner-summary": outcome,
            "patch-path": str(result / "winner.patch"),
            "cost": f"{report.get('cost_usd', 0.0):.4f}",
        },
    )
    typer.echo(f"bakeoff: {outcome}", err=True)
