"""Tasks as Ray tasks spread over a cluster's nodes.

Each task runs on whichever node Ray gives it (``SPREAD``), in a scratch folder of that node,
with that node's own sandboxes (its Docker engine or bubblewrap) and the cluster's one budget
(``ray_budget``). The driver alone writes ``--out``: a task returns its ``TaskOutcome``.

A task whose node or worker dies is submitted again (up to ``retries`` times), its attempts
recorded in its result; a task is recorded once, so nothing is lost or duplicated. On Ctrl-C
(or TERM, HUP) every task in flight is cancelled (its sandboxes closed by its own cleanup),
stragglers are killed, and every node then removes the containers their dead owners left.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bakeoff.agent.batch.execute import TaskOutcome, node_name, run_task
from bakeoff.agent.batch.local import Hooks
from bakeoff.agent.batch.tasks import BatchTask
from bakeoff.agent.config import Settings
from bakeoff.agent.session import SessionError

RAY_MISSING = ("--ray needs Ray, which is not installed: pip install 'bakeoff[ray]' "
               "(on this machine and on every node of the cluster)")
CANCEL_GRACE_S = 20.0  # cancelled tasks get this long to close their sandboxes, then are killed
# A node or worker that died: the task did not fail, its machine did. Anything else is the task's.
LOST = ("WorkerCrashedError", "NodeDiedError", "LocalRayletDiedError", "ObjectLostError", "OwnerDiedError",
        "RaySystemError", "ObjectFetchTimedOutError", "OutOfMemoryError", "ActorDiedError")
# Forwarded to the nodes: bakeoff's own settings. Model keys are each node's own environment.
FORWARDED_ENV = ("BAKEOFF_",)


def connect(address: str) -> str:
    """Join the cluster at ``address`` ("auto": a running one, else a new local one)."""
    try:
        import ray
    except ImportError:
        raise SessionError(RAY_MISSING) from None
    opts: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    if address == "auto":
        try:
            ray.init(address="auto", **opts)
        except ConnectionError:
            ray.init(include_dashboard=False, **opts)
            return "a local Ray cluster started for this batch"
    else:
        try:
            ray.init(address=address, **opts)
        except ConnectionError as exc:
            raise SessionError(f"no Ray cluster answers at {address} ({exc}): start one with `ray start --head`, "
                               "or pass --ray auto") from None
    return f"the Ray cluster at {address}"


def _run_remote(task_json: str, settings: Settings, flags: dict[str, Any], environ: dict[str, str],
                keeper: Any, board: Any, attempt: int, batch_id: str) -> dict[str, Any]:
    """The body of one Ray task, on whatever node it landed: run it, return its outcome."""
    import ray

    from bakeoff.agent.batch.ray_budget import ClusterBudget
    from bakeoff.agent.session import make_pool
    from bakeoff.sandboxes import close_backends

    task = BatchTask.model_validate_json(task_json)
    os.environ["BAKEOFF_SANDBOX_GROUP"] = batch_id  # this batch's containers carry its id: Ctrl-C removes them all
    node = f"{node_name()}:{ray.get_runtime_context().get_node_id()[:8]}"
    board.started.remote(task.id, node, attempt)
    budget = ClusterBudget(keeper, settings.budget_usd, settings.budget_tokens)

    async def go() -> TaskOutcome:
        pool = make_pool(settings)
        try:
            scratch = Path(tempfile.mkdtemp(prefix=f"bakeoff-task-{task.id}-"))
            return await run_task(task, flags, {**os.environ, **environ}, budget=budget, pool=pool,
                                  scratch=scratch, node=node)
        finally:
            await pool.close()
            await close_backends()  # this worker lives on: its warm containers must not

    return asyncio.run(go()).model_dump()


class ProgressBoard:
    """An actor the tasks tell where they started: the driver's live view of the nodes' work."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, int]] = []

    def started(self, task_id: str, node: str, attempt: int) -> None:
        self.log.append((task_id, node, attempt))

    def since(self, seen: int) -> list[tuple[str, str, int]]:
        """The starts after the first ``seen``."""
        return self.log[seen:]


def _reap_node(group: str) -> int:
    """Remove the sandboxes on this node whose owning process is gone, and the batch's containers."""
    from bakeoff.sandboxes import reap_leftovers

    return reap_leftovers(group)


