"""ParkRun: the run waits in READY (for ``go``) or PAUSE (for ``continue``) with nothing running.

The task token is stored on the lifecycle item, where the CLI's ``go``/``continue`` find it; the locks
are extended over the whole wait (the parked task's TimeoutSeconds), so no other run can start while
this one is parked.
"""

from __future__ import annotations

from queue_balancer.lifecycle import LOCK_MARGIN_SECONDS, PARK_TIMEOUT_SECONDS, State, Step, advance
from queue_balancer.lock import GlobalParameters
from queue_balancer.workflow.leases import iso, now, renew_leases
from queue_balancer.workflow.ports import LifecycleStore
from queue_balancer.workflow.run_state import RunState


def park_run(
    db: LifecycleStore, client: GlobalParameters, run: RunState, state: State, token: str, execution_arn: str
) -> State:
    """Hold both locks over the wait, then record ``state`` and the token that answers it."""
    expires = int(now()) + PARK_TIMEOUT_SECONDS + LOCK_MARGIN_SECONDS
    renew_leases(db, client, run, execution_arn, expires)
    record = db.lifecycle(run.cluster)
    db.save(record, advance(record, Step.WAITING, now=iso(), state=state, task_token=token))
    return state
