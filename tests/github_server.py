"""A local HTTP server implementing the few GitHub REST endpoints bakeoff's Action uses.

It records every request (method, path, JSON body) so tests can assert the exact calls. Files of
the repository (the base branch's settings) are served by the contents endpoint from ``contents``.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeGitHub:
    def __init__(self, *, permissions: dict[str, str] | None = None, pulls: dict[int, dict] | None = None,
                 pull_files: dict[int, list[dict]] | None = None, contents: dict[tuple[str, str], str] | None = None) -> None:
        self.permissions = permissions or {}
        self.pulls = pulls or {}
        self.pull_files = pull_files or {}
        self.contents = contents or {}  # (ref, path) -> the file's text, as the contents API serves it
        self.requests: list[tuple[str, str, Any]] = []
        self.blobs: dict[str, dict] = {}  # sha -> the body that created the blob
        self._next_id = 1000
        self._lock = threading.Lock()
        handler = self._handler()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeGitHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls(self, method: str | None = None) -> list[tuple[str, str, Any]]:
        return [r for r in self.requests if method is None or r[0] == method]

    def committed_files(self) -> dict[str, tuple[str, bytes] | None]:
        """What the last tree posted writes: path -> (mode, bytes), or None where it deletes."""
        (tree,) = [body for method, path, body in self.requests if path.endswith("/git/trees")][-1:]
        files: dict[str, tuple[str, bytes] | None] = {}
        for entry in tree["tree"]:
            if entry["sha"] is None:
                files[entry["path"]] = None
                continue
            blob = self.blobs[entry["sha"]]
            data = base64.b64decode(blob["content"]) if blob["encoding"] == "base64" else blob["content"].encode()
            files[entry["path"]] = (entry["mode"], data)
        return files

    def _new_id(self) -> int:
        with self._lock:
            self._next_id += 1
            return self._next_id

    def route(self, method: str, path: str, body: Any, auth: str) -> tuple[int, Any]:
        if not auth.startswith("Bearer "):
            return 401, {"message": "Requires authentication"}
        path, _, query = path.partition("?")
        if m := re.fullmatch(r"/repos/[^/]+/[^/]+/contents/(.+)", path):
            ref = dict(q.split("=", 1) for q in query.split("&") if "=" in q).get("ref", "")
            text = self.contents.get((urllib.parse.unquote(ref), urllib.parse.unquote(m[1])))
            if text is None:
                return 404, {"message": "Not Found"}
            return 200, {"type": "file", "encoding": "base64", "content": base64.b64encode(text.encode()).decode()}
        if m := re.fullmatch(r"/repos/[^/]+/[^/]+/collaborators/([^/]+)/permission", path):
            perm = self.permissions.get(m[1])
            return (404, {"message": "Not Found"}) if perm is None else (200, {"permission": perm, "role_name": perm})
        if m := re.fullmatch(r"/repos/[^/]+/[^/]+/pulls/(\d+)", path):
            return 200, self.pulls[int(m[1])]
        if m := re.fullmatch(r"/repos/[^/]+/[^/]+/pulls/(\d+)/files", path):
            return 200, self.pull_files.get(int(m[1]), [])
        if re.fullmatch(r"/repos/[^/]+/[^/]+/issues/\d+/comments", path) and method == "POST":
            return 201, {"id": self._new_id()}
        if re.fullmatch(r"/repos/[^/]+/[^/]+/issues/comments/\d+", path) and method == "PATCH":
            return 200, {"id": int(path.rsplit("/", 1)[1])}
        if re.fullmatch(r"/repos/[^/]+/[^/]+/pulls/\d+/reviews", path) and method == "POST":
            return 200, {"id": self._new_id()}
        if m := re.fullmatch(r"/repos/[^/]+/[^/]+/git/commits/([0-9a-f]+)", path):
            return 200, {"sha": m[1], "tree": {"sha": "tree" + m[1][:8]}}
        if re.fullmatch(r"/repos/[^/]+/[^/]+/git/(blobs|trees|commits)", path) and method == "POST":
            sha = f"{self._new_id():040x}"
            if path.endswith("/blobs"):
                self.blobs[sha] = body
            return 201, {"sha": sha}
        if re.fullmatch(r"/repos/[^/]+/[^/]+/git/refs", path) and method == "POST":
            return 201, {"ref": body["ref"]}
        if re.fullmatch(r"/repos/[^/]+/[^/]+/pulls", path) and method == "POST":
            return 201, {"number": 99, "draft": body.get("draft", False)}
        return 404, {"message": f"no route for {method} {path}"}

    def _handler(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                outer.requests.append((self.command, self.path, body))
                status, answer = outer.route(self.command, self.path, body, self.headers.get("Authorization", ""))
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _serve

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        return Handler
