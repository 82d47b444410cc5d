"""ControlCheck's rule in the core: which way a run goes, from the operator's word and where it stands."""

from __future__ import annotations

import pytest

from queue_balancer.lifecycle import Control, Decision, Outcome
from queue_balancer.lifecycle.routing import Position, Route, Routing, route


@pytest.mark.parametrize(
    ("answer", "outcome"), [(Decision.STOP, Outcome.STOPPED), (Decision.RESET, Outcome.RESET)]
)
def test_an_answer_to_end_finishes_the_run(answer: Decision, outcome: Outcome) -> None:
    assert route(Position(answer=answer, requested=Control.PAUSE)) == Routing(
        Route.FINISH, outcome=outcome, operator=True
    )


def test_a_reload_answer_plans_again() -> None:
    assert route(Position(answer=Decision.RELOAD)) == Routing(Route.LOAD, operator=True)


@pytest.mark.parametrize(
    ("requested", "outcome"), [(Control.STOP, Outcome.STOPPED), (Control.RESET, Outcome.RESET)]
)
def test_a_recorded_stop_or_reset_finishes_without_consuming(requested: Control, outcome: Outcome) -> None:
    """The lifecycle item keeps the request: the run's end clears it."""
    assert route(Position(requested=requested, awaiting_go=True)) == Routing(
        Route.FINISH, outcome=outcome, operator=True
    )


@pytest.mark.parametrize(("requested", "to"), [(Control.PAUSE, Route.PAUSE), (Control.RELOAD, Route.LOAD)])
def test_a_recorded_pause_or_load_is_consumed(requested: Control, to: str) -> None:
    assert route(Position(requested=requested)) == Routing(to, consumes=requested, operator=True)


def test_continue_after_a_pause_resumes_the_plan() -> None:
    assert route(Position(answer=Decision.CONTINUE)) == Routing(Route.BATCH)


def test_a_loaded_plan_waits_for_go_and_goes_on_it() -> None:
    assert route(Position(awaiting_go=True)) == Routing(Route.WAIT_FOR_GO)
    assert route(Position(awaiting_go=True, answer=Decision.CONTINUE)) == Routing(Route.WAIT_FOR_GO)
    assert route(Position(awaiting_go=True, answer=Decision.GO)) == Routing(Route.BATCH, go=True)


def test_a_done_plan_verifies_the_round() -> None:
    assert route(Position(plan_done=True)) == Routing(Route.VERIFY)
    assert route(Position(plan_done=True, history_fits_batch=False)) == Routing(Route.VERIFY)


def test_a_full_history_continues_as_a_new_execution_before_the_next_batch() -> None:
    assert route(Position(history_fits_batch=False)) == Routing(Route.CONTINUE_AS_NEW)


def test_the_operator_comes_before_the_plan_and_the_history() -> None:
    position = Position(requested=Control.PAUSE, plan_done=True, history_fits_batch=False)
    assert route(position).route == Route.PAUSE
