"""``bakeoff batch TASKS``: many tasks over git repositories, resumable, here or on a Ray cluster.

TASKS is JSONL, JSON or YAML: a list of ``{id, repo, base, instruction, test?, build?}``
(``repo`` a path or a URL; ``base`` a ref, HEAD by default). Tasks run ``--workers`` at a
time on this machine, sharing one sandbox pool and one budget; with ``--ray [ADDRESS]`` they
run as Ray tasks over a cluster's nodes, each node with its own sandboxes and the cluster
sharing the one budget (``bakeoff.agent.batch``). Either way ``--out DIR`` is written by this
process alone (``batch.store``), and re-running the same command skips finished tasks.
The batch's own settings (flags, environment, the current directory's config) choose the
sandbox kind, the worker count and the one budget; each task's repository config adds its
models and build and test commands, and the task's own ``test``/``build`` come last.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from bakeoff.agent.batch import EXIT_HELP


def register(app: typer.Typer) -> None:
    app.command("batch", help=f"Run many tasks over git repositories (JSONL or YAML), resumably.\n\n{EXIT_HELP}")(
        batch_command
    )


def batch_command(
    tasks: Path = typer.Argument(..., help="JSONL, JSON or YAML file of {id, repo, base, instruction, test?, build?}."),
    out: Path = typer.Option(Path("bakeoff-out"), "--out", help="Directory for per-task results, results.jsonl and summary.txt."),
    workers: int | None = typer.Option(None, "--workers", help="Tasks run at once (default: the config's workers; with --ray, the cluster's CPUs)."),
    branch: str | None = typer.Option(None, "--branch", help="Commit each winning patch on this branch in a clone under --out."),
    model: str | None = typer.Option(None, "--model", help="Model for every role (litellm model string or scripted:PATH)."),
    n: int | None = typer.Option(None, "--n", help="Candidates per task."),
    budget: float | None = typer.Option(None, "--budget", help="Dollars the whole batch may spend."),
    budget_tokens: int | None = typer.Option(None, "--budget-tokens", help="Tokens the whole batch may spend."),
    sandbox: str | None = typer.Option(None, "--sandbox", help="auto (docker when an engine answers, else bubblewrap), docker, local (bubblewrap) or unsafe-local (no isolation)."),
    docker_host: str | None = typer.Option(None, "--docker-host", help="The Docker engine sandboxes run on: tcp://HOST:PORT, ssh://USER@HOST, unix:///PATH or a docker context name (default: DOCKER_HOST, else this machine's)."),
    docker_cert_path: Path | None = typer.Option(None, "--docker-cert-path", metavar="DIR", help="Folder of ca.pem, cert.pem and key.pem: TLS to a tcp:// --docker-host."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run again the tasks that ended in an error."),
    time_limit: float | None = typer.Option(None, "--time-limit", metavar="SECONDS", help="Wall-clock seconds each task may take (default 3600)."),
    gpus: bool | None = typer.Option(None, "--gpus/--no-gpus", help="Hand this machine's NVIDIA GPUs to the sandboxes: CUDA candidates then run and are timed (default: off, built only)."),
    ray: str | None = typer.Option(None, "--ray", metavar="ADDRESS", help="Run the tasks on a Ray cluster: its address (host:port), or auto (a running cluster, else a local one). Needs pip install 'bakeoff[ray]'."),
    ray_retries: int = typer.Option(2, "--ray-retries", min=0, metavar="N", help="With --ray: times a task whose node or worker died is run again elsewhere."),
    jsonl: bool = typer.Option(False, "--jsonl", help="Stream the batch's events (task start, retry, its run's events, end; each with its node) as JSON lines on stdout."),
) -> None:
    from bakeoff.agent.batch.driver import Batch
    from bakeoff.agent.batch.tasks import read_tasks
    from bakeoff.agent.cli.checks import read_text, writable_dir
    from bakeoff.agent.cli.run import fail, load, user_errors
    from bakeoff.agent.cli.stopping import Stopped, leave_now, run_stoppable
    from bakeoff.agent.storage import claimed

    try:
        items = read_tasks(tasks, read_text(tasks, "task file"))
    except ValueError as exc:
        fail(str(exc))
    flags = {"model.default": model, "n": n, "budget_usd": budget, "budget_tokens": budget_tokens,
             "sandbox": sandbox, "workers": workers, "time_limit_s": time_limit, "gpus": gpus,
             "docker_host": docker_host, "docker_cert_path": str(docker_cert_path) if docker_cert_path else None}
    settings, _ = load(Path.cwd(), flags)
    _check_scripted(settings)
    writable_dir(out, "--out")
    try:
        with claimed(out, "batch"):  # a second batch on the same --out is refused before it touches anything
            runner = _runner(settings, flags, out, ray, ray_retries, workers)
            batch = Batch(items, out, runner, branch=branch, retry_failed=retry_failed,
                          jsonl=sys.stdout if jsonl else None)
            code = run_stoppable(batch.run())
    except user_errors() as exc:
        fail(str(exc))
    except Stopped as stop:
        leave_now(stop, f"stopped by {stop.name}: tasks cancelled and sandboxes removed; finished tasks are kept, "
                        "run the same command again to resume")
    finally:
        if ray is not None:
            _leave_cluster()
    raise typer.Exit(code)


def _check_scripted(settings) -> None:
    """A scripted model's file is read and checked once, now, not in every task."""
    from bakeoff.agent.cli.run import fail, user_errors
    from bakeoff.agent.models import model_for_role

    try:
        for role in ("planner", "editor", "tester", "judge"):
            if settings.model.for_role(role).startswith("scripted:"):
                model_for_role(settings.model, role)
    except user_errors() as exc:
        fail(str(exc))


def _runner(settings, flags, out: Path, ray: str | None, retries: int, workers: int | None):
    if ray is None:
        from bakeoff.agent.batch.local import LocalRunner

        return LocalRunner(settings, flags, scratch=out / "scratch")
    from bakeoff.agent.batch.ray_runner import RayRunner

    return RayRunner(settings, flags, address=ray, retries=retries, workers=workers)


def _leave_cluster() -> None:
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()
