"""ParkRun: called with ``.waitForTaskToken``; stores the token so ``go``/``continue`` can answer it.

The run then waits in READY (for ``go``) or PAUSE (for ``continue``) without anything running. The
lock is extended over the whole wait (the parked task's TimeoutSeconds), so no other run can start
while this one is parked.
"""

from __future__ import annotations

from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import iso, logger, now, renew_leases, store, task
from lambdas.run_state import RunState
from queue_balancer.lifecycle import LOCK_MARGIN_SECONDS, PARK_TIMEOUT_SECONDS, State, Step, advance
from queue_balancer.model import JsonDict


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    run = RunState.from_dict(event["run"])
    state = State(event["state"])
    db = store()
    renew_leases(
        db,
        run.run_id,
        run.cluster,
        event["execution_arn"],
        int(now()) + PARK_TIMEOUT_SECONDS + LOCK_MARGIN_SECONDS,
    )
    record = db.lifecycle(run.cluster)
    db.save(record, advance(record, Step.WAITING, now=iso(), state=state, task_token=event["token"]))
    logger.info("parked", extra={"state": state.value, "run_id": run.run_id})
    return {"parked": state.value}
