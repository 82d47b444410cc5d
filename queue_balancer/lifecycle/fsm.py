"""The balancer's lifecycle on a cluster: states, the events each state accepts, the lifecycle item.

This is the seed plugin's FSM (IDLE, READY, BALANCING, PAUSE) as pure data and functions, shared by the
CLI, which turns an operator's event into one AWS call, and the Lambda handlers, which write every
transition of the Step Functions workflow into the lifecycle item. Nothing here touches AWS: the item is
a plain ``dict`` (its key layout is ``queue_balancer.contract``'s) that the adapters store in DynamoDB.

States (``LOADING`` is ours: preflight and planning are under way, no token to answer yet)::

    IDLE --run/load--> LOADING --(planned)--> READY --go--> BALANCING <--continue-- PAUSE
                                              READY <--load (re-plan)-- BALANCING --pause--> PAUSE
    any state --stop/reset--> IDLE   (stop keeps the counts for `info`; reset clears them)

Operator events and where each is accepted (everything else is refused with a message naming the
current state): ``load``, ``stop`` and ``reset`` in any state, as in the seed; ``run`` in IDLE; ``go``
in READY; ``pause`` in BALANCING; ``continue`` in PAUSE (or in BALANCING while a pause is still pending,
which withdraws it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from queue_balancer.contract import LIFECYCLE_SK, PARTITION_KEY, SORT_KEY, cluster_pk
from queue_balancer.errors import BalancerError
from queue_balancer.model import JsonDict


class State(StrEnum):
    IDLE = "IDLE"
    LOADING = "LOADING"
    READY = "READY"
    BALANCING = "BALANCING"
    PAUSE = "PAUSE"


class Event(StrEnum):
    """What an operator can ask for (the seed's events; ``run`` is its ``go`` from IDLE)."""

    RUN = "run"
    LOAD = "load"
    GO = "go"
    PAUSE = "pause"
    CONTINUE = "continue"
    STOP = "stop"
    RESET = "reset"


class Step(StrEnum):
    """What the workflow itself reports as it goes; each moves the lifecycle to a fixed state."""

    STARTED = "started"  # lock acquired, preflight under way
    CONTINUED = "continued"  # the run goes on in a fresh execution (named before it starts)
    PLANNED = "planned"  # the plan is stored
    WAITING = "waiting"  # parked on a task token: READY (for go) or PAUSE (for continue)
    BATCH = "batch"  # a batch of moves starts
    REPLANNED = "replanned"  # the next round is planned while balancing
    FINISHED = "finished"  # the run ended (done, stopped, reset or failed) and released its lock


class Control(StrEnum):
    """A request recorded for the running execution, honoured at its next control check."""

    PAUSE = "pause"
    RELOAD = "reload"
    STOP = "stop"
    RESET = "reset"


# A stronger request replaces a weaker one; a weaker one never overrides a stronger one.
SLICE_MARK_PREFIX = "slice_mark_"
"""The lifecycle item's attribute of one slice's mark: this, then ``slice_mark(request_id)``."""


def slice_mark(invocation: str) -> str:
    """A Lambda request id as the key of its slice's mark (letters, digits and ``_``: an attribute name
    the store's update expressions may use as a placeholder)."""
    return "".join(c if c.isalnum() else "_" for c in invocation) or "unknown"


_CONTROL_RANK = {Control.PAUSE: 0, Control.RELOAD: 1, Control.STOP: 2, Control.RESET: 3}


class Decision(StrEnum):
    """The answer a parked execution gets (the output of SendTaskSuccess)."""

    GO = "go"
    CONTINUE = "continue"
    RELOAD = "reload"
    STOP = "stop"
    RESET = "reset"


class Outcome(StrEnum):
    COMPLETED = "completed"
    STOPPED = "stopped"
    RESET = "reset"
    FAILED = "failed"
    SKIPPED = "skipped"  # the traffic gate was closed: nothing was moved, the run is not a failure


class EventRefused(BalancerError):
    """The event is not accepted in the lifecycle's current state; the message names that state."""


class IllegalTransition(BalancerError):
    """The workflow reported a step its current state does not allow (a bug, or a run that lost its lock)."""


# ---- the lifecycle item ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """Moves of the run so far: still to do in the current plan, done, failed; queues skipped."""

    pending: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"pending": self.pending, "done": self.done, "failed": self.failed, "skipped": self.skipped}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Counts:
        return cls(*(int(data.get(k) or 0) for k in ("pending", "done", "failed", "skipped")))


