"""Cleanup: where every Catch of the workflow leads (``queue_balancer.workflow.failure.fail_run``), and
where EventBridge sends an execution that ended without that (stopped, timed out:
``queue_balancer.workflow.ended.end_abandoned_run``)."""

from __future__ import annotations

import time

from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import cluster, logger, store, task
from lambdas.settings import settings
from queue_balancer.contract import UNDO_SECONDS
from queue_balancer.model import JsonDict
from queue_balancer.workflow.ended import StatusChange, end_abandoned_run
from queue_balancer.workflow.failure import CaughtError, fail_run
from queue_balancer.workflow.run_state import RunState


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    if StatusChange.matches(event):
        change = StatusChange.parse(event)
        logger.error(
            "execution ended without cleaning up",
            extra={"execution": change.execution_arn, "status": change.status},
        )
        deadline = time.time() + context.get_remaining_time_in_millis() / 1000 - UNDO_SECONDS
        return end_abandoned_run(
            store(), lambda: cluster().client, settings().cluster_name, change, deadline=deadline
        ).to_dict()
    run = RunState.from_dict(event["run"])
    error = CaughtError.parse(event.get("error") or {})
    logger.error("run failed", extra={"error": error.name, "reason": error.reason})
    return fail_run(
        store(), lambda: cluster().client, run, error, member_mover=lambda: cluster().member_mover()
    ).to_dict()
