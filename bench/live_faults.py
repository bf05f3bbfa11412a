"""Live-model faults: bakeoff's model layer over litellm against a loopback OpenAI-compatible
server that injects the faults real APIs show, with a fallback server beside it.

Each fault runs the real path a run takes: ``BudgetedModel`` (budget, ledger, asking again)
around ``LitellmModel`` (retries, ``Retry-After``, circuit breaker, fallbacks), litellm
speaking HTTP to ``tests/fault_server.py`` on 127.0.0.1. Short timeouts and backoffs keep it
quick (a fault that waits for a timeout costs about one timeout). For each fault it prints
the outcome, what was expected, the wall time and the requests each server got.

    python3 bench/live_faults.py [--json PATH] [--only 429,stall]

``--json`` writes ``{"faults": [{fault, outcome, expected, ok, wall_s, requests, detail}],
"all_ok": bool}``. The exit status is 0 when every fault had its expected outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bakeoff.agent.events import Event, EventBus  # noqa: E402
from bakeoff.agent.models.budget import Budget, BudgetedModel  # noqa: E402
from bakeoff.agent.models.ledger import Ledger  # noqa: E402
from bakeoff.agent.seams import Completion, Message  # noqa: E402
from tests.fault_server import FaultServer, plain_answer  # noqa: E402

ANSWER = "1. read_file(path=\"kernel.c\")\n2. fan_out(goal=\"make it faster\", files=[\"kernel.c\"], n=2)\njoin()\n"
PROMPT = [Message(role="user", content="plan the task")]


@dataclass
class Fault:
    """One scenario: faults queued on the servers, the call made, the outcome expected."""

    name: str
    primary: list[str]  # faults queued on the primary server, in order
    call: str = "complete"  # complete | stream
    expect: str = "primary"  # primary | fallback | failed (a clear ModelCallFailed)
    fallback: list[str] = field(default_factory=list)
    calls: int = 1  # calls made one after the other
    retry_after: float | None = 0.2
    max_tokens: int | None = None
    why: str = ""


FAULTS = [
    Fault("429", ["429"], why="rate limited once: waits Retry-After (0.2 s), then the primary answers"),
    Fault("429-long-retry-after", ["429"], retry_after=120, expect="fallback",
          why="asked to wait longer than max_backoff_s: straight to the fallback"),
    Fault("500", ["500"], why="server error once: backoff, then the primary answers"),
    Fault("malformed-json", ["malformed-json"], why="a body that is not JSON: retried"),
    Fault("malformed-sse", ["malformed-sse"], call="stream",
          why="a broken SSE event mid-stream: continued from the text already streamed"),
    Fault("hang", ["hang"], why="no answer within the timeout: a waiting notice, then a retry"),
    Fault("empty", ["empty"], why="an empty answer is not an answer: retried"),
    Fault("length", ["length"], max_tokens=64, why="cut off at max_tokens: asked again with twice the limit"),
    Fault("length-stream", ["length"], call="stream", max_tokens=64,
          why="a stream cut off at max_tokens: continued with a larger limit"),
    Fault("stall", ["stall"], call="stream", why="a stream that stops mid-way: continued after the chunk timeout"),
    Fault("401", ["401"], expect="fallback", why="a refused API key: no retry, the fallback answers"),
    Fault("400", ["400"], expect="fallback", why="a refused request: no retry, the fallback answers"),
    Fault("break-then-fallback", ["break"] * 3, call="stream", expect="fallback",
          why="a stream that keeps breaking: continued on the primary until its circuit opens, then on the fallback"),
    Fault("circuit-breaker", ["500"] * 10, calls=2, expect="fallback",
          why="repeated failures open the primary's circuit: the second call goes straight to the fallback"),
    Fault("all-down", ["500"] * 10, fallback=["500"] * 10, expect="failed",
          why="primary and fallback both fail: one clear error naming both"),
]


@dataclass
class Outcome:
    fault: str
    outcome: str  # primary | fallback | failed | wrong-text | error
    expected: str
    ok: bool
    wall_s: float
    requests: dict[str, int]
    detail: str
    events: list[Event] = field(default_factory=list, repr=False)
    ledger: Ledger | None = field(default=None, repr=False)
    bodies: dict[str, list[dict]] = field(default_factory=dict, repr=False)

    def row(self) -> dict:
        return {"fault": self.fault, "outcome": self.outcome, "expected": self.expected, "ok": self.ok,
                "wall_s": round(self.wall_s, 3), "requests": self.requests, "detail": self.detail}


def model_for(primary: FaultServer, fallback: FaultServer, bus: EventBus, *, timeout: float = 1.0):
    """The model a run would build from ``[model] default = "openai/primary", fallbacks =
    ["openai/fallback"]`` with ``[model.params]`` pointing each at its server."""
    from bakeoff.agent.models.litellm import LitellmModel

    return LitellmModel(
        "openai/primary", fallbacks=["openai/fallback"], timeout=timeout, max_retries=2, backoff_s=0.05,
        max_backoff_s=2.0, params={"openai/primary": {"api_base": primary.url}, "openai/fallback": {"api_base": fallback.url}},
        events=bus, wait_notice_s=0.4, api_key="test",
    )


async def call(model: BudgetedModel, kind: str, max_tokens: int | None) -> Completion:
    if kind == "complete":
        return await model.complete(PROMPT, max_tokens=max_tokens)
    text, final = "", None
    async for item in model.stream(PROMPT, max_tokens=max_tokens):
        if isinstance(item, Completion):
            final = item
        else:
            text += item
    assert final is not None and final.text == text, (text, final)
    return final


async def run_fault(f: Fault, answer: Callable[[dict], str] | None = None) -> Outcome:
    """One scenario on fresh servers; what happened, and whether it is what ``f`` expects."""
    answer = answer or plain_answer(ANSWER)
    bus, ledger, events = EventBus(), Ledger(), []
    bus.subscribe(events.append)
    with FaultServer(answer, retry_after=f.retry_after, hang_s=5) as primary, \
            FaultServer(answer, retry_after=f.retry_after, hang_s=5) as fallback:
        for fault in f.primary:
            primary.inject(fault)
        for fault in f.fallback:
            fallback.inject(fault)
        model = BudgetedModel(model_for(primary, fallback, bus), Budget(max_tokens=200_000), role="editor",
                              events=bus, ledger=ledger)
        started = time.monotonic()
        outcome, detail = "error", ""
        try:
            for _ in range(f.calls):
                done = await call(model, f.call, f.max_tokens)
            outcome = "wrong-text" if done.text != ANSWER else done.model.split("/")[-1]
            detail = f"answered by {done.model}"
        except Exception as exc:  # noqa: BLE001 (the outcome is what the benchmark reports)
            from bakeoff.agent.models.litellm import ModelCallFailed

            outcome = "failed" if isinstance(exc, ModelCallFailed) else "error"
            detail = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        wall = time.monotonic() - started
        requests = {"primary": primary.count(), "fallback": fallback.count()}
        bodies = {"primary": [r.body for r in primary.requests], "fallback": [r.body for r in fallback.requests]}
    return Outcome(f.name, outcome, f.expect, outcome == f.expect, wall, requests, detail, events, ledger, bodies)


async def run_all(names: set[str] | None = None) -> list[Outcome]:
    return [await run_fault(f) for f in FAULTS if names is None or f.name in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write {faults: [...], all_ok} here")
    parser.add_argument("--only", help="comma-separated fault names")
    args = parser.parse_args(argv)
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    names = set(args.only.split(",")) if args.only else None
    asyncio.run(run_fault(Fault("warm-up", [])))  # litellm's import and first call are not a fault's time
    outcomes = asyncio.run(run_all(names))
    print(f"{'fault':<22} {'outcome':<9} {'expected':<9} {'ok':<3} {'wall s':>7} {'primary':>7} {'fallback':>8}  detail")
    for o in outcomes:
        print(f"{o.fault:<22} {o.outcome:<9} {o.expected:<9} {'yes' if o.ok else 'NO':<3} {o.wall_s:>7.2f} "
              f"{o.requests['primary']:>7} {o.requests['fallback']:>8}  {o.detail[:70]}")
    all_ok = all(o.ok for o in outcomes)
    print(f"all ok: {all_ok}")
    if args.json:
        args.json.write_text(json.dumps({"faults": [o.row() for o in outcomes], "all_ok": all_ok}, indent=2) + "\n")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
