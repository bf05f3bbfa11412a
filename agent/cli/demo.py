"""``bakeoff demo``: the whole pipeline on a bundled example, in a temporary copy.

It uses the configured model when there is one and otherwise the scripted answers under
``examples/scripted/``, and says which. The example is copied to a temporary git
repository first, so the package's own files are never written.
"""

from __future__ import annotations

from pathlib import Path

import typer

DEMO_TASKS = {
    "omp_kernel": "make collatz_total in kernel.c parallel and faster with OpenMP, keeping its result exact",
    "slow_python": "make the slow function in pairs.py faster without changing its results",
}


def register(app: typer.Typer) -> None:
    app.command(
        "demo",
        help="Run bakeoff end to end on a bundled example (a live model if configured, scripted answers otherwise).",
    )(demo_command)


def examples_dir() -> Path:
    """The bundled examples: inside the installed package, or the checkout's examples/."""
    from importlib.resources import files

    return Path(str(files("bakeoff.examples")))


def demo_command(
    example: str = typer.Option("omp_kernel", "--example", help=f"Which example: {', '.join(DEMO_TASKS)}."),
    task: str | None = typer.Option(None, "--task", help="A task of your own instead of the example's."),
    n: int | None = typer.Option(None, "--n", help="Candidates developed in parallel."),
    sandbox: str | None = typer.Option(None, "--sandbox", help="auto (docker when an engine answers, else bubblewrap), docker, local (bubblewrap) or unsafe-local (no isolation)."),
    docker_host: str | None = typer.Option(None, "--docker-host", help="The Docker engine sandboxes run on: tcp://HOST:PORT, ssh://USER@HOST, unix:///PATH or a docker context name (default: DOCKER_HOST, else this machine's)."),
    docker_cert_path: Path | None = typer.Option(None, "--docker-cert-path", metavar="DIR", help="Folder of ca.pem, cert.pem and key.pem: TLS to a tcp:// --docker-host."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON document."),
    keep: bool = typer.Option(False, "--keep", help="Keep the temporary copy (its path is printed)."),
    time_limit: float | None = typer.Option(None, "--time-limit", metavar="SECONDS", help="Wall-clock seconds the run may take (default 3600)."),
) -> None:
    import shutil
    import tempfile

    from rich.console import Console

    from bakeoff.agent.cli.run import fail, load
    from bakeoff.agent.cli.stopping import Stopped, leave_now

    source = examples_dir() / example
    if example not in DEMO_TASKS or not source.is_dir():
        known = ", ".join(sorted(p.name for p in examples_dir().glob("*") if p.name in DEMO_TASKS)) or "none found"
        fail(f"no bundled example {example!r} (available: {known})")
    err = Console(stderr=True)
    workdir = Path(tempfile.mkdtemp(prefix="bakeoff-demo-"))
    stopped: Stopped | None = None
    try:
        repo = copy_example(source, workdir / example)
        flags = {"n": n, "sandbox": sandbox, "time_limit_s": time_limit, "docker_host": docker_host,
                 "docker_cert_path": str(docker_cert_path) if docker_cert_path else None}
        settings, provenance = load(repo, flags)
        override = demo_model(settings, provenance, example, err)
        settings = demo_sandbox(settings, provenance, override, err)
        err.print(f"working on a copy of the example at {repo}")
        code = run_demo(settings, repo, override, task or DEMO_TASKS[example], json_out, err)
    except Stopped as stop:  # its sandboxes are removed; the copy goes below
        stopped = stop
    finally:
        if not keep or stopped is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    if stopped is not None:
        leave_now(stopped, f"stopped by {stopped.name}: sandboxes and the example's copy removed")
    if keep:
        err.print(f"the copy stays at {repo}; commit the winner there with bakeoff run --apply")
    raise typer.Exit(code)


def copy_example(source: Path, repo: Path) -> Path:
    """The example as a fresh git repository of its own: the package's files are never written."""
    import shutil

    from bakeoff.agent import repository

    shutil.copytree(source, repo, ignore=shutil.ignore_patterns("*.o", "__pycache__", ".pytest_cache", "bench", "test_kernel"))
    repository.commit_all(repo, f"the {repo.name} example", author="bakeoff demo", email="demo@bakeoff.invalid")
    return repo


def demo_model(settings, provenance: dict[str, str], example: str, err):
    """None when a live model is configured (and said so), else the example's scripted model."""
    from bakeoff.agent.cli.run import fail
    from bakeoff.agent.config import ModelNotConfigured
    from bakeoff.agent.models import resolve_model

    try:
        for role in ("planner", "editor", "tester", "judge"):
            settings.model.for_role(role)
    except ModelNotConfigured:
        script = examples_dir() / "scripted" / f"{example}.yaml"
        if not script.is_file():
            fail(f"no model configured and no scripted answers at {script}; configure a model (--model or BAKEOFF_MODEL)")
        err.print(f"[bold]scripted model[/bold]: replaying {script} because no model is configured "
                  "(set BAKEOFF_MODEL or add \\[model] default = \"...\" to bakeoff.toml for a live run)")
        return resolve_model(f"scripted:{script}")
    err.print(f"[bold]live model[/bold] {settings.model.for_role('planner')} "
              f"(from {provenance.get('model.default', 'config')}); this run costs real money, "
              f"at most ${settings.budget_usd}")
    return None


def demo_sandbox(settings, provenance: dict[str, str], override, err):
    """The settings, with the bundled example's scripted (so trusted) candidates allowed to
    run unisolated when no Docker or bubblewrap is here and no sandbox was asked for: said
    loudly. A live model's candidates never are, nor any when a Docker engine was named."""
    from bakeoff.sandboxes import HOW_TO_ISOLATE, UNSAFE_LOCAL, SandboxUnavailable, choose_backend

    if override is None or settings.sandbox != "auto" or provenance.get("sandbox") != "default" \
            or settings.docker_host or settings.docker_cert_path:
        return settings
    try:
        choose_backend("auto")
        return settings
    except SandboxUnavailable:
        err.print(f"[bold]no isolation[/bold]: neither Docker nor bubblewrap can run here, so the bundled example's "
                  f"scripted candidates (trusted code) run with --sandbox {UNSAFE_LOCAL}; for your own code, "
                  f"{HOW_TO_ISOLATE}")
        return settings.model_copy(update={"sandbox": UNSAFE_LOCAL})


def run_demo(settings, repo: Path, override, task: str, json_out: bool, err) -> int:
    """Run the task on the copy; print the result; the exit code."""
    import json
    import sys

    from rich.console import Console

    from bakeoff.agent.cli.checks import writable_dir
    from bakeoff.agent.cli.render import Progress, print_result, result_document
    from bakeoff.agent.cli.run import STATUS_EXIT, fail, user_errors
    from bakeoff.agent.cli.stopping import run_stoppable
    from bakeoff.agent.events import EventBus
    from bakeoff.agent.session import Session

    events = EventBus()
    progress = Progress(err)
    events.subscribe(progress)
    try:
        session = Session(settings, repo, events=events, model_override=override)
    except user_errors() as exc:
        fail(str(exc))
    writable_dir(session.state, "the state directory (BAKEOFF_STATE_DIR)")

    async def go():
        try:
            return await session.run(task)
        finally:
            await session.close()

    try:
        report = run_stoppable(go())  # INT, TERM, HUP: Stopped, once the sandboxes are removed
    except user_errors() as exc:
        fail(str(exc))
    finally:
        progress.stop()
    if json_out:
        doc = result_document(report)
        doc["model"] = "scripted" if override is not None else "live"
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        print_result(Console(), report)
    if report.status == "not-faster":
        # The demo shows a whole run; where the example cannot gain (a busy or a one-core
        # machine) its honest verdict is not-faster, and the demo still did its job.
        return 0
    return STATUS_EXIT.get(report.status, 1)
