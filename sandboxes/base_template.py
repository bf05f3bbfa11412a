"""A local sandbox's workspace copy and base snapshot, made once per commit and shared.

Every sandbox of a git workspace at one commit starts from the same files and records the
same base, so both are made once per process (``BaseTemplates``): the commit's ``git archive``,
checked once by ``check_archive``, and the base repository that ``git fast-import`` packs
from it, kept as the bytes of its few files. A sandbox then extracts the checked archive,
writes those files into a base repository of its own and refreshes the index's stat data
against its own copy: one git command instead of an export, an import and four more.

Each sandbox still owns every file of its copy and of its base (nothing is linked or
mounted between sandboxes), so a write or delete in one is seen by no other, and a diff
reads the same kind of repository as before. A plain directory (no commit) is copied and
recorded as before: its contents have no name to share them by.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from bakeoff.agent import repository
from bakeoff.agent.seams import Workspace
from bakeoff.sandboxes.workspace import (
    BaseSnapshot,
    WorkspaceError,
    check_archive,
    copy_workspace,
    disk_full_as_workspace_error,
    extract_checked,
    git_failures_as_workspace_errors,
    new_sandbox_dir,
    remove_tree,
)

__all__ = ["BaseTemplate", "BaseTemplates", "prepare_copy_and_base"]

KEEP = 8  # commits whose templates stay in memory (a run uses one; a batch a few at a time)


@dataclass(frozen=True)
class BaseTemplate:
    """One commit's checked archive and its base repository's files (path -> bytes)."""

    tar: bytes
    git_files: dict[str, bytes]

    def materialize(self, work: Path, git_dir: Path, src: Path) -> BaseSnapshot:
        """Fill the empty ``work`` with the commit's files (of workspace ``src``) and record
        them as the base in ``git_dir`` (made here, readable by its owner only)."""
        with disk_full_as_workspace_error(src):
            extract_checked(self.tar, work)
        for rel, data in self.git_files.items():
            path = git_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        os.chmod(git_dir, 0o700)
        snap = BaseSnapshot(git_dir, work)
        # The index's stat data describe the template's copy: refresh them against this one,
        # so each diff re-reads only the files that changed.
        snap._run("update-index", "-q", "--refresh", check=False)
        return snap


def _build(src: Path, sha: str, root: Path | None) -> BaseTemplate:
    with git_failures_as_workspace_errors():
        tar = repository.archive(src, sha)
    check_archive(tar)
    scratch = new_sandbox_dir(root)  # marked as ours: a killed process's is reaped
    try:
        extract_checked(tar, scratch / "work")
        BaseSnapshot.record(scratch / "base.git", scratch / "work")
        git_dir = scratch / "base.git"
        files = {}
        for dirpath, _, filenames in os.walk(git_dir):
            for name in filenames:
                path = Path(dirpath) / name
                files[str(path.relative_to(git_dir))] = path.read_bytes()
        return BaseTemplate(tar, files)
    finally:
        remove_tree(scratch)


class BaseTemplates:
    """Templates by repository and commit, each built once; thread-safe.

    Creations of one commit that arrive together wait for the first to build it."""

    def __init__(self, keep: int = KEEP) -> None:
        self._keep = keep
        self._lock = threading.Lock()
        self._building: dict[tuple[str, str], threading.Lock] = {}
        self._by_commit: OrderedDict[tuple[str, str], BaseTemplate] = OrderedDict()

    def get(self, workspace: Workspace, root: Path | None = None) -> BaseTemplate:
        """The template of ``workspace``'s commit (``workspace.commit`` must be set)."""
        src = Path(workspace.path)
        assert workspace.commit is not None
        if not src.is_dir():
            raise WorkspaceError(f"workspace {src} is not a directory")
        sha = repository.resolve_commit(src, workspace.commit)
        if sha is None:
            raise WorkspaceError(f"{workspace.commit!r} names no commit in {src}")
        key = (str(src.resolve()), sha)
        with self._lock:
            building = self._building.setdefault(key, threading.Lock())
        with building:
            with self._lock:
                template = self._by_commit.get(key)
                if template is not None:
                    self._by_commit.move_to_end(key)
                    return template
            template = _build(src, sha, root)
            with self._lock:
                self._by_commit[key] = template
                self._building.pop(key, None)
                while len(self._by_commit) > self._keep:
                    self._by_commit.popitem(last=False)
            return template

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_commit)


_TEMPLATES = BaseTemplates()


def prepare_copy_and_base(workspace: Workspace, work: Path, git_dir: Path, root: Path | None = None) -> BaseSnapshot:
    """Fill the empty ``work`` with the workspace's files and record them as the base in
    ``git_dir``: from the shared template of its commit, or (a plain directory) by copying."""
    if workspace.commit is None:
        copy_workspace(workspace, work)
        snap = BaseSnapshot.record(git_dir, work)
        os.chmod(git_dir, 0o700)
        return snap
    return _TEMPLATES.get(workspace, root).materialize(work, git_dir, workspace.path)
