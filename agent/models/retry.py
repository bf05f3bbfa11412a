"""How a failed model call is read, waited on, and routed around.

- ``Failure.of(exc)`` names what went wrong in words for the progress ("model busy (429)"),
  whether another try may help, and the ``Retry-After`` the API asked for.
- ``Backoff`` waits what the API asked for, else exponentially with jitter.
- ``Breakers`` hold one circuit breaker per model: after ``failures`` failed attempts in a
  row a model's circuit opens for ``cooldown_s``, and calls go to its fallback at once
  instead of each paying its own backoff; the first call after the cool-down tries it again.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from dataclasses import dataclass

# Status codes worth another try: rate limits, timeouts and server errors.
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 529}


class MalformedAnswer(Exception):
    """The API answered, but not with what a chat completion must contain."""


class EmptyAnswer(Exception):
    """The API answered with no text at all (and not because of its token limit)."""


def assertion_inside(exc: BaseException) -> AssertionError | None:
    """An AssertionError under litellm's wrapping: a bug (or the test suite's network switch),
    never an API hiccup, so it is raised as itself and not retried."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, AssertionError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def api_error(exc: BaseException) -> bool:
    """An error from the model API (as opposed to a bug in bakeoff)."""
    import openai  # litellm's exceptions derive from the OpenAI SDK's

    return isinstance(exc, (openai.OpenAIError, asyncio.TimeoutError, TimeoutError, json.JSONDecodeError,
                            MalformedAnswer, EmptyAnswer))


@dataclass
class Failure:
    """One failed attempt, read: ``what`` for people, ``retryable``, the API's ``retry_after``."""

    what: str
    retryable: bool
    status: int | None = None
    retry_after: float | None = None
    credentials: bool = False  # the API key is missing or refused

    @classmethod
    def of(cls, exc: BaseException) -> Failure:
        status = getattr(exc, "status_code", None)
        status = status if isinstance(status, int) else None
        text = str(exc)
        if "Missing credentials" in text or "api_key client option must be set" in text:
            return cls("no API key", False, status, credentials=True)
        if status in (401, 403):
            return cls(f"API key refused ({status})", False, status, credentials=True)
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or "Timeout" in type(exc).__name__ or status == 408:
            return cls("no answer in time (timeout)", True, status)
        if isinstance(exc, EmptyAnswer):
            return cls("empty answer", True)
        server_side = status is None or status >= 500
        if isinstance(exc, (MalformedAnswer, json.JSONDecodeError)) or server_side and (
                "Unterminated string" in text or "Expecting value" in text or "Expecting property name" in text):
            return cls("malformed answer", True, status)
        if status == 429:
            return cls("model busy (429)", True, status, retry_after(exc))
        if "MidStreamFallback" in type(exc).__name__ or "APIConnectionError" in type(exc).__name__ or "Connection" in text:
            return cls("connection broke", True, status)
        if status is not None:
            retry = status in RETRY_STATUS or status >= 500
            return cls(f"{'server error' if status >= 500 else 'request refused'} ({status})", retry, status,
                       retry_after(exc) if retry else None)
        return cls(type(exc).__name__, False)


def retry_after(exc: BaseException) -> float | None:
    """Seconds the API asked to wait (``Retry-After``: seconds or an HTTP date); None if unsaid."""
    headers = getattr(getattr(exc, "response", None), "headers", None) or getattr(exc, "litellm_response_headers", None)
    if not headers:
        return None
    raw = headers.get("retry-after-ms")
    if raw is not None:
        try:
            return max(0.0, float(raw) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(raw).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


@dataclass
class Backoff:
    """Waits between attempts: ``base_s`` doubling up to ``max_s``, with "equal jitter" (half
    fixed, half random) so concurrent retries spread; the API's ``Retry-After`` when it gives one."""

    base_s: float = 1.0
    max_s: float = 30.0

    def delay(self, attempt: int, failure: Failure) -> float:
        if failure.retry_after is not None:
            return failure.retry_after
        base = min(self.max_s, self.base_s * 2**attempt)
        return base / 2 + random.uniform(0, base / 2)

    def too_long(self, delay: float) -> bool:
        """A wait the API asked for that is longer than bakeoff waits: go to a fallback instead."""
        return delay > self.max_s


class Breakers:
    """One circuit breaker per model name, shared by every call (and every role) of a session.
    Thread-safe."""

    def __init__(self, failures: int = 3, cooldown_s: float = 30.0) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._in_a_row: dict[str, int] = {}
        self._open_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def is_open(self, model: str) -> bool:
        with self._lock:
            return time.monotonic() < self._open_until.get(model, 0.0)

    def failed(self, model: str) -> bool:
        """Count a failed attempt; True when this one opened the circuit."""
        with self._lock:
            n = self._in_a_row.get(model, 0) + 1
            self._in_a_row[model] = n
            if n >= self.failures and time.monotonic() >= self._open_until.get(model, 0.0):
                self._open_until[model] = time.monotonic() + self.cooldown_s
                return True
            return False

    def succeeded(self, model: str) -> None:
        with self._lock:
            self._in_a_row[model] = 0
            self._open_until.pop(model, None)
