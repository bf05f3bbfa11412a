"""An OpenAI-compatible chat server on 127.0.0.1 that answers with scripted text and injects
the faults real APIs show: rate limits with ``Retry-After``, server errors, malformed JSON, a
malformed SSE event, a hang, an empty answer, an answer cut off at its token limit
(``finish_reason == "length"``), a stream that stalls or breaks half-way, 401 and 400.

bakeoff reaches it through litellm exactly as it reaches a hosted API (an ``openai/NAME``
model string with ``api_base`` pointing here). Used by ``tests/test_live_faults.py`` and
``bench/live_faults.py``.

Faults are queued per model name (or for any model) and each is used by one request; a
request with no fault queued gets the scripted answer. Every request is recorded.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = (
    "429", "500", "401", "400", "malformed-json", "malformed-sse", "hang", "empty", "length", "stall", "break",
)

Answer = Callable[[dict], str]  # request body -> the answer's text


@dataclass
class Request:
    model: str
    stream: bool
    fault: str | None
    body: dict = field(repr=False)
    at: float = field(default_factory=time.monotonic)


def plain_answer(text: str = "ok") -> Answer:
    return lambda body: text


def scripted_answer(path: str) -> Answer:
    """Answers from a bakeoff scripted-model file; the model name (``openai/planner``) is the role."""
    from bakeoff.agent.models.scripted import ScriptedModel
    from bakeoff.agent.seams import Message

    import asyncio

    script = ScriptedModel.from_file(path)
    lock = threading.Lock()

    def answer(body: dict) -> str:
        role = body["model"].split("/")[-1].split("-")[0]
        messages = [Message(role=m["role"], content=m["content"]) for m in body["messages"]]
        with lock:
            return asyncio.run(script.for_role(role).complete(messages)).text

    return answer


class FaultServer:
    """``url`` is the ``api_base``; ``inject(fault, model=None, times=1)`` queues faults.

    ``hang_s`` is how long a hang or a stall lasts (longer than the client's timeout);
    ``retry_after`` is the ``Retry-After`` a 429 carries (None: no header).
    """

    def __init__(self, answer: Answer | None = None, *, hang_s: float = 30.0, retry_after: float | None = 1.0,
                 chunk_chars: int = 8) -> None:
        self.answer = answer or plain_answer()
        self.hang_s = hang_s
        self.retry_after = retry_after
        self.chunk_chars = chunk_chars
        self.requests: list[Request] = []
        self._faults: list[tuple[str | None, str]] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def inject(self, fault: str, *, model: str | None = None, times: int = 1) -> FaultServer:
        assert fault in FAULTS, fault
        with self._lock:
            self._faults.extend([(model, fault)] * times)
        return self

    def count(self, model: str | None = None) -> int:
        return sum(1 for r in self.requests if model is None or r.model == model)

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FaultServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ serving

    def _take(self, model: str) -> str | None:
        with self._lock:
            for i, (who, fault) in enumerate(self._faults):
                if who is None or who == model:
                    del self._faults[i]
                    return fault
        return None

    def text_for(self, body: dict) -> str:
        """The answer to ``body``. Asked to continue an answer that broke off (bakeoff's
        ``continue_after``), it sends the rest, as a model that continues well does."""
        from bakeoff.agent.models.answers import CONTINUE

        messages = body.get("messages") or []
        if len(messages) >= 3 and messages[-1].get("content") == CONTINUE and messages[-2].get("role") == "assistant":
            written = messages[-2].get("content") or ""
            full = self.answer({**body, "messages": messages[:-2]})
            return full[len(written):] if full.startswith(written) else full
        return self.answer(body)

    def _wait(self, seconds: float) -> None:
        self._closing.wait(seconds)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (the http.server API)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                model = str(body.get("model", ""))
                fault = server._take(model)
                with server._lock:
                    server.requests.append(Request(model=model, stream=bool(body.get("stream")), fault=fault, body=body))
                try:
                    Reply(self, server, body, fault).send()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout): what a real server sees too

        return Handler


class Reply:
    """One response: the scripted answer, or the fault queued for it."""

    def __init__(self, handler: BaseHTTPRequestHandler, server: FaultServer, body: dict, fault: str | None) -> None:
        self.h, self.server, self.body, self.fault = handler, server, body, fault
        self.model = str(body.get("model", ""))

    def send(self) -> None:
        fault = self.fault
        if fault in ("429", "500", "401", "400"):
            return self._error(int(fault))
        if fault == "hang":
            self.server._wait(self.server.hang_s)
            return self._error(504)
        text = "" if fault == "empty" else self.server.text_for(self.body)
        finish = "stop"
        if fault == "length":
            text, finish = text[: max(1, len(text) // 2)], "length"
        if self.body.get("stream"):
            return self._stream(text, finish)
        if fault == "malformed-json":
            return self._send(200, b'{"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"rol')
        n = int(self.body.get("n") or 1)
        resp = {
            "id": "c", "object": "chat.completion", "created": int(time.time()), "model": self.model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                        for i in range(n)],
            "usage": self._usage(text, n),
        }
        self._send(200, json.dumps(resp).encode())

    def _usage(self, text: str, n: int = 1) -> dict:
        prompt = sum(len(str(m.get("content", ""))) for m in self.body.get("messages", [])) // 4 + 1
        completion = (len(text) // 4 + 1) * n
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _error(self, status: int) -> None:
        headers = {}
        if status == 429 and self.server.retry_after is not None:
            headers["Retry-After"] = f"{self.server.retry_after:g}"
        message = {429: "rate limited", 401: "invalid api key", 400: "bad request: unknown parameter"}.get(status, "boom")
        self._send(status, json.dumps({"error": {"message": message, "type": "test", "code": status}}).encode(), headers)

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None,
              ctype: str = "application/json") -> None:
        self.h.send_response(status)
        self.h.send_header("Content-Type", ctype)
        self.h.send_header("Content-Length", str(len(payload)))
        for k, v in (headers or {}).items():
            self.h.send_header(k, v)
        self.h.end_headers()
        self.h.wfile.write(payload)
        self.h.wfile.flush()

    def _event(self, data: dict | str) -> None:
        line = data if isinstance(data, str) else json.dumps(
            {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": self.model, **data})
        chunk = f"data: {line}\n\n".encode()
        self.h.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.h.wfile.flush()

    def _stream(self, text: str, finish: str) -> None:
        self.h.send_response(200)
        self.h.send_header("Content-Type", "text/event-stream")
        self.h.send_header("Transfer-Encoding", "chunked")
        self.h.end_headers()
        size = self.server.chunk_chars
        pieces = [text[i : i + size] for i in range(0, len(text), size)] or [""]
        half = max(1, len(pieces) // 2)
        for i, piece in enumerate(pieces):
            if i == half and self.fault == "malformed-sse":
                self._event('{"id": "c", "choices": [{"delta": {"content": "x')
            if i == half and self.fault == "stall":
                self.server._wait(self.server.hang_s)
                return
            if i == half and self.fault == "break":
                self.h.connection.shutdown(socket.SHUT_RDWR)  # mid-stream, without the terminating chunk
                return
            self._event({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
        self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if (self.body.get("stream_options") or {}).get("include_usage"):
            self._event({"choices": [], "usage": self._usage(text)})
        self._event("[DONE]")
        self.h.wfile.write(b"0\r\n\r\n")
        self.h.wfile.flush()
