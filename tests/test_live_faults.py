"""bakeoff over litellm against a loopback OpenAI-compatible server that injects the faults
real APIs show (``tests/fault_server.py``), with a fallback server beside it.

The scenarios are ``bench/live_faults.py``'s (the same faults the benchmark reports); the
tests assert what each must do: retries that honour ``Retry-After`` and show as events, a
circuit breaker that sends calls to the fallback, answers cut off or empty never accepted,
broken streams continued and their estimated charge on the run's account, reasoning models
sent only what they support, litellm offline and quiet, a missing key refused at once, a
dollar budget that holds for every model, and whole runs through the CLI that survive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bakeoff.agent.events import EventBus
from bakeoff.agent.models.answers import CONTINUE, AnswerIncomplete, ModelCallFailed
from bakeoff.agent.models.budget import Budget, BudgetedModel
from bakeoff.agent.models.ledger import Ledger
from bakeoff.agent.seams import Completion, Message
from tests.fault_server import FaultServer, plain_answer
from tests.test_session import GOOD_EDIT, bakeoff, cli_env, make_repo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import live_faults  # noqa: E402

FAULTS = {f.name: f for f in live_faults.FAULTS}


def statuses(outcome, what: str) -> list[dict]:
    return [e.data for e in outcome.events if e.kind == "model.status" and e.data["what"] == what]


def _429(o) -> None:
    (retry,) = statuses(o, "retry")
    assert retry["delay_s"] == 0.2 and retry["status"] == 429  # the server's Retry-After, not a backoff
    assert retry["message"] == "openai/primary: model busy (429), retry 1/2 in 0.2 s"


def _429_long(o) -> None:
    assert not statuses(o, "retry") and statuses(o, "fallback")  # no 120 s wait: the fallback answers


def _retried(reason: str):
    def check(o) -> None:
        (retry,) = statuses(o, "retry")
        assert retry["reason"] == reason and retry["attempt"] == 1

    return check


def _hang(o) -> None:
    _retried("no answer in time (timeout)")(o)
    assert statuses(o, "waiting") and all(w["elapsed_s"] > 0 for w in statuses(o, "waiting"))


def _cut_off(o) -> None:
    assert [b["max_tokens"] for b in o.bodies["primary"]] == [64, 128]  # asked again with twice the limit
    assert statuses(o, "cut-off")[0]["limit"] == 64
    assert len(o.ledger.charges) == 2 and o.ledger.estimated_tokens == 0  # the cut-off answer is paid too


def _continued(o) -> None:
    second = o.bodies["primary"][1]["messages"]
    assert second[-1]["content"] == CONTINUE and second[-2]["role"] == "assistant"
    assert live_faults.ANSWER.startswith(second[-2]["content"])  # continued from what was streamed


def _broke(o) -> None:
    _continued(o)
    assert statuses(o, "stream-broke") and o.ledger.estimated_tokens > 0  # the broken part: an estimate


def _no_retry(o) -> None:
    assert not statuses(o, "retry") and statuses(o, "fallback")


def _break_then_fallback(o) -> None:
    assert len(statuses(o, "stream-broke")) == 3 and statuses(o, "circuit-open")
    assert o.bodies["fallback"][0]["messages"][-1]["content"] == CONTINUE


def _circuit(o) -> None:
    assert len(statuses(o, "circuit-open")) == 1 and o.requests == {"primary": 3, "fallback": 2}


def _all_down(o) -> None:
    assert "openai/primary: server error (500)" in o.detail and "openai/fallback: server error (500)" in o.detail
    assert "(3 attempts)" in o.detail


CHECKS = {
    "429": _429, "429-long-retry-after": _429_long, "500": _retried("server error (500)"),
    "malformed-json": _retried("malformed answer"), "malformed-sse": _broke, "hang": _hang,
    "empty": _retried("empty answer"), "length": _cut_off, "length-stream": _continued, "stall": _broke,
    "401": _no_retry, "400": _no_retry, "break-then-fallback": _break_then_fallback, "circuit-breaker": _circuit,
    "all-down": _all_down,
}


@pytest.mark.parametrize("name", list(FAULTS))
async def test_fault(name):
    outcome = await live_faults.run_fault(FAULTS[name])
    assert outcome.ok, (outcome.outcome, outcome.detail)
    CHECKS[name](outcome)


def test_every_fault_is_checked():
    assert set(CHECKS) == set(FAULTS)
    named = {"429", "500", "malformed-json", "malformed-sse", "hang", "empty", "length", "stall", "401", "400"}
    assert named <= {fault for f in live_faults.FAULTS for fault in f.primary} | {"length"}


# --------------------------------------------------------------------------- answers and budgets


def _model(server: FaultServer, bus: EventBus, ledger: Ledger, budget: Budget, name: str = "openai/primary"):
    from bakeoff.agent.models.litellm import LitellmModel

    raw = LitellmModel(name, timeout=1.0, max_retries=1, backoff_s=0.02, api_base=server.url, api_key="test",
                       events=bus)
    return BudgetedModel(raw, budget, role="editor", events=bus, ledger=ledger)


async def test_an_answer_always_cut_off_fails_clearly():
    with FaultServer(plain_answer("x" * 400)) as server:
        server.inject("length", times=5)
        model = _model(server, EventBus(), Ledger(), Budget())
        with pytest.raises(AnswerIncomplete, match=r"cut off at 256 tokens after 3 tries"):
            await model.complete([Message(role="user", content="q")], max_tokens=64)
        assert [r.body["max_tokens"] for r in server.requests] == [64, 128, 256]


async def test_a_cut_off_answer_is_not_asked_again_beyond_the_budget():
    budget = Budget(max_tokens=150)
    with FaultServer(plain_answer("y" * 400)) as server:
        server.inject("length", times=5)
        model = _model(server, EventBus(), Ledger(), budget)
        with pytest.raises(AnswerIncomplete, match="the budget leaves room for no longer one"):
            await model.complete([Message(role="user", content="q")], max_tokens=64)
    assert budget.spent_tokens <= 150 and budget.remaining.tokens == 150 - budget.spent_tokens


async def test_a_stream_that_keeps_breaking_is_charged_and_names_what_was_tried():
    bus, ledger, budget = EventBus(), Ledger(), Budget(max_tokens=100_000)
    with FaultServer(plain_answer("z" * 200)) as server:
        server.inject("break", times=10)
        model = _model(server, bus, ledger, budget)
        with pytest.raises(ModelCallFailed) as e:
            async for _ in model.stream([Message(role="user", content="q")]):
                pass
    message = str(e.value)
    assert "did not finish after 5 tries" in message and message.count("stream broke after") == 5
    assert ledger.estimated_tokens == ledger.tokens > 0 and all(c.estimated for c in ledger.charges)
    assert budget.spent_tokens == ledger.tokens and budget.remaining.tokens == 100_000 - budget.spent_tokens


async def test_reasoning_models_get_only_what_they_support():
    from bakeoff.agent.models.litellm import LitellmModel

    with FaultServer() as server:
        for name in ("openai/o3-mini", "openai/gpt-5-mini"):
            model = LitellmModel(name, api_base=server.url, api_key="test", reasoning_effort="high")
            assert (await model.complete([Message(role="user", content="q")], temperature=0.7, max_tokens=99)).text == "ok"
            body = server.requests[-1].body
            assert "temperature" not in body and body["reasoning_effort"] == "high"
            assert body["max_completion_tokens"] == 99
        plain = LitellmModel("openai/gpt-4o-mini", api_base=server.url, api_key="test", reasoning_effort="high")
        await plain.complete([Message(role="user", content="q")], temperature=0.7)
        body = server.requests[-1].body
        assert body["temperature"] == 0.7 and "reasoning_effort" not in body  # dropped where unsupported


# --------------------------------------------------------------------------- offline, quiet, keys


QUIET = """
import asyncio, socket, sys
sys.path.insert(0, {root!r})
outbound = []
real = socket.socket.connect
def connect(self, address):
    if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "localhost", "::1"):
        outbound.append(address)
        raise OSError("no network here")
    return real(self, address)
