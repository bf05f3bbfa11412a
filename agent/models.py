"""Models behind the ``Model`` seam: a scripted one for tests, benchmarks and the offline demo,
and ``LitellmModel`` for every real API litellm speaks to. Plus model configuration.

``import litellm`` happens inside ``LitellmModel``'s methods only: it takes seconds.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.seams import Completion, Message, Model, Usage

ROLES = ("planner", "editor", "tester", "judge")


def prompt_text(messages: Sequence[Message]) -> str:
    """All messages joined: what a scripted response's ``match`` is searched in."""
    return "\n".join(m.content for m in messages)


# --------------------------------------------------------------------------- scripted


class ScriptExhausted(Exception):
    """The script has no response left for a prompt: the script's author can fix it."""


class ScriptFileError(ValueError):
    """A scripted model file that cannot be read or does not have the expected shape."""


class ScriptedResponse(BaseModel):
    """One scripted answer. ``text`` is one sample; ``texts`` gives ``n`` samples (cycled)."""

    model_config = ConfigDict(extra="forbid")

    match: str | None = None  # regex searched in the prompt (all messages joined)
    role: str | None = None  # only answers a model playing this role (planner, joiner, ...)
    text: str | None = None
    texts: list[str] | None = None
    repeat: bool = False  # keep it for later calls instead of using it once

    @model_validator(mode="after")
    def _one_text(self) -> ScriptedResponse:
        if (self.text is None) == (self.texts is None) or self.texts == []:
            raise ValueError("a scripted response needs exactly one of 'text' or a non-empty 'texts'")
        if self.match is not None:
            re.compile(self.match)
        return self

    def samples(self, n: int) -> list[str]:
        pool = self.texts if self.texts is not None else [self.text or ""]
        return [pool[i % len(pool)] for i in range(n)]


class ScriptedLatency(BaseModel):
    model_config = ConfigDict(extra="forbid")

    first_token_s: float = 0.0
    per_token_s: float = 0.0
    chars_per_token: int = Field(4, ge=1)


class ScriptFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latency: ScriptedLatency = Field(default_factory=ScriptedLatency)
    usd_per_token: float = Field(0.0, ge=0)  # a price, to model what a run would cost
    responses: list[ScriptedResponse]


class _Script:
    """The responses left, shared by every view of one script (see ``ScriptedModel.for_role``)."""

    def __init__(self, responses: Iterable[ScriptedResponse], source: str) -> None:
        self.responses = list(responses)
        self.used = [False] * len(self.responses)
        self.source = source
        # A threading lock: the script may be shared by event loops in several threads.
        self.lock = threading.Lock()

    def take(self, prompt: str, role: str | None, last: str = "") -> ScriptedResponse:
        with self.lock:
            for matching in (True, False):
                for i, r in enumerate(self.responses):
                    if self.used[i] or (r.match is not None) != matching:
                        continue
                    if r.role is not None and r.role != role:
                        continue
                    if matching and not re.search(r.match or "", prompt):
                        continue
                    if not r.repeat:
                        self.used[i] = True
                    return r
        start = prompt[:160].replace("\n", " ")
        # In a conversation every prompt starts alike: the last message tells them apart.
        tail = f", whose last message starts {last[:160]!r}" if last and not prompt.startswith(last) else ""
        raise ScriptExhausted(
            f"scripted model {self.source}: no response left for the prompt starting {start!r}{tail}"
            f"{f' (role {role})' if role else ''}; add one to the script (with 'match: REGEX' "
            "to answer prompts like this one, or 'repeat: true' to reuse it)"
        )


