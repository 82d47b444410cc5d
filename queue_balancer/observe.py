"""Observe the real state before judging a queue: the statistics view lags, the queue process does not.

``GET /api/queues`` comes from the statistics database, refreshed every ~5 s: a queue that finished
syncing still shows ``syncing``, a mirror that caught up still shows unsynchronised. A snapshot may come
from that fast list view, but a queue it shows syncing or out of sync is re-read in the real-time view
(``GET /api/queues/{vhost}/{name}?disable_stats=true``) before the planner may skip it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from queue_balancer.errors import NotFound
from queue_balancer.model import Queue, QueueType, Snapshot

SETTLE_SECONDS = 30.0
"""How long a new round waits for queues still syncing before it plans without them (a later round may)."""


class RealtimeQueues(Protocol):
    def queue_now(self, vhost: str, name: str) -> dict[str, Any]: ...


def looks_unsettled(queue: Queue) -> bool:
    """Whether the statistics show a classic queue syncing or with a mirror behind."""
    if queue.type is not QueueType.CLASSIC:
        return False
    return queue.state == "syncing" or bool(set(queue.replicas) - set(queue.in_sync))


def refresh_unsettled(client: RealtimeQueues, snapshot: Snapshot) -> Snapshot:
    """The snapshot with every queue that looks unsettled replaced by what its process says now."""
    fresh = {q.ref: _reread(client, q) for q in snapshot.queues if looks_unsettled(q)}
    if not fresh:
        return snapshot
    queues = tuple(fresh.get(q.ref, q) for q in snapshot.queues)
    return replace(snapshot, queues=tuple(q for q in queues if q is not None))


def _reread(client: RealtimeQueues, queue: Queue) -> Queue | None:
    try:
        now = client.queue_now(queue.vhost, queue.name)
    except NotFound:
        return None  # deleted since the list was read
    realtime = Queue.from_api({"vhost": queue.vhost, "name": queue.name, "type": queue.type.value, **now})
    return replace(
        queue,
        leader=realtime.leader or queue.leader,
        replicas=realtime.replicas,
        in_sync=realtime.in_sync,
        state=realtime.state,
    )


class SnapshotSource(Protocol):
    def snapshot(self) -> Snapshot: ...


def settle(
    source: SnapshotSource,
    *,
    timeout: float = SETTLE_SECONDS,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    interval: float = 0.5,
) -> Snapshot:
    """A snapshot in which no queue is still syncing, waiting up to ``timeout`` for them to finish."""
    deadline = clock() + timeout
    while True:
        snapshot = source.snapshot()
        if not any(looks_unsettled(q) for q in snapshot.queues) or clock() >= deadline:
            return snapshot
        sleep(interval)