socket.socket.connect = connect
from tests.fault_server import FaultServer
from bakeoff.agent.models.providers import load_litellm
from bakeoff.agent.models.litellm import LitellmModel
from bakeoff.agent.seams import Message
litellm = load_litellm()
assert len(litellm.model_cost) > 1000, "the price table comes with the package"
with FaultServer() as server:
    server.inject("500")
    model = LitellmModel("openai/gpt-4o-mini", api_base=server.url, api_key="t", backoff_s=0.01, reasoning_effort="low")
    print(asyncio.run(model.complete([Message(role="user", content="q")])).text)
print(LitellmModel("openai/nobody-prices-me", api_key="t").unpriced())
print("outbound", outbound)
"""


def test_litellm_is_offline_and_quiet():
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-c", QUIET.format(root=str(ROOT))], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # No price-table fetch, nothing else left the machine; the unknown price is simply unknown.
    assert proc.stdout.splitlines() == ["ok", "['openai/nobody-prices-me']", "outbound []"]
    assert proc.stderr == ""  # litellm's warnings (a dropped parameter, an unknown price) stay out of ours


FAST_KEY_CHECK = """
import sys
from pathlib import Path
from bakeoff.agent.config import load_settings
from bakeoff.agent.events import EventBus
from bakeoff.agent.models import ModelSetupError
from bakeoff.agent.session import Session
settings, _ = load_settings(Path(sys.argv[1]), {"HOME": sys.argv[1]}, {"model.default": "openai/gpt-4o"})
try:
    Session(settings, Path(sys.argv[1]), events=EventBus())
