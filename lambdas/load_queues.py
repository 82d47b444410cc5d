"""LoadQueues: classify and plan (READY). The plan goes to DynamoDB, one item per batch.

Also what ``load`` does to a run under way: a fresh plan from the cluster as it is now.
"""

from __future__ import annotations

from dataclasses import replace

from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import cluster, logger, store, task
from lambdas.planning import plan_and_store, report_dict
from queue_balancer.contract import PlanKind
from queue_balancer.lifecycle import RunInput, Step, advance
from queue_balancer.members import MembersPlan
from queue_balancer.model import JsonDict
from queue_balancer.report import Report
from queue_balancer.workflow.leases import iso
from queue_balancer.workflow.run_state import RunState

EVENTS = 7  # this task (5) and the Choice after it (2)


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    config = RunInput.parse(event["config"])
    run = RunState.from_dict(event["run"])
    db = store()
    client = cluster().client
    current = client.members_snapshot() if config.members else client.snapshot()
    reload = run.generation > 0
    run, result = plan_and_store(db, replace(run, round=max(run.round, 1)), config, current)
    if not reload:
        before = (
            result.distribution_dict()  # members per node, not the (possibly many) changes
            if isinstance(result, MembersPlan)
            else report_dict(Report.of(current, config.plan_options()))
        )
        db.put_meta(
            run.run_id,
            config=config.to_dict(),
            started_at=int(run.started_at),
            cluster=run.cluster,
            kind=(PlanKind.MEMBERS if config.members else PlanKind.LEADERS).value,
            before=before,
        )
    record = db.lifecycle(run.cluster)
    db.save(record, advance(record, Step.PLANNED, now=iso(), counts=run.counts, round=run.round))
    logger.info(
        "planned",
        extra={
            "moves": len(result.moves),
            "skipped": len(result.skipped),
            "batches": run.batches,
            "generation": run.generation,
        },
    )
    awaiting = config.action == "load" or reload
    return replace(run, next="", awaiting_go=awaiting).spend(EVENTS).to_dict()
