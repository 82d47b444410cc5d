"""The lifecycle rules, the workflow's input and its pacing: pure functions, no AWS, no cluster."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queue_balancer.errors import ConfigurationError
from queue_balancer.lifecycle import (
    EVENTS_AT_START,
    EVENTS_PER_BATCH,
    EVENTS_PER_SLICE,
    HISTORY_LIMIT,
    HISTORY_RESERVE,
    Action,
    Control,
    Counts,
    Event,
    EventRefused,
    IllegalTransition,
    Lifecycle,
    RunInput,
    State,
    Step,
    advance,
    decide,
    executions_for,
    finished,
    fits_in_history,
    started,
)

NOW = "2026-01-01T00:00:00+00:00"


def record(
    state: State, *, token: bool = False, requested: Control | None = None, action: str = "load"
) -> Lifecycle:
    return Lifecycle(
        cluster="c",
        state=state,
        run_id=None if state is State.IDLE else "r1",
        execution_arn=None if state is State.IDLE else "arn:aws:states:eu-west-1:1:execution:m:r1",
        action=action,
        task_token="token" if token else None,
        requested=requested,
    )


# ---- operator events ---------------------------------------------------------------------------------

ACCEPTED = {
    # (state, token) -> {event: (action, argument)}
    (State.IDLE, False): {
        Event.RUN: (Action.START, "balance"),
        Event.LOAD: (Action.START, "load"),
        Event.STOP: (Action.NOTHING, ""),
        Event.RESET: (Action.CLEAR, "reset"),
    },
    (State.LOADING, False): {
        Event.LOAD: (Action.NOTHING, ""),
        Event.STOP: (Action.REQUEST, "stop"),
        Event.RESET: (Action.REQUEST, "reset"),
    },
    (State.READY, True): {
        Event.GO: (Action.ANSWER, "go"),
        Event.LOAD: (Action.ANSWER, "reload"),
        Event.STOP: (Action.ANSWER, "stop"),
        Event.RESET: (Action.ANSWER, "reset"),
    },
    (State.BALANCING, False): {
        Event.PAUSE: (Action.REQUEST, "pause"),
        Event.LOAD: (Action.REQUEST, "reload"),
        Event.STOP: (Action.REQUEST, "stop"),
        Event.RESET: (Action.REQUEST, "reset"),
    },
    (State.PAUSE, True): {
        Event.CONTINUE: (Action.ANSWER, "continue"),
        Event.LOAD: (Action.ANSWER, "reload"),
        Event.STOP: (Action.ANSWER, "stop"),
        Event.RESET: (Action.ANSWER, "reset"),
    },
}


@pytest.mark.parametrize(("state", "token"), list(ACCEPTED))
@pytest.mark.parametrize("event", list(Event))
def test_every_event_in_every_state_is_accepted_or_refused_naming_the_state(
    state: State, token: bool, event: Event
) -> None:
    current = record(state, token=token)
    expected = ACCEPTED[(state, token)].get(event)
    if expected is None:
        with pytest.raises(EventRefused, match=state.value):
            decide(current, event)
    else:
        reaction = decide(current, event)
        assert (reaction.action, reaction.argument) == expected
        assert reaction.message


@given(
    state=st.sampled_from(list(State)),
    token=st.booleans(),
    requested=st.none() | st.sampled_from(list(Control)),
    event=st.sampled_from([Event.LOAD, Event.STOP, Event.RESET]),
)
def test_load_stop_and_reset_are_accepted_in_any_state(
    state: State, token: bool, requested: Control | None, event: Event
) -> None:
    reaction = decide(record(state, token=token, requested=requested), event)
    assert reaction.action in set(Action)


def test_go_without_a_token_waits_for_the_run_or_explains_it_balances_by_itself() -> None:
    with pytest.raises(EventRefused, match="not waiting for go yet"):
        decide(record(State.READY, action="load"), Event.GO)
    assert decide(record(State.READY, action="balance"), Event.GO).action is Action.NOTHING


def test_continue_withdraws_a_pending_pause_and_a_weaker_request_never_overrides() -> None:
    pausing = record(State.BALANCING, requested=Control.PAUSE)
    assert decide(pausing, Event.CONTINUE).action is Action.WITHDRAW
    stopping = record(State.BALANCING, requested=Control.STOP)
    assert decide(stopping, Event.PAUSE).action is Action.NOTHING
    assert decide(stopping, Event.RESET).action is Action.REQUEST  # reset is stronger than stop
    assert decide(pausing, Event.STOP).action is Action.REQUEST


@pytest.mark.parametrize("state", [State.LOADING, State.READY, State.BALANCING, State.PAUSE])
def test_a_run_whose_execution_died_accepts_only_stop_and_reset(state: State) -> None:
    dead = record(state, token=True)
    for event in (Event.STOP, Event.RESET):
        assert decide(dead, event, execution_alive=False).action is Action.CLEAR
    for event in (Event.RUN, Event.LOAD, Event.GO, Event.PAUSE, Event.CONTINUE):
        with pytest.raises(EventRefused, match="`reset` clears it"):
            decide(dead, event, execution_alive=False)


# ---- workflow steps ----------------------------------------------------------------------------------


def test_a_run_goes_through_the_seed_states() -> None:
    current = started("c", run_id="r1", execution_arn="arn", action="load", now=NOW)
    assert current.state is State.LOADING
    current = advance(current, Step.PLANNED, now=NOW, counts=Counts(pending=4, skipped=1))
    assert current.state is State.READY
    current = advance(current, Step.WAITING, now=NOW, state=State.READY, task_token="t")
    current = advance(current, Step.BATCH, now=NOW, task_token=None)
    assert (current.state, current.task_token) == (State.BALANCING, None)
    current = advance(current, Step.WAITING, now=NOW, state=State.PAUSE, task_token="t2")
    assert current.state is State.PAUSE
    current = advance(current, Step.CONTINUED, now=NOW, execution_arn="arn2", task_token=None)
    assert (current.state, current.execution_arn) == (State.BALANCING, "arn2")
    current = advance(current, Step.BATCH, now=NOW)
    done = finished(current, "completed", now=NOW, counts=Counts(done=4, skipped=1))
    assert (done.state, done.counts.done, done.task_token) == (State.IDLE, 4, None)
    cleared = finished(current, "reset", now=NOW, counts=Counts(done=4), clear=True)
    assert cleared.counts == Counts() and cleared.round == 0


@pytest.mark.parametrize(
    ("state", "step"),
    [
        (State.IDLE, Step.BATCH),
        (State.IDLE, Step.PLANNED),
        (State.PAUSE, Step.WAITING),
        (State.LOADING, Step.BATCH),
    ],
)
def test_steps_the_state_forbids_are_refused(state: State, step: Step) -> None:
    with pytest.raises(IllegalTransition, match=state.value):
        advance(record(state), step, now=NOW, state=State.PAUSE)


def test_a_run_waits_only_in_ready_or_pause() -> None:
    with pytest.raises(IllegalTransition, match="only in READY or PAUSE"):
        advance(record(State.BALANCING), Step.WAITING, now=NOW, state=State.LOADING)


@given(
    state=st.sampled_from(list(State)),
    requested=st.none() | st.sampled_from(list(Control)),
    counts=st.builds(Counts, *(st.integers(0, 10**6) for _ in range(4))),
    token=st.none() | st.text(min_size=1, max_size=20),
)
def test_the_item_round_trips_also_with_decimal_numbers(
    state: State, requested: Control | None, counts: Counts, token: str | None
) -> None:
    original = Lifecycle(
        cluster="c", state=state, run_id="r", task_token=token, requested=requested, counts=counts
    )
    item = original.to_item()
    assert None not in item.values()
    as_dynamodb = {k: Decimal(v) if isinstance(v, int) else v for k, v in item.items()}
    assert Lifecycle.from_item(as_dynamodb, "c") == original


def test_no_item_is_an_idle_cluster() -> None:
    assert Lifecycle.from_item(None, "c") == Lifecycle(cluster="c")


# ---- the input ---------------------------------------------------------------------------------------


def test_defaults_and_round_trip() -> None:
    parsed = RunInput.parse({"action": "balance"})
    assert (parsed.concurrency, parsed.batch_size, parsed.rounds, parsed.poll_seconds) == (8, 100, 3, 2)
    assert RunInput.parse({}) == parsed == RunInput.parse({"Comment": "Insert your JSON here"})
    full = RunInput.parse(
        {
            "action": "load",
            "concurrency": 4,
            "batch_size": 8,
            "vhosts": ["a"],
            "pattern": "^q",
            "per_vhost": True,
            "max_moves": 3,
            "max_publish_rate": 10,
            "poll_seconds": 2,
        }
    )
    assert RunInput.parse(full.to_dict()) == full
    assert RunInput.parse({"concurrency": 20, "batch_size": 20}).batch_size == 20


def test_a_members_run_input_round_trips_and_gives_the_members_plan_its_options() -> None:
    members = RunInput.parse(
        {"members": True, "group_size": 5, "exclude_nodes": ["rabbit@x"], "vhosts": ["v"]}
    )
    assert RunInput.parse(members.to_dict()) == members
    options = members.members_options()
    assert (options.group_size, options.excluded, options.selection.vhosts) == (
        5,
        frozenset({"rabbit@x"}),
        ("v",),
    )
    assert "members" not in RunInput.parse({}).to_dict()  # a leader run's stored config is unchanged
    unsized = RunInput.parse(
        {"members": True}
    )  # no size given: no queue shrinks, not even after a round trip
    assert RunInput.parse(unsized.to_dict()).members_options().group_size is None


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"action": "rebalance"}, "unknown action 'rebalance'"),
        ({"concurrency": 0}, "concurrency must be between 1 and 40"),
        ({"concurrency": 41}, "concurrency must be between 1 and 40"),
        ({"concurrency": "2"}, "concurrency must be an integer"),
        ({"concurrency": True}, "concurrency must be an integer"),
        ({"pattern": "(unclosed"}, "invalid queue name pattern"),
        ({"concurency": 2}, "unknown field(s) concurency"),
        ({"Comment": "x", "comment": "y"}, "unknown field(s) comment"),
        ({"poll_seconds": 10}, "poll_seconds must be between 1 and 3"),
        ({"vhosts": "/"}, "vhosts must be a list"),
        ({"max_publish_rate": -1}, "max_publish_rate must be a number"),
        ({"max_deliver_rate": float("inf")}, "max_deliver_rate must be a number"),  # 1e999 in JSON
        ({"max_publish_rate": float("nan")}, "max_publish_rate must be a number"),
        ([1, 2], "must be a JSON object"),
        ({"members": "yes"}, "members must be true or false"),
        ({"group_size": 2}, "group_size applies only with members: true"),
        ({"members": True, "group_size": 0}, "group_size must be between 1 and 99"),
        ({"members": True, "exclude_nodes": "rabbit@a"}, "exclude_nodes must be a list of node names"),
        ({"members": True, "per_vhost": True}, "per_vhost does not apply with members: true"),
        ({"members": True, "max_moves": 5}, "max_moves does not apply with members: true"),
    ],
)
def test_invalid_input_is_refused_with_every_problem_named(data: object, problem: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        RunInput.parse(data)
    assert problem in str(raised.value)


# ---- pacing ------------------------------------------------------------------------------------------


def test_ten_thousand_moves_fit_one_execution_when_each_batch_takes_one_slice() -> None:
    """100 batches of 100: a control check and a slice each, 1,660 events in all."""
    assert executions_for(10_000, 100) == 1
    assert EVENTS_AT_START + 100 * (EVENTS_PER_BATCH + EVENTS_PER_SLICE) < HISTORY_LIMIT - HISTORY_RESERVE


def test_long_syncs_continue_the_run_before_the_history_limit() -> None:
    """30 slices per batch: 100 x 277 = 27,700 events, so the run needs a second execution."""
    assert executions_for(10_000, 100, slices_per_batch=30) == 2
    assert executions_for(10_000, 1, slices_per_batch=1) == 7  # 10,000 batches of one move


@settings(deadline=None, max_examples=60)
@given(moves=st.integers(1, 10_000), batch=st.integers(1, 500), slices=st.integers(1, 40))
def test_executions_hold_everything_and_only_as_many_as_needed(moves: int, batch: int, slices: int) -> None:
    batches = -(-moves // batch)
    total = batches * (EVENTS_PER_BATCH + slices * EVENTS_PER_SLICE)
    usable = HISTORY_LIMIT - HISTORY_RESERVE - EVENTS_AT_START
    executions = executions_for(moves, batch, slices)
    assert executions >= -(-total // usable)
    assert executions <= 2 * -(-total // (usable // 2)) + 1
    if total + 30 <= usable:
        assert executions == 1


def test_the_next_step_runs_only_if_it_fits() -> None:
    assert fits_in_history(0, 1000)
    assert not fits_in_history(HISTORY_LIMIT - HISTORY_RESERVE - 999, 1000)


def test_move_streams_is_off_by_default_validated_and_carried_to_the_plan() -> None:
    assert RunInput.parse({}).move_streams is False and "move_streams" not in RunInput.parse({}).to_dict()
    asked = RunInput.parse({"move_streams": True})
    assert asked.plan_options().move_streams and RunInput.parse(asked.to_dict()) == asked
    with pytest.raises(ConfigurationError, match="move_streams must be true or false"):
        RunInput.parse({"move_streams": "yes"})
    with pytest.raises(ConfigurationError, match="move_streams does not apply with members: true"):
        RunInput.parse({"members": True, "move_streams": True})
