"""Capped capture of a command's output: the head and the tail are kept, the middle counted.

Both sandbox backends use it, so a command printing gigabytes (``yes``) costs the
orchestrator a bounded amount of memory (RELIABILITY 7).
"""

from __future__ import annotations

import asyncio
import re


class OutputCapture:
    """Keeps the first and last ``limit // 2`` bytes of a stream, counting what it drops."""

    def __init__(self, limit: int) -> None:
        self.half = max(1, limit // 2)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > 2 * self.half:  # trim in batches, not on every frame
                del self.tail[: len(self.tail) - self.half]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.head) + min(len(self.tail), self.half)

    def take_trailer(self, token: str) -> list[int] | None:
        """Remove the wrapper's ``\\n<token>:<n>[:<n>...]\\n`` from the end; return the numbers."""
        n = 96
        last = bytes(self.tail[-n:])
        if len(last) < n:
            last = bytes(self.head[-(n - len(last)):]) + last
        match = re.search(rb"\n" + token.encode() + rb"((?::-?\d+)+)\n\Z", last)
        if match is None:
            return None
        cut = len(match.group(0))
        self.total -= cut
        from_tail = min(cut, len(self.tail))
        del self.tail[len(self.tail) - from_tail:]
        if cut > from_tail:
            del self.head[len(self.head) - (cut - from_tail):]
        return [int(x) for x in match.group(1).decode().split(":")[1:]]

    def text(self) -> str:
        tail = bytes(self.tail[-self.half:]) if self.tail else b""
        if not self.truncated:
            return (bytes(self.head) + tail).decode("utf-8", errors="replace")
        cut = self.total - len(self.head) - len(tail)
        return (self.head.decode("utf-8", errors="replace")
                + f"\n[... {cut} bytes cut ...]\n"
                + tail.decode("utf-8", errors="replace"))

    async def pump(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self.feed(chunk)
