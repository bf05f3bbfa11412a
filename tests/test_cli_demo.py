"""``bakeoff demo``: the bundled example end to end, scripted when no model is configured."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.test_session import bakeoff, cli_env

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_demo_runs_the_example_in_a_copy_with_the_scripted_model_and_says_so(tmp_path):
    before = snapshot(EXAMPLES)
    proc = bakeoff("demo", "--n", "2", "--json", env=cli_env(tmp_path), cwd=tmp_path, timeout=240)
    assert "scripted model" in proc.stderr and "omp_kernel.yaml" in proc.stderr
    doc = json.loads(proc.stdout)
    # A correct parallel version ships only when it is faster here; on a busy two-core machine it
    # may not be, and then it is offered, not shipped, with exit 1 (never "success" at 0.8x).
    assert (doc["status"], proc.returncode) in (("success", 0), ("not-faster", 0)), proc.stderr[-3000:]
    verdict = doc["verdict"]
    if doc["status"] == "success":
        winner = next(r for r in verdict["rows"] if r["candidate"] == verdict["winner"])
        assert winner["low"] > 1.0
    else:
        assert doc["winner"] is None and verdict["best"] and verdict["reason"].startswith(
            "correct, but no candidate is faster than the original (best ")
    assert doc["model"] == "scripted"
    assert len(doc["report"]) == 2  # --n caps what the scripted plan asks for
    assert "#pragma omp parallel for" in doc["patch"]
    assert verdict["timing"]["threads"] >= 1 and verdict["timing"]["size"]
    assert snapshot(EXAMPLES) == before  # the package's files were never written


def test_unknown_example_says_which_exist(tmp_path):
    proc = bakeoff("demo", "--example", "nope", env=cli_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2
    assert "omp_kernel" in proc.stderr and "slow_python" in proc.stderr
