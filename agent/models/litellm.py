"""``LitellmModel``: every real API litellm speaks to, behind the ``Model`` seam.

``import litellm`` happens inside ``LitellmModel``'s methods only: it takes seconds.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from bakeoff.agent.models.scripted import prompt_text
from bakeoff.agent.seams import Completion, Message, Usage


class ModelCallFailed(Exception):
    """Every attempt on the model and its fallbacks failed; the message lists each error."""


# Status codes worth another try: rate limits, timeouts and server errors.
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 529}


def _litellm():
    """litellm, imported on first use (it takes seconds), without its console banners."""
    import litellm

    litellm.suppress_debug_info = True
    return litellm


def _api_error(exc: BaseException) -> bool:
    """An error from the model API (as opposed to a bug in bakeoff)."""
    import openai  # litellm's exceptions derive from the OpenAI SDK's

    return isinstance(exc, openai.OpenAIError) or _retryable(exc)


def _assertion_inside(exc: BaseException) -> AssertionError | None:
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


def _retryable(exc: BaseException) -> bool:
    litellm = _litellm()

    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, json.JSONDecodeError, _MalformedResponse)):
        return True
    retry_types = (
        litellm.RateLimitError,
        litellm.Timeout,
        litellm.APIConnectionError,
        litellm.InternalServerError,
        litellm.ServiceUnavailableError,
        litellm.BadGatewayError,
        litellm.APIResponseValidationError,
    )
    if isinstance(exc, retry_types):
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(status, int) and (status in _RETRY_STATUS or status >= 500)


class _MalformedResponse(Exception):
    """The API answered, but not with what a chat completion must contain."""


def _message_text(choice: Any) -> str:
    message = getattr(choice, "message", None)
    if message is None:
        raise _MalformedResponse("a choice without a message")
    return getattr(message, "content", None) or ""


class LitellmModel:
    """Any model litellm can call: hosted APIs, Ollama, vLLM, an OpenAI-compatible URL.

    Retries rate limits, timeouts, server errors and malformed answers with exponential
    backoff and jitter, then moves on to each fallback model in order. Usage and cost come
    with every call; an unknown price gives ``cost_usd=None`` and token counts only.
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
        **extra: Any,
    ) -> None:
        self.name = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.fallbacks = list(fallbacks)
        self.api_base = api_base
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.extra = extra
        self.attempts: list[str] = []  # one line per failed attempt, for the caller's log

    # ---------------------------------------------------------------- helpers

    def _params(self, model: str, messages: Sequence[Message], temperature: float, max_tokens: int | None) -> dict:
        params: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "temperature": temperature,
            "timeout": self.timeout,
            # bakeoff retries itself (with backoff and fallbacks); the SDK must not retry too.
            "max_retries": 0,
            **self.extra,
        }
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        if self.api_base is not None:
            params["api_base"] = self.api_base
        return params

    def _delay(self, attempt: int) -> float:
        base = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        return base / 2 + random.uniform(0, base / 2)  # "equal jitter": spreads concurrent retries

    def cost(self, model: str, usage: Usage) -> float | None:
        """Dollars for ``usage`` from litellm's price table; None when the price is unknown."""
        litellm = _litellm()

        try:
            prompt_cost, completion_cost = litellm.cost_per_token(
                model=model, prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
            )
        except Exception:  # litellm raises assorted types for a model missing from its table
            return None
        return float(prompt_cost + completion_cost)

    def estimate_cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        """The most any of the models tried could charge for these tokens (None if unknown)."""
        costs = [self.cost(m, Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)) for m in self._models()]
        known = [c for c in costs if c is not None]
        return max(known) if known else None

    def _models(self) -> list[str]:
        return [self.name, *self.fallbacks]

    async def _with_retries(self, model: str, call):
        """Run ``call()`` with retries; the last error propagates."""
        attempt = 0
        while True:
            try:
                return await call()
            except Exception as e:
                bug = _assertion_inside(e)
                if bug is not None:
                    raise bug from e
                if not _retryable(e) or attempt >= self.max_retries:
                    raise
                self.attempts.append(f"{model}: attempt {attempt + 1}: {type(e).__name__}: {str(e)[:200]}")
                await asyncio.sleep(self._delay(attempt))
                attempt += 1

    def _failed(self, errors: list[str]) -> ModelCallFailed:
        return ModelCallFailed(
            "model call failed on " + ", ".join(self._models()) + ":\n  " + "\n  ".join(errors)
            + "\ncheck the model name, its API key and api_base, or configure fallbacks"
        )

    # ---------------------------------------------------------------- Model

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int | None = None,
    ) -> Completion:
        litellm = _litellm()
        errors: list[str] = []
        for model in self._models():
            params = self._params(model, messages, temperature, max_tokens)
            if n != 1:
                params["n"] = n

            async def call(params=params) -> tuple[Any, float]:
                started = time.monotonic()
                # asyncio's timeout backs up the API's own: a hung connection must not hang a run.
                resp = await asyncio.wait_for(litellm.acompletion(**params), self.timeout + 5)
                choices = getattr(resp, "choices", None)
                if not choices:
                    raise _MalformedResponse("no choices in the response")
                return resp, [_message_text(c) for c in choices], time.monotonic() - started

            try:
                resp, texts, latency = await self._with_retries(model, call)
            except Exception as e:
                if not _api_error(e):
                    raise  # not an API failure: a bug, let it show
                errors.append(f"{model}: {type(e).__name__}: {str(e)[:300]}")
                continue
            raw = getattr(resp, "usage", None)
            usage = Usage(
                prompt_tokens=int(getattr(raw, "prompt_tokens", 0) or 0),
                completion_tokens=int(getattr(raw, "completion_tokens", 0) or 0),
            )
            return Completion(model=model, texts=texts, usage=usage, cost_usd=self.cost(model, usage), latency_s=latency)
        raise self._failed(errors)

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
    ) -> AsyncIterator[str | Completion]:
        litellm = _litellm()
        errors: list[str] = []
        for model in self._models():
            params = self._params(model, messages, temperature, max_tokens)
            params["stream"] = True
            params["stream_options"] = {"include_usage": True}
            attempt = 0
            while True:
                started = time.monotonic()
                parts: list[str] = []
                usage: Usage | None = None
                try:
                    async for delta, raw_usage in self._chunks(litellm, params):
                        if raw_usage is not None:
                            usage = raw_usage
                        if delta:
                            parts.append(delta)
                            yield delta
                except Exception as e:
                    bug = _assertion_inside(e)
                    if bug is not None:
                        raise bug from e
                    if not _api_error(e):
                        raise
                    if parts:
                        # Text already went to the caller; a retry would repeat it.
                        raise self._failed([f"{model}: stream broke after {len(parts)} chunks: {e}"]) from e
                    if _retryable(e) and attempt < self.max_retries:
                        self.attempts.append(f"{model}: stream attempt {attempt + 1}: {type(e).__name__}: {str(e)[:200]}")
                        await asyncio.sleep(self._delay(attempt))
                        attempt += 1
                        continue
                    errors.append(f"{model}: {type(e).__name__}: {str(e)[:300]}")
                    break
                text = "".join(parts)
                if usage is None:
                    # Some servers ignore include_usage: count roughly rather than report nothing.
                    usage = Usage(
                        prompt_tokens=math.ceil(len(prompt_text(messages)) / 4),
                        completion_tokens=math.ceil(len(text) / 4),
                    )
                yield Completion(
                    model=model, texts=[text], usage=usage, cost_usd=self.cost(model, usage),
                    latency_s=time.monotonic() - started,
                )
                return
        raise self._failed(errors)



    async def _chunks(self, litellm: Any, params: dict) -> AsyncIterator[tuple[str, Usage | None]]:
        """(text delta, usage if this chunk carries it) for each chunk of one streamed call."""
        response = await asyncio.wait_for(litellm.acompletion(**params), self.timeout + 5)
        chunks = response.__aiter__()
        while True:
            try:
                # Each chunk within the timeout: a stalled stream must not hang a run.
                chunk = await asyncio.wait_for(chunks.__anext__(), self.timeout)
            except StopAsyncIteration:
                return
            raw = getattr(chunk, "usage", None)
            usage = None
            if raw is not None and getattr(raw, "completion_tokens", None):
                usage = Usage(prompt_tokens=int(raw.prompt_tokens or 0), completion_tokens=int(raw.completion_tokens or 0))
            text = "".join(getattr(getattr(c, "delta", None), "content", None) or "" for c in getattr(chunk, "choices", None) or [])
            yield text, usage
