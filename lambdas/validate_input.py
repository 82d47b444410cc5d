"""ValidateInput: the first state. Checks the input before anything changes and starts the run state.

``{"action": "balance" | "load", ...}`` from an operator or EventBridge starts a run named after the
execution; ``{"action": "continue", "config": ..., "run": ...}`` is the workflow's own continuation
in a fresh execution (see ControlCheck). Invalid input raises ``InvalidInput``: the execution fails
with that error before taking the lock, so nothing at all changes.
"""

from __future__ import annotations

from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import logger, now, task
from lambdas.errors import InvalidInput
from lambdas.run_state import RunState
from lambdas.settings import settings
from queue_balancer.errors import ConfigurationError
from queue_balancer.lifecycle import EVENTS_AT_START, RunInput
from queue_balancer.model import JsonDict

LOCK_SECONDS_TO_PLAN = 900
"""The first lease on the lock: preflight and planning; ControlCheck renews it per batch."""


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    raw = event.get("input")
    started = now()
    if isinstance(raw, dict) and raw.get("action") == "continue":
        config, run = _continuation(raw)
    else:
        try:
            config = RunInput.parse(raw)
        except ConfigurationError as exc:
            raise InvalidInput(str(exc)) from exc
        run = RunState(run_id=str(event["execution"]), cluster=settings().cluster_name, started_at=started)
    lease = {"now": str(int(started)), "expires_at": str(int(started) + LOCK_SECONDS_TO_PLAN)}
    run = RunState.from_dict({**run.to_dict(), "lock": lease, "events": EVENTS_AT_START})
    logger.info("input accepted", extra={"config": config.to_dict(), "run_id": run.run_id})
    return {"config": config.to_dict(), "run": run.to_dict()}


def _continuation(raw: JsonDict) -> tuple[RunInput, RunState]:
    try:
        config = RunInput.parse(raw["config"])
        run = RunState.from_dict(raw["run"])
    except (KeyError, TypeError, ConfigurationError) as exc:
        raise InvalidInput(
            f"a continuation needs the config and run of the execution it continues: {exc}"
        ) from exc
    if run.cluster != settings().cluster_name:
        raise InvalidInput(
            f"the continuation is for cluster {run.cluster}, this balancer serves {settings().cluster_name}"
        )
    return config, RunState.from_dict({**run.to_dict(), "continuation": True, "next": ""})
