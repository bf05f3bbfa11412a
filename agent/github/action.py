"""The GitHub Action's logic, in three steps that never share secrets with pull-request code.

1. ``gate`` (holds GITHUB_TOKEN, runs no PR code): reads the webhook event, decides whether
   to run (trigger phrase or label; only actors with write access; no bots by default),
   posts the status comment and writes the trigger for the next steps.
2. ``run`` (holds the model key, never GITHUB_TOKEN): runs bakeoff on the PR head; the PR's
   code only ever executes inside sandboxes, whose environment is built from an allow-list.
3. ``deliver`` (holds GITHUB_TOKEN, runs no PR code): turns the winning patch into a review
   with ``suggestion`` blocks, or a commit on a branch and a draft PR, and finishes the
   status comment with the candidate table and the cost.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

WRITE_PERMISSIONS = {"admin", "maintain", "write"}
STATUS_MARKER = "<!-- bakeoff-status -->"


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
    title: str = ""
    body: str = ""
    status_comment_id: int | None = None


class Skip(BaseModel):
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
            head_sha = head_ref = base_ref = head_repo = ""
        else:
            pull = payload.get("pull_request") or {}
            number, title, body = pull["number"], pull.get("title", ""), pull.get("body") or ""
            head_sha = pull.get("head", {}).get("sha", "")
            head_ref = pull.get("head", {}).get("ref", "")
            base_ref = pull.get("base", {}).get("ref", "")
            head_repo = (pull.get("head", {}).get("repo") or {}).get("full_name", "")
        instruction = _instruction_after_phrase(comment.get("body"), phrase)
        if instruction is None:
            return Skip(reason=f"comment does not start a line with {phrase}")
        return Trigger(
            event=event_name, repo=repo, pr=number, actor=comment.get("user", {}).get("login") or sender.get("login", ""),
            instruction=instruction or default_instruction, head_sha=head_sha, head_ref=head_ref,
            base_ref=base_ref, head_repo=head_repo, title=title, body=body,
        )

    if event_name == "pull_request":
        if payload.get("action") != "labeled" or (payload.get("label") or {}).get("name") != label:
            return Skip(reason=f"pull_request {payload.get('action')} without the {label!r} label being added")
        pull = payload["pull_request"]
        return Trigger(
            event=event_name, repo=repo, pr=pull["number"], actor=sender.get("login", ""),
            instruction=default_instruction, head_sha=pull["head"]["sha"], head_ref=pull["head"]["ref"],
            base_ref=pull["base"]["ref"], head_repo=(pull["head"].get("repo") or {}).get("full_name", ""),
            title=pull.get("title") or "", body=pull.get("body") or "",
        )

    return Skip(reason=f"event {event_name!r} is not one bakeoff acts on")


def task_text(trigger: Trigger) -> str:
    """The task given to bakeoff: the instruction, plus the PR text fenced as untrusted data."""
    from bakeoff.agent.prompting import render

    return render("action_task", instruction=trigger.instruction, title=trigger.title, body=trigger.body)


# --------------------------------------------------------------------------- patches


class Hunk(BaseModel):
    old_start: int
    old_len: int
    new_start: int
    new_len: int
    lines: list[str] = Field(default_factory=list)  # with their ' ', '-', '+' prefix

    @property
    def new_text(self) -> list[str]:
        return [line[1:] for line in self.lines if line[:1] in (" ", "+")]


class FilePatch(BaseModel):
    old_path: str | None
    new_path: str | None
    hunks: list[Hunk] = Field(default_factory=list)


_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def parse_patch(patch: str) -> list[FilePatch]:
    """A unified diff (git format) as files and hunks. Pure."""
    files: list[FilePatch] = []
    current: FilePatch | None = None
    hunk: Hunk | None = None
    for line in patch.splitlines():
        if line.startswith("diff --git "):
            current, hunk = None, None
            continue
        if line.startswith("--- "):
            current = FilePatch(old_path=_strip_prefix(line[4:]), new_path=None)
            files.append(current)
            hunk = None
            continue
        if line.startswith("+++ ") and current is not None and hunk is None:
            current.new_path = _strip_prefix(line[4:])
            continue
        m = _HUNK.match(line)
        if m and current is not None:
            hunk = Hunk(
                old_start=int(m[1]), old_len=int(m[2] if m[2] is not None else 1),
                new_start=int(m[3]), new_len=int(m[4] if m[4] is not None else 1),
            )
            current.hunks.append(hunk)
            continue
        if hunk is not None and line[:1] in (" ", "-", "+"):
            hunk.lines.append(line)
        elif hunk is not None and line == "":
            hunk.lines.append(" ")  # a context line whose trailing space was stripped
    return files


def _strip_prefix(path: str) -> str | None:
    path = path.split("\t")[0].strip()
    if path == "/dev/null":
        return None
    return path[2:] if path[:2] in ("a/", "b/") else path


def apply_file_patch(original: str, file_patch: FilePatch) -> str:
    """The new text of one file. Raises ValueError when a hunk does not fit the original."""
    old = original.splitlines()
    out: list[str] = []
    cursor = 0
    for h in file_patch.hunks:
        start = h.old_start - 1 if h.old_len else h.old_start
        expected = [line[1:] for line in h.lines if line[:1] in (" ", "-")]
        if old[start : start + len(expected)] != expected:
            raise ValueError(f"{file_patch.new_path or file_patch.old_path}: hunk at line {h.old_start} does not match")
        out.extend(old[cursor:start])
        out.extend(h.new_text)
        cursor = start + len(expected)
    out.extend(old[cursor:])
    return "\n".join(out) + ("\n" if out else "")


def commentable_lines(pr_file_patch: str | None) -> list[tuple[int, int]]:
    """Ranges of head-side lines a review comment may sit on: each hunk of the PR's own diff."""
    ranges = []
    for line in (pr_file_patch or "").splitlines():
        m = _HUNK.match(line)
        if m:
            start, length = int(m[3]), int(m[4] if m[4] is not None else 1)
            if length:
                ranges.append((start, start + length - 1))
    return ranges


