"""ControlCheck: after planning, between two batches and whenever a batch stops early, decide what comes next.

In order: honour the operator (the answer a parked run got, or a request recorded meanwhile: stop,
reset, load, pause); park in READY while a loaded plan waits for ``go``; then resume the batch under way
(RunBatch stopped for a request) or hand the next one to RunBatch, continue the run in a fresh execution
when this one's history could not hold another slice, or verify the round once the plan is done. The
route is ``$.run.next``; the batch's moves never travel in the payload (RunBatch reads them).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from lambdas.common import iso, logger, now, renew_leases, store, task
from lambdas.errors import LockLost, RequestChanged
from lambdas.ports import LifecycleStore
from lambdas.run_state import Route, RunState
from queue_balancer.batch_slice import BUDGET_SECONDS
from queue_balancer.lifecycle import (
    EVENTS_PER_BATCH,
    EVENTS_PER_CONTROL,
    EVENTS_PER_SLICE,
    LOCK_MARGIN_SECONDS,
    Control,
    Decision,
    Lifecycle,
    Outcome,
    RunInput,
    Step,
    advance,
    fits_in_history,
)
from queue_balancer.model import JsonDict

_ENDINGS = {
    Decision.STOP.value: Outcome.STOPPED,
    Decision.RESET.value: Outcome.RESET,
    Control.STOP: Outcome.STOPPED,
    Control.RESET: Outcome.RESET,
}


@task
def handler(event: JsonDict, context: LambdaContext) -> JsonDict:
    config = RunInput.parse(event["config"])
    raw: dict[str, Any] = event["run"]
    run = RunState.from_dict(raw)
    db = store()
    record = db.lifecycle(run.cluster)
    if record.run_id != run.run_id:
        raise LockLost(f"the lifecycle of cluster {run.cluster} belongs to run {record.run_id} now")
    if record.counts != run.counts:  # `info` shows every finished batch, whatever comes next
        updated = replace(record, counts=run.counts, updated_at=iso())
        db.save(record, updated)
        record = updated
    answer = (raw.get("answer") or {}).get("decision")
    run = replace(run, next="", wait=0, continuation_name="")
    try:
        routed = honour(db, run, record, answer)
    except RequestChanged:
        record = db.lifecycle(run.cluster)
        routed = honour(db, run, record, answer)
    if routed is not None:
        if routed.next != Route.PAUSE:  # a paused batch resumes on continue; the others are dropped
            routed = replace(routed, current={})
        return routed.spend(EVENTS_PER_CONTROL).to_dict()
    if answer == Decision.GO.value:
        run = replace(run, awaiting_go=False)
    if run.awaiting_go:
        return replace(run, next=Route.WAIT_FOR_GO).spend(EVENTS_PER_CONTROL).to_dict()
    if not run.current and run.batch >= run.batches:
        return replace(run, next=Route.VERIFY).spend(EVENTS_PER_CONTROL).to_dict()
    return next_batch(db, run, record, config, event).to_dict()


def honour(db: LifecycleStore, run: RunState, record: Lifecycle, answer: str | None) -> RunState | None:
    """The operator's word, if any: the answer of a parked run first, then a recorded request."""
    if answer in _ENDINGS:
        return replace(run, next=Route.FINISH, outcome=_ENDINGS[answer].value)
    if answer == Decision.RELOAD.value:
        return replace(run, next=Route.LOAD)
    requested = record.requested
    if requested in (Control.STOP, Control.RESET):
        return replace(run, next=Route.FINISH, outcome=_ENDINGS[requested].value)
    if requested in (Control.RELOAD, Control.PAUSE):
        # Consume the request; if the CLI upgraded it meanwhile (to stop/reset), the write fails with
        # RequestChanged and the handler decides again with the stronger request.
        db.save(record, replace(record, requested=None, updated_at=iso()), expect_requested=True)
        return replace(run, next=Route.LOAD if requested is Control.RELOAD else Route.PAUSE)
    return None


def next_batch(
    db: LifecycleStore, run: RunState, record: Lifecycle, config: RunInput, event: JsonDict
) -> RunState:
    """Hand RunBatch the batch under way (resumed after a request) or the next one of the plan."""
    if not fits_in_history(run.events, EVENTS_PER_BATCH + EVENTS_PER_SLICE):
        return continue_as_new(db, run, record, event)
    expires = int(now() + BUDGET_SECONDS + config.poll_seconds + LOCK_MARGIN_SECONDS)
    renew_leases(db, run.run_id, run.cluster, event["execution_arn"], expires)
    db.save(
        record, advance(record, Step.BATCH, now=iso(), counts=run.counts, round=run.round, task_token=None)
    )
    if not run.current:
        run = replace(run, current={"generation": run.generation, "index": run.batch}, batch=run.batch + 1)
    logger.info("batch", extra={**run.current, "events": run.events})
    return replace(run, next=Route.BATCH).spend(EVENTS_PER_BATCH)


def continue_as_new(db: LifecycleStore, run: RunState, record: Lifecycle, event: JsonDict) -> RunState:
    """Hand the run to a fresh execution; the lifecycle and the lock name it before it starts."""
    name = f"{run.run_id[:70]}-c{run.execution_seq + 1}"
    child = child_execution_arn(str(event["state_machine_arn"]), name)
    renew_leases(db, run.run_id, run.cluster, child, int(now()) + 900)
    db.save(record, advance(record, Step.CONTINUED, now=iso(), execution_arn=child, task_token=None))
    logger.info("continuing in a new execution", extra={"events": run.events, "execution": name})
    return replace(
        run, next=Route.CONTINUE_AS_NEW, continuation_name=name, execution_seq=run.execution_seq + 1
    )


def child_execution_arn(state_machine_arn: str, name: str) -> str:
    """``arn:...:stateMachine:<sm>`` -> ``arn:...:execution:<sm>:<name>``: known before it starts."""
    prefix, machine = state_machine_arn.split(":stateMachine:", 1)
    return f"{prefix}:execution:{machine}:{name}"
