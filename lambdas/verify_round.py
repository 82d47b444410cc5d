"""VerifyRound: after the last batch of a plan, measure the distribution and plan another round if the
last one improved it (and rounds are left); otherwise the run goes on to its report.
"""

from __future__ import annotations

from dataclasses import replace

from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import cluster, iso, logger, store, task
from lambdas.planning import plan_and_store
from lambdas.run_state import Route, RunState
from queue_balancer.lifecycle import Outcome, RunInput, Step, advance
from queue_balancer.model import JsonDict
from queue_balancer.report import Report

EVENTS = 7  # this task (5) and the Choice after it (2)


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    config = RunInput.parse(event["config"])
    run = RunState.from_dict(event["run"]).spend(EVENTS)
    current = cluster().client.snapshot()
    spread = Report.of(current, config.plan_options()).spread
    improved = spread < run.round_spread
    logger.info(
        "round verified",
        extra={
            "round": run.round,
            "spread_before": run.round_spread,
            "spread_after": spread,
            "failed": run.failed,
        },
    )
    if improved and run.round < config.rounds:
        db = store()
        planned, result = plan_and_store(db, replace(run, round=run.round + 1), config, current)
        if result.moves:
            record = db.lifecycle(run.cluster)
            db.save(
                record, advance(record, Step.REPLANNED, now=iso(), counts=planned.counts, round=planned.round)
            )
            return replace(planned, next=Route.NEXT_ROUND).to_dict()
    return replace(run, next=Route.FINISH, outcome=Outcome.COMPLETED.value).to_dict()
