"""The ``bakeoff`` command. Each front door lives in its own module and registers itself.

Modules here import only typer and the standard library at top level, so that
``bakeoff --help`` stays instant: litellm and docker are imported when a model is really
called or a Docker sandbox is really made.
"""

from __future__ import annotations

import importlib
import inspect

import typer

app = typer.Typer(
    name="bakeoff",
    help=(
        "Plan a coding task as a graph of parallel tool calls, fan out candidate edits in "
        "sandboxes, test and time every one, and ship the fastest correct candidate."
    ),
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
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


def _metavar(annotation: str, name: str, argument: bool) -> str | None:
    """What the help shows for a value: PATH, N, NUMBER, TEXT (an argument: its own name),
    never Typer's type labels (``<list[Path]>``); nothing for a flag."""
    if argument:
        return name.upper()
    if annotation == "bool":
        return None
    for part, label in (("Path", "PATH"), ("int", "N"), ("float", "NUMBER")):
        if part in annotation:
            return label
    return "TEXT"


def _label_values(commands: typer.Typer) -> None:
    for info in commands.registered_commands:
        for param in inspect.signature(info.callback).parameters.values():
            default = param.default
            if isinstance(default, (typer.models.OptionInfo, typer.models.ArgumentInfo)) and default.metavar is None:
                default.metavar = _metavar(str(param.annotation), param.name,
                                           isinstance(default, typer.models.ArgumentInfo))
    for group in commands.registered_groups:
        _label_values(group.typer_instance)


_label_values(app)
if hasattr(typer.core.TyperArgument, "display_type_rich"):
    # Typer (0.20 and later) prints an argument's Python type beside its name ("TASK <str>"):
    # the name says enough, as it does for options once they carry a metavar.
    typer.core.TyperArgument.display_type_rich = lambda self, ctx: None


def main() -> None:
    """The console script.

    A usage mistake is one line on stderr and exit 2 (``bakeoff run -h`` shows the usage).
    INT, TERM and HUP stop bakeoff alike (``stopping``), and every way of being stopped exits
    128 + the signal's number.
    """
    import signal
    import sys

    from bakeoff.agent.cli.stopping import Stopped, install, leave_now

    install()
    try:
        code = app(standalone_mode=False)
    except typer.Exit as done:
        code = done.exit_code
    except typer.Abort:
        typer.echo("bakeoff: aborted", err=True)
        code = 1
    except Exception as err:
        code = _usage_problem(err)
    except Stopped as stop:
        leave_now(stop, f"stopped by {stop.name}")
    except KeyboardInterrupt:
        leave_now(Stopped(signal.SIGINT), "stopped by SIGINT")
    sys.exit(code if isinstance(code, int) else 0)


def _usage_problem(err: Exception) -> int:
    """A usage mistake click found (a bad value, a missing argument, an unknown command) as one
    line on stderr; its exit code (2). Anything else is a bug and raises on.

    Click's classes are matched by name: newer Typer releases ship their own copy of click.
    """
    names = {cls.__name__ for cls in type(err).__mro__}
    if "NoArgsIsHelpError" in names:  # a group named alone (``bakeoff action``): its help
        typer.echo(err.format_message())
        return 0
    if "ClickException" not in names:
        raise err
    ctx = getattr(err, "ctx", None)
    where = ctx.command_path if ctx is not None else "bakeoff"
    one_line = " ".join(err.format_message().split())
    hint = f" ({where} -h shows the usage)" if "UsageError" in names else ""
    typer.echo(f"{where}: {one_line}{hint}", err=True)
    return int(getattr(err, "exit_code", 2))


if __name__ == "__main__":
    main()
