"""The batch's progress: tasks done, failed and running, per node, throughput, ETA and cost,
live on a terminal (a line per change otherwise), and ``--jsonl`` events with the node's name."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from typing import Any, TextIO

from rich.console import Console
from rich.text import Text


class BatchBoard:
    def __init__(self, total: int, slots: int, *, console: Console, jsonl: TextIO | None = None) -> None:
        self.total = total
        self.slots = slots
        self.console = console
        self.jsonl = jsonl
        self.results: dict[str, dict[str, Any]] = {}
        self.running: dict[str, str] = {}  # task id -> node
        self.per_node: Counter[str] = Counter()
        self.started = time.monotonic()
        self._live = None

    # ------------------------------------------------------------------ what happened

    def emit(self, kind: str, **data: Any) -> None:
        if self.jsonl is not None:
            self.jsonl.write(json.dumps({"kind": kind, "t": round(time.time(), 3), **data}, default=str) + "\n")
            self.jsonl.flush()

    def started_on(self, task_id: str, node: str, attempt: int) -> None:
        self.running[task_id] = node
        self.emit("task.start", task=task_id, node=node, attempt=attempt)
        self.refresh()

    def retried(self, task_id: str, attempt: int, why: str) -> None:
        self.running.pop(task_id, None)
        self.say(f"task {task_id}: attempt {attempt} lost ({why}); running it again")
        self.emit("task.retry", task=task_id, attempt=attempt, why=why)

    def finished(self, task_id: str, result: dict[str, Any], events_jsonl: str = "") -> None:
        node = result.get("node") or self.running.get(task_id, "?")
        self.running.pop(task_id, None)
        self.results[task_id] = result
        self.per_node[node] += 1
        for line in events_jsonl.splitlines():  # the task's own run, as its node logged it
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.emit("task.event", task=task_id, node=node, event=event)
        self.emit("task.end", task=task_id, node=node, **{k: v for k, v in result.items() if k != "node"})
        if result.get("status") == "error":
            self.say(f"task {task_id} failed: {result.get('error') or 'unknown error'}")
        self.refresh()

    def say(self, line: str) -> None:
        """A line above the live panel (or in the log)."""
        self.console.print(line, markup=False, highlight=False)

    # ------------------------------------------------------------------ the panel

    def panel(self) -> Text:
        done = len(self.results)
        failed = sum(1 for r in self.results.values() if r.get("status") != "success")
        elapsed = max(1e-6, time.monotonic() - self.started)
        rate = done / elapsed
        remaining = self.total - done
        eta = f"{remaining / rate:.0f}s" if rate > 0 and remaining else "-"
        cost = sum(float(r.get("cost_usd") or 0.0) for r in self.results.values())
        line = (f"done {done - failed} · failed {failed} · running {len(self.running)} · "
                f"waiting {remaining - len(self.running)} · {rate * 60:.1f} tasks/min · cost ${cost:.4f} · ETA {eta}")
        nodes = sorted(set(self.per_node) | set(self.running.values()))
        if len(nodes) > 1 or (nodes and nodes[0] != "?"):
            busy = Counter(self.running.values())
            line += "\n" + "\n".join(f"  {n}: {self.per_node[n]} done, {busy[n]} running" for n in nodes)
        return Text(line)

    def start(self) -> None:
        from rich.live import Live

        if self.console.is_terminal:
            self._live = Live(self.panel(), console=self.console, refresh_per_second=4)
            self._live.start()

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.panel())
        elif self.jsonl is None or self.jsonl is not sys.stderr:
            self.console.print(self.panel(), markup=False, highlight=False)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
