"""``bakeoff chat`` driven through a pseudo-terminal and through piped stdin."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from tests.test_session import CALC, cli_env, git, make_repo, write_script

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


class Terminal:
    """A child process on a pseudo-terminal; ``expect`` waits for text in its output."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        master, slave = os.openpty()
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.fd = master
        self.seen = ""  # everything read, escape codes removed
        self.pos = 0  # where the next expect starts looking

    def read_some(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # the child closed the terminal
                data = b""
            self.seen += ANSI.sub("", data.decode("utf-8", "replace"))

    def expect(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            at = self.seen.find(text, self.pos)
            if at >= 0:
                chunk = self.seen[self.pos : at + len(text)]
                self.pos = at + len(text)
                return chunk
            if self.proc.poll() is not None:
                self.read_some(0.1)
                if self.seen.find(text, self.pos) < 0:
                    break
            self.read_some(0.2)
        raise AssertionError(f"did not see {text!r}; output so far:\n{self.seen[-12000:]}")

    def send(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        os.close(self.fd)


@pytest.fixture
def repo(tmp_path):
    return make_repo(tmp_path / "repo")


@pytest.mark.slow
def test_chat_on_a_terminal_diff_apply_undo_and_ctrl_c(repo, tmp_path):
    # Every model call waits 0.5 s, so a step is still running when Ctrl-C arrives.
    script = write_script(tmp_path / "s.json", plans=2, first_token_s=0.5)
    base = git(repo, "rev-parse", "HEAD")
    env = cli_env(tmp_path)
    term = Terminal([sys.executable, "-m", "bakeoff", "chat", "--repo", str(repo), "--model", f"scripted:{script}"], env)
    try:
        term.expect("bakeoff> ")
        term.send("/help")
        assert "/undo" in term.expect("bakeoff> ")

        term.send("make total faster")
        term.expect("run ")  # the step started
        time.sleep(0.3)
        term.proc.send_signal(signal.SIGINT)
        term.expect("step cancelled")
        term.expect("bakeoff> ")
        assert term.proc.poll() is None  # the session goes on

        term.send("make total faster")
        out = term.expect("step cost", timeout=90)
        assert "winner" in out and "return sum(xs)" in out  # the winner's diff is shown first
        term.expect("bakeoff> ")
        assert git(repo, "rev-parse", "HEAD") == base  # nothing applied yet

        term.send("/diff")
        assert "+    return sum(xs)" in term.expect("bakeoff> ")
        term.send("/candidates")
        out = term.expect("bakeoff> ")
        assert "c1" in out and "c2" in out

        term.send("/apply")
        term.expect("[y/N]")
        term.send("y")
        term.expect("applied")
        term.expect("bakeoff> ")
        assert git(repo, "rev-list", "--count", f"{base}..HEAD") == "1"
        assert "return sum(xs)" in (repo / "calc.py").read_text()

        term.send("/undo")
        term.expect("undone")
        term.expect("bakeoff> ")
        assert git(repo, "rev-parse", "HEAD") == base and (repo / "calc.py").read_text() == CALC

        term.send("/cost")
        assert "session" in term.expect("bakeoff> ")
        term.send("/nope")
        assert "unknown command" in term.expect("bakeoff> ")
        term.send("/exit")
        assert term.proc.wait(20) == 0
    finally:
        term.close()
    history = (tmp_path / "state" / "chat_history").read_text()
    assert "/diff" in history and "make total faster" in history


def test_chat_from_piped_stdin_with_yes_applies_after_showing_the_diff(repo, tmp_path):
    script = write_script(tmp_path / "s.json")
    base = git(repo, "rev-parse", "HEAD")
    proc = subprocess.run(
        [sys.executable, "-m", "bakeoff", "chat", "--repo", str(repo), "--model", f"scripted:{script}", "--yes",
         "--branch", "faster"],
        input="/n 3\n/n\nmake total faster\n/cost\n", capture_output=True, text=True, env=cli_env(tmp_path), timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "candidates per fan-out: 3" in out
    assert out.index("+    return sum(xs)") < out.index("applied")
    assert git(repo, "rev-list", "--count", f"{base}..faster") == "1"
    assert git(repo, "rev-parse", "main") == base
    assert "session cost" in out