def suggestions(patch: str, pr_files: list[dict]) -> tuple[list[dict], list[str]]:
    """Review comments with ``suggestion`` blocks for hunks GitHub lets us comment on, and the
    diff text of the other hunks (they go into the review's body)."""
    ranges = {f["filename"]: commentable_lines(f.get("patch")) for f in pr_files}
    comments: list[dict] = []
    leftovers: list[str] = []
    for fp in parse_patch(patch):
        path = fp.new_path or fp.old_path
        for h in fp.hunks:
            first, last = h.old_start, h.old_start + h.old_len - 1
            fits = fp.old_path == fp.new_path and h.old_len > 0 and any(
                lo <= first and last <= hi for lo, hi in ranges.get(path or "", [])
            )
            if not fits:
                leftovers.append(f"--- {path}\n" + "\n".join(h.lines))
                continue
            body = "bakeoff's winning candidate changes these lines:\n```suggestion\n" + "\n".join(h.new_text) + "\n```"
            comment = {"path": path, "line": last, "side": "RIGHT", "body": body}
            if last > first:
                comment.update(start_line=first, start_side="RIGHT")
            comments.append(comment)
    return comments, leftovers


# --------------------------------------------------------------------------- status text


def status_body(trigger: Trigger, state: Literal["started", "done", "failed"], detail: str = "") -> str:
    head = {
        "started": f"⏳ bakeoff is running on #{trigger.pr} for @{trigger.actor}: fanning out candidates…",
        "done": f"✅ bakeoff finished on #{trigger.pr}.",
        "failed": f"❌ bakeoff could not finish on #{trigger.pr}.",
    }[state]
    return f"{STATUS_MARKER}\n{head}\n\n{detail}".rstrip() + "\n"


