"""Whether the GitHub Action runs, and on what: the gate step's decision, read from the webhook event.

The gate holds GITHUB_TOKEN and runs no pull-request code. It runs bakeoff for a comment whose
line starts with the trigger phrase, or for the trigger label being added; only for actors
with write access, and not for bots unless allowed. The PR's title and body travel on as
untrusted text, fenced off in the task the model reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

WRITE_PERMISSIONS = {"admin", "maintain", "write"}


class Trigger(BaseModel):
    """Why and on what the Action runs. ``title`` and ``body`` are untrusted PR text."""

    model_config = ConfigDict(extra="forbid")

    event: str
    repo: str
    pr: int
    actor: str
    instruction: str
    head_sha: str = ""
    head_ref: str = ""
    base_ref: str = ""
    head_repo: str = ""  # owner/name of the PR's head; differs from ``repo`` for forks
    base_sha: str = ""
    title: str = ""
    body: str = ""
    status_comment_id: int | None = None
    # The base branch's settings table, read by the gate through the API, and where it came
    # from ("bakeoff.toml on main"); the run step reads no settings from the PR's checkout.
    base_settings: dict[str, Any] = Field(default_factory=dict)
    base_settings_source: str = ""


class Skip(BaseModel):
    """Why the Action does not run for this event."""

    reason: str


def _is_bot(user: dict[str, Any] | None) -> bool:
    if not user:
        return True
    return user.get("type") == "Bot" or str(user.get("login", "")).endswith("[bot]")


def _instruction_after_phrase(body: str | None, phrase: str) -> str | None:
    """The text after ``phrase`` when a line of the comment starts with it, else None."""
    for line_no, line in enumerate((body or "").splitlines()):
        stripped = line.strip()
        if stripped == phrase or stripped.startswith(phrase + " "):
            rest = [stripped[len(phrase):].strip()] + (body or "").splitlines()[line_no + 1 :]
            return "\n".join(rest).strip()
    return None


def read_trigger(
    event_name: str,
    payload: dict[str, Any],
    *,
    phrase: str = "/bakeoff",
    label: str = "bakeoff",
    default_instruction: str = "Make the code this pull request changes faster without changing its behaviour.",
    allow_bots: bool = False,
) -> Trigger | Skip:
    """Decide from a webhook event whether bakeoff should run. Pure: no API calls."""
    repo = (payload.get("repository") or {}).get("full_name", "")
    sender = payload.get("sender") or {}
    if not allow_bots and _is_bot(sender):
        return Skip(reason=f"sender {sender.get('login', '?')} is a bot")

    if event_name in ("issue_comment", "pull_request_review_comment"):
        if payload.get("action") != "created":
            return Skip(reason=f"comment was {payload.get('action')}, not created")
        comment = payload.get("comment") or {}
        if not allow_bots and _is_bot(comment.get("user")):
            return Skip(reason="comment written by a bot")
        if event_name == "issue_comment":
            issue = payload.get("issue") or {}
            if "pull_request" not in issue:
                return Skip(reason="comment on a plain issue, not a pull request")
            number, title, body = issue["number"], issue.get("title", ""), issue.get("body") or ""
            head_sha = head_ref = base_ref = base_sha = head_repo = ""
        else:
            pull = payload.get("pull_request") or {}
            number, title, body = pull["number"], pull.get("title", ""), pull.get("body") or ""
            head_sha = pull.get("head", {}).get("sha", "")
            head_ref = pull.get("head", {}).get("ref", "")
            base_ref = pull.get("base", {}).get("ref", "")
            base_sha = pull.get("base", {}).get("sha", "")
            head_repo = (pull.get("head", {}).get("repo") or {}).get("full_name", "")
        instruction = _instruction_after_phrase(comment.get("body"), phrase)
        if instruction is None:
            return Skip(reason=f"comment does not start a line with {phrase}")
        return Trigger(
            event=event_name, repo=repo, pr=number, actor=comment.get("user", {}).get("login") or sender.get("login", ""),
            instruction=instruction or default_instruction, head_sha=head_sha, head_ref=head_ref,
            base_ref=base_ref, base_sha=base_sha, head_repo=head_repo, title=title, body=body,
        )

    if event_name == "pull_request":
        if payload.get("action") != "labeled" or (payload.get("label") or {}).get("name") != label:
            return Skip(reason=f"pull_request {payload.get('action')} without the {label!r} label being added")
        pull = payload["pull_request"]
        return Trigger(
            event=event_name, repo=repo, pr=pull["number"], actor=sender.get("login", ""),
            instruction=default_instruction, head_sha=pull["head"]["sha"], head_ref=pull["head"]["ref"],
            base_ref=pull["base"]["ref"], base_sha=pull["base"].get("sha", ""),
            head_repo=(pull["head"].get("repo") or {}).get("full_name", ""),
            title=pull.get("title") or "", body=pull.get("body") or "",
        )

    return Skip(reason=f"event {event_name!r} is not one bakeoff acts on")


def task_text(trigger: Trigger) -> str:
    """The task given to bakeoff: the instruction, plus the PR text fenced as untrusted data."""
    from bakeoff.agent.prompting import render

    return render("action_task", instruction=trigger.instruction, title=trigger.title, body=trigger.body)


def load_json(path: Path) -> Any:
    """A JSON file another step wrote (the trigger, the run's report)."""
    return json.loads(path.read_text(encoding="utf-8"))
