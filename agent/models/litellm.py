"""``LitellmModel``: every real API litellm speaks to, behind the ``Model`` seam.

``import litellm`` happens inside ``LitellmModel``'s methods only (it takes seconds), offline
and quiet (``providers.load_litellm``). One call tries the model, then each fallback in order:

    route     models whose circuit is open are skipped while another one is left
    attempt   the request, bounded by ``timeout`` (a stream: each chunk); a call that waits
              long emits ``model.status`` notices with the time so far
    read      no choices -> malformed; no text -> empty (both retried like a server error);
              ``finish_reason == "length"`` -> ``AnswerCutOff`` (the budget's wrapper asks again)
    retry     rate limits, timeouts, server errors: after ``Retry-After`` or a backoff, each
              retry a ``model.status`` event; 400/401/404 go straight to the next model
    stream    a stream that breaks after some text raises ``StreamBroke`` with that text: a
              retry would repeat it, so the budget's wrapper continues from it instead

Only parameters the model supports are sent (litellm's ``drop_params``: reasoning models get
no ``temperature``); ``params`` add litellm parameters per model (``api_base``,
``reasoning_effort``, ...).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import aclosing
from typing import Any, TypeVar

from bakeoff.agent.events import EventBus
from bakeoff.agent.models.answers import AnswerCutOff, ModelCallFailed, StreamBroke, continue_after  # noqa: F401
from bakeoff.agent.config import Price
from bakeoff.agent.models.providers import cost_of, load_litellm
from bakeoff.agent.models.retry import (
    Backoff, Breakers, EmptyAnswer, Failure, MalformedAnswer, api_error, assertion_inside,
)
from bakeoff.agent.models.scripted import prompt_text
from bakeoff.agent.seams import Completion, Message, Usage

T = TypeVar("T")


def _short(exc: BaseException, limit: int = 200) -> str:
    return " ".join(str(exc).split())[:limit]


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s" if s >= 0.95 else f"{s:.2g} s"


def _text(choice: Any) -> str:
    message = getattr(choice, "message", None)
    if message is None:
        raise MalformedAnswer("a choice without a message")
    return getattr(message, "content", None) or ""


def _usage(raw: Any) -> Usage | None:
    if raw is None or not getattr(raw, "completion_tokens", None) and not getattr(raw, "prompt_tokens", None):
        return None
    return Usage(prompt_tokens=int(raw.prompt_tokens or 0), completion_tokens=int(raw.completion_tokens or 0))


class LitellmModel:
    """Any model litellm can call: hosted APIs, Ollama, vLLM, an OpenAI-compatible URL.

    ``params`` holds extra litellm parameters per model name (for the fallbacks too);
    ``extra`` keyword arguments go to every call. ``prices`` (dollars per million tokens)
    price models litellm's table does not know. ``breakers`` may be shared between models so
    every role sees a model's circuit; ``events`` receives ``model.status`` notices.
    """

    def __init__(
        self,
        model: str,
        *,
        timeout: float = 120,
        max_retries: int = 4,
        fallbacks: Sequence[str] = (),
        api_base: str | None = None,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        prices: Mapping[str, Price] | None = None,
        breakers: Breakers | None = None,
        events: EventBus | None = None,
        wait_notice_s: float = 15.0,
        **extra: Any,
    ) -> None:
        self.name = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.fallbacks = list(fallbacks)
        self.api_base = api_base
        self.backoff = Backoff(backoff_s, max_backoff_s)
        self.params = {m: dict(p) for m, p in (params or {}).items()}
        self.prices = dict(prices or {})
        self.breakers = breakers or Breakers()
        self.events = events
        self.wait_notice_s = wait_notice_s
        self.extra = extra
        self.attempts: list[str] = []  # one line per failed attempt, for the caller's log

    # ---------------------------------------------------------------- prices

    def models(self) -> list[str]:
        return [self.name, *self.fallbacks]

    def cost(self, model: str, usage: Usage) -> float | None:
        """Dollars for ``usage``: the configured price, else litellm's table; None when unknown."""
        return cost_of(model, usage.prompt_tokens, usage.completion_tokens, self.prices)

    def estimate_cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """The most any of the models tried could charge for these tokens (None if unknown)."""
        known = [c for m in self.models() if (c := cost_of(m, prompt_tokens, completion_tokens, self.prices)) is not None]
        return max(known) if known else None

    def unpriced(self) -> list[str]:
        """The models (this one and its fallbacks) whose price nobody knows."""
        return [m for m in self.models() if cost_of(m, 1000, 1000, self.prices) is None]

    # ---------------------------------------------------------------- one attempt

    def _params(self, model: str, messages: Sequence[Message], temperature: float, max_tokens: int | None) -> dict:
        params: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "temperature": temperature,
            "timeout": self.timeout,
            # bakeoff retries itself (with backoff and fallbacks); the SDK must not retry too.
            "max_retries": 0,
            # Reasoning models reject temperature: send only what the model supports.
            "drop_params": True,
            **self.extra,
            **self.params.get(model, {}),
        }
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        if self.api_base is not None and "api_base" not in params:
            params["api_base"] = self.api_base
        return params

    def _status(self, what: str, model: str, message: str, **data: Any) -> None:
        if self.events is not None:
            self.events.emit("model.status", what=what, model=model, message=message, **data)

    async def _watch(self, model: str, awaitable: Awaitable[T]) -> T:
        """``awaitable``, with a ``waiting`` notice when it takes long (then at doubling times)."""
        task = asyncio.ensure_future(awaitable)
        started, notice = time.monotonic(), self.wait_notice_s
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=max(0.0, started + notice - time.monotonic()))
                if done:
                    return task.result()
                elapsed = time.monotonic() - started
                self._status("waiting", model, f"{model}: waiting for an answer, {_seconds(elapsed)} so far",
                             elapsed_s=round(elapsed, 1))
                notice *= 2
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def _route(self, tried: list[str]) -> list[str]:
        """The models to try, in order: those with an open circuit only when nothing else is left."""
        usable = [m for m in self.models() if not self.breakers.is_open(m)]
        for m in self.models():
            if m not in usable and usable:
                tried.append(f"{m}: skipped, its circuit is open after {self.breakers.failures} failures in a row")
        return usable or self.models()

    def _next_try(self, model: str, attempt: int, exc: Exception, tried: list[str], last: bool) -> float | None:
        """After a failed attempt: seconds to wait before the next one, or None to move on to the
        next model (the reason is added to ``tried``). Raises what is not an API failure."""
        bug = assertion_inside(exc)
        if bug is not None:
            raise bug from exc
        if not api_error(exc):
            raise exc
        failure = Failure.of(exc)
        self.attempts.append(f"{model}: attempt {attempt + 1}: {type(exc).__name__}: {_short(exc)}")
        if failure.retryable:
            self._failed_once(model, last)
        why = f"{model}: {failure.what}: {_short(exc)}"
        if not failure.retryable:
            tried.append(why + (" (check its API key)" if failure.credentials else ""))
            return None
        if attempt >= self.max_retries:
            tried.append(f"{why} ({attempt + 1} attempts)")
            return None
        delay = self.backoff.delay(attempt, failure)
        if self.backoff.too_long(delay):
            tried.append(f"{why}; asked to wait {delay:.0f} s, longer than max_backoff_s {self.backoff.max_s:g}")
            return None
        if self.breakers.is_open(model) and not last:
            tried.append(f"{why}; its circuit is open")
            return None
        self._status("retry", model, f"{model}: {failure.what}, retry {attempt + 1}/{self.max_retries} in {_seconds(delay)}",
                     attempt=attempt + 1, retries=self.max_retries, delay_s=round(delay, 3), reason=failure.what,
                     status=failure.status)
        return delay

    def _failed_once(self, model: str, last: bool) -> None:
        """Count a failed attempt against ``model``'s circuit, and say so when it opens."""
        if self.breakers.failed(model) and not last:
            self._status("circuit-open", model, f"{model} failed {self.breakers.failures} times in a row: calls go "
                         f"to its fallback for {self.breakers.cooldown_s:g} s", failures=self.breakers.failures)

    def _moved_on(self, route: Sequence[str], i: int, tried: Sequence[str]) -> None:
        if i + 1 < len(route):
            self._status("fallback", route[i + 1], f"{route[i]} failed ({tried[-1].split(': ', 2)[1] if tried else '?'}): "
                         f"trying {route[i + 1]}", failed=route[i])

    def _failed(self, tried: Sequence[str]) -> ModelCallFailed:
        return ModelCallFailed(
            "model call failed; tried " + ", ".join(self.models()) + ":\n  " + "\n  ".join(tried)
            + "\ncheck the model names, their API keys and api_base, or configure fallbacks"
        )

    # ---------------------------------------------------------------- Model

    def _read(self, model: str, resp: Any, started: float, max_tokens: int | None) -> Completion:
        choices = getattr(resp, "choices", None)
        if not choices:
            raise MalformedAnswer("no choices in the response")
        usage = _usage(getattr(resp, "usage", None)) or Usage()
        completion = Completion(model=model, texts=[_text(c) for c in choices], usage=usage,
                                cost_usd=self.cost(model, usage), latency_s=time.monotonic() - started)
        if any(getattr(c, "finish_reason", None) == "length" for c in choices):
            raise AnswerCutOff(completion, max_tokens)
        if not any(t.strip() for t in completion.texts):
            raise EmptyAnswer(f"{model} answered with no text")
        return completion

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int | None = None,
    ) -> Completion:
        litellm = load_litellm()
        tried: list[str] = []
        route = self._route(tried)
        for i, model in enumerate(route):
            params = self._params(model, messages, temperature, max_tokens)
            if n != 1:
                params["n"] = n
            for attempt in itertools.count():
                started = time.monotonic()
                try:
                    # asyncio's timeout backs up the API's own: a hung connection must not hang a run.
                    resp = await self._watch(model, asyncio.wait_for(litellm.acompletion(**params), self.timeout + 5))
                    completion = self._read(model, resp, started, max_tokens)
                except AnswerCutOff:
                    self.breakers.succeeded(model)  # the model works; the limit was too small
                    raise
                except Exception as e:
                    delay = self._next_try(model, attempt, e, tried, last=i + 1 == len(route))
                    if delay is None:
                        break
                    await asyncio.sleep(delay)
                    continue
                self.breakers.succeeded(model)
                return completion
            self._moved_on(route, i, tried)
        raise self._failed(tried)

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
    ) -> AsyncIterator[str | Completion]:
        litellm = load_litellm()
        tried: list[str] = []
        route = self._route(tried)
        for i, model in enumerate(route):
            params = self._params(model, messages, temperature, max_tokens)
            params.update(stream=True, stream_options={"include_usage": True})
            for attempt in itertools.count():
                seg = _Segment(model, time.monotonic())
                try:
                    async with aclosing(self._chunks(litellm, model, params, seg)) as deltas:
                        async for delta in deltas:
                            yield delta
                    if seg.finish != "length" and not seg.text.strip():
                        raise EmptyAnswer(f"{model} answered with no text")
                except Exception as e:
                    if seg.text and api_error(e) and assertion_inside(e) is None:
                        # Text already went to the caller: a retry would repeat it, so it continues instead.
                        self._failed_once(model, last=i + 1 == len(route))
                        raise self._broke(seg, messages, e, max_tokens) from e
                    delay = self._next_try(model, attempt, e, tried, last=i + 1 == len(route))
                    if delay is None:
                        break
                    await asyncio.sleep(delay)
                    continue
                self.breakers.succeeded(model)
                final = seg.completion(self, messages)
                if seg.finish == "length":
                    raise AnswerCutOff(final, max_tokens)
                yield final
                return
            self._moved_on(route, i, tried)
        raise self._failed(tried)

    def _broke(self, seg: _Segment, messages: Sequence[Message], exc: Exception, max_tokens: int | None) -> StreamBroke:
        what = Failure.of(exc).what if api_error(exc) else type(exc).__name__
        self._status("stream-broke", seg.model, f"{seg.model}: the stream broke after {len(seg.text)} characters "
                     f"({what}); continuing from there", chars=len(seg.text), reason=what)
        return StreamBroke(f"{seg.model}: stream broke after {len(seg.text)} characters ({what}: {_short(exc)})",
                           seg.completion(self, messages), max_tokens)

    async def _chunks(self, litellm: Any, model: str, params: dict, seg: _Segment) -> AsyncIterator[str]:
        """The text deltas of one streamed call; ``seg`` collects its text, usage and finish reason."""
        response = await self._watch(model, asyncio.wait_for(litellm.acompletion(**params), self.timeout + 5))
        chunks = response.__aiter__()
        try:
            while True:
                try:
                    # Each chunk within the timeout: a stalled stream must not hang a run.
                    chunk = await self._watch(model, asyncio.wait_for(chunks.__anext__(), self.timeout))
                except StopAsyncIteration:
                    return
                seg.usage = _usage(getattr(chunk, "usage", None)) or seg.usage
                for choice in getattr(chunk, "choices", None) or []:
                    seg.finish = getattr(choice, "finish_reason", None) or seg.finish
                    text = getattr(getattr(choice, "delta", None), "content", None) or ""
                    if text:
                        seg.text += text
                        yield text
        finally:
            close = getattr(response, "aclose", None)
            if close is not None:  # a stalled or abandoned stream gives its connection back now
                await asyncio.gather(asyncio.wait_for(close(), 5), return_exceptions=True)


class _Segment:
    """What one streamed call produced: its text, usage (None until a usage block arrives), finish."""

    def __init__(self, model: str, started: float) -> None:
        self.model, self.started = model, started
        self.text = ""
        self.usage: Usage | None = None
        self.finish: str | None = None

    def completion(self, owner: LitellmModel, messages: Sequence[Message]) -> Completion:
        usage, estimated = self.usage, False
        if usage is None:
            # No usage block (the server ignores include_usage, or the stream broke first):
            # count roughly rather than report nothing, and say it is an estimate.
            usage = Usage(prompt_tokens=math.ceil(len(prompt_text(messages)) / 4),
                          completion_tokens=math.ceil(len(self.text) / 4))
            estimated = True
        return Completion(model=self.model, texts=[self.text], usage=usage, cost_usd=owner.cost(self.model, usage),
                          latency_s=time.monotonic() - self.started, estimated=estimated)
