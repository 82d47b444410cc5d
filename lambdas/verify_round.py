"""VerifyRound: re-read, re-plan, another round or the report (``queue_balancer.workflow.verify``)."""

from __future__ import annotations

from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import cluster, logger, store, task
from queue_balancer.lifecycle import RunInput
from queue_balancer.model import JsonDict
from queue_balancer.workflow.run_state import RunState
from queue_balancer.workflow.verify import verify_round


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    config = RunInput.parse(event["config"])
    run = RunState.from_dict(event["run"])
    with cluster(maintenance=True) as access:
        verified = verify_round(store(), access.client, config, run)
    logger.info(
        "round verified",
        extra={
            "round": run.round,
            "spread_before": run.round_spread,
            "spread_after": verified.spread_after,
            "failed": run.failed,
            "next_moves": verified.next_moves,
        },
    )
    return verified.run.to_dict()
