"""``bakeoff --help`` stays light (no litellm, no docker) and usage mistakes say what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import json, sys
sys.argv = ["bakeoff", *sys.argv[1:]]
from bakeoff.agent.cli.main import app
try:
    app()
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("litellm", "docker", "git", "openai", "bakeoff.agent.models.litellm", "bakeoff.agent.session",
                          "bakeoff.agent.types", "bakeoff.agent.harness", "bakeoff.agent.selection") if m in sys.modules)
print("PROBE" + json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


def probe(*args: str) -> tuple[dict, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BAKEOFF_")}
    env["COLUMNS"] = "120"
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=60)
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("PROBE")][-1]
    return json.loads(line[5:]), proc.stdout, proc.stderr


def test_top_level_help_lists_the_doors_without_heavy_imports():
    result, out, _ = probe("--help")
    assert result == {"code": 0, "heavy": []}
    for command in ("run", "chat", "batch", "demo", "config"):
        assert command in out


def test_the_console_script_starts_no_event_loop_for_help():
    """``main`` installs the signal handling every door shares; asyncio (and the ssl it pulls
    in, about 40 ms) is imported where a loop starts, so ``--help`` does not pay for it."""
    code = ("import sys; sys.argv = ['bakeoff', '--help']\n"
            "from bakeoff.agent.cli.main import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
            "print('LOADED', sorted(m for m in ('asyncio', 'ssl', 'litellm', 'docker') if m in sys.modules),"
            " file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stderr and "run" in proc.stdout


@pytest.mark.parametrize("command", ["run", "chat", "batch", "demo", "config"])
def test_each_command_help_is_light(command):
    result, out, _ = probe(command, "--help")
    assert result == {"code": 0, "heavy": []}
    assert "--" in out  # shows its options


def test_run_help_documents_exit_codes():
    _, out, _ = probe("run", "--help")
    text = " ".join(out.replace("│", " ").split())
    for fragment in ("0 a correct candidate", "1 no correct candidate", "2 usage or configuration", "3 budget exhausted"):
        assert fragment in text


def test_typing_mistakes_suggest_and_exit_2():
    result, _, err = probe("rnu")
    assert result["code"] == 2 and "Did you mean 'run'" in err
    result, _, err = probe("run", "--jsn", "task")
    assert result["code"] == 2 and "--json" in err


def test_missing_repository_says_what_to_do(tmp_path):
    result, _, err = probe("run", "--repo", str(tmp_path / "nope"), "do something")
    assert result["code"] == 2
    assert "does not exist" in err and "--repo" in err


def test_no_model_configured_lists_the_ways_to_configure_one(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    result, _, err = probe("run", "--repo", str(tmp_path), "do something")
    assert result["code"] == 2
    assert "no model configured" in err and "BAKEOFF_MODEL" in err and "--model" in err


def measure_help(runs: int = 5) -> dict[str, float]:
    """Median wall time of ``bakeoff --help`` and of a bare interpreter, for the README.
    Not a test (tests are never timed): ``python3 tests/test_cli_help.py`` prints it."""
    import shutil
    import statistics
    import time

    exe = shutil.which("bakeoff")
    commands = {"bakeoff --help": [exe, "--help"] if exe else [sys.executable, "-m", "bakeoff", "--help"],
                "python3 -c pass": [sys.executable, "-c", "pass"]}
    figures = {}
    for name, cmd in commands.items():
        subprocess.run(cmd, capture_output=True)  # warm the file cache
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True)
            times.append(time.perf_counter() - started)
        figures[name] = statistics.median(times)
    return figures


if __name__ == "__main__":
    for name, seconds in measure_help().items():
        print(f"{name}: median of 5 = {seconds * 1000:.0f} ms")
