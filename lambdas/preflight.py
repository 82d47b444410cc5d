"""Preflight: refuse to start while a node is down, partitioned or in alarm; skip the run while traffic
is above the gate (the run ends as ``skipped`` with the reason: a busy hour is not a failure).

First it takes the cluster's own lock, the one the CLI takes (``queue_balancer.lock``): while a CLI run
holds it, this run is refused (``LockHeld``, naming the holder and its age) before it writes anything.
Then the run's first lifecycle write (LOADING), or, for a continuation, the hand-over of the run to
this execution.
"""

from __future__ import annotations

from dataclasses import replace

from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import cluster, cluster_lock, iso, logger, store, task
from lambdas.run_state import Route, RunState
from queue_balancer.errors import TrafficGateClosed
from queue_balancer.lifecycle import Outcome, RunInput, Step, advance, started
from queue_balancer.model import JsonDict, Snapshot
from queue_balancer.safety import preflight, traffic_gate


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    config = RunInput.parse(event["config"])
    run = RunState.from_dict(event["run"])
    db = store()
    client = cluster().client
    lock = cluster_lock(run.run_id, until=float(run.lock["expires_at"]), client=client)
    if run.continuation:
        lock.renew()
        before = db.lifecycle(run.cluster)
        db.save(before, advance(before, Step.CONTINUED, now=iso(), execution_arn=event["execution_arn"]))
    else:
        lock.acquire()
        db.start(
            started(
                run.cluster,
                run_id=run.run_id,
                execution_arn=event["execution_arn"],
                action=config.action,
                now=iso(),
            )
        )
    preflight(Snapshot.from_api(client.nodes(), []))
    try:
        traffic_gate(client.overview(), config.max_publish_rate, config.max_deliver_rate)
    except TrafficGateClosed as closed:
        logger.info("run skipped", extra={"reason": str(closed)})
        return replace(run, next=Route.FINISH, outcome=f"{Outcome.SKIPPED.value}: {closed}").to_dict()
    return run.to_dict()
