"""The scripted model: replays answers from a file, for tests, benchmarks and the offline demo.

Selectable as ``scripted:PATH`` wherever a model is named. It answers through the same
``Model`` seam as a real model, with simulated latency, token counts and an optional price.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bakeoff.agent.seams import Completion, Message, Usage


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
            try:
                re.compile(self.match)
            except re.error as e:  # a ValueError, so the file's error names this response
                raise ValueError(f"match {self.match!r} is not a valid regular expression ({e})") from None
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
        except UnicodeDecodeError as e:
            raise ScriptFileError(f"scripted model file {p}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
                                  f"offset {e.start}); save it as UTF-8") from None
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


