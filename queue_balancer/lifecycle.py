"""The balancer's lifecycle on a cluster: states, the events each state accepts, the workflow's input.

This is the seed plugin's FSM (IDLE, READY, BALANCING, PAUSE) as pure data and functions, shared by the
CLI (``queue_balancer.control``), which turns an operator's event into one AWS call, and the Lambda
handlers, which write every transition of the Step Functions workflow into the lifecycle item. Nothing
here touches AWS: the item is a plain ``dict`` that the adapters store in DynamoDB.

States (``LOADING`` is ours: preflight and planning are under way, no token to answer yet)::

    IDLE --run/load--> LOADING --(planned)--> READY --go--> BALANCING <--continue-- PAUSE
                                              READY <--load (re-plan)-- BALANCING --pause--> PAUSE
    any state --stop/reset--> IDLE   (stop keeps the counts for `info`; reset clears them)

Operator events and where each is accepted (everything else is refused with a message naming the
current state): ``load``, ``stop`` and ``reset`` in any state, as in the seed; ``run`` in IDLE; ``go``
in READY; ``pause`` in BALANCING; ``continue`` in PAUSE (or in BALANCING while a pause is still pending,
which withdraws it).

The module also holds the workflow's pacing: how long the state machine waits between two checks of a
move, and how many history events a batch of moves can cost in the worst case, which decides when a run
continues in a fresh execution (Step Functions caps one execution's history at 25,000 events).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from queue_balancer.errors import BalancerError, ConfigurationError
from queue_balancer.model import JsonDict
from queue_balancer.movers import MoveSettings
from queue_balancer.planner import PlanOptions


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


class EventRefused(BalancerError):
    """The event is not accepted in the lifecycle's current state; the message names that state."""


class IllegalTransition(BalancerError):
    """The workflow reported a step its current state does not allow (a bug, or a run that lost its lock)."""


# ---- the lifecycle item ----------------------------------------------------------------------------

LIFECYCLE_SK = "lifecycle"
LOCK_SK = "lock"
RUN_META_SK = "meta"


def cluster_pk(cluster: str) -> str:
    """Partition of a cluster's lifecycle item and lock."""
    return f"cluster#{cluster}"


def run_pk(run_id: str) -> str:
    """Partition of one run's plan batches, results and report."""
    return f"run#{run_id}"


def batch_sk(generation: int, index: int) -> str:
    """Sort key of one batch of one plan; a re-plan (next round or ``load``) is a new generation."""
    return f"plan#{generation:04d}#batch#{index:05d}"


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

    @property
    def active(self) -> bool:
        return self.state is not State.IDLE

    def describe(self) -> str:
        """One line for an operator: state, pending request, counts."""
        parts = [self.state.value]
        if self.requested:
            parts.append(f"({self.requested.value} requested)")
        if self.state in (State.READY, State.PAUSE) and self.task_token:
            parts.append("- waiting for " + ("go" if self.state is State.READY else "continue"))
        c = self.counts
        parts.append(f"- {c.pending} pending, {c.done} done, {c.failed} failed, {c.skipped} skipped")
        if not self.active and self.outcome:
            parts.append(f"- last run: {self.outcome}")
        return " ".join(parts)

    def to_item(self) -> JsonDict:
        """The DynamoDB item (plain values; absent optionals are left out, as DynamoDB wants)."""
        item: JsonDict = {
            "pk": cluster_pk(self.cluster),
            "sk": LIFECYCLE_SK,
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
        }
        item.update({k: v for k, v in optional.items() if v is not None})
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
        current, Step.FINISHED, now=now, task_token=None, requested=None, outcome=outcome, counts=final
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
        return Reaction(Action.START, "load", "loading: the run waits in READY for `go`")
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


# ---- the workflow's input ----------------------------------------------------------------------------

ACTIONS = ("balance", "load")
MAX_CONCURRENCY = 40  # an inline Map runs at most ~40 iterations at once anyway
MAX_BATCH = 50
MAX_ROUNDS = 10
DEFAULT_POLL_SECONDS = 5


