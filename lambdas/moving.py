"""The state of one Map iteration (one move) between its StartMove/CheckMove tasks and Wait states.

``$`` of an iteration: the move, the poll interval, the execution name (for the logs), the Mover's
``MoveProgress``, and the pacing: checks so far, checks in the current phase, the next Wait's seconds
(``$.pacing.wait``) and the history events this move has cost. Once ``finished``, ``result`` is what
the iteration hands back to ControlCheck.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lambdas.common import logger
from queue_balancer.lifecycle import phase_seconds, wait_seconds
from queue_balancer.model import JsonDict
from queue_balancer.movers import MoveProgress, MoveSettings

SETTINGS = MoveSettings()
"""The Mover's deadlines; the pacing of the Wait states is derived from the same numbers."""


def iteration(
    event: Mapping[str, Any], progress: MoveProgress, *, checks: int, phase_checks: int, events: int
) -> JsonDict:
    poll = int(event["poll"])
    length = phase_seconds(SETTINGS, progress.messages_before)
    state: JsonDict = {
        "move": progress.move.to_dict(),
        "poll": poll,
        "execution": event.get("execution", ""),
        "progress": progress.to_dict(),
        "pacing": {
            "wait": wait_seconds(poll, phase_checks, length),
            "checks": checks,
            "phase_checks": phase_checks,
            "events": events,
        },
        "finished": progress.finished,
    }
    if progress.finished:
        state["result"] = {"progress": progress.to_dict(), "events": events}
        move = progress.move
        logger.info(
            "move finished",
            extra={
                "queue": move.queue,
                "vhost": move.vhost,
                "from": move.source,
                "to": move.target,
                "phase": progress.phase.value,
                "outcome": progress.outcome,
                "checks": checks,
                "seconds": round(progress.seconds, 2),
            },
        )
    return state
