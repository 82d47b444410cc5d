"""LoadQueues: classify and plan (READY); the plan goes to DynamoDB, one item per batch
(``queue_balancer.workflow.planning.load_plan``)."""

from __future__ import annotations

from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import cluster, logger, store, task
from queue_balancer.lifecycle import RunInput
from queue_balancer.model import JsonDict
from queue_balancer.workflow.planning import load_plan
from queue_balancer.workflow.run_state import RunState


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    config = RunInput.parse(event["config"])
    run = RunState.from_dict(event["run"])
    with cluster(maintenance=True) as access:
        planned = load_plan(store(), access.client, config, run)
    logger.info(
        "planned",
        extra={
            "moves": len(planned.plan.moves),
            "skipped": len(planned.plan.skipped),
            "batches": planned.run.batches,
            "generation": planned.run.generation,
        },
    )
    return planned.run.to_dict()
