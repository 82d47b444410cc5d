"""CheckMove: observe the queue once and take the move's next step when the observed state allows it.

Runs after each Wait of the move loop; never sleeps. Idempotent: each step of the Mover re-observes
the queue and repeats a change only when it is still missing (a policy put twice is the same policy).
"""

from __future__ import annotations

from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import cluster, task
from lambdas.moving import SETTINGS, iteration
from queue_balancer.lifecycle import EVENTS_PER_CHECK, EVENTS_PER_RETRY
from queue_balancer.model import JsonDict
from queue_balancer.movers import MoveProgress


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    progress = MoveProgress.from_dict(event["progress"])
    pacing = event["pacing"]
    with cluster() as access:
        advanced = access.mover(SETTINGS).advance(progress)
    phase_checks = int(pacing["phase_checks"]) + 1 if advanced.phase is progress.phase else 0
    events = int(pacing["events"]) + EVENTS_PER_CHECK + EVENTS_PER_RETRY * int(event.get("retry") or 0)
    return iteration(
        event, advanced, checks=int(pacing["checks"]) + 1, phase_checks=phase_checks, events=events
    )
