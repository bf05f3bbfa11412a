"""The few GitHub REST endpoints the Action uses, over the standard library.

Everything the Action posts goes through ``sanitize`` (``sanitize.py``) first: text written by a
model or taken from a pull request may carry secrets, mass @mentions, beacons or more than
GitHub accepts.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bakeoff.agent.github.sanitize import COMMENT_LIMIT, sanitize, secret_values

__all__ = ["COMMENT_LIMIT", "FileContent", "GitHub", "GitHubError", "sanitize", "secret_values"]


@dataclass(frozen=True)
class FileContent:
    """A file as a commit holds it: its bytes (a symlink's: its target) and its git mode."""

    data: bytes
    mode: str = "100644"  # 100755 executable, 120000 symlink


class GitHubError(RuntimeError):
    """A GitHub API call failed; the message says which call and what GitHub answered."""


class GitHub:
    """A minimal REST client. ``api_url`` is https://api.github.com or a test server."""

    def __init__(self, token: str, repo: str, *, api_url: str = "https://api.github.com", timeout: float = 30) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repo):
            raise ValueError(f"not an owner/name repository: {repo!r}")
        self.token = token
        self.repo = repo
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        url = f"{self.api_url}{path}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/vnd.github+json")
        req.add_header("X-GitHub-Api-Version", "2022-11-28")
        req.add_header("User-Agent", "bakeoff-action")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:500]
            raise GitHubError(f"{method} {path} answered {err.code}: {detail}") from None
        except urllib.error.URLError as err:
            raise GitHubError(f"{method} {path} failed: {err.reason} (is GITHUB_API_URL right?)") from None
        return json.loads(raw) if raw.strip() else None

    # -- the endpoints used ---------------------------------------------------------------

    def permission(self, user: str) -> str:
        """'admin', 'maintain', 'write', 'triage', 'read' or 'none'."""
        try:
            answer = self.request("GET", f"/repos/{self.repo}/collaborators/{user}/permission")
        except GitHubError as err:
            if " 404:" in str(err):
                return "none"
            raise
        return answer.get("role_name") or answer.get("permission", "none")

    def pull(self, number: int) -> dict:
        return self.request("GET", f"/repos/{self.repo}/pulls/{number}")

    def file_text(self, path: str, ref: str) -> str | None:
        """The text of the file ``path`` at ``ref`` (a branch, tag or commit; "": the default
        branch); None when there is none."""
        where = f"/repos/{self.repo}/contents/{urllib.parse.quote(path)}"
        if ref:
            where += f"?ref={urllib.parse.quote(ref, safe='')}"
        try:
            answer = self.request("GET", where)
        except GitHubError as err:
            if " 404:" in str(err):
                return None
            raise
        if not isinstance(answer, dict) or answer.get("type") != "file":
            return None  # a directory, a symlink or a submodule there: no settings file
        return base64.b64decode(answer.get("content") or "").decode("utf-8", "replace")

    def pull_files(self, number: int) -> list[dict]:
        return self.request("GET", f"/repos/{self.repo}/pulls/{number}/files?per_page=100")

    def create_comment(self, number: int, body: str) -> int:
        return self.request("POST", f"/repos/{self.repo}/issues/{number}/comments", {"body": sanitize(body)})["id"]

    def update_comment(self, comment_id: int, body: str) -> None:
        self.request("PATCH", f"/repos/{self.repo}/issues/comments/{comment_id}", {"body": sanitize(body)})

    def create_review(self, number: int, commit_sha: str, body: str, comments: list[dict]) -> int:
        payload = {
            "commit_id": commit_sha,
            "event": "COMMENT",
            "body": sanitize(body),
            "comments": [{**c, "body": sanitize(c["body"], limit=20_000)} for c in comments],
        }
        return self.request("POST", f"/repos/{self.repo}/pulls/{number}/reviews", payload)["id"]

    def commit_files(self, base_sha: str, files: Mapping[str, FileContent | None], message: str) -> str:
        """One commit on top of ``base_sha`` writing ``files`` (None deletes); returns its sha."""
        base = self.request("GET", f"/repos/{self.repo}/git/commits/{base_sha}")
        tree = []
        for path, content in sorted(files.items()):
            if content is None:
                tree.append({"path": path, "mode": "100644", "type": "blob", "sha": None})
            else:
                blob = self.request("POST", f"/repos/{self.repo}/git/blobs", _blob(content.data))
                tree.append({"path": path, "mode": content.mode, "type": "blob", "sha": blob["sha"]})
        new_tree = self.request("POST", f"/repos/{self.repo}/git/trees", {"base_tree": base["tree"]["sha"], "tree": tree})
        commit = self.request(
            "POST",
            f"/repos/{self.repo}/git/commits",
            {"message": sanitize(message), "tree": new_tree["sha"], "parents": [base_sha]},
        )
        return commit["sha"]

    def create_branch(self, name: str, sha: str) -> None:
        self.request("POST", f"/repos/{self.repo}/git/refs", {"ref": f"refs/heads/{name}", "sha": sha})

    def create_draft_pull(self, head: str, base: str, title: str, body: str) -> dict:
        return self.request(
            "POST",
            f"/repos/{self.repo}/pulls",
            {"title": sanitize(title, limit=250), "head": head, "base": base, "body": sanitize(body), "draft": True},
        )


def _blob(data: bytes) -> dict[str, str]:
    """A blob's body for the API: UTF-8 text as it is, any other bytes in base64."""
    try:
        return {"content": data.decode("utf-8"), "encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"content": base64.b64encode(data).decode(), "encoding": "base64"}
