"""What counts as a model's answer, and the ways a call ends without one.

An answer cut off at its token limit (``finish_reason == "length"``) or an empty one is never
accepted as complete. The model that sees one raises (``AnswerCutOff``; an empty answer is
retried like a server error), as it does for a stream that breaks after part of its text
(``StreamBroke``); the budget's wrapper, which can pay for another call, asks again with a
larger limit or continues the stream where it stopped (``continue_after``).
"""

from __future__ import annotations

from collections.abc import Sequence

from bakeoff.agent.seams import Completion, Message

# The message that asks a model to go on with an answer that was cut off or broke off.
CONTINUE = (
    "Your answer above was cut off at this point. Continue it exactly where it stopped: do not "
    "repeat anything already written and do not add any preamble."
)


class ModelCallFailed(Exception):
    """Every attempt on the model and its fallbacks failed; the message lists what was tried."""


class Unfinished(ModelCallFailed):
    """A call that ended with part of an answer. ``completion`` holds the part (for a stream,
    the text already yielded) with that call's usage and cost; ``limit`` is the call's
    ``max_tokens`` (None: the model's own limit)."""

    def __init__(self, message: str, completion: Completion, limit: int | None) -> None:
        super().__init__(message)
        self.completion = completion
        self.limit = limit


class AnswerCutOff(Unfinished):
    """The model stopped at its token limit (``finish_reason == "length"``)."""

    def __init__(self, completion: Completion, limit: int | None) -> None:
        at = f"its limit of {limit} tokens" if limit is not None else "the model's own token limit"
        super().__init__(f"the answer of {completion.model} was cut off at {at} (finish_reason length)", completion, limit)


class StreamBroke(Unfinished):
    """A stream broke (an error, a stall) after some of its text was yielded: a retry would
    repeat that text, so the caller continues from it instead (``continue_after``)."""


class AnswerIncomplete(ModelCallFailed):
    """An answer stayed cut off however it was asked again: the message says what to change."""


def continue_after(messages: Sequence[Message], text: str) -> list[Message]:
    """The conversation that asks the model to go on from ``text``, the part already written."""
    return [*messages, Message(role="assistant", content=text), Message(role="user", content=CONTINUE)]
