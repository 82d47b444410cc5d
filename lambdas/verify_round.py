"""VerifyRound: after the last batch of a plan, re-read the cluster (waiting a bounded time for queues
still syncing) and re-plan; another round while the core's round policy says so, else the report.
"""

from __future__ import annotations

import time
from dataclasses import replace

from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import cluster, logger, store, task
from lambdas.planning import plan_and_store
from queue_balancer.lifecycle import Outcome, RunInput, Step, advance
from queue_balancer.lifecycle.routing import Route
from queue_balancer.members import MembersPlan, plan_members
from queue_balancer.members_run import another_members_round
from queue_balancer.model import JsonDict, Plan, spread
from queue_balancer.observe import settle
from queue_balancer.planner import plan
from queue_balancer.safety import another_round
from queue_balancer.workflow.leases import iso
from queue_balancer.workflow.run_state import RunState

EVENTS = 7  # this task (5) and the Choice after it (2)


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    config = RunInput.parse(event["config"])
    run = RunState.from_dict(event["run"]).spend(EVENTS)
    client = cluster().client
    replanned: Plan | MembersPlan
    if config.members:  # quorum members in the real-time view: nothing lags there
        current = client.members_snapshot()
        replanned = plan_members(current, config.members_options())
        again = another_members_round(replanned, run.round, config.rounds)
        spread_after = replanned.spread_before
    else:
        current = settle(client, sleep=time.sleep, clock=time.monotonic)
        replanned = plan(current, config.plan_options(quorum_transfer=True))
        again = another_round(replanned, run.round, config.rounds)
        spread_after = spread(replanned.before)
    logger.info(
        "round verified",
        extra={
            "round": run.round,
            "spread_before": run.round_spread,
            "spread_after": spread_after,
            "failed": run.failed,
            "next_moves": len(replanned.moves),
        },
    )
    if again:
        db = store()
        planned, _ = plan_and_store(db, replace(run, round=run.round + 1), config, current, replanned)
        record = db.lifecycle(run.cluster)
        db.save(
            record, advance(record, Step.REPLANNED, now=iso(), counts=planned.counts, round=planned.round)
        )
        return replace(planned, next=Route.NEXT_ROUND).to_dict()
    return replace(run, next=Route.FINISH, outcome=Outcome.COMPLETED.value).to_dict()
