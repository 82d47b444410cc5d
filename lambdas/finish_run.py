"""FinishRun: the last state, after the DynamoDB lock is released: the cluster's own lock (the CLI's)
is given back and the lifecycle goes back to IDLE.

``stop`` keeps the counts for ``info``; ``reset`` clears them and deletes the run's stored plan. If a
new run took the cluster in the instant since the lock was released, its item is left alone.
"""

from __future__ import annotations

from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import cluster_lock, iso, logger, store, task
from lambdas.errors import LockLost
from lambdas.run_state import RunState
from queue_balancer.lifecycle import Outcome, finished
from queue_balancer.model import JsonDict


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    run = RunState.from_dict(event["run"])
    db = store()
    cluster_lock(run.run_id).release()  # a no-op if another run holds it now
    record = db.lifecycle(run.cluster)
    outcome = run.outcome or Outcome.COMPLETED.value
    if record.run_id != run.run_id:
        logger.info("a new run owns the lifecycle already", extra={"owner": record.run_id})
        return {"state": record.state.value, "outcome": outcome}
    clear = outcome == Outcome.RESET.value
    try:
        db.save(record, finished(record, outcome, now=iso(), counts=run.counts, clear=clear))
    except LockLost:
        logger.info("a new run took the lifecycle meanwhile")
        return {"state": "IDLE", "outcome": outcome}
    if clear:
        db.delete_run(run.run_id)
    return {"state": "IDLE", "outcome": outcome}
