"""``bakeoff config``: the merged settings and where each value came from."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("config", help="Show the merged settings and the source of each value "
                "(default < user config < bakeoff.toml or [tool.bakeoff] in pyproject.toml < BAKEOFF_* < flags).")(config_command)


def config_command(
    repo: Path = typer.Option(Path("."), "--repo", help="The repository whose bakeoff.toml or pyproject.toml is read."),
    json_out: bool = typer.Option(False, "--json", help="Print {setting: {value, source}} as JSON."),
) -> None:
    import json
    import os
    import sys

    from rich.console import Console
    from rich.table import Table

    from bakeoff.agent.cli.run import load
    from bakeoff.agent.config import _flatten, env_names, repo_config, user_config_path
    from bakeoff.agent.storage import state_dir

    settings, provenance = load(repo, {})
    values = _flatten(settings.model_dump(mode="json"))
    if json_out:
        doc = {key: {"value": values.get(key), "source": provenance.get(key, "default")} for key in values}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    table = Table(title="bakeoff settings", title_justify="left")
    table.add_column("setting")
    table.add_column("value")
    table.add_column("source")
    for key, value in values.items():
        source = provenance.get(key, "default")
        table.add_row(key, json.dumps(value), source, style="dim" if source == "default" else "")
    console = Console()
    console.print(table)
    _, repo_file = repo_config(repo)
    user_file = user_config_path(os.environ)
    lines = [
        f"repository file: {repo / repo_file.split()[0] if repo_file else 'none (bakeoff.toml or [tool.bakeoff] in pyproject.toml)'}",
        f"user file: {user_file if user_file.is_file() else f'none ({user_file})'}",
        f"environment: {', '.join(sorted(v for v in env_names() if v in os.environ)) or 'no BAKEOFF_* settings'}",
        f"state (event logs, runs, history): {state_dir()}",
    ]
    for line in lines:
        console.print(line, markup=False, highlight=False)
