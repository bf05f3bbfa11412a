"""What a user gets from ``pip install bakeoff``: one ``bakeoff`` package, with its prompts,
its sandbox image recipe and the demo's examples inside, working outside any checkout.

The wheel is built from this checkout and installed (not editable) into a fresh virtual
environment. Its dependencies come from the test environment's own site-packages through
a path file, so the test needs no network; bakeoff itself comes only from the wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # A copy of the sources, so the build's own files (build/, *.egg-info) never land in the checkout.
    src = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes((ROOT / rel).read_bytes())
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (whl,) = out.glob("bakeoff-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    env = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=300)
    python = str(env / "bin" / "python")
    installed = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # Dependencies (litellm, pydantic, ...) from the test environment, after the wheel's own files.
    (site / "zz-test-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return env


def run(venv: Path, *args: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "BAKEOFF_", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    env["BAKEOFF_STATE_DIR"] = str(cwd / "state")
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, **kw)


def test_the_wheel_holds_one_package_with_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("bakeoff-")}
    assert tops == {"bakeoff"}, tops
    assert "bakeoff/sandboxes/Dockerfile" in names
    assert {f"bakeoff/prompts/{r}.j2" for r in ("planner", "joiner", "editor", "repair", "testgen", "judge")} <= set(names)
    assert "bakeoff/examples/scripted/omp_kernel.yaml" in names and "bakeoff/examples/omp_kernel/kernel.c" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".o"))]


def test_installed_outside_the_checkout(venv, tmp_path):
    python = str(venv / "bin" / "python")
    probe = run(venv, python, "-c", "import bakeoff.agent, bakeoff.tools, bakeoff.sandboxes, bakeoff.prompts; "
                "print(bakeoff.agent.__file__)", cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert str(venv) in probe.stdout and str(ROOT) not in probe.stdout
    for name in ("agent", "tools", "sandboxes", "prompts"):
        gone = run(venv, python, "-c", f"import {name}", cwd=tmp_path)
        assert gone.returncode != 0 and "ModuleNotFoundError" in gone.stderr, name
    assert run(venv, "bakeoff", "--help", cwd=tmp_path).returncode == 0
    version = run(venv, "bakeoff", "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("bakeoff 0.")
    by_module = run(venv, python, "-m", "bakeoff", "--version", cwd=tmp_path)
    assert by_module.stdout == version.stdout


def test_the_demo_runs_from_the_wheel(venv, tmp_path):
    done = run(venv, "bakeoff", "demo", "--example", "slow_python", "--sandbox", "local", "--json", cwd=tmp_path,
               timeout=600)
    assert "scripted model" in done.stderr, done.stderr
    assert str(venv) in done.stderr  # the script it replays is the one inside the installed package
    import json

    doc = json.loads(done.stdout)
    assert done.returncode == 0, done.stderr[-2000:]
    assert doc["status"] == "success" and doc["winner"]["strategy"] == "py-algorithm"
