"""The ``fan_out`` tool: what the planner calls to develop candidates for a goal.

The session makes one per run, with the run's services and a place to put each result:
every fan-out of a run reaches the run's report as typed data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from bakeoff.agent.fanout.pipeline import fan_out
from bakeoff.agent.fanout.settings import FanOutServices
from bakeoff.agent.seams import ToolContext
from bakeoff.agent.types import FanOutResult


class FanOutArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    goal: str = Field(description="what the candidates must achieve, e.g. 'make f in a.c parallel and faster'")
    files: list[str] = Field(description="files the candidates may edit, relative to the repository root")
    n: int = Field(4, ge=1, le=64, description="candidates developed in parallel")
    entry: str | None = Field(None, description="the function the goal is about (guessed from the goal when omitted)")
    language: str | None = Field(None, description="c, cpp, cuda or python (from the file names when omitted)")
    keeps_behaviour: bool = Field(True, description=(
        "true when the code must compute the same results as now (optimize, parallelize, refactor, port): the "
        "original is the reference every candidate must match. false when the goal changes what it computes (a "
        "bug fix, a new feature): candidates are then voted on by agreement, and a judge model settles close calls"))


class FanOut:
    """The ``fan_out`` tool: n candidate edits at once, tested, voted, and the fastest correct one chosen."""

    name: ClassVar[str] = "fan_out"
    description: ClassVar[str] = (
        "Develop n candidate edits for a goal in parallel, each in its own sandbox (edit, build, test, profile, "
        "repair), run every candidate on every test, and return the fastest one the vote says is correct. "
        "Every edit of the repository must go through fan_out: it is what verifies a change. The original code is "
        "the reference the candidates must match; pass keeps_behaviour=false when the goal changes what the code "
        "computes (a bug fix, a new feature): the candidates are then voted on by agreement, and a judge settles "
        "close calls."
    )
    Args: ClassVar[type[BaseModel]] = FanOutArgs
    Result: ClassVar[type[BaseModel]] = FanOutResult
    # No limit of its own: a fan-out is bounded by the run's budget and time limit.
    time_limit_s: ClassVar[float | None] = None

    def __init__(self, services: FanOutServices, on_result: Callable[[FanOutResult], None] | None = None) -> None:
        self.services = services
        self.on_result = on_result

    async def __call__(self, args: FanOutArgs, ctx: ToolContext) -> FanOutResult:
        result = await fan_out(args.goal, args.files, args.n, services=self.services, entry=args.entry,
                               language=args.language, keeps_behaviour=args.keeps_behaviour)
        if self.on_result is not None:
            self.on_result(result)
        return result
