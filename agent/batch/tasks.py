"""The batch's task file (JSONL, JSON or YAML) and a task's fresh clone."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bakeoff.agent import repository
from bakeoff.agent.session import SessionError


class TaskError(SessionError):
    """A task cannot run for a reason its author fixes: a missing repository, an unknown base."""


class BatchTask(BaseModel):
    """One task: ``repo`` (a path or a URL) at ``base``, and what to do there."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: str
    repo: str
    base: str = Field("HEAD", alias="base_ref")
    instruction: str
    test: str | None = None
    build: str | None = None

    @field_validator("id")
    @classmethod
    def _safe_id(cls, value: str) -> str:
        # The id names a directory under --out: keep it one plain path component.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", value):
            raise ValueError("use letters, digits, '.', '_' and '-' (it names a directory)")
        return value

    @property
    def remote(self) -> bool:
        return "://" in self.repo or self.repo.startswith("git@")


def _entries(path: Path, text: str) -> list:
    if path.suffix == ".jsonl":
        raw = []
        for no, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    raw.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{no}: not JSON ({exc.msg})") from None
        return raw
    import yaml  # YAML reads JSON too

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML or JSON ({exc})") from None
    return raw["tasks"] if isinstance(raw, dict) and "tasks" in raw else raw


def read_tasks(path: Path, text: str | None = None) -> list[BatchTask]:
    """The tasks of a JSONL, JSON or YAML file (``text``: its contents, already read);
    ``ValueError`` says which entry is wrong and why. Local repositories become absolute."""
    text = path.read_text(encoding="utf-8") if text is None else text
    raw = _entries(path, text)
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{path}: expected a non-empty list of tasks")
    tasks, seen = [], set()
    for i, entry in enumerate(raw, 1):
        try:
            task = BatchTask.model_validate(entry)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"{path}: task {i}: {problems}") from None
        if task.id in seen:
            raise ValueError(f"{path}: task id {task.id!r} appears twice; ids name output directories")
        seen.add(task.id)
        if not task.remote:
            local = Path(task.repo).expanduser()
            task.repo = str(local if local.is_absolute() else (path.parent / local).resolve())
        tasks.append(task)
    return tasks


def clone(task: BatchTask, dest: Path) -> str:
    """A fresh clone of the task's repository at its base, HEAD detached; the base's commit."""
    if not task.remote and not Path(task.repo).is_dir():
        raise TaskError(f"task {task.id}: repository {task.repo} does not exist")
    try:
        repository.clone(task.repo, dest)
    except repository.GitError as exc:
        raise TaskError(f"task {task.id}: {exc}") from None
    for ref in (task.base, f"origin/{task.base}"):
        sha = repository.resolve_commit(dest, ref)
        if sha:
            repository.checkout_detached(dest, sha)
            return sha
    raise TaskError(f"task {task.id}: base {task.base!r} is not a commit of {task.repo}")
