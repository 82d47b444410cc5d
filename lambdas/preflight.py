"""Preflight: refuse to start while a node is down, partitioned or in alarm, or traffic is above the gate.

Also the run's first lifecycle write (LOADING), or, for a continuation, the hand-over of the run to
this execution.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import cluster, iso, store, task
from lambdas.run_state import RunState
from queue_balancer.errors import ClusterNotReady
from queue_balancer.lifecycle import RunInput, Step, advance, started
from queue_balancer.model import JsonDict, Snapshot
from queue_balancer.safety import preflight


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    config = RunInput.parse(event["config"])
    run = RunState.from_dict(event["run"])
    db = store()
    if run.continuation:
        before = db.lifecycle(run.cluster)
        db.save(before, advance(before, Step.CONTINUED, now=iso(), execution_arn=event["execution_arn"]))
    else:
        db.start(
            started(
                run.cluster,
                run_id=run.run_id,
                execution_arn=event["execution_arn"],
                action=config.action,
                now=iso(),
            )
        )
    client = cluster().client
    preflight(Snapshot.from_api(client.nodes(), []))
    gate(config, client.overview())
    return run.to_dict()


def gate(config: RunInput, overview: dict[str, Any]) -> None:
    """The seed's low-traffic window: cluster-wide publish and deliver rates under the input's limits."""
    stats = overview.get("message_stats") or {}
    limits = {"publish": config.max_publish_rate, "deliver_get": config.max_deliver_rate}
    over = []
    for key, limit in limits.items():
        if limit is None:
            continue
        rate = float((stats.get(f"{key}_details") or {}).get("rate") or 0.0)
        if rate > limit:
            over.append(f"{key.replace('_get', '')} rate {rate:.1f}/s is above {limit:g}/s")
    if over:
        raise ClusterNotReady("traffic gate closed: " + "; ".join(over))
