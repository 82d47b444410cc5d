"""An execution that ended without its own way out: stopped (``StopExecution``, the console), timed out
(the state machine's ``TimeoutSeconds``), or failed on a path with no cleanup. EventBridge hands its
status change to the Cleanup function, which undoes what the run left, as a caught failure would:
its temporary policies, the cluster's lock, the DynamoDB lock, a lifecycle still BALANCING or parked.

Only a run that this very execution still owns is touched: a run that cleaned up after itself, or went
on in a continuation (a new execution), or a newer run, is left alone.

Stopping an execution does not stop the RunBatch Lambda under way: its slice would go on moving queues
for up to ``BUDGET_SECONDS``. So Cleanup first asks it to stop (``requested`` stop and ``ending`` in the
lifecycle item: the slice reads it every ``CONTROL_INTERVAL`` and rolls back its moves under way, and
no slice starts any more), then waits until no slice's mark (``slices``) is left, at the most
until the last marked slice's Lambda has timed out or ``UNDO_SECONDS`` are left of Cleanup's own time, and only
then removes policies and gives the locks back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Any

from queue_balancer.contract import ENDED_WITHOUT_CLEANUP, STATUS_CHANGE
from queue_balancer.errors import ConfigurationError
from queue_balancer.lifecycle import Control, Lifecycle, State
from queue_balancer.lock import LockLost
from queue_balancer.model import JsonDict
from queue_balancer.workflow.failure import CaughtError, FailedRun, fail_run
from queue_balancer.workflow.leases import iso
from queue_balancer.workflow.ports import ClusterApi, LifecycleStore
from queue_balancer.workflow.run_state import RunState

SLICE_POLL_SECONDS = 1.0
"""How often Cleanup reads whether the slice it asked to stop has ended."""

WHY = {
    "ABORTED": "the execution was stopped (StopExecution or the console) before it could clean up",
    "TIMED_OUT": "the execution ran longer than the state machine's TimeoutSeconds",
    "FAILED": "the execution failed on a path that does not clean up",
}


@dataclass(frozen=True)
class StatusChange:
    """The part of an EventBridge ``Step Functions Execution Status Change`` event that matters here."""

    execution_arn: str
    status: str
    error: str
    cause: str

    @classmethod
    def parse(cls, event: Mapping[str, Any]) -> StatusChange:
        detail = event.get("detail")
        if event.get("detail-type") != STATUS_CHANGE or not isinstance(detail, Mapping):
            raise ConfigurationError(f"not a {STATUS_CHANGE!r} event: {str(event)[:200]}")
        status = str(detail.get("status") or "")
        if status not in ENDED_WITHOUT_CLEANUP:
            raise ConfigurationError(f"execution status {status!r} is not one Cleanup handles")
        return cls(
            execution_arn=str(detail.get("executionArn") or ""),
            status=status,
            error=str(detail.get("error") or ""),
            cause=str(detail.get("cause") or ""),
        )

    @staticmethod
    def matches(event: Mapping[str, Any]) -> bool:
        return event.get("detail-type") == STATUS_CHANGE


@dataclass(frozen=True)
class EndedExecution:
    """What Cleanup did for an ended execution: the failure it recorded, or why it did nothing."""

    execution_arn: str
    status: str
    failed: FailedRun | None
    skipped: str = ""

    def to_dict(self) -> JsonDict:
        data: JsonDict = {"execution_arn": self.execution_arn, "status": self.status}
        if self.failed is None:
            return {**data, "skipped": self.skipped}
        return {**data, **self.failed.to_dict()}


def end_abandoned_run(
    db: LifecycleStore,
    connect: Callable[[], ClusterApi],
    cluster: str,
    change: StatusChange,
    *,
    deadline: float,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> EndedExecution:
    """Undo the run of an execution that ended without cleaning up, if that execution still owns it:
    stop its slice under way (waiting for it until ``deadline`` at the most, by ``clock``), then its
    policies and the cluster's lock (``fail_run``), then its DynamoDB lock."""
    record = db.lifecycle(cluster)
    lock = db.lock(cluster) or {}
    owner = record.run_id if record.active and record.execution_arn == change.execution_arn else None
    if owner is None and lock.get("execution_arn") == change.execution_arn:
        owner = str(lock.get("run_id") or "") or None
    if owner is None:
        return EndedExecution(
            change.execution_arn, change.status, None, "the execution no longer owns a run: nothing to undo"
        )
    reason = WHY[change.status] + (f" ({change.error}: {change.cause[:300]})" if change.error else "")
    if record.run_id == owner and record.state is State.BALANCING:
        record, waited = stop_slice(db, record, change.status, deadline=deadline, clock=clock, sleep=sleep)
        reason += f". {waited}"
    counts = record.counts if record.run_id == owner else None
    attempted = counts.done + counts.failed if counts else 0
    run = RunState(
        run_id=owner,
        cluster=cluster,
        started_at=0.0,
        plan_moves=attempted + counts.pending if counts else 0,
        attempted=attempted,
        done=counts.done if counts else 0,
        failed=counts.failed if counts else 0,
        skipped=counts.skipped if counts else 0,
    )
    failed = fail_run(
        db, connect, run, CaughtError(f"Execution{change.status.title().replace('_', '')}", reason)
    )
    db.release_lock(cluster, owner)
    return EndedExecution(change.execution_arn, change.status, failed)


def stop_slice(
    db: LifecycleStore,
    record: Lifecycle,
    status: str,
    *,
    deadline: float,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[Lifecycle, str]:
    """Ask a BALANCING run's slice to stop and end (``requested`` stop, ``ending``), and wait until no
    slice is marked under way, or its Lambda has timed out, or ``deadline``. Returns the item as the
    wait left it (the slice's last counts) and a sentence on what happened."""
    asked = replace(record, requested=Control.STOP, ending=status, updated_at=iso())
    with suppress(LockLost):  # another run took the item: it has no slice of this run's
        db.save(record, asked)
    began = clock()
    current = db.lifecycle(record.cluster)
    if current.run_id != record.run_id or not current.slices:
        return current, "No RunBatch slice was under way."
    while True:
        if clock() >= max(current.slices.values()):
            return current, "The RunBatch slice marked under way had timed out with its Lambda."
        if clock() >= deadline:
            return current, (
                f"The RunBatch slice under way did not stop within {clock() - began:.0f} s: it starts no "
                "move once it reads the lifecycle, but moves it had under way may keep their temporary policies"
            )
        sleep(SLICE_POLL_SECONDS)
        current = db.lifecycle(record.cluster)
        if current.run_id != record.run_id or not current.slices:
            return current, (
                f"The RunBatch slice under way stopped within {clock() - began:.0f} s (its moves under way "
                "rolled back)."
            )
