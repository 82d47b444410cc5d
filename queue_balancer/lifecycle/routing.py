"""ControlCheck's rule: which way a run goes after planning, between two batches and when a batch stops.

In order: honour the operator (the answer a parked run got, then a request recorded meanwhile: stop,
reset, load, pause); wait in READY while a loaded plan waits for ``go``; verify the round once the plan
is done; otherwise the next batch, or a fresh execution first when this one's history could not hold
another. Pure: the workflow handler reads the inputs and carries out the decision.
"""

from __future__ import annotations

from dataclasses import dataclass

from queue_balancer.lifecycle.fsm import Control, Decision, Outcome


class Route:
    """Values of ``$.run.next`` that the ASL's Choice states test."""

    BATCH = "batch"
    WAIT_BATCH = "wait_batch"
    CONTROL = "control"
    WAIT_FOR_GO = "wait_for_go"
    PAUSE = "pause"
    LOAD = "load"
    VERIFY = "verify"
    CONTINUE_AS_NEW = "continue_as_new"
    FINISH = "finish"
    NEXT_ROUND = "next_round"


_ENDINGS = {
    Decision.STOP: Outcome.STOPPED,
    Decision.RESET: Outcome.RESET,
    Control.STOP: Outcome.STOPPED,
    Control.RESET: Outcome.RESET,
}


@dataclass(frozen=True)
class Routing:
    """Where the run goes next, and what the handler must record on the way."""

    route: str
    outcome: Outcome | None = None
    """How the run ends (``FINISH`` only)."""
    consumes: Control | None = None
    """The recorded request this route honours: cleared from the lifecycle before the run goes on."""
    operator: bool = False
    """The operator decided (the batch under way is dropped, unless the run only pauses)."""
    go: bool = False
    """The run was answered ``go``: it no longer waits for it."""


@dataclass(frozen=True)
class Position:
    """Where the run stands, as ControlCheck sees it."""

    answer: Decision | None = None
    """What a parked run was answered (``go``, ``continue``, ``reload``, ``stop``, ``reset``)."""
    requested: Control | None = None
    """A request the CLI recorded on the lifecycle item meanwhile."""
    awaiting_go: bool = False
    plan_done: bool = False
    """No batch under way and none left in the plan."""
    history_fits_batch: bool = True
    """This execution's history can hold one more batch (else continue as a new execution)."""


def route(position: Position) -> Routing:
    """The next route of the run (see the module's docstring for the order)."""
    answer, requested = position.answer, position.requested
    if answer in _ENDINGS:
        return Routing(Route.FINISH, outcome=_ENDINGS[answer], operator=True)
    if answer is Decision.RELOAD:
        return Routing(Route.LOAD, operator=True)
    if requested in _ENDINGS:
        return Routing(Route.FINISH, outcome=_ENDINGS[requested], operator=True)
    if requested is Control.RELOAD:
        return Routing(Route.LOAD, consumes=requested, operator=True)
    if requested is Control.PAUSE:
        return Routing(Route.PAUSE, consumes=requested, operator=True)
    go = answer is Decision.GO
    if position.awaiting_go and not go:
        return Routing(Route.WAIT_FOR_GO)
    if position.plan_done:
        return Routing(Route.VERIFY, go=go)
    if not position.history_fits_batch:
        return Routing(Route.CONTINUE_AS_NEW, go=go)
    return Routing(Route.BATCH, go=go)
