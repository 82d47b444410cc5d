"""``cleanup``: remove the temporary policies of dead runs without dropping a synchronised copy.

A dead run's policy may hold a synchronised mirror that the queue's own policy does not list (a spare
node, or the target during REORDERING), while a mirror the own policy lists is still syncing: deleting
the policy on the spot drops the synced copy and keeps the unsynced one, which with ``ha-sync-mode:
manual`` never catches up by itself. So cleanup does what a rollback does: it puts the policy over the
queue's current primary, every current mirror and the running nodes the own policy names, asks the
unsynchronised mirrors to sync, waits (bounded) until all of them are synchronised, then deletes the
policy. A policy whose queue is still syncing at the bound stays: it pins the queue and loses nothing;
running ``cleanup`` again finishes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from queue_balancer.errors import NotFound
from queue_balancer.model import JsonDict, Queue, QueueType
from queue_balancer.movers.policies import (
    is_temporary,
    mirrored_on,
    own_policy,
    owning_run,
    pcre_matches,
    request_sync,
)
from queue_balancer.movers.ports import ManagementApi

SYNC_WAIT_SECONDS = 60.0
"""How long cleanup waits for the copies it holds to synchronise (a Lambda's 5 minutes hold it twice)."""
POLL_SECONDS = 1.0


@dataclass(frozen=True, eq=False)
class Leftover:
    """A dead run's temporary policy and the classic queue it governs (None: it governs none)."""

    vhost: str
    policy: str
    definition: JsonDict
    pattern: str
    priority: int
    queue: str | None


@dataclass
class CleanupResult:
    """The policies removed, and those kept because their queue's copies are not all synchronised."""

    removed: list[tuple[str, str]] = field(default_factory=list)
    syncing: list[tuple[str, str, str]] = field(default_factory=list)
    """(vhost, policy, what is still syncing): still in place, pinning every copy; run cleanup again."""

    def to_dict(self) -> JsonDict:
        return {
            "removed": [{"vhost": v, "policy": p} for v, p in self.removed],
            "still_syncing": [{"vhost": v, "policy": p, "detail": d} for v, p, d in self.syncing],
        }


def cleanup(
    api: ManagementApi,
    live_runs: frozenset[str] = frozenset(),
    *,
    wait_seconds: float = SYNC_WAIT_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> CleanupResult:
    """Remove the temporary policies of dead runs (every run not in ``live_runs``), each once every copy
    of its queue is synchronised; a queue still syncing after ``wait_seconds`` keeps its policy.

    A caller holds the cluster lock (``lock``), so the only live runs are its own and, while its lease
    lasts, the lock's holder: their policies are moves under way, not leftovers.
    """
    result = CleanupResult()
    running = {str(n["name"]) for n in api.nodes() if n.get("running")}
    waiting: dict[Leftover, tuple[str, ...]] = {}
    for leftover in _leftovers(api, live_runs):
        live = _live(api, leftover)
        if live is None:
            _remove(api, leftover, result)
            continue
        waiting[leftover] = _hold_every_copy(api, leftover, live, running)
    deadline = clock() + wait_seconds
    nudged: set[Leftover] = set()
    while waiting:
        for leftover, held in list(waiting.items()):
            live = _live(api, leftover)
            if live is None or not _unsynced(live, held, running):
                _remove(api, leftover, result)
                del waiting[leftover]
            elif leftover not in nudged and set(live.replicas) - set(live.in_sync):
                # A mirror of a manual-sync queue never catches up by itself; an automatic sync may
                # not start for a mirror the queue already had.
                request_sync(api, leftover.vhost, str(leftover.queue))
                nudged.add(leftover)
        if not waiting or clock() >= deadline:
            break
        sleep(POLL_SECONDS)
    for leftover, held in waiting.items():
        live = _live(api, leftover)
        unsynced = ", ".join(_unsynced(live, held, running)) if live else "?"
        detail = f"queue {leftover.queue}: mirrors on {unsynced} not synchronised yet"
        result.syncing.append((leftover.vhost, leftover.policy, detail))
    return result


def _leftovers(api: ManagementApi, live_runs: frozenset[str]) -> Iterable[Leftover]:
    """Every dead run's temporary policy, with the classic queue it governs."""
    queues: dict[str, list[dict[str, Any]]] = {}
    for policy in api.policies():
        name, vhost = str(policy["name"]), str(policy["vhost"])
        if not is_temporary(name) or owning_run(name) in live_runs:
            continue
        if vhost not in queues:
            queues[vhost] = api.queues_now(vhost)
        pattern = str(policy["pattern"])
        governed = [
            str(q["name"])
            for q in queues[vhost]
            if q.get("type", "classic") == QueueType.CLASSIC.value and pcre_matches(pattern, str(q["name"]))
        ]
        yield Leftover(
            vhost=vhost,
            policy=name,
            definition=dict(policy.get("definition") or {}),
            pattern=pattern,
            priority=int(policy.get("priority", 0)),
            queue=governed[0] if governed else None,
        )


def _live(api: ManagementApi, leftover: Leftover) -> Queue | None:
    if leftover.queue is None:
        return None
    try:
        return Queue.from_api(api.queue_now(leftover.vhost, leftover.queue))
    except NotFound:
        return None


def _hold_every_copy(
    api: ManagementApi, leftover: Leftover, live: Queue, running: set[str]
) -> tuple[str, ...]:
    """Put the policy over the primary, every mirror and the running nodes the own policy names (those
    it keeps once the policy is gone); returns the nodes it holds."""
    own = own_policy(api, live)
    named = (own[1].get("ha-params") if own and own[1].get("ha-mode") == "nodes" else None) or []
    held = tuple(dict.fromkeys([live.leader, *live.replicas, *(str(n) for n in named if str(n) in running)]))
    asked = leftover.definition.get("ha-params")
    if not isinstance(asked, list) or tuple(str(n) for n in asked) != held:
        definition = {k: v for k, v in leftover.definition.items() if not k.startswith("ha-")}
        definition.update(mirrored_on(list(held)))
        api.put_policy(
            leftover.vhost,
            leftover.policy,
            pattern=leftover.pattern,
            definition=definition,
            priority=leftover.priority,
        )
    return held


def _unsynced(live: Queue, held: tuple[str, ...], running: set[str]) -> list[str]:
    """The held nodes (running, not the primary) without a synchronised copy."""
    return [n for n in held if n != live.leader and n in running and n not in live.in_sync]


def _remove(api: ManagementApi, leftover: Leftover, result: CleanupResult) -> None:
    if api.delete_policy(leftover.vhost, leftover.policy):
        result.removed.append((leftover.vhost, leftover.policy))