def report_markdown(report: dict[str, Any]) -> str:
    """The candidate table and the cost, as Markdown, from a RunReport's JSON."""
    verdict = report.get("verdict") or {}
    rows = verdict.get("rows") or []
    lines = [
        f"**Result:** {report.get('status', '?')}. {verdict.get('reason', '')}".strip(),
        "",
        "| candidate | built | tests passed | group | flaky | speedup | cost |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed = "–"
        if r.get("speedup") is not None:
            speed = f"{r['speedup']:.2f}x"
            if r.get("low") is not None and r.get("high") is not None:
                speed += f" [{r['low']:.2f}, {r['high']:.2f}]"
        mark = " 🏆" if r.get("candidate") == verdict.get("winner") else ""
        lines.append(
            f"| {r.get('candidate')}{mark} | {_yes(r.get('built'))} | {r.get('tests_passed', 0)}/{r.get('tests_total', 0)}"
            f" | {r.get('group') if r.get('group') is not None else '–'} | {_yes(r.get('flaky'))} | {speed}"
            f" | ${r.get('cost_usd', 0.0):.4f} |"
        )
    lines += ["", f"Total cost: ${report.get('cost_usd', 0.0):.4f} ({report.get('tokens', 0)} tokens)."]
    return "\n".join(lines)


def _yes(value: Any) -> str:
    return "–" if value is None else ("yes" if value else "no")


def write_outputs(path: str | None, values: dict[str, str]) -> None:
    """Append step outputs to $GITHUB_OUTPUT, using delimiters so values may hold newlines."""
    if not path:
        return
    with open(path, "a", encoding="utf-8") as fh:
        for key, value in values.items():
            delimiter = f"BAKEOFF_EOF_{abs(hash((key, value))) % 10**12}"
            fh.write(f"{key}<<{delimiter}\n{value}\n{delimiter}\n")


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- delivery


def deliver(gh, trigger: Trigger, report: dict[str, Any], *, repo: Path, mode: str) -> str:
    """Post the winning patch as ``mode`` says; returns a one-line summary of what was done.

    Reads files of the checkout but never runs anything from it.
    """
    patch = report.get("patch") or ""
    winner = (report.get("verdict") or {}).get("winner")
    if report.get("status") != "success" or not patch.strip():
        return "No candidate was shown correct, so nothing is proposed."
    from bakeoff.agent.patches import validate_patch

    problems = validate_patch(patch, repo)
    if problems:
        return "The winning patch was refused: " + "; ".join(problems)

    if mode == "fix" and trigger.head_repo in ("", trigger.repo):
        files: dict[str, str | None] = {}
        for fp in parse_patch(patch):
            if fp.new_path is None:
                files[fp.old_path or ""] = None
                continue
            original = (repo / fp.old_path).read_text(encoding="utf-8") if fp.old_path else ""
            files[fp.new_path] = apply_file_patch(original, fp)
        sha = gh.commit_files(trigger.head_sha, files, f"bakeoff: {trigger.instruction.splitlines()[0][:60]}\n\nWinner: {winner}")
        branch = f"bakeoff/pr-{trigger.pr}-{sha[:7]}"
        gh.create_branch(branch, sha)
        pull = gh.create_draft_pull(
            head=branch, base=trigger.head_ref, title=f"bakeoff: {trigger.instruction.splitlines()[0][:80]}",
            body=f"Proposed by bakeoff for #{trigger.pr}.\n\n" + report_markdown(report),
        )
        return f"Opened draft PR #{pull['number']} from {branch} with candidate {winner}."

    note = ""
    if mode == "fix":
        note = "The PR comes from a fork, so bakeoff cannot push a branch to it; here are suggestions instead.\n\n"
    comments, leftovers = suggestions(patch, gh.pull_files(trigger.pr))
    body = note + report_markdown(report)
    if leftovers:
        body += "\n\nChanges outside the lines this PR touches (apply by hand):\n```diff\n" + "\n".join(leftovers) + "\n```"
    gh.create_review(trigger.pr, trigger.head_sha, body, comments)
    return f"Posted a review with {len(comments)} suggestion(s) from candidate {winner}."