@dataclass(frozen=True)
class RunInput:
    """The input of an execution (EventBridge sends ``{"action": "balance"}``), validated in one place.

    ``concurrency`` is the Map's MaxConcurrency; ``batch_size`` moves run between two control checks
    (where pause/stop/reset take effect); ``rounds`` bounds verify-and-replan; the rates (messages per
    second, cluster-wide) gate the run on low traffic, as the seed asks.
    """

    action: str = "balance"
    concurrency: int = 1
    batch_size: int = 10
    rounds: int = 3
    vhosts: tuple[str, ...] = ()
    pattern: str | None = None
    per_vhost: bool = False
    max_moves: int | None = None
    max_publish_rate: float | None = None
    max_deliver_rate: float | None = None
    poll_seconds: int = DEFAULT_POLL_SECONDS

    @classmethod
    def parse(cls, data: Any) -> RunInput:
        """Validate an execution input; raises ConfigurationError naming every problem found."""
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"the input must be a JSON object, not {type(data).__name__}")
        problems: list[str] = []
        unknown = sorted(set(data) - _INPUT_FIELDS)
        if unknown:
            problems.append(
                f"unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(_INPUT_FIELDS))})"
            )
        action = data.get("action", "balance")
        if action not in ACTIONS:
            problems.append(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
        concurrency = _integer(data, "concurrency", 1, 1, MAX_CONCURRENCY, problems)
        batch_default = max(10, concurrency)
        batch_size = _integer(data, "batch_size", batch_default, 1, MAX_BATCH, problems)
        if batch_size < concurrency:
            problems.append(f"batch_size {batch_size} is below concurrency {concurrency}")
        rounds = _integer(data, "rounds", 3, 1, MAX_ROUNDS, problems)
        max_moves = data.get("max_moves")
        if max_moves is not None:
            max_moves = _integer(data, "max_moves", 0, 0, 10**9, problems)
        poll = _integer(data, "poll_seconds", DEFAULT_POLL_SECONDS, 1, 300, problems)
        vhosts = data.get("vhosts", [])
        if not isinstance(vhosts, list) or not all(isinstance(v, str) and v for v in vhosts):
            problems.append("vhosts must be a list of vhost names")
            vhosts = []
        pattern = data.get("pattern")
        if pattern is not None:
            if not isinstance(pattern, str):
                problems.append("pattern must be a string")
                pattern = None
            else:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    problems.append(f"invalid queue name pattern {pattern!r}: {exc}")
        per_vhost = data.get("per_vhost", False)
        if not isinstance(per_vhost, bool):
            problems.append("per_vhost must be true or false")
        rates = {k: _rate(data, k, problems) for k in ("max_publish_rate", "max_deliver_rate")}
        if problems:
            raise ConfigurationError("invalid input: " + "; ".join(problems))
        return cls(
            action=str(action),
            concurrency=concurrency,
            batch_size=batch_size,
            rounds=rounds,
            vhosts=tuple(vhosts),
            pattern=pattern,
            per_vhost=bool(per_vhost),
            max_moves=max_moves,
            max_publish_rate=rates["max_publish_rate"],
            max_deliver_rate=rates["max_deliver_rate"],
            poll_seconds=poll,
        )

    def to_dict(self) -> JsonDict:
        data: JsonDict = {
            "action": self.action,
            "concurrency": self.concurrency,
            "batch_size": self.batch_size,
            "rounds": self.rounds,
            "vhosts": list(self.vhosts),
            "per_vhost": self.per_vhost,
            "poll_seconds": self.poll_seconds,
        }
        optional = {
            "pattern": self.pattern,
            "max_moves": self.max_moves,
            "max_publish_rate": self.max_publish_rate,
            "max_deliver_rate": self.max_deliver_rate,
        }
        data.update({k: v for k, v in optional.items() if v is not None})
        return data

    def plan_options(self, *, quorum_transfer: bool = True) -> PlanOptions:
        return PlanOptions(
            vhosts=self.vhosts,
            pattern=self.pattern,
            per_vhost=self.per_vhost,
            max_moves=self.max_moves,
            quorum_transfer=quorum_transfer,
        )


_INPUT_FIELDS = frozenset(
    {
        "action",
        "concurrency",
        "batch_size",
        "rounds",
        "vhosts",
        "pattern",
        "per_vhost",
        "max_moves",
        "max_publish_rate",
        "max_deliver_rate",
        "poll_seconds",
    }
)


def _integer(
    data: Mapping[str, Any], key: str, default: int, low: int, high: int, problems: list[str]
) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{key} must be an integer, not {value!r}")
        return default
    if not low <= value <= high:
        problems.append(f"{key} must be between {low} and {high}, not {value}")
        return default
    return value


def _rate(data: Mapping[str, Any], key: str, problems: list[str]) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        problems.append(f"{key} must be a number of messages per second (0 or more), not {value!r}")
        return None
    return float(value)


# ---- pacing: waits between checks, history events, lock lifetime ----------------------------------------

HISTORY_LIMIT = 25_000
"""Step Functions fails an execution whose history would exceed this many events."""
HISTORY_RESERVE = 300
"""Events kept free for the run's start and end (lock, preflight, plan, report, notify, release, failure path)."""
EVENTS_AT_START = 60
"""What an execution has spent when its first control check runs (start, lock, preflight, plan, wait for go)."""
EVENTS_PER_MOVE = 11
"""Map iteration started/succeeded (2), StartMove task (5), its Choice (2), the closing Succeed (2)."""
EVENTS_PER_CHECK = 9
"""One more round of the move loop: Wait (2), CheckMove task (5), Choice (2)."""
EVENTS_PER_RETRY = 3
"""A failed attempt of a Lambda task before its retry: scheduled, started, failed."""
EVENTS_PER_BATCH = 11
"""ControlCheck task (5), its Choice (2), the Map state entered/started/succeeded/exited (4)."""
EVENTS_PER_CONTROL = 15
"""A control check that does not start a batch (5 + 2), plus a parked task (6) and 2 for margin."""
PHASES_WORST = 5
"""Most phases one move goes through: syncing, promoting, restoring, verifying, or a rollback instead."""
MAX_WAIT_SECONDS = 300
GROWTH = 1.5
WAITS_PER_PHASE = 8
"""The wait between checks grows until a phase is checked about this many times over its deadline."""
LOCK_MARGIN_SECONDS = 600
PARK_TIMEOUT_SECONDS = 86_400
"""How long a run waits for `go` or `continue` (the parked task's TimeoutSeconds in the ASL)."""


def phase_seconds(settings: MoveSettings, messages: int) -> float:
    """The longest one phase of a move may take: its deadline plus the statistics' settle time."""
    return settings.phase_timeout + messages / settings.messages_per_second + settings.settle_timeout


def wait_seconds(poll: int, phase_checks: int, phase_length: float) -> int:
    """Seconds before the next check of a move: ``poll``, growing by half within a phase, up to length / 8.

    Quick phases (a quorum transfer, a small mirror sync, the statistics catching up) are seen within
    a few ``poll``; a sync of millions of messages is checked about ``WAITS_PER_PHASE`` times instead of
    thousands.
    """
    cap = max(poll, min(MAX_WAIT_SECONDS, math.ceil(phase_length / WAITS_PER_PHASE)))
    return int(min(cap, math.ceil(poll * GROWTH ** min(phase_checks, 40))))


def checks_per_phase(poll: int, phase_length: float) -> int:
    """The most checks one phase can take: waits until its deadline has passed, plus the one that sees it."""
    elapsed, checks = 0.0, 0
    while elapsed < phase_length:
        elapsed += wait_seconds(poll, checks, phase_length)
        checks += 1
    return checks + 1


def worst_move_events(poll: int, messages: int, settings: MoveSettings | None = None) -> int:
    """History events of a move that uses every phase up to its deadline (no retries)."""
    length = phase_seconds(settings or MoveSettings(), messages)
    return EVENTS_PER_MOVE + PHASES_WORST * checks_per_phase(poll, length) * EVENTS_PER_CHECK


def worst_batch_events(poll: int, messages: list[int], settings: MoveSettings | None = None) -> int:
    """History events of a batch whose every move runs into every deadline."""
    return EVENTS_PER_BATCH + sum(worst_move_events(poll, m, settings) for m in messages)


def fits_in_history(used: int, next_batch_events: int) -> bool:
    """Whether the next batch can run in this execution, keeping the reserve for the run's end."""
    return used + next_batch_events + HISTORY_RESERVE <= HISTORY_LIMIT


def moves_per_execution(
    poll: int, messages: int = 0, *, checks_per_move: int | None = None, batch: int = 10
) -> int:
    """How many moves of ``messages`` messages one execution holds, in batches of ``batch`` moves.

    With ``checks_per_move`` None every move is assumed to run into every deadline (the guaranteed
    minimum); otherwise each move costs that many checks (typical: 2-3 for a quorum queue, 4-6 for a
    mirrored one). The last batch always has its worst case reserved.
    """
    worst = worst_move_events(poll, messages)
    cost = worst if checks_per_move is None else EVENTS_PER_MOVE + checks_per_move * EVENTS_PER_CHECK
    budget = HISTORY_LIMIT - HISTORY_RESERVE - EVENTS_AT_START - (EVENTS_PER_BATCH + batch * worst)
    if budget < 0:
        return 0
    batches = budget // (EVENTS_PER_BATCH + batch * cost)
    return int(batches * batch + batch)


def worst_move_seconds(poll: int, messages: int, settings: MoveSettings | None = None) -> float:
    """Wall-clock bound of one move: every phase up to its deadline, plus one wait of overshoot."""
    length = phase_seconds(settings or MoveSettings(), messages)
    return PHASES_WORST * (length + wait_seconds(poll, 40, length))


def lock_seconds_for_batch(poll: int, messages: list[int], concurrency: int) -> int:
    """How long the lock must live to cover a batch (moves run ``concurrency`` at a time)."""
    if not messages:
        return LOCK_MARGIN_SECONDS
    longest = max(worst_move_seconds(poll, m) for m in messages)
    waves = math.ceil(len(messages) / max(concurrency, 1))
    return int(waves * longest + LOCK_MARGIN_SECONDS)