except ModelSetupError as exc:
    print(exc)
assert "litellm" not in sys.modules, "the key check must not wait for litellm's import"
"""


def test_a_missing_api_key_is_refused_at_once_in_one_line(tmp_path):
    repo = make_repo(tmp_path / "repo")
    env = cli_env(tmp_path)
    env.pop("OPENAI_API_KEY", None)
    proc = subprocess.run([sys.executable, "-c", FAST_KEY_CHECK, str(repo)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "no API key for openai/gpt-4o: set OPENAI_API_KEY"
    run = bakeoff("run", "--repo", str(repo), "--model", "anthropic/claude-sonnet-4-5", "fix it", env=env)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == ["bakeoff: no API key for anthropic/claude-sonnet-4-5: set ANTHROPIC_API_KEY"]


def test_the_key_table_agrees_with_litellm(monkeypatch):
    from bakeoff.agent.models.providers import KEY_VARIABLES, load_litellm

    for names in KEY_VARIABLES.values():
        for name in names:
            monkeypatch.delenv(name, raising=False)
    litellm = load_litellm()
    for provider, names in KEY_VARIABLES.items():
        asked = litellm.validate_environment(model=f"{provider}/some-model")["missing_keys"]
        assert set(names) == {k for k in asked if k.endswith("_API_KEY")}, provider


@pytest.mark.slow
def test_an_unpriced_model_needs_a_token_budget_or_a_price(tmp_path):
    repo = make_repo(tmp_path / "repo")
    env = cli_env(tmp_path, OPENAI_API_KEY="test")
    run = bakeoff("run", "--repo", str(repo), "--model", "openai/my-local-model", "fix it", env=env, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("bakeoff: openai/my-local-model has no price in litellm's table, so the dollar budget ($2)")
    assert "budget_tokens" in line and '[model.prices] "openai/my-local-model"' in line


# --------------------------------------------------------------------------- whole runs


def _script(path: Path) -> Path:
    plan = ('Thought: one candidate per editor model; the vote picks.\n'
            '1. fan_out(goal="make total in calc.py faster", files=["calc.py"], n=2, entry="total")\njoin()\n')
    responses = [
        {"match": "You are the joiner", "text": "Finish: total now uses the builtin sum.", "repeat": True},
        {"match": "You are the planner", "text": plan, "repeat": True},
        {"match": "You write tests", "text": "```python\nassert total([1, 2, 3]) == 6\n```", "repeat": True},
        {"match": "You propose edge-case inputs", "text": "```python\ntotal([])\ntotal([-1, 1])\n```", "repeat": True},
        {"match": "You are editing a code base", "text": GOOD_EDIT, "repeat": True},
    ]
    path.write_text(json.dumps({"responses": responses}))
    return path


def _config(primary: FaultServer, fallback: FaultServer, budget: str) -> str:
    models = ("planner", "editor-a", "editor-b", "tester", "judge", "fallback")
    prices = "".join(f'"openai/{m}" = {{input = 1.0, output = 2.0}}\n' for m in models)
    return (
        f"{budget}\n[model]\nplanner = \"openai/planner\"\neditors = [\"openai/editor-a\", \"openai/editor-b\"]\n"
        "tester = \"openai/tester\"\njudge = \"openai/judge\"\nfallbacks = [\"openai/fallback\"]\n"
        "timeout = 5\nretries = 2\nbackoff_s = 0.05\n"
        f"[model.params.default]\napi_base = \"{primary.url}\"\n"
        f"[model.params.\"openai/fallback\"]\napi_base = \"{fallback.url}\"\n"
        f"[model.prices]\n{prices}"
    )


@pytest.mark.slow
def test_a_run_over_litellm_survives_a_broken_plan_stream_and_a_rate_limit(tmp_path):
    from tests.fault_server import scripted_answer

    answer = scripted_answer(str(_script(tmp_path / "script.json")))
    with FaultServer(answer, retry_after=0.1, chunk_chars=12) as primary, FaultServer(answer) as fallback:
        primary.inject("break", model="planner")
        primary.inject("429", model="editor-a")
        repo = make_repo(tmp_path / "repo", extra_config=_config(primary, fallback, ""))
        run = bakeoff("run", "--repo", str(repo), "--json", "make total faster",
                      env=cli_env(tmp_path, OPENAI_API_KEY="test"), timeout=300)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["status"] == "success" and "return sum(xs)" in doc["patch"]
    assert sorted(c["model"] for c in doc["report"]) == ["openai/editor-a", "openai/editor-b"]
    assert doc["cost"]["usd"] > 0 and 0 < doc["cost"]["estimated_tokens"] < doc["cost"]["tokens"]
    assert "model openai/editor-a: model busy (429), retry 1/2 in 0.1 s" in run.stderr
    assert "model openai/planner: the stream broke after" in run.stderr
    assert fallback.count() == 0  # one break and one 429 are retried on the model itself
    assert "Traceback" not in run.stderr and "LiteLLM" not in run.stderr


def test_fault_server_counts_and_scripts(tmp_path):
    from tests.fault_server import scripted_answer

    answer = scripted_answer(str(_script(tmp_path / "s.json")))
    body = {"model": "planner", "messages": [{"role": "user", "content": "You are the planner of bakeoff"}]}
    assert answer(body).startswith("Thought: one candidate")
    with FaultServer() as server:
        server.inject("401", model="a")
        assert server.count() == 0


async def test_an_unpriced_model_under_a_token_budget_is_noted_once(tmp_path):
    from bakeoff.agent.config import load_settings
    from bakeoff.agent.session import Session

    answer = plain_answer("Thought: nothing to change.\njoin()\nFinish: nothing to do.")
    with FaultServer(answer) as server:
        repo = make_repo(tmp_path / "repo", extra_config=(
            f"budget_tokens = 50000\n[model]\ndefault = \"openai/unpriced-model\"\n"
            f"[model.params.default]\napi_base = \"{server.url}\"\napi_key = \"test\"\n"))
        settings, _ = load_settings(repo, {"HOME": str(tmp_path)}, {})
        bus = EventBus()
        seen = []
        bus.subscribe(seen.append)
        session = Session(settings, repo, events=bus, state=tmp_path / "state")
        try:
            for _ in range(2):
                report = await session.run("what does calc.py do?")
                assert report.error is None, report.error
        finally:
            await session.close()
    notes = [e.data for e in seen if e.kind == "model.status" and e.data["what"] == "unpriced"]
    assert len(notes) == 1 and notes[0]["models"] == ["openai/unpriced-model"]
    assert session.budget.spent_tokens > 0 and session.budget.spent_usd == 0
