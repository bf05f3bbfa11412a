"""Where the tests find the external data handed to the project (model samples with labels,
real GitHub webhook payloads): ``shared/`` beside the checkout, or ``$BAKEOFF_SHARED``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(os.environ.get("BAKEOFF_SHARED") or Path(__file__).resolve().parents[2] / "shared")


def bench_data(name: str) -> Path:
    """``shared/bench/<name>``; the test is skipped where it is missing (CI fails it instead:
    see conftest)."""
    path = SHARED / "bench" / name
    if not path.is_dir():
        pytest.skip(f"the external data {name} is not at {path}: set BAKEOFF_SHARED to the folder that holds bench/")
    return path
