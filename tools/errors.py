"""Errors a tool raises when the caller (usually the model) can fix the call.

A failing command is not an error: it is a result with ``ok=False``. A ``ToolError`` means
the arguments were wrong; its message says how to call the tool correctly, and the
scheduler hands it back to the model as it is.
"""

from __future__ import annotations


class ToolError(Exception):
    """A bad argument the model can fix; the message says how."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message
