"""The event stream every component writes to and every front door reads from.

The core never prints: it emits events. A front door subscribes and decides how to show
them (rich console, JSON lines, a GitHub status comment). ``JsonlSink`` writes the run's
event log, which is enough to replay and inspect a run afterwards.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field


class Event(BaseModel):
    kind: str  # e.g. "plan.task", "task.start", "task.end", "candidate.state", "run.end"
    at: float = Field(default_factory=time.time)
    data: dict[str, Any] = Field(default_factory=dict)


Subscriber = Callable[[Event], None]


class EventBus:
    """Fan-out of events to subscribers. Thread-safe; a failing subscriber is a bug and raises."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        with self._lock:
            self._subscribers.append(fn)

        def unsubscribe() -> None:
            with self._lock:
                if fn in self._subscribers:
                    self._subscribers.remove(fn)

        return unsubscribe

    def emit(self, kind: str, **data: Any) -> Event:
        event = Event(kind=kind, data=data)
        with self._lock:
            subscribers = list(self._subscribers)
        for fn in subscribers:
            fn(event)
        return event


class JsonlSink:
    """Appends every event to a JSONL file, flushed per line so a crash loses nothing."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        line = json.dumps(event.model_dump(mode="json"), default=str)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_events(path: Path) -> list[Event]:
    return [Event.model_validate_json(line) for line in path.read_text().splitlines() if line.strip()]
