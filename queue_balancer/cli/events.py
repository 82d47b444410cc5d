"""An operator's event (run, load, go, pause, continue, stop, reset) applied to the workflow: the lifecycle
rules (``queue_balancer.lifecycle.decide``) decide first, so a command in the wrong state is refused with a
line naming the state and the way out, and an accepted one becomes exactly one AWS call: StartExecution
(run, load), SendTaskSuccess to the parked run (go, continue, and load/stop/reset while parked), or a
request written into the lifecycle item that the run honours at its next control check (pause, and
load/stop/reset while it balances)."""

from __future__ import annotations

from dataclasses import dataclass

from queue_balancer.cli.aws import Workflow
from queue_balancer.lifecycle import (
    Action,
    Control,
    Decision,
    Event,
    Lifecycle,
    Reaction,
    RunInput,
    State,
    decide,
)


@dataclass(frozen=True)
class Performed:
    """What an accepted event did: one line for the operator, and the execution it started, if any."""

    message: str
    execution_arn: str | None = None

    def __str__(self) -> str:
        return self.message


def perform(workflow: Workflow, event: Event, config: RunInput | None = None) -> Performed:
    """Apply an operator's event: the lifecycle rules decide, one AWS call does it."""
    record = workflow.lifecycle()
    alive = workflow.alive(record) if record.active else True
    reaction = decide(record, event, execution_alive=alive)
    return _apply(workflow, record, event, reaction, config)


def _apply(
    workflow: Workflow, record: Lifecycle, event: Event, reaction: Reaction, config: RunInput | None
) -> Performed:
    action = reaction.action
    if action is Action.START:
        run_input = config or RunInput()
        run_input = RunInput.parse({**run_input.to_dict(), "action": reaction.argument})
        arn = workflow.start(run_input)
        return Performed(
            f"{reaction.message}: started execution {arn.rsplit(':', 1)[-1]} on {workflow.label}", arn
        )
    if action is Action.ANSWER:
        workflow.answer(record, reaction.argument)
        return Performed(reaction.message)
    if action is Action.REQUEST:
        after = workflow.request(record, Control(reaction.argument))
        # The run may have parked between our read and our write: then answer it directly.
        if (
            after.state in (State.READY, State.PAUSE)
            and after.task_token
            and reaction.argument != Control.PAUSE
        ):
            decision = Decision(reaction.argument)
            workflow.answer(after, decision.value)
            return Performed(f"the {after.state} run got '{decision.value}'")
        return Performed(f"{reaction.argument} requested: {reaction.message}")
    if action is Action.WITHDRAW:
        workflow.withdraw(record)
        return Performed(reaction.message)
    if action is Action.CLEAR:
        workflow.clear(record, event)
        hint = ""
        if record.active:
            hint = " (temporary queue-balancer-* policies may remain: `queue-balancer cleanup` removes them)"
        return Performed(reaction.message + hint)
    return Performed(reaction.message)
