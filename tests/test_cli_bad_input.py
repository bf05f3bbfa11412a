"""Bad input at every front door: one line on stderr, exit 2, never a traceback.

The corpus drives the real entry point (``bakeoff.agent.cli.main.main``, what the console
script runs) in this process, so that fifty mistakes cost seconds, not fifty interpreter
starts. Also: the CLI's conventions (``-h``, help without type labels, ``/sandbox``), and the
sandbox directory (``BAKEOFF_SANDBOX_DIR``, one owned by another user).
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from tests.test_session import GIT_ENV, bakeoff, cli_env, make_repo, write_script

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
TYPE_LABEL = re.compile(r"<(str|int|float|bool|path|file|list\[[^>]*\]|[a-z]+ range)>", re.IGNORECASE)


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory of good and bad inputs, the current directory, with a clean environment."""
    for var in [v for v in os.environ if v.startswith(("BAKEOFF_", "XDG_"))]:
        monkeypatch.delenv(var)
    for key, value in {**GIT_ENV, "BAKEOFF_STATE_DIR": str(tmp_path / "state"), "HOME": str(tmp_path / "home"),
                       "BAKEOFF_SANDBOX": "local", "COLUMNS": "120"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    make_repo(tmp_path / "repo")
    write_script(tmp_path / "good.json")
    (tmp_path / "ok.py").write_text("def f(x):\n    return x\n")
    (tmp_path / "syntax.py").write_text("def f(:\n")
    (tmp_path / "latin1.txt").write_bytes("café, déjà vu\n".encode("latin-1"))
    (tmp_path / "bad_regex.yaml").write_text('responses:\n  - match: "(unclosed"\n    text: hi\n')
    (tmp_path / "bad_yaml.yaml").write_text("responses: [\n")
    (tmp_path / "no_list.yaml").write_text("- 1\n- 2\n")
    bad_toml = make_repo(tmp_path / "badtoml")
    (bad_toml / "bakeoff.toml").write_bytes(b"n = 3\nsandbox = '\xe9'\n")
    (tmp_path / "a_file").write_text("not a directory\n")
    (tmp_path / "tasks.jsonl").write_text(json.dumps({"id": "t", "repo": "repo", "instruction": "x"}) + "\n")
    (tmp_path / "tasks_latin1.jsonl").write_bytes(
        json.dumps({"id": "t", "repo": "repo", "instruction": "x"}).encode()[:-2] + b'\xe9"}\n')
    (tmp_path / "state_file").write_text("a file where the state directory should be\n")
    return tmp_path


@pytest.fixture
def cli(place, capfd, monkeypatch):
    """``cli(*args)`` runs the console script's entry point: (exit code, stdout, stderr)."""
    from bakeoff.agent.cli.main import main

    saved = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["bakeoff", *args])
        capfd.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
        out, err = capfd.readouterr()
        return code, out, err

    return run


LATIN1_TASK = "caf\udce9"  # a task given as bytes that are not UTF-8 arrives as a lone surrogate