@dataclass
class RayRunner:
    settings: Settings
    flags: dict[str, Any]
    address: str = "auto"
    retries: int = 2
    workers: int | None = None  # tasks in flight at once; None: the cluster's CPUs
    batch_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        self.where = connect(self.address)

    @property
    def slots(self) -> int:
        import ray

        return self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))

    def describe(self) -> str:
        import ray

        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        return f"on {self.where}: {nodes} node(s), {self.slots} task(s) at a time"

    async def run(self, todo: list[BatchTask], hooks: Hooks) -> None:
        import ray

        from bakeoff.agent.batch.ray_budget import start_keeper

        keeper = start_keeper(self.settings.budget_usd, self.settings.budget_tokens, f"bakeoff-budget-{self.batch_id}")
        self.board = _on_this_node(ray.remote(num_cpus=0, max_restarts=0)(ProgressBoard)).remote()
        remote = ray.remote(num_cpus=1, max_retries=0, scheduling_strategy="SPREAD")(_run_remote)
        environ = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        waiting, slots = list(reversed(todo)), self.slots
        flight: dict[asyncio.Future, tuple[BatchTask, int, Any, float]] = {}
        tries: dict[str, list[dict[str, Any]]] = {}
        self.where: dict[str, str] = {}  # task id -> the node its latest attempt started on
        self._announced: set[tuple[str, int]] = set()
        watching = asyncio.create_task(self._watch({t.id: t for t in todo}, hooks))

        def submit(task: BatchTask, attempt: int) -> None:
            ref = remote.remote(task.model_dump_json(), self.settings, self.flags, environ, keeper, self.board, attempt,
                                self.batch_id)
            flight[asyncio.wrap_future(ref.future())] = (task, attempt, ref, time.monotonic())

        try:
            while waiting or flight:
                while waiting and len(flight) < slots:
                    task = waiting.pop()
                    submit(task, 1 + len(tries.get(task.id, [])))
                done, _ = await asyncio.wait(list(flight), return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    task, attempt, _ref, submitted = flight.pop(fut)
                    outcome = await self._settle(fut, task, attempt, tries, hooks)
                    if outcome is None:
                        waiting.append(task)
                        continue
                    # From submission to the result here: the task's run plus what Ray adds.
                    outcome.result["latency_s"] = round(time.monotonic() - submitted, 4)
                    if (task.id, attempt) not in self._announced:  # it ran faster than the board is read
                        self._announced.add((task.id, attempt))
                        hooks.started(task, str(outcome.result.get("node")), attempt)
                    hooks.finished(task, outcome)
        except asyncio.CancelledError:
            await self._stop([ref for _, _, ref, _ in flight.values()], hooks)
            raise
        finally:
            watching.cancel()
            for actor in (keeper, self.board):
                ray.kill(actor)

    async def _watch(self, by_id: dict[str, BatchTask], hooks: Hooks) -> None:
        """Every half second: tell the batch where the tasks that started since are running."""
        import ray

        seen = 0
        while True:
            try:
                fresh = await asyncio.wrap_future(self.board.since.remote(seen).future())
            except ray.exceptions.RayError:
                return  # the board is gone (the batch is ending): results still say where tasks ran
            seen += len(fresh)
            for task_id, node, attempt in fresh:
                self.where[task_id] = node
                if (task_id, attempt) not in self._announced and task_id in by_id:
                    self._announced.add((task_id, attempt))
                    hooks.started(by_id[task_id], node, attempt)
            await asyncio.sleep(0.5)

    async def _settle(self, fut: asyncio.Future, task: BatchTask, attempt: int,
                      tries: dict[str, list[dict[str, Any]]], hooks: Hooks) -> TaskOutcome | None:
        """The task's outcome, or None when its node was lost and it goes again."""
        import ray

        try:
            outcome = TaskOutcome.model_validate(fut.result())
        except ray.exceptions.RayError as exc:
            kind = type(exc).__name__
            where = (await self._started_on()).get(task.id) or self.where.get(task.id, "?")
            lost = any(k in LOST for k in (c.__name__ for c in type(exc).__mro__))
            tries.setdefault(task.id, []).append({"attempt": attempt, "node": where, "error": f"{kind}: {_first_line(exc)}"})
            if lost and attempt <= self.retries:
                hooks.retried(task, attempt, f"{kind} on {where}")
                return None
            outcome = TaskOutcome(result={
                "id": task.id, "repo": task.repo, "base": task.base, "status": "error", "node": where,
                "error": f"{kind} on {where}: {_first_line(exc)}"
                         + (f" (after {attempt} attempts)" if lost else ""), "cause": "cluster" if lost else "bug"})
        if task.id in tries:
            outcome.result["attempts"] = tries[task.id] + [{"attempt": attempt, "node": outcome.result.get("node"),
                                                             "status": outcome.result.get("status")}]
        return outcome

    async def _started_on(self) -> dict[str, str]:
        """Where each task's latest attempt started, read from the board now ({} if it cannot be)."""
        import ray

        try:
            log = await asyncio.wait_for(asyncio.wrap_future(self.board.since.remote(0).future()), 5)
        except (ray.exceptions.RayError, asyncio.TimeoutError):
            return {}
        return {task_id: node for task_id, node, _ in log}

    async def _stop(self, refs: list[Any], hooks: Hooks) -> None:
        """Cancel the tasks in flight, give them time to close their sandboxes, kill the rest,
        then let every node remove what dead owners left."""
        import ray

        for ref in refs:
            ray.cancel(ref, force=False)
        left = refs
        if refs:
            _, left = await asyncio.shield(asyncio.to_thread(ray.wait, refs, num_returns=len(refs),
                                                             timeout=CANCEL_GRACE_S))
        for ref in left:  # only those still running: Ray must not be asked to end a finished task
            ray.cancel(ref, force=True)
        if left:
            await asyncio.shield(asyncio.to_thread(ray.wait, left, num_returns=len(left), timeout=10))
        await asyncio.shield(asyncio.to_thread(reap_cluster, self.batch_id))


def _on_this_node(actor: Any) -> Any:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return actor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        node_id=ray.get_runtime_context().get_node_id(), soft=False))


def reap_cluster(group: str, timeout_s: float = 60.0) -> int:
    """On every live node: remove sandboxes whose owner died, and every container of ``group``.
    How many were removed."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    reap = ray.remote(num_cpus=0, max_retries=0)(_reap_node)
    refs = [reap.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=False)).remote(group)
            for n in ray.nodes() if n.get("Alive")]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    removed = 0
    for ref in ready:
        try:
            removed += ray.get(ref)
        except ray.exceptions.RayError:
            pass  # a node that went away meanwhile: its sandboxes went with it
    return removed


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
