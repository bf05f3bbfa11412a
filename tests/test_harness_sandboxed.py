"""Candidates' code runs only inside a sandbox in the product path (fan_out's harness, ``bakeoff select``).

Each hostile candidate tries to write a file to a host path outside any workspace and to read
a secret from the environment (its own, and its parents' through /proc). It computes the right
answer otherwise, so it is judged correct only when it saw nothing: the file must not appear on
the host and the verdict must call it correct. A candidate that hangs must come out "timeout".
"""

from __future__ import annotations

import json
import math
import secrets
import tempfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bakeoff.agent.cli.main import app
from bakeoff.agent.harness.c_harness import CHarness
from bakeoff.agent.events import EventBus
from bakeoff.agent.harness.pyexec import SandboxRunner
from bakeoff.agent.seams import Workspace
from bakeoff.agent.harness.python_harness import PythonHarness
from bakeoff.agent.fanout.settings import FanOutSettings
from bakeoff.agent.fanout.tests import pick_harness
from bakeoff.sandboxes import create_sandbox
from bakeoff.sandboxes.docker import engine_available

SECRET_NAME = "BAKEOFF_PROBE_TOKEN"
ENGINE_UP, ENGINE_WHY = engine_available()

PY_REFERENCE = """
def total(xs: list[int]) -> int:
    s = 0
    for x in xs:
        s += x
    return s
"""

PY_HOSTILE = """
import os

def total(xs: list[int]) -> int:
    leaked = 0
    try:
        with open({mark!r}, "w") as f:
            f.write("escaped")
    except OSError:
        pass
    if os.environ.get({name!r}):
        leaked = 1
    pid = os.getpid()
    for _ in range(10):  # every ancestor's environment this process may read
        try:
            with open("/proc/%d/stat" % pid) as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if pid <= 1:
            break
        try:
            with open("/proc/%d/environ" % pid, "rb") as f:
                if {secret!r}.encode() in f.read():
                    leaked = 1
        except OSError:
            pass
    return sum(xs) + 1000 * leaked
"""

PY_HANG = """
def total(xs: list[int]) -> int:
    while True:
        pass
"""

PY_DEAF = """
import signal

def total(xs: list[int]) -> int:
    signal.signal(signal.SIGALRM, signal.SIG_IGN)  # deaf to the per-call alarm: only the wall-clock kill stops it
    while True:
        pass
"""

C_REFERENCE = """
long total(const long *x, long n)
{
    long s = 0;
    for (long i = 0; i < n; i++)
        s += x[i];
    return s;
}
"""

C_HOSTILE = """
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

long total(const long *x, long n)
{
    long s = 0;
    FILE *f = fopen("%(mark)s", "w");
    if (f) { fputs("escaped", f); fclose(f); }
    const char *seen = getenv("%(name)s");
    int leaked = seen != NULL && strcmp(seen, "%(secret)s") == 0;
    for (long i = 0; i < n; i++)
        s += x[i];
    return s + (leaked ? 1000 : 0);
}
"""

C_HANG = """
long total(const long *x, long n)
{
    volatile int spin = 1;
    long s = 0;
    while (spin)
        s += n;
    return s + x[0];
}
"""

C_BROKEN = "long total(const long *x, long n) { return x[0] +; }\n"


@pytest.fixture
def probe(monkeypatch):
    """A host path outside every workspace, and a secret in bakeoff's own environment."""
    mark = Path(tempfile.gettempdir()) / f"bakeoff-escape-{secrets.token_hex(6)}"
    secret = secrets.token_hex(12)
    monkeypatch.setenv(SECRET_NAME, secret)
    yield {"mark": str(mark), "secret": secret, "name": SECRET_NAME}
    assert not mark.exists(), f"a candidate wrote {mark} on the host"


@pytest.fixture
async def sandbox(tmp_path):
    (tmp_path / "ws").mkdir()
    sb = await create_sandbox(Workspace(path=tmp_path / "ws"), kind="local+bwrap")
    yield sb
    await sb.close()


def test_fan_out_runs_the_harness_in_the_sandbox_by_default():
    assert FanOutSettings().harness_in_sandbox is True


async def test_python_candidate_in_fan_outs_harness_cannot_escape(sandbox, probe):
    harness = pick_harness("python", "total", PY_REFERENCE, sandbox, EventBus())
    assert isinstance(harness.runner, SandboxRunner) and harness.runner.sandbox is sandbox
    tests = await harness.make_tests()
    assert len(tests) >= 10
    hostile = PY_HOSTILE.format(mark=probe["mark"], name=probe["name"], secret=probe["secret"])
    matrix = await harness.run_matrix({"hostile": hostile}, tests)
    # It ran (every call answered) and saw no secret (the answers are right).
    assert set(matrix.cells["hostile"].values()) == {"pass"}
    timings = await harness.time({"hostile": hostile}, repeats=2)
    samples = timings["hostile"].candidate_s
    assert samples and all(math.isfinite(x) for x in samples), samples
    assert not Path(probe["mark"]).exists()


