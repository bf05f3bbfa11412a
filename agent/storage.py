"""Where bakeoff keeps what runs leave (event logs, reports, history), and how it writes them:
never inside the user's tree, never half a file."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$BAKEOFF_STATE_DIR``, else ``$XDG_STATE_HOME/bakeoff`` (``~/.local/state/bakeoff``)."""
    environ = os.environ if environ is None else environ
    if environ.get("BAKEOFF_STATE_DIR"):
        return Path(environ["BAKEOFF_STATE_DIR"])
    base = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME", "~")).expanduser() / ".local" / "state")
    return Path(base) / "bakeoff"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary name, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
