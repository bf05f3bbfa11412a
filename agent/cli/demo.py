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
    import bakeoff.agent

    return Path(agent.__file__).resolve().parent.parent / "examples"


def demo_command(
    example: str = typer.Option("omp_kernel", "--example", help=f"Which example: {', '.join(DEMO_TASKS)}."),
    task: str | None = typer.Option(None, "--task", help="A task of your own instead of the example's."),
    n: int | None = typer.Option(None, "--n", help="Candidates developed in parallel."),
    sandbox: str | None = typer.Option(None, "--sandbox", help="auto (docker when an engine answers, else local), local, local+bwrap or docker."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON document."),
    keep: bool = typer.Option(False, "--keep", help="Keep the temporary copy (its path is printed)."),
) -> None:
    import asyncio
    import json
    import shutil
    import sys
    import tempfile

    from rich.console import Console

    from bakeoff.agent.cli.render import Progress, print_result, result_document
    from bakeoff.agent.cli.run import STATUS_EXIT, fail, load, user_errors
    from bakeoff.agent.events import EventBus
    from bakeoff.agent.config import ModelNotConfigured
    from bakeoff.agent.models import resolve_model
    from bakeoff.agent.session import Session, git

    source = examples_dir() / example
    if example not in DEMO_TASKS or not source.is_dir():
        known = ", ".join(sorted(p.name for p in examples_dir().glob("*") if p.name in DEMO_TASKS)) or "none found"
        fail(f"no bundled example {example!r} (available: {known})")
    err = Console(stderr=True)
    workdir = Path(tempfile.mkdtemp(prefix="bakeoff-demo-"))
    repo = workdir / example
    shutil.copytree(source, repo, ignore=shutil.ignore_patterns("*.o", "__pycache__", ".pytest_cache", "bench", "test_kernel"))
    git(repo, "init", "--quiet")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=bakeoff demo", "-c", "user.email=demo@bakeoff.invalid",
        "commit", "--quiet", "-m", f"the {example} example")

    settings, provenance = load(repo, {"n": n, "sandbox": sandbox})
    override = None
    try:
        for role in ("planner", "editor", "tester", "judge"):
            settings.model.for_role(role)
        err.print(f"[bold]live model[/bold] {settings.model.for_role('planner')} "
                  f"(from {provenance.get('model.default', 'config')}); this run costs real money, "
                  f"at most ${settings.budget_usd}")
    except ModelNotConfigured:
        script = examples_dir() / "scripted" / f"{example}.yaml"
        if not script.is_file():
            fail(f"no model configured and no scripted answers at {script}; configure a model (--model or BAKEOFF_MODEL)")
        override = resolve_model(f"scripted:{script}")
        err.print(f"[bold]scripted model[/bold]: replaying {script} because no model is configured "
                  "(set BAKEOFF_MODEL or add \\[model] default = \"...\" to bakeoff.toml for a live run)")
    err.print(f"working on a copy of the example at {repo}")

    events = EventBus()
    progress = Progress(err)
    events.subscribe(progress)
    try:
        session = Session(settings, repo, events=events, model_override=override)
    except user_errors() as exc:
        fail(str(exc))

    async def go():
        try:
            return await session.run(task or DEMO_TASKS[example])
        finally:
            await session.close()

    try:
        report = asyncio.run(go())
    except user_errors() as exc:
        fail(str(exc))
    finally:
        progress.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if json_out:
        doc = result_document(report)
        doc["model"] = "scripted" if override is not None else "live"
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        print_result(Console(), report)
    if keep:
        err.print(f"the copy stays at {repo}; commit the winner there with bakeoff run --apply")
    raise typer.Exit(STATUS_EXIT.get(report.status, 1))
