"""RunBatch: drive the current batch's moves for one slice of time, with the runner the CLI uses.

The batch's progress lives in DynamoDB between slices (``Store.batch_state``); the payload carries only
the route: ``wait_batch`` (long syncs left: the state machine waits ``$.run.wait`` seconds and calls
this again) or ``control`` (the batch is complete, the operator asked for something, or this
execution's history needs a continuation; ControlCheck decides). Every move that fails is rolled back
by the Mover and the batch goes on. Idempotent under retries: the Mover resumes a move that already
happened, and the stored progress is only replaced by a later one.
"""

from __future__ import annotations

from dataclasses import replace

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import cluster, logger, metrics, now, renew_leases, store, task
from lambdas.errors import LockLost
from lambdas.run_state import Route, RunState
from queue_balancer.batch_slice import BUDGET_SECONDS, SliceEnd, SliceLimits, drive_slice
from queue_balancer.lifecycle import (
    EVENTS_PER_CONTROL,
    EVENTS_PER_RETRY,
    EVENTS_PER_SLICE,
    LOCK_MARGIN_SECONDS,
    RunInput,
    fits_in_history,
)
from queue_balancer.model import JsonDict
from queue_balancer.movers import MoveProgress, Phase, derived_run_id

TIMEOUT_MARGIN_SECONDS = 30.0
"""Time left to the Lambda timeout when a slice ends at the latest (rollbacks, the final write)."""


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    config = RunInput.parse(event["config"])
    run = RunState.from_dict(event["run"])
    run = run.spend(EVENTS_PER_SLICE + EVENTS_PER_RETRY * int(event.get("retry") or 0))
    generation, index = int(run.current["generation"]), int(run.current["index"])
    db = store()
    budget = min(BUDGET_SECONDS, context.get_remaining_time_in_millis() / 1000 - TIMEOUT_MARGIN_SECONDS)
    expires = int(now() + budget + config.poll_seconds + LOCK_MARGIN_SECONDS)
    renew_leases(db, run.run_id, run.cluster, str(event["execution_arn"]), expires)

    def requested() -> bool:
        record = db.lifecycle(run.cluster)
        if record.run_id != run.run_id:
            raise LockLost(f"the lifecycle of cluster {run.cluster} belongs to run {record.run_id} now")
        return record.requested is not None

    state = db.batch_state(run.run_id, generation, index)
    counted = len(state.finished)
    with cluster() as access:
        end = drive_slice(
            access.mover(derived_run_id(run.run_id)),
            state,
            SliceLimits(concurrency=config.concurrency, budget_seconds=max(budget, 0.0)),
            requested,
            on_change=_log_finished,
        )
    logger.info(
        "slice",
        extra={
            "end": end.value,
            "batch": index,
            "pending": len(state.pending),
            "active": len(state.active),
            "finished": len(state.finished),
        },
    )
    run = _count(run, state.finished[counted:])
    db.record_results(run.run_id, generation, index, state.finished)
    if end is SliceEnd.COMPLETE:
        return replace(run, current={}, next=Route.CONTROL, wait=0).to_dict()
    db.save_batch_state(run.run_id, generation, index, state)
    if end is SliceEnd.REQUESTED or not fits_in_history(run.events, EVENTS_PER_SLICE + EVENTS_PER_CONTROL):
        return replace(run, next=Route.CONTROL, wait=0).to_dict()
    return replace(run, next=Route.WAIT_BATCH, wait=config.poll_seconds).to_dict()


def _count(run: RunState, finished: list[MoveProgress]) -> RunState:
    """The run's counts with the moves this slice finished."""
    done = sum(1 for p in finished if p.phase is Phase.DONE)
    metrics.add_metric(name="MovesDone", unit=MetricUnit.Count, value=done)
    metrics.add_metric(name="MovesFailed", unit=MetricUnit.Count, value=len(finished) - done)
    return replace(
        run,
        done=run.done + done,
        failed=run.failed + len(finished) - done,
        attempted=run.attempted + len(finished),
    )


def _log_finished(progress: MoveProgress) -> None:
    if not progress.finished:
        return
    move = progress.move
    extra = {
        "queue": move.queue,
        "vhost": move.vhost,
        "from": move.source,
        "to": move.target,
        "phase": progress.phase.value,
        "outcome": progress.outcome,
        "seconds": round(progress.seconds, 2),
    }
    if progress.phase is Phase.FAILED:
        logger.warning("move failed", extra=extra)
    else:
        logger.info("move finished", extra=extra)