class ScriptedModel:
    """Replays scripted responses, with simulated latency so benchmarks can model a real API.

    A response with ``match`` answers any prompt its regex matches; the others are used in
    order. Each response is used once unless it says ``repeat``. Latency: ``first_token_s``
    before the first token, then ``per_token_s`` per token; tokens are ``chars_per_token``
    characters. Cost is 0 unless ``usd_per_token`` prices it. Safe to share between concurrent calls and threads.
    """

    def __init__(
        self,
        responses: list[ScriptedResponse],
        *,
        first_token_s: float = 0.0,
        per_token_s: float = 0.0,
        chars_per_token: int = 4,
        name: str = "scripted",
        role: str | None = None,
        source: str = "<inline script>",
        usd_per_token: float = 0.0,
    ) -> None:
        self.name = name
        self.usd_per_token = usd_per_token
        self.role = role
        self.first_token_s = first_token_s
        self.per_token_s = per_token_s
        self.chars_per_token = max(1, chars_per_token)
        self._script = _Script(responses, source)

    @classmethod
    def from_file(cls, path: str | Path, *, role: str | None = None) -> ScriptedModel:
        """Read ``{latency: {...}, responses: [...]}`` from a YAML or JSON file."""
        import yaml  # YAML is a superset of JSON: one reader for both

        p = Path(path).expanduser()
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except OSError as e:
            raise ScriptFileError(f"scripted model file {p}: cannot read it ({e.strerror or e})") from e
        except yaml.YAMLError as e:
            raise ScriptFileError(f"scripted model file {p}: not valid YAML or JSON ({e})") from e
        try:
            script = ScriptFile.model_validate(raw)
        except ValueError as e:
            raise ScriptFileError(f"scripted model file {p}: {e}") from e
        lat = script.latency
        return cls(
            script.responses,
            first_token_s=lat.first_token_s,
            per_token_s=lat.per_token_s,
            chars_per_token=lat.chars_per_token,
            name=f"scripted:{p}",
            role=role,
            source=str(p),
            usd_per_token=script.usd_per_token,
        )

    def for_role(self, role: str) -> ScriptedModel:
        """A view of the same script answering as ``role``; responses are shared, not copied."""
        view = ScriptedModel.__new__(ScriptedModel)
        view.__dict__.update(self.__dict__)
        view.role = role
        return view

    def tokens(self, text: str) -> int:
        return math.ceil(len(text) / self.chars_per_token)

    def estimate_cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        return (prompt_tokens + completion_tokens) * self.usd_per_token

    def _cap(self, text: str, max_tokens: int | None) -> str:
        # A real API stops at max_tokens; so does the script, so budgets bound it the same way.
        return text if max_tokens is None else text[: max_tokens * self.chars_per_token]

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int | None = None,
    ) -> Completion:
        started = time.monotonic()
        prompt = prompt_text(messages)
        texts = [self._cap(t, max_tokens) for t in self._script.take(prompt, self.role, messages[-1].content if messages else "").samples(max(1, n))]
        # Samples are generated side by side: the call lasts as long as the longest one.
        longest = max(self.tokens(t) for t in texts)
        delay = self.first_token_s + longest * self.per_token_s
        if delay > 0:
            await asyncio.sleep(delay)
        usage = Usage(prompt_tokens=self.tokens(prompt), completion_tokens=sum(self.tokens(t) for t in texts))
        return Completion(
            model=self.name, texts=texts, usage=usage, cost_usd=usage.total_tokens * self.usd_per_token,
            latency_s=time.monotonic() - started,
        )

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        temperature: float = 0.0,
        max_tokens: int | None = None,
    ) -> AsyncIterator[str | Completion]:
        started = time.monotonic()
        prompt = prompt_text(messages)
        text = self._cap(self._script.take(prompt, self.role, messages[-1].content if messages else "").samples(1)[0], max_tokens)
        cpt, ntok = self.chars_per_token, self.tokens(text)
        loop = asyncio.get_running_loop()
        first = loop.time() + self.first_token_s
        i = 0
        while i < ntok:
            # Deadlines from the start, not sleeps in a row: no drift over hundreds of tokens.
            due = first + (i + 1) * self.per_token_s
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            if self.per_token_s > 0:
                j = min(ntok, max(i + 1, int((loop.time() - first) / self.per_token_s)))
            else:
                j = ntok
            yield text[i * cpt : j * cpt]
            i = j
        usage = Usage(prompt_tokens=self.tokens(prompt), completion_tokens=ntok)
        yield Completion(
            model=self.name, texts=[text], usage=usage, cost_usd=usage.total_tokens * self.usd_per_token,
            latency_s=time.monotonic() - started,
        )


# --------------------------------------------------------------------------- litellm


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
                    response = await asyncio.wait_for(litellm.acompletion(**params), self.timeout + 5)
                    chunks = response.__aiter__()
                    while True:
                        try:
                            # Each chunk within the timeout: a stalled stream must not hang a run.
                            chunk = await asyncio.wait_for(chunks.__anext__(), self.timeout)
                        except StopAsyncIteration:
                            break
                        raw = getattr(chunk, "usage", None)
                        if raw is not None and getattr(raw, "completion_tokens", None):
                            usage = Usage(prompt_tokens=int(raw.prompt_tokens or 0), completion_tokens=int(raw.completion_tokens or 0))
                        for choice in getattr(chunk, "choices", None) or []:
                            delta = getattr(getattr(choice, "delta", None), "content", None)
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


