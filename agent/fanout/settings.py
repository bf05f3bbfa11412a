"""How a fan-out runs, and the services it runs with."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from bakeoff.agent.config import Settings
from bakeoff.agent.events import EventBus
from bakeoff.agent.fanout.strategies import Strategy
from bakeoff.agent.models.budget import Budget
from bakeoff.agent.seams import Model, Workspace
from bakeoff.sandboxes.pool import SandboxPool


class FanOutSettings(BaseModel):
    """How a fan-out runs. Built from the session's settings; the rest are defaults."""

    model_config = ConfigDict(extra="forbid")

    max_n: int = Field(16, ge=1)  # the user's cap on candidates, whatever n the plan asks for
    rounds: int = Field(2, ge=0)  # repair rounds after the first answer
    first_wave: float = Field(0.5, gt=0.0, le=1.0)  # share of n started before the early-stop check
    temperature_low: float = 0.2
    temperature_high: float = 1.0
    strategies: list[Strategy] = Field(default_factory=list)  # tried before the built-in hints
    build: str | None = None  # build command; detected when None
    test: str | None = None  # test command; detected when None
    profile: str | None = None  # benchmark command; detected when None
    profile_repeats: int = Field(3, ge=1)  # interleaved pairs per candidate in its trajectory
    timing_repeats: int = Field(5, ge=1)  # interleaved pairs per winner at selection
    threads: int | None = Field(None, ge=1)  # the target parallelism; None: the CPUs the sandbox may use
    command_timeout_s: float = 300.0
    test_samples: int = Field(1, ge=0)  # tester model samples (0: no generated tests)
    # The differential harness (Python and C/C++) runs candidates' code in the base sandbox.
    # False runs it on this machine instead (own process group, timeouts and rlimits, no
    # isolation): only for trusted candidates, e.g. benchmarks on public data.
    harness_in_sandbox: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> FanOutSettings:
        """The session's settings, as far as they concern a fan-out."""
        return cls(max_n=settings.max_n, rounds=settings.rounds, build=settings.build, test=settings.test,
                   threads=settings.threads, command_timeout_s=settings.command_timeout)


@dataclass
class FanOutServices:
    """What a fan-out works with: the models by role, sandboxes, the repository at base.

    ``editors`` write the candidates, in turn; ``tester`` writes tests and edge inputs
    (None: no generated tests); ``judge`` settles close calls (None: the majority does).
    """

    editors: list[Model]
    pool: SandboxPool
    workspace: Workspace
    tester: Model | None = None
    judge: Model | None = None
    settings: FanOutSettings = field(default_factory=FanOutSettings)
    events: EventBus = field(default_factory=EventBus)
    budget: Budget | None = None
