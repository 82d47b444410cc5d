"""Preflight: the cluster's lock, the run's first lifecycle, a cluster fit for moves and quiet enough
(``queue_balancer.workflow.start.begin_run``)."""

from __future__ import annotations

from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import cluster, logger, store, task
from queue_balancer.lifecycle import RunInput
from queue_balancer.lifecycle.routing import Route
from queue_balancer.model import JsonDict
from queue_balancer.workflow.run_state import RunState
from queue_balancer.workflow.start import begin_run


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    config = RunInput.parse(event["config"])
    run = RunState.from_dict(event["run"])
    with cluster() as access:
        begun = begin_run(store(), access.client, config, run, str(event["execution_arn"]))
    if begun.next == Route.FINISH:
        logger.info("run skipped", extra={"reason": begun.outcome})
    return begun.to_dict()
