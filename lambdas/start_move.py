"""StartMove: the first step of one move (a Map iteration): classify it again and make the first change.

Idempotent under Step Functions retries: the Mover's start resumes a move whose leader is already on
the target (a retry after the move happened) instead of failing or moving it twice.
"""

from __future__ import annotations

from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import cluster, task
from lambdas.moving import SETTINGS, iteration
from queue_balancer.lifecycle import EVENTS_PER_MOVE, EVENTS_PER_RETRY
from queue_balancer.model import JsonDict, Move


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    move = Move.from_dict(event["move"])
    with cluster() as access:
        [progress] = access.mover(SETTINGS).start([move])
    events = EVENTS_PER_MOVE + EVENTS_PER_RETRY * int(event.get("retry") or 0)
    return iteration(event, progress, checks=0, phase_checks=0, events=events)
