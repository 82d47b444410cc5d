"""Which quorum members hold a vote (RabbitMQ 4.x): a non-voting member is never made a queue's leader.

RabbitMQ 4.0 adds a quorum queue member as a *promotable* non-voter that Ra promotes once it has caught up
(``rabbitmq-queues add_member``, ``grow``, membership reconciliation), and a member may be kept a
``non_voter`` for good. ``GET /api/queues`` lists such a member in ``members`` and ``online`` like any
other, and ``ra:transfer_leadership`` to it is not refused: on 4.0.5 it made a non-voter the leader (seen
here), a leader without a vote in its own quorum. Only the quorum status
(``GET /api/queues/quorum/{vhost}/{name}/status``, ``rabbit_quorum_queue:status/2``) says ``Membership``.

So on 4.x every snapshot marks the non-voters of the quorum queues a leader could move among (one status
call per queue, ``workers`` at a time); the planner then neither targets them nor counts them in a quorum.
A status that cannot be read leaves the queue as listed: the transfer itself checks the target's
membership again on the node (``leader_transfer.TRANSFER_FUN``), so the plan is best informed and the
move is safe either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from queue_balancer.errors import ManagementError
from queue_balancer.model import Queue, QueueRef, QueueType, Snapshot

VOTER = "voter"
WORKERS = 8
"""Status calls at once: each costs ~5 ms on the node (it asks every member), so 1,000 queues take ~1 s."""


class QuorumStatusSource(Protocol):
    """What reading membership needs of the management client (``fork``: one client per thread)."""

    def quorum_status(self, vhost: str, name: str) -> list[dict[str, Any]]: ...

    def fork(self) -> QuorumStatusSource: ...


def non_voting(status: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The members of a quorum status whose ``Membership`` is not ``voter`` (3.x reports none: all vote)."""
    return tuple(
        sorted(
            str(entry.get("Node Name", ""))
            for entry in status
            if str(entry.get("Membership") or VOTER) != VOTER
        )
    )


def needs_membership(queue: Queue) -> bool:
    """Quorum queues with another member: the ones whose leader could move, or whose quorum could be
    miscounted."""
    return queue.type is QueueType.QUORUM and bool(queue.replicas)


def mark_non_voters(client: QuorumStatusSource, snapshot: Snapshot, *, workers: int = WORKERS) -> Snapshot:
    """The snapshot with every quorum queue's non-voting members marked, on versions that have them."""
    if not snapshot.platform.non_voting_members:
        return snapshot
    refs = [q.ref for q in snapshot.queues if needs_membership(q)]
    return snapshot.with_non_voters(read_non_voters(client, refs, workers=workers))


def read_non_voters(
    client: QuorumStatusSource, refs: Sequence[QueueRef], *, workers: int = WORKERS
) -> dict[QueueRef, tuple[str, ...]]:
    """Each queue's non-voting members, for the queues that have some and whose status could be read."""
    if not refs:
        return {}
    chunks = [refs[i::workers] for i in range(min(workers, len(refs)))]
    found: dict[QueueRef, tuple[str, ...]] = {}
    with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
        for part in pool.map(_read_chunk, [client.fork() for _ in chunks], chunks):
            found.update(part)
    return found


def _read_chunk(client: QuorumStatusSource, refs: Sequence[QueueRef]) -> dict[QueueRef, tuple[str, ...]]:
    found = {}
    for ref in refs:
        try:
            members = non_voting(client.quorum_status(ref.vhost, ref.name))
        except ManagementError:
            continue  # deleted since listed, or a member not answering: the transfer checks again
        if members:
            found[ref] = members
    return found
