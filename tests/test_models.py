"""The Model seam: the scripted model, model configuration, and LitellmModel against a real
OpenAI-compatible HTTP server on loopback (429, 500, malformed JSON, SSE streaming, fallbacks)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bakeoff.agent.models.litellm import LitellmModel, ModelCallFailed
from bakeoff.agent.config import ModelConfig, ModelNotConfigured
from bakeoff.agent.models.scripted import ScriptedModel, ScriptedResponse, ScriptExhausted, ScriptFileError
from bakeoff.agent.models import resolve_model
from bakeoff.agent.seams import Completion, Message, Model, Usage


def msgs(text: str) -> list[Message]:
    return [Message(role="system", content="you are a test"), Message(role="user", content=text)]


# --------------------------------------------------------------------------- scripted


async def test_scripted_in_order_match_and_repeat():
    model = ScriptedModel([
        ScriptedResponse(text="first"),
        ScriptedResponse(match=r"build failed", text="fix the include", repeat=True),
        ScriptedResponse(text="second"),
    ])
    assert isinstance(model, Model)
    assert (await model.complete(msgs("hello"))).text == "first"
    assert (await model.complete(msgs("the build failed: x.h"))).text == "fix the include"
    assert (await model.complete(msgs("again: build failed"))).text == "fix the include"
    assert (await model.complete(msgs("hello"))).text == "second"
    with pytest.raises(ScriptExhausted) as e:
        await model.complete(msgs("one more question please"))
    assert "one more question" in str(e.value) and "<inline script>" in str(e.value)


async def test_scripted_samples_cycle_and_usage():
    model = ScriptedModel([ScriptedResponse(texts=["aaaa", "bbbbbbbb"])], chars_per_token=4)
    c = await model.complete([Message(role="user", content="x" * 10)], n=3)
    assert c.texts == ["aaaa", "bbbbbbbb", "aaaa"]
    assert c.usage.prompt_tokens == 3  # ceil(10 / 4)
    assert c.usage.completion_tokens == 1 + 2 + 1
    assert c.cost_usd == 0.0


async def test_scripted_max_tokens_caps_the_text():
    model = ScriptedModel([ScriptedResponse(text="x" * 100)], chars_per_token=4)
    c = await model.complete(msgs("q"), max_tokens=5)
    assert c.text == "x" * 20 and c.usage.completion_tokens == 5


async def test_scripted_stream_paces_tokens_and_ends_with_completion():
    text = "line one\nline two\n" * 4  # 72 chars = 18 tokens
    model = ScriptedModel([ScriptedResponse(text=text)], first_token_s=0.1, per_token_s=0.01, chars_per_token=4)
    started = time.monotonic()
    arrivals, parts, final = [], [], None
    async for item in model.stream(msgs("go")):
        if isinstance(item, Completion):
            final = item
        else:
            arrivals.append(time.monotonic() - started)
            parts.append(item)
    assert "".join(parts) == text
    assert final is not None and final.text == text and final.usage.completion_tokens == 18
    assert len(parts) > 3  # streamed in pieces, not at once
    assert arrivals[0] >= 0.1  # nothing before the first-token latency
    assert arrivals[-1] >= 0.1 + 17 * 0.01 - 0.005


async def test_scripted_roles_share_one_script(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text(
        "latency: {first_token_s: 0, per_token_s: 0, chars_per_token: 4}\n"
        "responses:\n"
        "  - {role: joiner, text: 'Finish: 42'}\n"
        "  - {role: planner, text: '1. search(pattern=\"x\")'}\n"
    )
    planner = resolve_model(f"scripted:{path}", role="planner")
    joiner = planner.for_role("joiner")
    assert (await joiner.complete(msgs("j"))).text == "Finish: 42"
    assert (await planner.complete(msgs("p"))).text.startswith("1. search")
    with pytest.raises(ScriptExhausted) as e:
        await joiner.complete(msgs("j again"))
    assert str(path) in str(e.value) and "joiner" in str(e.value)


def test_scripted_from_json_file_and_bad_files(tmp_path):
    good = tmp_path / "s.json"
    good.write_text(json.dumps({"latency": {"first_token_s": 0.5, "per_token_s": 0.02}, "responses": [{"text": "hi"}]}))
    model = ScriptedModel.from_file(good)
    assert model.first_token_s == 0.5 and model.per_token_s == 0.02 and model.chars_per_token == 4
    assert model.name == f"scripted:{good}"
    bad = tmp_path / "bad.yaml"
    bad.write_text("responses:\n  - {match: x}\n")  # no text
    with pytest.raises(ScriptFileError, match="exactly one of"):
        ScriptedModel.from_file(bad)
    with pytest.raises(ScriptFileError, match="cannot read"):
        ScriptedModel.from_file(tmp_path / "missing.yaml")


async def test_scripted_is_safe_under_concurrency():
    model = ScriptedModel([ScriptedResponse(text=f"r{i}") for i in range(200)], first_token_s=0.001)
    results = await asyncio.gather(*(model.complete(msgs("q")) for _ in range(200)))
    assert sorted(c.text for c in results) == sorted(f"r{i}" for i in range(200))

    threaded = ScriptedModel([ScriptedResponse(text=f"t{i}") for i in range(400)])
    seen: list[str] = []

    def worker():
        for _ in range(100):
            seen.append(asyncio.run(threaded.complete(msgs("q"))).text)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == sorted(f"t{i}" for i in range(400))  # each response used exactly once


# --------------------------------------------------------------------------- configuration


def test_model_config_roles_and_missing_model_message():
    cfg = ModelConfig(default="openai/gpt-4o-mini", editor="anthropic/claude-3-5-sonnet-latest")
    assert cfg.for_role("editor") == "anthropic/claude-3-5-sonnet-latest"
    assert cfg.for_role("planner") == "openai/gpt-4o-mini"
    with pytest.raises(ModelNotConfigured) as e:
        ModelConfig().for_role("tester")
    message = str(e.value)
    for way in ("bakeoff.toml", "[tool.bakeoff.model]", "BAKEOFF_MODEL", "BAKEOFF_TESTER_MODEL", "--model", "scripted:PATH"):
        assert way in message
    with pytest.raises(ValueError):
        ModelConfig(defualt="x")  # extra="forbid": a typo is an error


def test_model_settings_from_the_environment(tmp_path):
    from bakeoff.agent.config import load_settings

    env = {
        "BAKEOFF_MODEL": "openai/gpt-4o-mini",
        "BAKEOFF_JUDGE_MODEL": "openai/o3",
        "BAKEOFF_MODEL_EDITOR": "ollama/qwen2.5-coder",
        "BAKEOFF_MODEL_FALLBACKS": "openai/gpt-4o, anthropic/claude-3-5-haiku-latest",
        "BAKEOFF_MODEL_TIMEOUT": "30",
        "HOME": str(tmp_path),
    }
    cfg = load_settings(tmp_path, env)[0].model
    assert cfg.for_role("judge") == "openai/o3" and cfg.for_role("editor") == "ollama/qwen2.5-coder"
    assert cfg.for_role("planner") == "openai/gpt-4o-mini"
    assert cfg.fallbacks == ["openai/gpt-4o", "anthropic/claude-3-5-haiku-latest"] and cfg.timeout == 30


def test_model_params_prices_and_editors_from_the_config_file(tmp_path):
    from bakeoff.agent.config import load_settings
    from bakeoff.agent.models import model_for_role

    (tmp_path / "bakeoff.toml").write_text(
        '[model]\ndefault = "openai/gpt-5"\neditors = ["openai/gpt-5", "anthropic/claude-sonnet-4-5"]\n'
        'fallbacks = ["openai/gpt-4.1"]\nretries = 2\nbackoff_s = 0.5\nbreaker_failures = 5\n'
        '[model.params.default]\napi_base = "http://127.0.0.1:9/v1"\n'
        '[model.params.editor]\nreasoning_effort = "high"\n'
        '[model.params."openai/gpt-4.1"]\napi_base = "http://127.0.0.1:8/v1"\n'
        '[model.prices."openai/gpt-4.1"]\ninput = 2.0\noutput = 8.0\n'
    )
    settings, prov = load_settings(tmp_path, {"HOME": str(tmp_path), "BAKEOFF_MODEL_PARAMS": '{"judge": {"seed": 7}}'})
    cfg = settings.model
    assert cfg.editor_models() == ["openai/gpt-5", "anthropic/claude-sonnet-4-5"] and cfg.for_role("editor") == "openai/gpt-5"
    # the environment's table replaces the file's whole: a dotted model name stays one key
    assert cfg.params == {"judge": {"seed": 7}} and prov["model.params"] == "env BAKEOFF_MODEL_PARAMS"
    settings, prov = load_settings(tmp_path, {"HOME": str(tmp_path)})
    cfg = settings.model
    assert cfg.role_params("editor") == {"api_base": "http://127.0.0.1:9/v1", "reasoning_effort": "high"}
    assert cfg.model_params() == {"openai/gpt-4.1": {"api_base": "http://127.0.0.1:8/v1"}}
    env = {"OPENAI_API_KEY": "k", "ANTHROPIC_API_KEY": "k"}
    editor = model_for_role(cfg, "editor", spec="anthropic/claude-sonnet-4-5", environ=env)
    assert editor.name == "anthropic/claude-sonnet-4-5" and editor.fallbacks == ["openai/gpt-4.1"]
    assert editor.api_base == "http://127.0.0.1:9/v1" and editor.extra == {"reasoning_effort": "high"}
    assert editor.max_retries == 2 and editor.backoff.base_s == 0.5 and editor.breakers.failures == 5
    assert editor.cost("openai/gpt-4.1", Usage(prompt_tokens=1_000_000, completion_tokens=500_000)) == 6.0
    params = editor._params("openai/gpt-4.1", msgs("q"), 0.3, 100)
    assert params["api_base"] == "http://127.0.0.1:8/v1" and params["drop_params"] is True  # the model's own wins


@pytest.mark.parametrize("toml, message", [
    ('[model]\neditor = "a/b"\neditors = ["a/c"]\n', "either editor (one model) or editors"),
    ('[model.params.editr]\nseed = 1\n', "did you mean the role 'editor'"),
    ('[model.params.editor]\ntemperature = 0.2\n', "set temperature, which bakeoff sets on every call"),
    ('[model]\ntemperature = 0.2\n', "'model.temperature' is not a setting"),
    ('[model.prices."openai/x"]\ninput = 1\n', "model.prices.openai/x.output"),
])
def test_model_config_errors_say_what_to_fix(tmp_path, toml, message):
    from bakeoff.agent.config import ConfigError, load_settings

    (tmp_path / "bakeoff.toml").write_text(toml)
    with pytest.raises(ConfigError) as e:
        load_settings(tmp_path, {"HOME": str(tmp_path)})
    assert message in str(e.value) and "bakeoff.toml" in str(e.value)


def test_several_editor_models_in_a_session(tmp_path):
    from bakeoff.agent.config import load_settings
    from bakeoff.agent.events import EventBus
    from bakeoff.agent.session import Session
    from tests.test_session import make_repo, write_script

    a, b = write_script(tmp_path / "a.json"), write_script(tmp_path / "b.json")
    repo = make_repo(tmp_path / "repo", extra_config=f'[model]\ndefault = "scripted:{a}"\neditors = ["scripted:{a}", "scripted:{b}"]\n')
    settings, _ = load_settings(repo, {"HOME": str(tmp_path)})
    session = Session(settings, repo, events=EventBus(), state=tmp_path / "state")
    assert session.model_names["editor"] == f"scripted:{a}" and session.model_names["editor 2"] == f"scripted:{b}"
    assert session._editors[0]._script is session._raw_models["planner"]._script  # one script, shared by its roles
    session.update(model=f"scripted:{b}")
    assert "editor 2" not in session.model_names  # one model for every role now


def test_resolve_model_is_lazy_about_litellm(tmp_path):
    script = tmp_path / "s.yaml"
    script.write_text("responses: [{text: hi}]\n")
    code = (
        "import sys\n"
        "from bakeoff.agent.models import resolve_model\nfrom bakeoff.agent.models.litellm import LitellmModel\nfrom bakeoff.agent.models.scripted import ScriptedModel\n"
        f"assert isinstance(resolve_model('scripted:{script}'), ScriptedModel)\n"
        "m = resolve_model('openai/gpt-4o-mini', fallbacks=['ollama/llama3'])\n"
        "assert isinstance(m, LitellmModel) and m.fallbacks == ['ollama/llama3']\n"
        "assert 'litellm' not in sys.modules, 'litellm imported before any call'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- litellm, offline


class FakeOpenAI:
    """A real HTTP server on 127.0.0.1 speaking the OpenAI chat API. ``plan`` says what each
    request gets: an HTTP status, "malformed", "slow" (sleeps past the timeout), or "ok"."""

    def __init__(self, plan: list) -> None:
        self.plan = list(plan)
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                step = fake.plan.pop(0) if fake.plan else "ok"
                if isinstance(step, int):
                    return self._send(step, json.dumps({"error": {"message": f"status {step}", "type": "test"}}).encode())
                if step == "malformed":
                    return self._send(200, b'{"id": "x", "choices": [{"index": 0, "message": {"role": "assist')
                if step == "slow":
                    time.sleep(1.5)
                n, model = body.get("n", 1), body["model"]
                if body.get("stream"):
                    chunks = [
                        {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                        for piece in ("1. search(", 'pattern="omp")\n', "join()\n")
                    ]
                    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                    chunks.append({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}})
                    sse = "".join(
                        f"data: {json.dumps({'id': 'c', 'object': 'chat.completion.chunk', 'created': 1, 'model': model, **c})}\n\n"
                        for c in chunks
                    ) + "data: [DONE]\n\n"
                    return self._send(200, sse.encode(), "text/event-stream")
                resp = {
                    "id": "c", "object": "chat.completion", "created": 1, "model": model,
                    "choices": [
                        {"index": i, "message": {"role": "assistant", "content": f"answer {i}"}, "finish_reason": "stop"}
                        for i in range(n)
                    ],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 5 * n, "total_tokens": 11 + 5 * n},
                }
                self._send(200, json.dumps(resp).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_api():
    servers: list[FakeOpenAI] = []

    def make(plan: list) -> FakeOpenAI:
        servers.append(FakeOpenAI(plan))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


@pytest.mark.slow
async def test_litellm_retries_429_500_and_malformed_then_succeeds(fake_api):
    api = fake_api([429, 500, "malformed", "ok"])
    model = LitellmModel("openai/gpt-4o-mini", api_base=api.url, api_key="test", backoff_s=0.01)
    c = await model.complete(msgs("hi"), n=2, temperature=0.7, max_tokens=50)
    assert c.texts == ["answer 0", "answer 1"]
    assert c.usage.prompt_tokens == 11 and c.usage.completion_tokens == 10
    assert c.cost_usd is not None and c.cost_usd > 0  # gpt-4o-mini is in litellm's price table
    assert len(api.requests) == 4
    assert api.requests[-1]["n"] == 2 and api.requests[-1]["temperature"] == 0.7 and api.requests[-1]["max_tokens"] == 50
    assert [a.split(": ")[2] for a in model.attempts] == ["RateLimitError", "InternalServerError", "InternalServerError"]


@pytest.mark.slow
async def test_litellm_backoff_grows_and_gives_up(fake_api):
    api = fake_api([503] * 10)
    model = LitellmModel("openai/gpt-4o-mini", api_base=api.url, api_key="test", max_retries=3, backoff_s=0.1)
    started = time.monotonic()
    with pytest.raises(ModelCallFailed) as e:
        await model.complete(msgs("hi"))
    # Waits of ~0.1, 0.2 and 0.4 s (each at least half of that with jitter): >= 0.35 s in all.
    assert time.monotonic() - started >= 0.35
    assert len(api.requests) == 4 and "ServiceUnavailableError" in str(e.value)


@pytest.mark.slow
async def test_litellm_timeout_is_retried(fake_api):
    api = fake_api(["slow", "ok"])
    model = LitellmModel("openai/gpt-4o-mini", api_base=api.url, api_key="test", timeout=0.5, backoff_s=0.01)
    c = await model.complete(msgs("hi"))
    assert c.text == "answer 0" and len(api.requests) == 2 and "Timeout" in model.attempts[0]


@pytest.mark.slow
async def test_litellm_streams_sse_with_usage_and_unknown_price(fake_api):
    api = fake_api([503, "ok"])
    model = LitellmModel("openai/no-such-model-anywhere", api_base=api.url, api_key="test", backoff_s=0.01)
    items = [item async for item in model.stream(msgs("plan"))]
    deltas = [i for i in items if isinstance(i, str)]
    final = items[-1]
    assert deltas == ["1. search(", 'pattern="omp")\n', "join()\n"]
    assert isinstance(final, Completion) and final.text == "".join(deltas)
    assert final.usage.prompt_tokens == 7 and final.usage.completion_tokens == 9
    assert final.cost_usd is None  # unknown price: tokens only, no crash
    assert api.requests[-1]["stream"] is True and api.requests[-1]["stream_options"] == {"include_usage": True}


@pytest.mark.slow
async def test_litellm_falls_back_in_order(fake_api):
    api = fake_api([401, 404])  # first model: bad key; second: unknown model; third answers
    model = LitellmModel(
        "openai/first", fallbacks=["openai/second", "openai/third"], api_base=api.url, api_key="test", backoff_s=0.01
    )
    c = await model.complete(msgs("hi"))
    assert c.model == "openai/third" and c.text == "answer 0"
    assert [r["model"] for r in api.requests] == ["first", "second", "third"]  # no retries of 4xx


@pytest.mark.slow
async def test_litellm_all_failing_names_every_model(fake_api):
    api = fake_api([400, 400])
    model = LitellmModel("openai/a", fallbacks=["openai/b"], api_base=api.url, api_key="test", backoff_s=0.01)
    with pytest.raises(ModelCallFailed) as e:
        await model.complete(msgs("hi"))
    assert "openai/a" in str(e.value) and "openai/b" in str(e.value) and "BadRequestError" in str(e.value)


@pytest.mark.slow
async def test_a_real_network_call_fails_the_test_at_once():
    from tests.conftest import RealNetworkCallError

    model = LitellmModel("openai/gpt-4o-mini", fallbacks=["anthropic/claude-3-5-haiku-latest"], api_key="sk-test")
    started = time.monotonic()
    with pytest.raises(RealNetworkCallError):
        await model.complete(msgs("hi"))
    with pytest.raises(RealNetworkCallError):
        async for _ in model.stream(msgs("hi")):
            pass
    assert model.attempts == []  # not retried, not hidden behind a fallback
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("status, text, what, retryable", [
    (429, "rate limited", "model busy (429)", True),
    (500, "Unterminated string starting at: line 1", "malformed answer", True),
    (503, "overloaded", "server error (503)", True),
    (400, "Expecting a list of messages", "request refused (400)", False),
    (401, "invalid api key", "API key refused (401)", False),
    (500, "Missing credentials. Please pass an `api_key`", "no API key", False),
    (404, "model not found", "request refused (404)", False),
])
def test_failures_are_read_for_people_and_retried_only_when_it_can_help(status, text, what, retryable):
    from bakeoff.agent.models.retry import Failure

    class ApiError(Exception):
        status_code = status

    failure = Failure.of(ApiError(text))
    assert (failure.what, failure.retryable) == (what, retryable)


def test_retry_after_and_the_circuit_breaker(monkeypatch):
    from bakeoff.agent.models import retry

    class Limited(Exception):
        status_code = 429

        def __init__(self, headers):
            super().__init__("rate limited")
            self.response = type("R", (), {"headers": headers})()

    assert retry.retry_after(Limited({"retry-after": "3"})) == 3.0
    assert retry.retry_after(Limited({"retry-after-ms": "250"})) == 0.25
    assert retry.retry_after(Limited({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})) == 0.0  # a date long past
    assert retry.retry_after(Limited({})) is None
    backoff = retry.Backoff(base_s=1.0, max_s=30.0)
    assert backoff.delay(0, retry.Failure.of(Limited({"retry-after": "3"}))) == 3.0
    assert 2.0 <= backoff.delay(2, retry.Failure("server error (500)", True)) <= 4.0  # 4 s with equal jitter
    breakers = retry.Breakers(failures=2, cooldown_s=10)
    clock = [100.0]
    monkeypatch.setattr(retry.time, "monotonic", lambda: clock[0])
    assert not breakers.failed("m") and breakers.failed("m") and breakers.is_open("m")
    clock[0] += 10.5  # the cool-down is over: the next call tries the model again
    assert not breakers.is_open("m")
    assert breakers.failed("m") and breakers.is_open("m")  # and one more failure opens it again
    breakers.succeeded("m")
    assert not breakers.is_open("m")
