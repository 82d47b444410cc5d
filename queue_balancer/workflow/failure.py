"""Cleanup: where every Catch of the workflow leads. Undo, verify, write IDLE, word the notification.

Rolls back the quorum member changes under way in the run's current batch (``roll_back_members``), then
removes the temporary ``queue-balancer-*`` policies of dead runs, this one's included
(``movers.cleanup``: each once every copy of its queue is synchronised, a queue still syncing keeps its
policy and is named; the live holder of the cluster's lock keeps its own), so each queue falls back to
its own policy; gives back the cluster's lock (``queue_balancer.lock``); lists the queues whose mirrors
are not (yet) in sync and the quorum queues left with more members than before or members offline;
marks the lifecycle IDLE with the failure; words the failure notification.
Policies are only touched while this run still holds the DynamoDB lock: otherwise they may belong to
the run that holds it now.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Any

from queue_balancer.batch_run import BatchStore
from queue_balancer.errors import BalancerError
from queue_balancer.lifecycle import Outcome, finished
from queue_balancer.lock import LockLost
from queue_balancer.member_moves import MemberMover, MemberProgress, roll_back_members
from queue_balancer.model import JsonDict, Queue, QueueType
from queue_balancer.movers import cleanup
from queue_balancer.report import subject_line
from queue_balancer.workflow.leases import iso, run_lock
from queue_balancer.workflow.ports import ClusterApi, LifecycleStore
from queue_balancer.workflow.run_state import RunState

LISTED = 20
"""Policies and queues named in the notification at the most."""


@dataclass(frozen=True)
class CaughtError:
    """What a Catch hands over (``$.error``): the error's name and a readable reason."""

    name: str
    reason: str

    @classmethod
    def parse(cls, error: Mapping[str, Any]) -> CaughtError:
        """A Lambda's Cause is its JSON error document; other Causes are kept as they are."""
        name = str(error.get("Error") or "Unknown")
        cause = str(error.get("Cause") or "")
        try:
            document = json.loads(cause)
        except ValueError:
            return cls(name, cause)
        if isinstance(document, dict) and "errorMessage" in document:
            return cls(name, str(document["errorMessage"]))
        return cls(name, cause)


@dataclass(frozen=True)
class FailedRun:
    """The failure notification, and the run with no route left."""

    subject: str
    message: str
    run: RunState

    def to_dict(self) -> JsonDict:
        return {"subject": self.subject, "message": self.message, "run": self.run.to_dict()}


def fail_run(
    db: LifecycleStore,
    connect: Callable[[], ClusterApi],
    run: RunState,
    error: CaughtError,
    member_mover: Callable[[], MemberMover] | None = None,
) -> FailedRun:
    """Undo what the run left in the cluster (only while it holds the lock; ``connect`` and
    ``member_mover`` are called only then), record the failure for ``last-report``/``status``/``info``,
    and word the notification."""
    lines = [
        f"**queue-balancer** run `{run.run_id}` on cluster `{run.cluster}` failed: `{error.name}`",
        "",
        error.reason,
        "",
    ]
    if (db.lock(run.cluster) or {}).get("run_id") == run.run_id:
        if member_mover is not None:
            lines += roll_back_member_changes(db, run, member_mover)
        lines += undo(connect(), run, db)
    else:
        lines.append("The run no longer held the cluster's lock: policies left to the run that holds it.")
    counts = run.counts
    lines.append(f"Moves: {counts.done} done, {counts.failed} failed, {counts.pending} not started.")
    outcome = f"{Outcome.FAILED.value}: {error.name}"
    db.put_meta(run.run_id, outcome=outcome, error=error.name, reason=error.reason)
    record = db.lifecycle(run.cluster)
    if record.run_id == run.run_id:
        with suppress(LockLost):  # a new run took the lifecycle meanwhile: it is its own now
            db.save(record, finished(record, outcome, now=iso(), counts=counts))
    subject = subject_line(f"queue-balancer: {run.cluster} run FAILED ({error.name})")
    return FailedRun(subject, "\n".join(lines), replace(run, next=""))


