"""The one git layer: every git operation bakeoff performs goes through GitPython, here.

Porcelain questions (which commit, which branch, what is uncommitted) read GitPython's
``Repo``; plumbing (apply, archive, fast-import, diff of a private snapshot) runs through
GitPython's command wrapper, so quoting, environment and errors are handled in one place.
``import git`` costs about 0.1 s and runs ``git version`` once, so it happens on first use.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Every call: no pager, no prompt for credentials, paths taken literally, and no repository
# may be refused for its owner (sandbox copies belong to other uids).
_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_LITERAL_PATHSPECS": "1", "GIT_PAGER": "cat"}
_CONFIG = ("-c", "safe.directory=*")


class GitError(Exception):
    """A git command failed; the message names the command and what git said."""


def _gitpython() -> Any:
    import git  # GitPython, on first use

    return git


def run(cwd: Path, *args: str, input: bytes | str | None = None, env: Mapping[str, str] | None = None,
        check: bool = True) -> bytes:
    """``git ARGS`` in ``cwd``; its stdout as bytes. Raises ``GitError`` when it fails and ``check``."""
    git = _gitpython()
    stdin = None
    if input is not None:
        stdin = tempfile.TemporaryFile()
        stdin.write(input.encode() if isinstance(input, str) else input)
        stdin.seek(0)
    try:
        status, out, err = git.Git(str(cwd)).execute(
            ["git", *_CONFIG, *args], istream=stdin, with_extended_output=True, with_exceptions=False,
            stdout_as_string=False, strip_newline_in_stdout=False, env={**_ENV, **(env or {})},
        )
    finally:
        if stdin is not None:
            stdin.close()
    if check and status != 0:
        raise GitError(f"git {args[0]} failed: {_text(err).strip() or _text(out).strip() or f'exit {status}'}")
    return out or b""


def text(cwd: Path, *args: str, **kw: Any) -> str:
    """``run`` decoded as UTF-8 and stripped."""
    return _text(run(cwd, *args, **kw)).strip()


def _text(data: bytes | str | None) -> str:
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else (data or "")


def is_repository(path: Path) -> bool:
    """True when ``path`` is the top of a git working tree."""
    return (Path(path) / ".git").exists()


def head_commit(repo: Path) -> str | None:
    """The commit checked out in ``repo``; None when it is not a repository or has no commit."""
    if not is_repository(repo):
        return None
    return text(repo, "rev-parse", "--verify", "-q", "HEAD", check=False) or None


def resolve_commit(repo: Path, ref: str) -> str | None:
    """The commit ``ref`` names in ``repo``, or None."""
    return text(repo, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False) or None


def current_branch(repo: Path) -> str | None:
    """The branch HEAD is on; None when HEAD is detached."""
    return text(repo, "symbolic-ref", "-q", "--short", "HEAD", check=False) or None


def uncommitted(repo: Path) -> list[str]:
    """Tracked files with changes not committed yet."""
    # -z: "XY path\0", paths unquoted; a rename adds its old path as the next entry.
    entries = _text(run(repo, "status", "--porcelain", "-z", "--untracked-files=no", check=False)).split("\0")
    return [e[3:] for e in entries if len(e) > 3 and e[2] == " "]


def archive(repo: Path, commit: str) -> bytes:
    """The tree of ``commit`` as a tar archive (no ``.git``)."""
    return run(repo, "archive", "--format=tar", commit)


def clone(source: str, dest: Path) -> None:
    """Clone ``source`` (a path or URL) into ``dest`` without checking anything out."""
    git = _gitpython()
    try:
        git.Repo.clone_from(source, str(dest), no_checkout=True, env=_ENV)
    except git.GitCommandError as exc:
        raise GitError(f"cannot clone {source}: {_text(exc.stderr).strip() or exc}") from None


def checkout_detached(repo: Path, commit: str) -> None:
    run(repo, "checkout", "--quiet", "--detach", commit)


def commit_all(repo: Path, message: str, *, author: str = "bakeoff", email: str = "bakeoff@localhost") -> str:
    """Make ``repo`` a repository (if it is not one) and commit every file in it; returns the commit."""
    if not is_repository(repo):
        run(repo, "init", "--quiet")
    run(repo, "add", "-A")
    run(repo, "-c", f"user.name={author}", "-c", f"user.email={email}", "commit", "--quiet", "--no-verify",
        "-m", message)
    return text(repo, "rev-parse", "HEAD")


def identity_flags(repo: Path) -> list[str]:
    """``-c user.name/email`` for a commit when the repository names no author."""
    if text(repo, "config", "user.email", check=False):
        return []
    return ["-c", "user.name=bakeoff", "-c", "user.email=bakeoff@localhost"]


def private_env(git_dir: Path, work_tree: Path) -> dict[str, str]:
    """The environment of a private repository whose git dir lives outside its work tree,
    with the user's git configuration (filters, hooks, excludes) kept out."""
    return {
        "GIT_DIR": str(git_dir), "GIT_WORK_TREE": str(work_tree),
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "bakeoff", "GIT_AUTHOR_EMAIL": "bakeoff@localhost",
        "GIT_COMMITTER_NAME": "bakeoff", "GIT_COMMITTER_EMAIL": "bakeoff@localhost",
    }
