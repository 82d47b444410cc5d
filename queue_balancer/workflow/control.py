"""ControlCheck: after planning, between two batches and whenever a batch stops early, decide what comes next.

The rule is ``queue_balancer.lifecycle.routing.route``; this module reads where the run stands, asks
it, and records the decision (a consumed request, the locks' lease and the BALANCING state for a batch,
the child execution for a continuation). The route is ``$.run.next``; the batch's moves never travel in
the payload (RunBatch reads them from the store).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from queue_balancer.contract import BUDGET_SECONDS
from queue_balancer.lifecycle import (
    EVENTS_PER_BATCH,
    EVENTS_PER_CONTROL,
    EVENTS_PER_SLICE,
    LOCK_MARGIN_SECONDS,
    Decision,
    Lifecycle,
    RunInput,
    Step,
    advance,
    fits_in_history,
)
from queue_balancer.lifecycle.routing import Position, Route, Routing, route
from queue_balancer.lock import GlobalParameters
from queue_balancer.model import JsonDict
from queue_balancer.workflow.leases import iso, now, owned_lifecycle, renew_leases
from queue_balancer.workflow.ports import LifecycleStore, RequestChanged
from queue_balancer.workflow.run_state import RunState

CONTINUATION_LEASE_SECONDS = 900
"""How long the locks wait for the child execution of a continuation to take the run over."""


@dataclass(frozen=True)
class ControlEvent:
    """ControlCheck's input: the run, its config, and the names of this execution and state machine."""

    config: RunInput
    run: RunState
    answer: Decision | None
    execution_arn: str
    state_machine_arn: str

    @classmethod
    def parse(cls, event: JsonDict) -> ControlEvent:
        raw = event["run"]
        decision = (raw.get("answer") or {}).get("decision")
        return cls(
            config=RunInput.parse(event["config"]),
            run=replace(RunState.from_dict(raw), next="", wait=0, continuation_name=""),
            answer=Decision(decision) if decision in set(Decision) else None,
            execution_arn=str(event["execution_arn"]),
            state_machine_arn=str(event["state_machine_arn"]),
        )


def control(db: LifecycleStore, connect: Callable[[], GlobalParameters], event: ControlEvent) -> RunState:
    """Route the run and record what the route needs (``connect`` is called only to renew the locks)."""
    run = event.run
    record = owned_lifecycle(db, run)
    if record.counts != run.counts:  # `info` shows every finished batch, whatever comes next
        updated = replace(record, counts=run.counts, updated_at=iso())
        db.save(record, updated)
        record = updated
    try:
        routing = _route(db, run, record, event.answer)
    except RequestChanged:  # the CLI upgraded the request meanwhile (to stop/reset): decide again
        record = db.lifecycle(run.cluster)
        routing = _route(db, run, record, event.answer)
    if routing.go:
        run = replace(run, awaiting_go=False)
    if routing.route == Route.BATCH:
        return next_batch(db, connect(), run, record, event)
    if routing.route == Route.CONTINUE_AS_NEW:
        return continue_as_new(db, connect(), run, record, event)
    if routing.operator and routing.route != Route.PAUSE:  # a paused batch resumes on continue
        run = replace(run, current={})
    outcome = routing.outcome.value if routing.outcome else run.outcome
    return replace(run, next=routing.route, outcome=outcome).spend(EVENTS_PER_CONTROL)


def _route(db: LifecycleStore, run: RunState, record: Lifecycle, answer: Decision | None) -> Routing:
    """The core's route; a request it honours is consumed (RequestChanged if it changed meanwhile)."""
    position = Position(
        answer=answer,
        requested=record.requested,
        awaiting_go=run.awaiting_go,
        plan_done=not run.current and run.batch >= run.batches,
        history_fits_batch=fits_in_history(run.events, EVENTS_PER_BATCH + EVENTS_PER_SLICE),
    )
    routing = route(position)
    if routing.consumes is not None:
        db.save(record, replace(record, requested=None, updated_at=iso()), expect_requested=True)
    return routing


def next_batch(
    db: LifecycleStore, client: GlobalParameters, run: RunState, record: Lifecycle, event: ControlEvent
) -> RunState:
    """Hand RunBatch the batch under way (resumed after a request) or the next one of the plan."""
    expires = int(now() + BUDGET_SECONDS + event.config.poll_seconds + LOCK_MARGIN_SECONDS)
    renew_leases(db, client, run, event.execution_arn, expires)
    db.save(
        record, advance(record, Step.BATCH, now=iso(), counts=run.counts, round=run.round, task_token=None)
    )
    if not run.current:
        run = replace(run, current={"generation": run.generation, "index": run.batch}, batch=run.batch + 1)
    return replace(run, next=Route.BATCH).spend(EVENTS_PER_BATCH)


def continue_as_new(
    db: LifecycleStore, client: GlobalParameters, run: RunState, record: Lifecycle, event: ControlEvent
) -> RunState:
    """Hand the run to a fresh execution; the lifecycle and the locks name it before it starts."""
    name = f"{run.run_id[:70]}-c{run.execution_seq + 1}"
    child = child_execution_arn(event.state_machine_arn, name)
    renew_leases(db, client, run, child, int(now()) + CONTINUATION_LEASE_SECONDS)
    db.save(record, advance(record, Step.CONTINUED, now=iso(), execution_arn=child, task_token=None))
    return replace(
        run, next=Route.CONTINUE_AS_NEW, continuation_name=name, execution_seq=run.execution_seq + 1
    )


def child_execution_arn(state_machine_arn: str, name: str) -> str:
    """``arn:...:stateMachine:<sm>`` -> ``arn:...:execution:<sm>:<name>``: known before it starts."""
    prefix, machine = state_machine_arn.split(":stateMachine:", 1)
    return f"{prefix}:execution:{machine}:{name}"
