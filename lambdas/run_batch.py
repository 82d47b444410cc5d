"""RunBatch: one slice of the current batch (``queue_balancer.batch_run.run_slice`` does the work).

The batch's progress lives in DynamoDB between slices; the payload carries only the route:
``wait_batch`` (long syncs left: the state machine waits ``$.run.wait`` seconds and calls this again)
or ``control`` (ControlCheck decides). This handler parses the event, makes the one call, and turns
the result into the run's counts, its logs and metrics. Its SSM evals wait no longer than the slice's
budget and send no further command once the run has a request (``common.eval_window``).
"""

from __future__ import annotations

import functools
import time
from dataclasses import replace

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import EvalWindow, cluster, eval_window, logger, metrics, store, task
from queue_balancer.batch_run import BatchSlice, SliceResult, run_slice, stop_requested
from queue_balancer.lifecycle import EVENTS_PER_RETRY, EVENTS_PER_SLICE, RunInput
from queue_balancer.member_moves import MemberPhase, MemberProgress
from queue_balancer.model import JsonDict, Move
from queue_balancer.movers import MoveProgress, Phase, derived_run_id
from queue_balancer.workflow.leases import renew_leases
from queue_balancer.workflow.run_state import RunState


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    config = RunInput.parse(event["config"])
    run = RunState.from_dict(event["run"])
    run = run.spend(EVENTS_PER_SLICE + EVENTS_PER_RETRY * int(event.get("retry") or 0))
    batch = BatchSlice(
        run_id=run.run_id,
        cluster=run.cluster,
        generation=int(run.current["generation"]),
        index=int(run.current["index"]),
        concurrency=config.concurrency,
        poll_seconds=config.poll_seconds,
        events=run.events,
        remaining_seconds=context.get_remaining_time_in_millis() / 1000,
        counts=run.counts,
        batches=run.batches,
        invocation=context.aws_request_id,
    )
    db = store()
    execution_arn = str(event["execution_arn"])
    ends = time.monotonic() + batch.budget_seconds
    window = EvalWindow(
        seconds_left=lambda: ends - time.monotonic(),
        stopping=functools.partial(stop_requested, db, run.cluster),
    )
    with cluster() as access, eval_window(window):
        result = run_slice(
            db,
            access.member_mover() if config.members else access.mover(derived_run_id(run.run_id)),
            batch,
            renew=lambda until: renew_leases(db, access.client, run, execution_arn, until),
            writer=access.client,
            on_change=_log_finished,
        )
    return _after(run, batch, result).to_dict()


def _after(run: RunState, batch: BatchSlice, result: SliceResult) -> RunState:
    """The run's payload after the slice: its counts, and the route the state machine takes."""
    logger.info(
        "slice",
        extra={
            "end": result.end.value,
            "batch": batch.index,
            "pending": result.pending,
            "active": result.active,
            "finished": result.finished,
        },
    )
    metrics.add_metric(name="MovesDone", unit=MetricUnit.Count, value=result.done)
    metrics.add_metric(name="MovesFailed", unit=MetricUnit.Count, value=result.failed)
    return replace(
        run,
        done=run.done + result.done,
        failed=run.failed + result.failed,
        attempted=run.attempted + result.finished,
        current={} if result.batch_complete else run.current,
        next=result.route,
        wait=result.wait,
    )


def _log_finished(progress: MoveProgress | MemberProgress) -> None:
    if not progress.finished:
        return
    move = progress.move
    change = (
        {"from": move.source, "to": move.target}
        if isinstance(move, Move)
        else {"add": list(move.add), "remove": list(move.remove)}
    )
    extra = {
        "queue": move.queue,
        "vhost": move.vhost,
        **change,
        "phase": progress.phase.value,
        "outcome": progress.outcome,
        "seconds": round(progress.seconds, 2),
    }
    if progress.phase in (Phase.FAILED, MemberPhase.FAILED):
        logger.warning("move failed", extra=extra)
    else:
        logger.info("move finished", extra=extra)