CORPUS = [
    # run
    ("run", "--repo", "repo", "--model", "scripted:good.json", ""),
    ("run", "--repo", "repo", "--model", "scripted:good.json", "   "),
    ("run", "--repo", "repo", "--model", "scripted:good.json", LATIN1_TASK),
    ("run", "--repo", "repo", "--model", "scripted", "make total faster"),
    ("run", "--repo", "repo", "--model", "scripted:", "make total faster"),
    ("run", "--repo", "repo", "--model", "scripted:missing.yaml", "make total faster"),
    ("run", "--repo", "repo", "--model", "scripted:bad_regex.yaml", "make total faster"),
    ("run", "--repo", "repo", "--model", "scripted:bad_yaml.yaml", "make total faster"),
    ("run", "--repo", "repo", "--model", "scripted:no_list.yaml", "make total faster"),
    ("run", "--repo", "repo", "--model", "scripted:latin1.txt", "make total faster"),
    ("run", "--repo", "badtoml", "--model", "scripted:good.json", "make total faster"),
    ("run", "--repo", "nowhere", "--model", "scripted:good.json", "make total faster"),
    ("run", "--repo", "a_file", "--model", "scripted:good.json", "make total faster"),
    ("run", "--repo", "repo", "--model", "scripted:good.json", "--n", "0", "make total faster"),
    ("run", "--repo", "repo", "--model", "scripted:good.json", "--n", "many", "make total faster"),
    ("run", "--repo", "repo", "--model", "scripted:good.json", "--sandbox", "vm", "make total faster"),
    ("run", "--repo", "repo", "--model", "scripted:good.json", "--time-limit", "-5", "make total faster"),
    ("run", "--repo", "repo", "--model", "scripted:good.json", "--budget", "lots", "make total faster"),
    ("run", "--repo", "repo", "--model", "scripted:good.json", "--patch", "no/such/dir/win.diff", "make total faster"),
    ("run", "--repo", "repo", "--model", "scripted:good.json", "--patch", "repo", "make total faster"),
    ("run", "--repo", "repo", "--model", "scripted:good.json", "--branch", "b", "make total faster"),
    ("run", "--repo", "repo", "--model", "scripted:good.json", "--json", "--jsonl", "make total faster"),
    ("run", "--jsn", "make total faster"),
    ("run",),
    ("rnu", "make total faster"),
    # batch
    ("batch", "missing.jsonl", "--model", "scripted:good.json"),
    ("batch", "latin1.txt", "--model", "scripted:good.json"),
    ("batch", "tasks_latin1.jsonl", "--model", "scripted:good.json"),
    ("batch", "ok.py", "--model", "scripted:good.json"),
    ("batch", "tasks.jsonl", "--model", "scripted:good.json", "--out", "a_file"),
    ("batch", "tasks.jsonl", "--model", "scripted:good.json", "--workers", "0"),
    ("batch", "tasks.jsonl", "--model", "scripted"),
    ("batch", "tasks.jsonl", "--model", "scripted:bad_regex.yaml"),
    # chat
    ("chat", "--repo", "nowhere", "--model", "scripted:good.json"),
    ("chat", "--repo", "badtoml", "--model", "scripted:good.json"),
    ("chat", "--repo", "repo", "--model", "scripted"),
    # select
    ("select", "--reference", "syntax.py", "--candidate", "ok.py"),
    ("select", "--reference", "syntax.py", "--candidate", "ok.py", "--entry", "f"),
    ("select", "--reference", "missing.py", "--candidate", "ok.py"),
    ("select", "--reference", "ok.py", "--candidate", "latin1.txt", "--entry", "f"),
    ("select", "--reference", "latin1.txt", "--candidate", "ok.py", "--entry", "f"),
    ("select", "--reference", "ok.py", "--candidates-jsonl", "ok.py", "--entry", "f"),
    ("select", "--reference", "ok.py"),
    ("select", "--reference", "ok.py", "--candidate", "ok.py", "--repeats", "0"),
    ("select", "--reference", "ok.py", "--candidate", "ok.py", "--sandbox", "vm"),
    ("select", "--candidate", "ok.py"),
    # demo, config, action
    ("demo", "--example", "nope"),
    ("demo", "--n", "0"),
    ("config", "--repo", "badtoml"),
    ("config", "--repo", "nowhere"),
    ("action", "run", "--trigger", "missing.json"),
    ("action", "deliver", "--trigger", "missing.json"),
    ("action", "gate"),
    ("action", "deliver", "--trigger", "missing.json", "--mode", "merge"),
]


@pytest.mark.parametrize("args", CORPUS, ids=[" ".join(a)[:60] for a in CORPUS])
def test_bad_input_is_one_line_and_exit_2(cli, args):
    code, _, err = cli(*args)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, f"exit {code}, stderr:\n{err}"


def test_the_state_directory_must_be_a_writable_directory(cli, place, monkeypatch):
    monkeypatch.setenv("BAKEOFF_STATE_DIR", str(place / "state_file"))
    code, _, err = cli("run", "--repo", "repo", "--model", "scripted:good.json", "make total faster")
    assert code == 2 and "state directory" in err and "is a file" in err and len(err.strip().splitlines()) == 1


def test_what_each_message_says(cli):
    """A few messages in full: each names the input and how to fix it."""
    assert "scripted:PATH" in cli("run", "--repo", "repo", "--model", "scripted", "x")[2]
    assert "not a valid regular expression" in cli("run", "--repo", "repo", "--model", "scripted:bad_regex.yaml", "x")[2]
    err = cli("run", "--repo", "badtoml", "--model", "scripted:good.json", "x")[2]
    assert "bakeoff.toml" in err and "not UTF-8" in err and "0xe9" in err
    assert "not UTF-8" in cli("config", "--repo", "badtoml")[2]
    err = cli("select", "--reference", "syntax.py", "--candidate", "ok.py", "--entry", "f")[2]
    assert "does not parse (line 1" in err
    err = cli("run", "--repo", "repo", "--model", "scripted:good.json", LATIN1_TASK)[2]
    assert "not UTF-8" in err and "0xe9" in err
    assert "not UTF-8" in cli("batch", "tasks_latin1.jsonl", "--model", "scripted:good.json")[2]
    err = cli("run", "--repo", "repo", "--model", "scripted:good.json", "--time-limit", "-5", "x")[2]
    assert "--time-limit" in err and "--time-limit-s" not in err
    err = cli("run", "--repo", "repo", "--model", "scripted:good.json", "--patch", "no/such/dir/w.diff", "x")[2]
    assert "no/such/dir" in err and "does not exist" in err
    err = cli("run", "--jsn", "x")[2]
    assert "--json" in err and "-h" in err


