"""In CI a skipped test fails the run (conftest): a Docker test that skips because the engine
is down must not pass quietly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SKIPPING = """import pytest

@pytest.mark.skipif(True, reason='no Docker engine answers')
def test_marked():
    pass

def test_skips_inside():
    pytest.skip('clang++ is missing')

def test_plain():
    pass
"""


@pytest.mark.parametrize("ci,rc,counts", [("true", 1, ["1 failed", "1 passed", "1 error"]), ("", 0, ["1 passed", "2 skipped"])])
def test_a_skip_fails_only_in_ci(tmp_path, ci, rc, counts):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_needs.py").write_text(SKIPPING)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci else {})
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull, str(tmp_path)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    summary = out.stdout.strip().splitlines()[-1]
    assert out.returncode == rc and all(c in summary for c in counts), out.stdout + out.stderr
    if ci:
        assert "skipped in CI" in out.stdout
        assert "no Docker engine answers" in out.stdout and "clang++ is missing" in out.stdout
