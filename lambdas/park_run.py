"""ParkRun: called with ``.waitForTaskToken``; stores the token so ``go``/``continue`` can answer it
(``queue_balancer.workflow.park``)."""

from __future__ import annotations

from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import cluster, logger, store, task
from queue_balancer.lifecycle import State
from queue_balancer.model import JsonDict
from queue_balancer.workflow.park import park_run
from queue_balancer.workflow.run_state import RunState


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    run = RunState.from_dict(event["run"])
    state, token, execution_arn = State(event["state"]), str(event["token"]), str(event["execution_arn"])
    with cluster() as access:
        parked = park_run(store(), access.client, run, state, token, execution_arn)
    logger.info("parked", extra={"state": parked.value, "run_id": run.run_id})
    return {"parked": parked.value}
