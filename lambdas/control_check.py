"""ControlCheck: after planning, between two batches and whenever a batch stops early, decide what comes
next (``queue_balancer.workflow.control``); the route is ``$.run.next``."""

from __future__ import annotations

from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import cluster, logger, store, task
from queue_balancer.model import JsonDict
from queue_balancer.workflow.control import ControlEvent, control


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    run = control(store(), lambda: cluster().client, ControlEvent.parse(event))
    logger.info("routed", extra={"next": run.next, "current": run.current, "events": run.events})
    return run.to_dict()