# --------------------------------------------------------------------------- conventions


def test_help_version_and_bare_bakeoff(cli):
    code, out, err = cli()
    assert code == 0 and "run" in out and "select" in out and not err
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("bakeoff ")
    for command in (["run"], ["chat"], ["batch"], ["select"], ["demo"], ["config"], ["action", "run"],
                    ["action", "gate"], ["action", "deliver"]):
        code, out, _ = cli(*command, "-h")
        assert code == 0 and "Usage:" in out
        assert not TYPE_LABEL.search(out), f"type labels in {command} help:\n{out}"
        assert "\\[" not in out  # rich markup escapes have no business in plain help
    _, out, _ = cli("select", "-h")
    assert "--candidate PATH" in out and "--repeats N" in out
    _, out, _ = cli("run", "-h")
    assert "TASK" in out and "--time-limit SECONDS" in out and "143" in out


def test_chat_sandbox_command_lists_every_backend(place):
    from bakeoff.sandboxes import KINDS

    script = write_script(place / "s.json")
    proc = bakeoff("chat", "--repo", str(place / "repo"), "--model", f"scripted:{script}",
                   input="/sandbox\n/exit\n", env=cli_env(place))
    assert proc.returncode == 0, proc.stderr
    listing = proc.stdout.split("sandbox:", 1)[1]
    for kind in KINDS:
        assert f"    {kind} " in listing


def test_chat_asks_before_running_a_one_word_line(place):
    script = write_script(place / "s.json")
    proc = bakeoff("chat", "--repo", str(place / "repo"), "--model", f"scripted:{script}",
                   input="exit\nn\nhelp\n\n/exit\n", env=cli_env(place))
    assert proc.returncode == 0, proc.stderr
    assert "start a run with the task 'exit' (did you mean /exit?)? [y/N]" in proc.stdout
    assert "(did you mean /help?)" in proc.stdout
    assert "run 2" not in proc.stdout and not (place / "state" / "runs").exists()  # no run started


# --------------------------------------------------------------------------- sandbox directory


def test_bakeoff_sandbox_dir_is_not_taken_for_a_typo(place):
    from bakeoff.agent.config import load_settings

    settings, _ = load_settings(place / "repo", {"BAKEOFF_SANDBOX_DIR": str(place / "sb")}, {})
    assert settings.sandbox == "local"  # from the repository's bakeoff.toml; the variable is no setting


def test_a_sandbox_directory_of_another_user(cli, place, monkeypatch):
    theirs = place / "theirs"
    theirs.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")  # CI runs as root (.ci/run)
    os.chown(theirs, 54321, 54321)
    monkeypatch.setenv("BAKEOFF_SANDBOX_DIR", str(theirs))
    code, _, err = cli("run", "--repo", "repo", "--model", "scripted:good.json", "make total faster")
    assert code == 2 and "belongs to another user" in err and "BAKEOFF_SANDBOX_DIR" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err

    # The default place taken by another user: this user gets one of its own beside it.
    from bakeoff.sandboxes.workspace import sandbox_root

    monkeypatch.delenv("BAKEOFF_SANDBOX_DIR")
    monkeypatch.setattr("tempfile.tempdir", str(place))
    shared = place / "bakeoff-sandboxes"
    shared.mkdir()
    os.chown(shared, 54321, 54321)
    assert sandbox_root() == place / f"bakeoff-sandboxes-{os.geteuid()}"


@pytest.mark.slow
def test_a_c_candidate_that_does_not_build_shows_the_compilers_message(place):
    examples = Path(__file__).resolve().parents[1] / "examples" / "select"
    broken = place / "broken.c"
    broken.write_text((examples / "reduction.c").read_text().replace("total += ", "total += undefined_thing + "))
    args = ["select", "--sandbox", "local", "--reference", str(examples / "serial.c"), "--candidate", str(broken),
            "--candidate", str(examples / "reduction.c"), "--entry", "collatz_total",
            # Speed is not what this test is about: any correct candidate wins, timed once on the input as drawn.
            "--any-speed", "--timing-repeats", "2", "--min-time", "0"]
    proc = bakeoff(*args, "--json", env=cli_env(place), timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = {r["candidate"]: r for r in json.loads(proc.stdout)["rows"]}
    assert rows["broken"]["built"] is False and "undefined_thing" in rows["broken"]["note"]
    assert rows["broken"]["note"].startswith("does not build: ")
    # The table the command prints without --json, rendered from the same verdict (a second run
    # would only repeat the builds and timings).
    from rich.console import Console

    from bakeoff.agent.selection.table import render_table
    from bakeoff.agent.types import Verdict

    console = Console(width=200, record=True, file=io.StringIO())
    console.print(render_table(Verdict.model_validate_json(proc.stdout)))
    table = console.export_text()
    assert "undefined_thing" in table and "does not build" in table