@dataclass(frozen=True)
class BatchProgress:
    """The batch under way as its moves finish (RunBatch writes it about every second while it drives
    them), so ``status`` shows a batch's progress, not only what the control checks between batches saw."""

    number: int
    """1-based, within the current plan."""
    of: int
    """Batches in the current plan."""
    moves: int
    done: int = 0
    failed: int = 0
    under_way: int = 0

    @property
    def to_start(self) -> int:
        return max(self.moves - self.done - self.failed - self.under_way, 0)

    def describe(self) -> str:
        return (
            f"batch {self.number} of {self.of}: {self.done} of {self.moves} moves done, {self.failed} "
            f"failed, {self.under_way} under way, {self.to_start} to start"
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "number": self.number,
            "of": self.of,
            "moves": self.moves,
            "done": self.done,
            "failed": self.failed,
            "under_way": self.under_way,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchProgress:
        return cls(
            **{f: int(data.get(f) or 0) for f in ("number", "of", "moves", "done", "failed", "under_way")}
        )


@dataclass(frozen=True)
class Lifecycle:
    """The lifecycle item of one cluster: what ``info`` and ``status`` show at any time."""

    cluster: str
    state: State = State.IDLE
    run_id: str | None = None
    execution_arn: str | None = None
    action: str | None = None
    task_token: str | None = None
    requested: Control | None = None
    counts: Counts = field(default_factory=Counts)
    round: int = 0
    outcome: str = ""
    started_at: str | None = None
    updated_at: str | None = None
    batch: BatchProgress | None = None
    """The batch under way or the last one of the current plan; none before the first or after the run."""
    slices: Mapping[str, int] = field(default_factory=dict)
    """The RunBatch slices of the run under way, by invocation (the Lambda request id, ``slice_mark``):
    each in a Lambda that ends by then at the latest (epoch seconds). A slice removes its own mark when
    it ends, so a retried slice that overlaps another cannot remove the other's. One attribute each
    (``SLICE_MARK_PREFIX``): the store's writes of changed attributes then never touch another's."""
    ending: str | None = None
    """Set by Cleanup for a run whose execution ended without its own way out (the execution's status:
    ABORTED, TIMED_OUT): a slice under way stops, and no slice starts any more."""

    @property
    def active(self) -> bool:
        return self.state is not State.IDLE

    @property
    def waiting_for(self) -> str | None:
        """The command a parked run waits for (``go`` in READY, ``continue`` in PAUSE), else None."""
        if self.task_token and self.state is State.READY:
            return "go"
        if self.task_token and self.state is State.PAUSE:
            return "continue"
        return None

    def describe(self) -> str:
        """One line for an operator: state, pending request, counts."""
        parts = [self.state.value]
        if self.requested:
            parts.append(f"({self.requested.value} requested)")
        if self.waiting_for:
            parts.append(f"- waiting for {self.waiting_for}")
        c = self.counts
        parts.append(f"- {c.pending} pending, {c.done} done, {c.failed} failed, {c.skipped} skipped")
        if not self.active and self.outcome:
            parts.append(f"- last run: {self.outcome}")
        return " ".join(parts)

    def to_item(self) -> JsonDict:
        """The DynamoDB item (plain values; absent optionals are left out, as DynamoDB wants)."""
        item: JsonDict = {
            PARTITION_KEY: cluster_pk(self.cluster),
            SORT_KEY: LIFECYCLE_SK,
            "cluster": self.cluster,
            "state": self.state.value,
            **self.counts.to_dict(),
            "round": self.round,
            "outcome": self.outcome,
        }
        optional = {
            "run_id": self.run_id,
            "execution_arn": self.execution_arn,
            "action": self.action,
            "task_token": self.task_token,
            "requested": self.requested.value if self.requested else None,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "batch": self.batch.to_dict() if self.batch else None,
            "ending": self.ending,
        }
        item.update({k: v for k, v in optional.items() if v is not None})
        item.update({SLICE_MARK_PREFIX + key: until for key, until in self.slices.items()})
        return item

    @classmethod
    def from_item(cls, item: Mapping[str, Any] | None, cluster: str) -> Lifecycle:
        """Read an item back (numbers may come as ``Decimal``); no item means a cluster never balanced."""
        if not item:
            return cls(cluster=cluster)
        requested = item.get("requested")
        return cls(
            cluster=str(item.get("cluster") or cluster),
            state=State(item.get("state") or State.IDLE),
            run_id=_opt_str(item.get("run_id")),
            execution_arn=_opt_str(item.get("execution_arn")),
            action=_opt_str(item.get("action")),
            task_token=_opt_str(item.get("task_token")),
            requested=Control(requested) if requested else None,
            counts=Counts.from_dict(item),
            round=int(item.get("round") or 0),
            outcome=str(item.get("outcome") or ""),
            started_at=_opt_str(item.get("started_at")),
            updated_at=_opt_str(item.get("updated_at")),
            batch=BatchProgress.from_dict(item["batch"]) if item.get("batch") else None,
            slices={
                key.removeprefix(SLICE_MARK_PREFIX): int(until)
                for key, until in item.items()
                if key.startswith(SLICE_MARK_PREFIX)
            },
            ending=_opt_str(item.get("ending")),
        )


def _opt_str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


# ---- workflow transitions ----------------------------------------------------------------------------

_TRANSITIONS: dict[Step, tuple[frozenset[State], State | None]] = {
    # step: (states it may come from, state it leads to; None = stays where it is)
    Step.STARTED: (frozenset({State.IDLE}), State.LOADING),
    Step.CONTINUED: (frozenset({State.READY, State.BALANCING, State.PAUSE}), State.BALANCING),
    Step.PLANNED: (frozenset({State.LOADING, State.READY, State.BALANCING, State.PAUSE}), State.READY),
    Step.WAITING: (frozenset({State.READY, State.BALANCING}), None),  # target given by the caller
    Step.BATCH: (frozenset({State.READY, State.BALANCING, State.PAUSE}), State.BALANCING),
    Step.REPLANNED: (frozenset({State.READY, State.BALANCING, State.PAUSE}), State.BALANCING),
    Step.FINISHED: (frozenset(State), State.IDLE),
}


_PLAN_ENDS = frozenset({Step.PLANNED, Step.REPLANNED, Step.FINISHED})
"""Steps after which the last batch's progress belongs to no current plan."""


def advance(current: Lifecycle, step: Step, *, now: str, **changes: Any) -> Lifecycle:
    """The lifecycle after a workflow step, with ``updated_at`` set; refuses steps the state forbids.

    ``changes`` are field updates that come with the step (counts, token, execution ARN...).
    """
    sources, target = _TRANSITIONS[step]
    if current.state not in sources:
        raise IllegalTransition(
            f"the workflow cannot report '{step.value}' while the balancer of cluster {current.cluster} "
            f"is {current.state.value}"
        )
    state = changes.pop("state", None) or target or current.state
    if step in _PLAN_ENDS:
        changes.setdefault("batch", None)
    if step is Step.WAITING and state not in (State.READY, State.PAUSE):
        raise IllegalTransition(f"a run waits only in READY or PAUSE, not in {state}")
    return replace(current, state=State(state), updated_at=now, **changes)


def started(cluster: str, *, run_id: str, execution_arn: str, action: str, now: str) -> Lifecycle:
    """The first write of a run: counts cleared, LOADING."""
    return Lifecycle(
        cluster=cluster,
        state=State.LOADING,
        run_id=run_id,
        execution_arn=execution_arn,
        action=action,
        started_at=now,
        updated_at=now,
    )


def finished(
    current: Lifecycle, outcome: str, *, now: str, counts: Counts | None = None, clear: bool = False
) -> Lifecycle:
    """Back to IDLE with the run's final ``counts``; ``reset`` (``clear``) zeroes them instead."""
    final = Counts() if clear else (counts or current.counts)
    ended = advance(
        current,
        Step.FINISHED,
        now=now,
        task_token=None,
        requested=None,
        outcome=outcome,
        counts=final,
        slices={},
        ending=None,
    )
    return replace(ended, round=0) if clear else ended


# ---- operator events -------------------------------------------------------------------------------


class Action(StrEnum):
    """The one thing the CLI does for an accepted event."""

    START = "start"  # StartExecution with ``argument`` as the action ("balance" or "load")
    ANSWER = "answer"  # SendTaskSuccess to the parked execution with ``argument`` as the decision
    REQUEST = "request"  # record ``argument`` (a Control) for the next control check
    WITHDRAW = "withdraw"  # remove the pending pause request
    CLEAR = "clear"  # the run is gone (execution ended without reaching IDLE): write IDLE, drop its lock
    NOTHING = "nothing"  # accepted, nothing to do (the message says why)


@dataclass(frozen=True)
class Reaction:
    action: Action
    argument: str = ""
    message: str = ""


def decide(current: Lifecycle, event: Event, *, execution_alive: bool = True) -> Reaction:
    """How the lifecycle reacts to an operator's event; raises ``EventRefused`` naming the state.

    ``execution_alive`` is whether the execution recorded in the item still runs; an active state with
    a dead execution (aborted from the console, or a failure whose cleanup could not finish) accepts only
    ``stop`` and ``reset``, which clear it.
    """
    state = current.state
    if state is not State.IDLE and not execution_alive:
        if event in (Event.STOP, Event.RESET):
            return Reaction(
                Action.CLEAR,
                event.value,
                f"the run's execution ended while the balancer was {state}: marked IDLE and released its lock",
            )
        raise EventRefused(
            f"cannot {event.value}: the balancer is {state} but its execution {current.execution_arn} has "
            "ended; `reset` clears it"
        )
    if event is Event.STOP or event is Event.RESET:
        return _end(current, event)
    if event is Event.LOAD:
        return _load(current)
    handler = {
        Event.RUN: _run,
        Event.GO: _go,
        Event.PAUSE: _pause,
        Event.CONTINUE: _continue,
    }[event]
    return handler(current)


def _refuse(event: Event, current: Lifecycle, hint: str) -> EventRefused:
    return EventRefused(f"cannot {event.value}: the balancer is {current.state}{hint}")


def _request(current: Lifecycle, control: Control, message: str) -> Reaction:
    pending = current.requested
    if pending is not None and _CONTROL_RANK[pending] >= _CONTROL_RANK[control]:
        return Reaction(Action.NOTHING, message=f"{pending.value} is already requested")
    return Reaction(Action.REQUEST, control.value, message)


def _end(current: Lifecycle, event: Event) -> Reaction:
    control = Control.STOP if event is Event.STOP else Control.RESET
    state = current.state
    if state is State.IDLE:
        if event is Event.RESET:
            return Reaction(Action.CLEAR, event.value, "state cleared; the balancer is IDLE")
        return Reaction(Action.NOTHING, message="the balancer is already IDLE")
    if state in (State.READY, State.PAUSE) and current.task_token:
        return Reaction(Action.ANSWER, control.value, f"the {state} run ends now")
    return _request(current, control, f"the {state} run ends after its current step")


def _load(current: Lifecycle) -> Reaction:
    state = current.state
    if state is State.IDLE:
        return Reaction(Action.START, "load", "loading: planning a run")
    if state is State.LOADING:
        return Reaction(Action.NOTHING, message="the balancer is already LOADING")
    if state in (State.READY, State.PAUSE) and current.task_token:
        return Reaction(Action.ANSWER, Decision.RELOAD.value, "re-planning; the run then waits in READY")
    return _request(current, Control.RELOAD, "the run re-plans after its current batch and waits in READY")


def _run(current: Lifecycle) -> Reaction:
    if current.state is State.IDLE:
        return Reaction(Action.START, "balance", "balancing")
    hints = {
        State.READY: " with a plan loaded: `go` balances it",
        State.PAUSE: ": `continue` resumes the run",
    }
    raise _refuse(Event.RUN, current, hints.get(current.state, ": one run at a time (`stop` ends it)"))


def _go(current: Lifecycle) -> Reaction:
    if current.state is State.READY:
        if current.task_token:
            return Reaction(Action.ANSWER, Decision.GO.value, "balancing")
        if current.action == "balance":
            return Reaction(Action.NOTHING, message="the run balances on its own (it was started with `run`)")
        raise _refuse(Event.GO, current, " but not waiting for go yet; try again in a moment")
    hints = {
        State.IDLE: ": nothing is loaded (`load` plans a run, `run` balances at once)",
        State.LOADING: ": the plan is not ready yet",
        State.PAUSE: ": `continue` resumes the run",
    }
    raise _refuse(Event.GO, current, hints.get(current.state, ""))


def _pause(current: Lifecycle) -> Reaction:
    if current.state is State.BALANCING:
        return _request(current, Control.PAUSE, "the run pauses after its current batch")
    raise _refuse(Event.PAUSE, current, "; only a BALANCING run can pause")


def _continue(current: Lifecycle) -> Reaction:
    if current.state is State.PAUSE:
        if current.task_token:
            return Reaction(Action.ANSWER, Decision.CONTINUE.value, "balancing again")
        raise _refuse(Event.CONTINUE, current, " but not parked yet; try again in a moment")
    if current.state is State.BALANCING and current.requested is Control.PAUSE:
        return Reaction(Action.WITHDRAW, Control.PAUSE.value, "pause request withdrawn")
    raise _refuse(Event.CONTINUE, current, "; only a PAUSEd run can continue")
