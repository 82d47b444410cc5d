"""ValidateInput: the first state. Checks the input before anything changes and starts the run state
(``queue_balancer.workflow.start.accept_input``; a ``ConfigurationError`` reaches the state machine as
``InvalidInput``)."""

from __future__ import annotations

from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import logger, task
from lambdas.settings import settings
from queue_balancer.model import JsonDict
from queue_balancer.workflow.start import accept_input


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    accepted = accept_input(event.get("input"), str(event["execution"]), settings().cluster_name)
    logger.info("input accepted", extra={"config": accepted.config.to_dict(), "run_id": accepted.run.run_id})
    return accepted.to_dict()
