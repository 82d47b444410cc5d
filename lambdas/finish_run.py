"""FinishRun: the cluster's lock back, the lifecycle IDLE (``queue_balancer.workflow.finish``)."""

from __future__ import annotations

from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import cluster, store, task
from queue_balancer.model import JsonDict
from queue_balancer.workflow.finish import finish_run
from queue_balancer.workflow.run_state import RunState


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    run = RunState.from_dict(event["run"])
    with cluster() as access:
        return finish_run(store(), access.client, run).to_dict()
