"""The run's two locks and the clock the lifecycle item shows.

A workflow run holds DynamoDB's lock (the workflow's, a conditional item with a lease) and the
cluster's own (``queue_balancer.lock``, the one the CLI takes too): one lock for every run that changes
the cluster. Whatever extends one extends the other, so neither lapses while the run holds the cluster.
"""

from __future__ import annotations

import time
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


def renew_leases(
    db: LifecycleStore, client: GlobalParameters, run: RunState, execution_arn: str, expires_at: int
) -> None:
    """Push out both locks, DynamoDB's and the cluster's; ``LockLost`` if either is another run's now."""
    db.renew_lock(run.cluster, run.run_id, execution_arn, expires_at)
    run_lock(client, run.run_id, until=expires_at).renew()


def owned_lifecycle(db: LifecycleStore, run: RunState) -> Lifecycle:
    """The cluster's lifecycle item, still ``run``'s; ``LockLost`` if another run owns it now."""
    record = db.lifecycle(run.cluster)
    if record.run_id != run.run_id:
        raise LockLost(f"the lifecycle of cluster {run.cluster} belongs to run {record.run_id} now")
    return record