def undo(client: ClusterApi, run: RunState, db: BatchStore) -> list[str]:
    """Remove the dead runs' temporary policies, give the cluster's lock back, say what is not in sync."""
    held = run_lock(client, run.run_id)
    # This run's policies are leftovers now; another live holder's (a CLI run that took an expired
    # lock) are moves under way.
    cleaned = cleanup(client, held.live_runs() - {held.run_id})
    held.release()
    removed = cleaned.removed
    lines = [
        f"Cleanup removed {len(removed)} temporary polic{'y' if len(removed) == 1 else 'ies'}"
        + (": " + ", ".join(f"`{v}`/`{n}`" for v, n in removed[:LISTED]) if removed else ".")
    ]
    if cleaned.syncing:
        lines.append(
            f"Left {len(cleaned.syncing)} temporary policies in place, still syncing (they hold every copy, "
            "nothing is lost): run `queue-balancer cleanup` again once they are in sync:"
        )
        lines += [f"- `{v}` / `{n}`: {detail}" for v, n, detail in cleaned.syncing[:LISTED]]
    queues = client.snapshot().queues
    lines += members_left_over(db, run, queues)
    unsynced = [q for q in queues if q.type is QueueType.CLASSIC and set(q.replicas) - set(q.in_sync)]
    if not unsynced:
        return [*lines, "Every mirrored queue is in sync."]
    lines.append(
        f"Queues whose mirrors are not in sync yet ({len(unsynced)}; with `ha-sync-mode: manual` a mirror "
        "stays so until a sync is requested: `rabbitmqctl sync_queue`):"
    )
    return lines + [f"- `{q.vhost}` / `{q.name}` on {q.leader}" for q in unsynced[:LISTED]]


def members_left_over(db: BatchStore, run: RunState, queues: Sequence[Queue]) -> list[str]:
    """Quorum queues the failure leaves exposed: a member change of the batch under way cut off with
    more members than before (a new member may still be catching up: the queue tolerates fewer
    failures until it has), and queues with members not online."""
    live = {q.ref: q for q in queues if q.type is QueueType.QUORUM}
    lines = []
    cut_off = [(p, live[p.move.ref]) for p in _members_under_way(db, run) if p.move.ref in live]
    grown = [(p, q) for p, q in cut_off if 1 + len(q.replicas) > len(p.move.members)]
    if grown:
        lines.append(
            f"Quorum queues whose member change was cut off ({len(grown)}; more members than before, "
            "not rolled back: `balance --members --group-size N` or `rabbitmq-queues delete_member` removes the extra):"
        )
        lines += [
            f"- `{p.move.vhost}` / `{p.move.queue}`: {1 + len(q.replicas)} members, {len(p.move.members)} "
            f"before (added {', '.join(p.added) or '-'}; catching up: {', '.join(p.catching_up) or '-'})"
            for p, q in grown[:LISTED]
        ]
    offline = [q for q in live.values() if set(q.replicas) - set(q.in_sync)]
    if offline:
        lines.append(f"Quorum queues with members not online ({len(offline)}):")
        lines += [
            f"- `{q.vhost}` / `{q.name}`: {', '.join(sorted(set(q.replicas) - set(q.in_sync)))}"
            for q in offline[:LISTED]
        ]
    return lines


def _members_under_way(db: BatchStore, run: RunState) -> list[MemberProgress]:
    """The member changes under way in the run's current batch (none for a leaders batch)."""
    if not run.current:
        return []
    try:
        batch = db.member_batch(run.run_id, int(run.current["generation"]), int(run.current["index"]))
    except KeyError:  # a leaders batch, or none stored
        return []
    return batch.active


def roll_back_member_changes(
    db: BatchStore, run: RunState, member_mover: Callable[[], MemberMover]
) -> list[str]:
    """Undo the member changes under way in the run's current batch (the members they added beyond their
    removals go again, so each queue keeps its replica count), and store the batch as it ends."""
    if not run.current or not _members_under_way(db, run):
        return []
    generation, index = int(run.current["generation"]), int(run.current["index"])
    batch = db.member_batch(run.run_id, generation, index)
    try:
        mover = member_mover()
    except BalancerError as exc:
        return [f"Member changes under way NOT rolled back: {exc}"]
    under_way = len(batch.active)
    roll_back_members(mover, batch, "the run failed", lambda _: None)
    db.save_batch_state(run.run_id, generation, index, batch)
    lines = [f"Rolled back {under_way} quorum member change{'' if under_way == 1 else 's'} under way:"]
    return lines + [
        f"- `{p.move.vhost}` / `{p.move.queue}`: {p.outcome}" for p in batch.finished[-under_way:][:LISTED]
    ]