# --------------------------------------------------------------------------- choosing


def resolve_model(spec: str, *, role: str | None = None, **kw: Any) -> Model:
    """``scripted:PATH`` replays a script file; anything else is a litellm model string."""
    if spec.startswith("scripted:"):
        return ScriptedModel.from_file(spec.removeprefix("scripted:"), role=role)
    return LitellmModel(spec, **kw)


class ModelNotConfigured(Exception):
    """No model is configured for a role: the user can fix it, and the message says how."""

    def __init__(self, role: str) -> None:
        self.role = role
        up = role.upper()
        super().__init__(
            f"no model configured for the {role} role. Configure one in any of these ways:\n"
            f"  - bakeoff.toml:    [model] default = \"MODEL\"   (or {role} = \"MODEL\")\n"
            f"  - pyproject.toml:  [tool.bakeoff.model] default = \"MODEL\"\n"
            f"  - environment:     BAKEOFF_MODEL=MODEL  or  BAKEOFF_{up}_MODEL=MODEL (also BAKEOFF_MODEL_{up})\n"
            f"  - command line:    --model MODEL\n"
            f"  - offline:         --model scripted:PATH  (replays responses from a YAML/JSON file)\n"
            f"MODEL is any litellm model string, e.g. openai/gpt-4o-mini, anthropic/claude-3-5-sonnet-latest, "
            f"ollama/qwen2.5-coder; set the provider's API key in its usual variable."
        )


class ModelConfig(BaseModel):
    """Which model plays each role. A role without its own model uses ``default``."""

    model_config = ConfigDict(extra="forbid")

    default: str | None = None
    planner: str | None = None
    editor: str | None = None
    tester: str | None = None
    judge: str | None = None
    fallbacks: list[str] = Field(default_factory=list)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    timeout: float = Field(120.0, gt=0)

    def for_role(self, role: str) -> str:
        spec = getattr(self, role, None) if role in ROLES else None
        spec = spec or self.default
        if not spec:
            raise ModelNotConfigured(role)
        return spec

    def resolve(self, role: str, **kw: Any) -> Model:
        """The configured model for ``role``, with this config's fallbacks and timeout."""
        spec = self.for_role(role)
        if spec.startswith("scripted:"):
            return resolve_model(spec, role=role)
        return resolve_model(spec, fallbacks=self.fallbacks, timeout=self.timeout, **kw)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ModelConfig:
        """Settings from ``BAKEOFF_MODEL``, ``BAKEOFF_<ROLE>_MODEL`` (or ``BAKEOFF_MODEL_<ROLE>``),
        ``BAKEOFF_MODEL_FALLBACKS`` (comma-separated), ``BAKEOFF_MODEL_TEMPERATURE`` and
        ``BAKEOFF_MODEL_TIMEOUT``. Only variables that are set end up in ``model_fields_set``,
        so the result merges over other layers with ``model_dump(exclude_unset=True)``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if env.get("BAKEOFF_MODEL"):
            values["default"] = env["BAKEOFF_MODEL"]
        if env.get("BAKEOFF_MODEL_DEFAULT"):
            values["default"] = env["BAKEOFF_MODEL_DEFAULT"]
        for role in ROLES:
            up = role.upper()
            spec = env.get(f"BAKEOFF_{up}_MODEL") or env.get(f"BAKEOFF_MODEL_{up}")
            if spec:
                values[role] = spec
        if env.get("BAKEOFF_MODEL_FALLBACKS"):
            values["fallbacks"] = [s.strip() for s in env["BAKEOFF_MODEL_FALLBACKS"].split(",") if s.strip()]
        if env.get("BAKEOFF_MODEL_TEMPERATURE"):
            values["temperature"] = env["BAKEOFF_MODEL_TEMPERATURE"]
        if env.get("BAKEOFF_MODEL_TIMEOUT"):
            values["timeout"] = env["BAKEOFF_MODEL_TIMEOUT"]
        return cls.model_validate(values)
