"""The ``bakeoff`` command. Each front door lives in its own module and registers itself.

Modules here import only typer and the standard library at top level, so that
``bakeoff --help`` stays instant: litellm and docker are imported when a model is really
called or a Docker sandbox is really made.
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="bakeoff",
    help=(
        "Plan a coding task as a graph of parallel tool calls, fan out candidate edits in "
        "sandboxes, test and time every one, and ship the fastest correct candidate."
    ),
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print bakeoff's version and exit.", is_eager=True),
) -> None:
    """Bare ``bakeoff`` prints the help and exits 0; ``--version`` prints the version."""
    if version:
        import bakeoff

        typer.echo(f"bakeoff {bakeoff.__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)

# Each module defines ``register(app)``. Order is the order shown in --help.
COMMAND_MODULES = ["run", "chat", "batch", "select", "demo", "config", "action"]

for _name in COMMAND_MODULES:
    importlib.import_module(f"bakeoff.agent.cli.{_name}").register(app)


def main() -> None:
    """The console script. INT, TERM and HUP stop bakeoff alike (``stopping``), and every way
    of being stopped exits 128 + the signal's number."""
    import signal

    from bakeoff.agent.cli.stopping import Stopped, install, leave_now

    install()
    try:
        app()
    except Stopped as stop:
        leave_now(stop, f"stopped by {stop.name}")
    except KeyboardInterrupt:
        leave_now(Stopped(signal.SIGINT), "stopped by SIGINT")


if __name__ == "__main__":
    main()
