"""The run's two locks and the clock the lifecycle item shows.

A workflow run holds DynamoDB's lock (the workflow's, a conditional item with a lease) and the
cluster's own (``queue_balancer.lock``, the one the CLI takes too): one lock for every run that changes
the cluster. Whatever extends one extends the other, so neither lapses while the run holds the cluster.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from queue_balancer.lifecycle import Lifecycle
from queue_balancer.lock import ClusterLock, GlobalParameters, LockLost
from queue_balancer.movers import derived_run_id
from queue_balancer.workflow.ports import LifecycleStore
from queue_balancer.workflow.run_state import RunState


def now() -> float:
    return time.time()


def iso(moment: float | None = None) -> str:
    """UTC, seconds, ISO 8601: what the lifecycle item shows as started_at/updated_at."""
    return datetime.fromtimestamp(now() if moment is None else moment, UTC).isoformat(timespec="seconds")


def run_lock(client: GlobalParameters, run_id: str, *, until: float | None = None) -> ClusterLock:
    """The in-cluster lock the CLI takes too, for this workflow run; a take or a renewal holds it
    ``until`` the DynamoDB lock's expiry. Its id is the one in this run's temporary policies' names."""
    return ClusterLock(
        client,
        owner=f"workflow run {run_id} (Step Functions)",
        run_id=derived_run_id(run_id),
        lease_seconds=max((until or 0) - now(), 60.0),
    )


@dataclass(frozen=True)
class RunLeases:
    """Both locks of a run, just renewed: what a RunBatch slice asks before it changes the cluster."""

    db: LifecycleStore
    lock: ClusterLock
    run: RunState

    def check(self) -> None:
        """``LockLost`` once the cluster lock's renewal is older than half its lease (``ClusterLock.check``)."""
        self.lock.check()

    def verify(self) -> None:
        """``LockLost`` when the DynamoDB lock or the cluster's is no longer this run's."""
        held = (self.db.lock(self.run.cluster) or {}).get("run_id")
        if held != self.run.run_id:
            raise LockLost(
                f"run {self.run.run_id} no longer holds the lock of cluster {self.run.cluster} "
                f"(held by {held or 'nobody'})"
            )
        holder = self.lock.holder()
        if holder is None or holder.run_id != self.lock.run_id:
            who = holder.describe(now()) if holder else "nobody"
            raise LockLost(f"run {self.run.run_id} lost the cluster's lock; it is held by {who}")


def renew_leases(
    db: LifecycleStore, client: GlobalParameters, run: RunState, execution_arn: str, expires_at: int
) -> RunLeases:
    """Push out both locks, DynamoDB's and the cluster's; ``LockLost`` if either is another run's now,
    or if the cluster lock's renewal was too slow to count (its lease gate would have nothing to go by)."""
    db.renew_lock(run.cluster, run.run_id, execution_arn, expires_at)
    lock = run_lock(client, run.run_id, until=expires_at)
    lock.renew()
    if lock.renewed_at is None:
        raise LockLost(
            f"renewing the cluster's lock for run {run.run_id} took over a sixth of its "
            f"{lock.lease_seconds:.0f} s lease: it may have landed too late to count"
        )
    return RunLeases(db, lock, run)


def owned_lifecycle(db: LifecycleStore, run: RunState) -> Lifecycle:
    """The cluster's lifecycle item, still ``run``'s; ``LockLost`` if another run owns it now."""
    record = db.lifecycle(run.cluster)
    if record.run_id != run.run_id:
        raise LockLost(f"the lifecycle of cluster {run.cluster} belongs to run {record.run_id} now")
    return record
