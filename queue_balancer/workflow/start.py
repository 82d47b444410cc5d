"""How a run starts: ValidateInput accepts the input (nothing changes yet), Preflight takes the locks,
writes the run's first lifecycle, and checks that the cluster is fit for moves and quiet enough.

``{"action": "balance" | "load", ...}`` from an operator or EventBridge starts a run named after the
execution; ``{"action": "continue", "config": ..., "run": ...}`` is the workflow's own continuation in
a fresh execution (see ``control``). Invalid input raises ``ConfigurationError`` before the lock is
taken, so nothing at all changes (the handlers name it ``InvalidInput`` for the state machine).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from queue_balancer.errors import ConfigurationError, TrafficGateClosed
from queue_balancer.lifecycle import EVENTS_AT_START, Outcome, RunInput, Step, advance, started
from queue_balancer.lifecycle.routing import Route
from queue_balancer.lock import LockLost
from queue_balancer.model import JsonDict, Snapshot
from queue_balancer.movers import cleanup
from queue_balancer.safety import preflight, traffic_gate
from queue_balancer.workflow.leases import iso, now, run_lock
from queue_balancer.workflow.ports import ClusterApi, LifecycleStore
from queue_balancer.workflow.run_state import RunState

LOCK_SECONDS_TO_PLAN = 900
"""The first lease on the lock: preflight and planning; ControlCheck renews it per batch."""


@dataclass(frozen=True)
class Accepted:
    """The run's configuration and its first run state: ``$.config`` and ``$.run``."""

    config: RunInput
    run: RunState

    def to_dict(self) -> JsonDict:
        return {"config": self.config.to_dict(), "run": self.run.to_dict()}


def accept_input(raw: Any, execution: str, cluster: str) -> Accepted:
    """Check the execution's input; a new run is named after its execution and leases the lock to plan."""
    started_at = now()
    if isinstance(raw, dict) and raw.get("action") == "continue":
        config, run = _continuation(raw, cluster)
    else:
        config = RunInput.parse(raw)
        run = RunState(run_id=execution, cluster=cluster, started_at=started_at)
    lease = {"now": str(int(started_at)), "expires_at": str(int(started_at) + LOCK_SECONDS_TO_PLAN)}
    return Accepted(config, replace(run, lock=lease, events=EVENTS_AT_START))


def _continuation(raw: JsonDict, cluster: str) -> tuple[RunInput, RunState]:
    try:
        config = RunInput.parse(raw["config"])
        run = RunState.from_dict(raw["run"])
    except (KeyError, TypeError, ConfigurationError) as exc:
        raise ConfigurationError(
            f"a continuation needs the config and run of the execution it continues: {exc}"
        ) from exc
    if run.cluster != cluster:
        raise ConfigurationError(
            f"the continuation is for cluster {run.cluster}, this balancer serves {cluster}"
        )
    return config, replace(run, continuation=True, next="")


def begin_run(
    db: LifecycleStore, client: ClusterApi, config: RunInput, run: RunState, execution_arn: str
) -> RunState:
    """Take the cluster's lock (``LockHeld`` while a CLI run holds it, before anything is written;
    ``LockLost`` for a continuation its parent did not hand the run to, as AcquireLock checks too: a
    copied ``continue`` input never drives a live run), remove the temporary policies of runs that are
    not live, write the run's first lifecycle (or hand a continued run to this execution), then refuse
    while a node is down, partitioned or in alarm. A closed traffic gate routes the run to its report as
    skipped: a busy hour is not a failure."""
    lock = run_lock(client, run.run_id, until=float(run.lock["expires_at"]))
    if run.continuation:
        before = db.lifecycle(run.cluster)
        if before.execution_arn != execution_arn:
            raise LockLost(
                f"run {run.run_id} of cluster {run.cluster} was handed to {before.execution_arn}, "
                f"not to {execution_arn}: a copied continuation never takes a live run over"
            )
        lock.renew()
        db.save(before, advance(before, Step.CONTINUED, now=iso(), execution_arn=execution_arn))
    else:
        lock.acquire()
        # Under the lock, first: dead runs' temporary policies (a stopped execution, a killed CLI) still
        # pin their queues and hide the queues' own policies. One whose queue is still syncing stays (it
        # holds every copy) for the next run's cleanup; this run's own policies rank above it.
        cleanup(client, lock.live_runs())
        record = started(
            run.cluster, run_id=run.run_id, execution_arn=execution_arn, action=config.action, now=iso()
        )
        db.start(record)
    preflight(Snapshot.from_api(client.nodes(), []))
    try:
        traffic_gate(client.overview(), config.max_publish_rate, config.max_deliver_rate)
    except TrafficGateClosed as closed:
        return replace(run, next=Route.FINISH, outcome=f"{Outcome.SKIPPED.value}: {closed}")
    return run
