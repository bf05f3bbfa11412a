"""The deliver step: the winning patch as review suggestions, or as a commit on a branch and a draft PR.

It holds GITHUB_TOKEN and runs nothing from the checkout. What it proposes is the patch it
validated, byte for byte: suggestions read the hunks of the one diff parser
(``bakeoff.agent.diffs.parse_patch``), and in fix mode ``git apply`` writes the new files in a
private copy of the paths the patch names, never in the checkout.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bakeoff.agent import repository
from bakeoff.agent.github.client import FileContent, GitHub
from bakeoff.agent.github.report import report_markdown
from bakeoff.agent.github.sanitize import fenced
from bakeoff.agent.github.trigger import Trigger
from bakeoff.agent.diffs import FilePatch, parse_patch
from bakeoff.agent.patches import PatchRejected, validate_patch
from bakeoff.agent.repository import GitError


def deliver(gh: GitHub, trigger: Trigger, report: dict[str, Any], *, repo: Path, mode: str) -> str:
    """Post the winning patch as ``mode`` says; returns a one-line summary of what was done.

    Reads files of the checkout but never runs anything from it.
    """
    patch = report.get("patch") or ""
    winner = (report.get("verdict") or {}).get("winner")
    if report.get("status") == "unverified":
        return "The change was never verified (no fan-out built and tested it), so nothing is proposed."
    if report.get("status") == "not-faster":
        best = (report.get("verdict") or {}).get("best")
        return f"Candidate {best} is correct but not faster than the base, so nothing is proposed."
    if report.get("status") != "success" or not patch.strip():
        return "No candidate was shown correct, so nothing is proposed."
    problems = validate_patch(patch, repo)
    if problems:
        return "The winning patch was refused: " + "; ".join(problems)
    if mode == "fix" and trigger.head_repo in ("", trigger.repo):
        return _open_draft(gh, trigger, report, patch, Path(repo))

    note = ""
    if mode == "fix":
        note = "The PR comes from a fork, so bakeoff cannot push a branch to it; here are suggestions instead.\n\n"
    comments, leftovers = suggestions(patch, gh.pull_files(trigger.pr))
    body = note + report_markdown(report)
    if leftovers:
        body += "\n\nChanges outside the lines this PR touches (apply by hand):\n" + fenced("\n".join(leftovers), "diff")
    gh.create_review(trigger.pr, trigger.head_sha, body, comments)
    return f"Posted a review with {len(comments)} suggestion(s) from candidate {winner}."


def _open_draft(gh: GitHub, trigger: Trigger, report: dict[str, Any], patch: str, repo: Path) -> str:
    winner = (report.get("verdict") or {}).get("winner")
    try:
        files = patched_files(repo, patch)
    except PatchRejected as err:
        return "The winning patch was refused: " + "; ".join(err.reasons)
    headline = trigger.instruction.splitlines()[0]
    sha = gh.commit_files(trigger.head_sha, files, f"bakeoff: {headline[:60]}\n\nWinner: {winner}")
    branch = f"bakeoff/pr-{trigger.pr}-{sha[:7]}"
    gh.create_branch(branch, sha)
    pull = gh.create_draft_pull(
        head=branch, base=trigger.head_ref, title=f"bakeoff: {headline[:80]}",
        body=f"Proposed by bakeoff for #{trigger.pr}.\n\n" + report_markdown(report),
    )
    return f"Opened draft PR #{pull['number']} from {branch} with candidate {winner}."


# --------------------------------------------------------------------------- fix mode


def patched_files(checkout: Path, patch: str) -> dict[str, FileContent | None]:
    """What ``git apply`` of ``patch`` makes of each file it changes in ``checkout``; None for a
    file it deletes. Nothing is written to the checkout and no git runs in it.

    The paths the patch names are copied as they are (files, symlinks, the directories on the
    way) into a private repository that keeps the user's git configuration out, and ``patch`` is
    applied there byte for byte. Raises ``PatchRejected`` when it does not apply, or when git
    changed a path the parse did not name.
    """
    paths = parse_patch(patch).paths
    with tempfile.TemporaryDirectory(prefix="bakeoff-deliver-") as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        env = repository.private_env(Path(tmp) / "git", tree)
        for path in paths:
            _copy_path(checkout, tree, path)
        try:
            repository.run(tree, "init", "-q", env=env)
            repository.run(tree, "add", "-A", env=env)
            repository.run(tree, "commit", "-q", "--no-verify", "--allow-empty", "-m", "checkout", env=env)
            repository.run(tree, "apply", "--index", "--whitespace=nowarn", input=patch, env=env)
        except GitError as err:
            raise PatchRejected([f"it does not apply to the pull request's head: {err}"]) from None
        files = _changed_files(tree, env)
    unseen = sorted(set(files) - set(paths))
    if unseen:
        raise PatchRejected([f"git changed paths the check did not read: {', '.join(unseen)}"])
    return files


def _copy_path(checkout: Path, tree: Path, rel: str) -> None:
    """Copy what ``checkout`` holds at ``rel`` into ``tree``: the directories on the way, then the
    file. A symlink is copied as a link and ends the walk (git apply refuses to go through one)."""
    parts = rel.split("/")
    for k in range(1, len(parts) + 1):
        source, target = checkout.joinpath(*parts[:k]), tree.joinpath(*parts[:k])
        if source.is_symlink():
            if not target.is_symlink():
                os.symlink(os.readlink(source), target)
            return
        if source.is_file():
            shutil.copy2(source, target)  # with its mode: the executable bit is part of the file
            return
        if not source.is_dir():
            return  # nothing there: the patch creates it
        target.mkdir(exist_ok=True)


def _changed_files(tree: Path, env: dict[str, str]) -> dict[str, FileContent | None]:
    # --raw -z: ":oldmode newmode oldsha newsha status\0path\0" for each file; no rename pairing.
    raw = repository.run(tree, "diff", "--cached", "--raw", "-z", "--no-renames", "--no-abbrev", "HEAD", env=env)
    fields = raw.split(b"\0")
    files: dict[str, FileContent | None] = {}
    for meta, path in zip(fields[0::2], fields[1::2]):
        _, mode, _, sha, status = meta.decode().split()
        data = None if status == "D" else repository.run(tree, "cat-file", "blob", sha, env=env)
        files[path.decode("utf-8", "replace")] = None if data is None else FileContent(data, mode)
    return files


# --------------------------------------------------------------------------- review mode


def commentable_lines(pr_file_patch: str | None) -> list[tuple[int, int]]:
    """Ranges of head-side lines a review comment may sit on: each hunk of the PR's own diff
    (GitHub gives a file's diff without file headers)."""
    parsed = parse_patch("--- a/file\n+++ b/file\n" + (pr_file_patch or ""))
    return [(h.new_start, h.new_start + h.new_len - 1) for f in parsed.files for h in f.hunks if h.new_len]


def _what_else(fp: FilePatch) -> str:
    """What a file's change is besides its hunks (a rename, a mode, a new or deleted file); ""
    for an edit in place, the only kind a suggestion can carry."""
    notes = []
    if fp.old_path is None:
        notes.append("new file" + (f" with mode {fp.new_mode}" if fp.new_mode else ""))
    elif fp.new_path is None:
        notes.append("deleted")
    else:
        if fp.old_path != fp.new_path:
            notes.append(f"{'copied' if fp.copied else 'renamed'} from {fp.old_path}")
        if fp.new_mode and fp.new_mode != fp.old_mode:
            notes.append(f"mode {fp.old_mode or '?'} -> {fp.new_mode}")
    return "; ".join(notes)


def suggestions(patch: str, pr_files: list[dict]) -> tuple[list[dict], list[str]]:
    """Review comments with ``suggestion`` blocks for in-place edits on lines GitHub lets us
    comment on, and the diff text of everything else (it goes into the review's body): no part of
    the validated patch is left out."""
    ranges = {f["filename"]: commentable_lines(f.get("patch")) for f in pr_files}
    comments: list[dict] = []
    leftovers: list[str] = []
    for fp in parse_patch(patch).files:
        path, other = fp.new_path or fp.old_path, _what_else(fp)
        kept = []
        for h in fp.hunks:
            first, last = h.old_start, h.old_start + h.old_len - 1
            if other or h.old_len == 0 or not any(lo <= first and last <= hi for lo, hi in ranges.get(path or "", [])):
                kept.append(f"@@ -{h.old_start},{h.old_len} +{h.new_start},{h.new_len} @@\n" + "\n".join(h.lines))
                continue
            body = "bakeoff's winning candidate changes these lines:\n" + fenced("\n".join(h.new_text), "suggestion")
            comment = {"path": path, "line": last, "side": "RIGHT", "body": body}
            if last > first:
                comment.update(start_line=first, start_side="RIGHT")
            comments.append(comment)
        if kept or other:
            leftovers.append("\n".join([f"--- {path}" + (f" ({other})" if other else ""), *kept]))
    return comments, leftovers