async def test_a_hanging_python_candidate_times_out_in_the_sandbox(sandbox):
    harness = PythonHarness(PY_REFERENCE, "total", runner=SandboxRunner(sandbox), timeout_s=0.5, repeats=1, count=4)
    tests = await harness.make_tests()
    started = time.monotonic()
    matrix = await harness.run_matrix({"hang": PY_HANG, "deaf": PY_DEAF, "ok": PY_REFERENCE}, tests)
    assert time.monotonic() - started < 30
    assert set(matrix.cells["hang"].values()) == {"timeout"}
    assert set(matrix.cells["deaf"].values()) == {"timeout"}
    assert set(matrix.cells["ok"].values()) == {"pass"}


async def test_c_candidate_in_fan_outs_harness_cannot_escape(sandbox, probe):
    harness = pick_harness("c", "total", C_REFERENCE, sandbox, EventBus())
    assert isinstance(harness, CHarness) and harness._sandbox is sandbox
    try:
        tests = await harness.make_tests()
        assert tests
        hostile = C_HOSTILE % probe
        matrix = await harness.run_matrix({"hostile": hostile, "broken": C_BROKEN}, tests)
        assert set(matrix.cells["hostile"].values()) == {"pass"}, harness.details
        # A candidate that does not compile is an error with the compiler's words, not a crash.
        assert set(matrix.cells["broken"].values()) == {"error"}
        assert "error" in harness.build_logs["broken"]
    finally:
        await harness.close()
    assert not Path(probe["mark"]).exists()


async def test_a_hanging_c_candidate_times_out_in_the_sandbox(sandbox):
    harness = CHarness(C_REFERENCE, "total", language="c", sandbox=sandbox, call_timeout=1.0, threads=[1, 2],
                       repeats=1, small_tests=2, medium_tests=0)
    try:
        tests = await harness.make_tests()
        matrix = await harness.run_matrix({"hang": C_HANG, "ok": C_REFERENCE}, tests)
    finally:
        await harness.close()
    assert set(matrix.cells["hang"].values()) == {"timeout"}
    assert set(matrix.cells["ok"].values()) == {"pass"}


def _select(tmp_path: Path, reference: str, hostile: str, suffix: str, *extra: str):
    (tmp_path / f"ref{suffix}").write_text(reference)
    (tmp_path / f"hostile{suffix}").write_text(hostile)
    return CliRunner().invoke(app, ["select", "--reference", str(tmp_path / f"ref{suffix}"),
                                    "--candidate", str(tmp_path / f"hostile{suffix}"), "--json",
                                    "--sandbox", "local+bwrap", "--timing-repeats", "2", "--any-speed", *extra])


def test_bakeoff_select_runs_python_candidates_in_a_sandbox(tmp_path, probe):
    hostile = PY_HOSTILE.format(mark=probe["mark"], name=probe["name"], secret=probe["secret"])
    result = _select(tmp_path, PY_REFERENCE, hostile, ".py")
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.output)
    assert verdict["correct"] == ["hostile"] and verdict["winner"] == "hostile"
    assert not Path(probe["mark"]).exists()


def test_bakeoff_select_runs_c_candidates_in_a_sandbox(tmp_path, probe):
    result = _select(tmp_path, C_REFERENCE, C_HOSTILE % probe, ".c", "--entry", "total", "--repeats", "1")
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.output)
    assert verdict["correct"] == ["hostile"]
    assert not Path(probe["mark"]).exists()


@pytest.mark.docker
@pytest.mark.skipif(not ENGINE_UP, reason=ENGINE_WHY)
async def test_both_harnesses_confine_candidates_in_a_docker_sandbox(tmp_path, probe):
    (tmp_path / "ws").mkdir()
    sb = await create_sandbox(Workspace(path=tmp_path / "ws"), kind="docker")
    try:
        py = pick_harness("python", "total", PY_REFERENCE, sb, EventBus())
        tests = await py.make_tests()
        hostile = PY_HOSTILE.format(mark=probe["mark"], name=probe["name"], secret=probe["secret"])
        matrix = await py.run_matrix({"hostile": hostile}, tests)
        assert set(matrix.cells["hostile"].values()) == {"pass"}
        c = CHarness(C_REFERENCE, "total", language="c", sandbox=sb, threads=[1, 2], repeats=1, call_timeout=1.0,
                     small_tests=2, medium_tests=0)
        tests = await c.make_tests()
        matrix = await c.run_matrix({"hostile": C_HOSTILE % probe, "hang": C_HANG}, tests)
        assert set(matrix.cells["hostile"].values()) == {"pass"}, c.details
        assert set(matrix.cells["hang"].values()) == {"timeout"}
    finally:
        await sb.close()
    assert not Path(probe["mark"]).exists()
