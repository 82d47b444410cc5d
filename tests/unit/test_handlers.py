"""Every handler of ``lambdas/``, called as Lambda calls it, against an in-memory store and cluster.

The fakes are served through ``lambdas.common.inject`` (the handlers' one seam); each test sends the
event the ASL's Parameters build and checks the JSON the handler returns and what it wrote to the store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from lambdas import (
    cleanup,
    control_check,
    finish_run,
    load_queues,
    park_run,
    preflight,
    report_run,
    run_batch,
    validate_input,
    verify_round,
)
from lambdas.common import ClusterAccess, Dependencies, inject, reset
from lambdas.errors import InvalidInput, ManagementUnavailable
from queue_balancer.contract import ENVIRONMENT_VARIABLES, STATUS_CHANGE, PlanKind
from queue_balancer.errors import ClusterNotReady, ManagementError
from queue_balancer.lifecycle import Control, Decision, State
from queue_balancer.lifecycle.routing import Route
from queue_balancer.lock import LockLost
from queue_balancer.model import JsonDict, QueueRef
from queue_balancer.movers import Phase, derived_run_id
from queue_balancer.movers.policies import temporary_policy_name
from tests.unit.fake_cluster import Counter, FakeCluster, FakeQueue, Members, Transfer
from tests.unit.fake_store import FakeStore

CLUSTER = "main"
RUN_ID = "run-1"
MACHINE = "arn:aws:states:us-east-1:123456789012:stateMachine:balancer"
EXECUTION_ARN = "arn:aws:states:us-east-1:123456789012:execution:balancer:run-1"
HA_TWO = {"ha-mode": "exactly", "ha-params": 2, "ha-sync-mode": "automatic"}


@dataclass(frozen=True)
class Context:
    """The parts of the Lambda context powertools and the handlers read."""

    function_name: str = "queue-balancer-test"
    aws_request_id: str = "request-1"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:queue-balancer-test"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


CONTEXT: Any = Context()
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


@dataclass
class World:
    store: FakeStore
    cluster: FakeCluster

    def event(self, **fields: Any) -> JsonDict:
        """What every Task's Parameters pass, plus ``fields``."""
        return {"execution": RUN_ID, "execution_arn": EXECUTION_ARN, "retry": 0, **fields}

    def request(self, control: Control) -> None:
        """What the CLI's ``pause``/``stop``/... records on the lifecycle item."""
        self.store.items[CLUSTER]["requested"] = control.value


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    for field, variable in ENVIRONMENT_VARIABLES.items():
        monkeypatch.setenv(variable, CLUSTER if field == "cluster_name" else f"test-{field}")
    reset()
    store, fake = FakeStore(), FakeCluster()
    fake.add_policy("/", "ha-two", ".*", HA_TWO)
    for index in range(6):  # every leader on node a: four moves make it 2/2/2
        fake.add_queue(FakeQueue("/", f"q{index}", "a", messages=10))
        fake.queue_action("/", f"q{index}", "sync")
    store.hold_lock(CLUSTER, RUN_ID)
    access = ClusterAccess(fake, Transfer(fake), Counter(fake), changer=lambda: Members(fake))
    with inject(Dependencies(store=lambda: store, cluster=lambda: access)):
        yield World(store, fake)
    reset()


def started(world: World, run_input: JsonDict | None = None) -> JsonDict:
    """ValidateInput and Preflight: the payload with which a run enters LoadQueues."""
    payload = validate_input.handler({"input": run_input or {}, "execution": RUN_ID}, CONTEXT)
    payload["run"] = preflight.handler(world.event(**payload), CONTEXT)
    return payload


def loaded(world: World, run_input: JsonDict | None = None) -> JsonDict:
    payload = started(world, run_input)
    payload["run"] = load_queues.handler(world.event(**payload), CONTEXT)
    return payload


def control(world: World, payload: JsonDict, answer: Decision | None = None) -> JsonDict:
    if answer is not None:
        payload["run"]["answer"] = {"decision": answer.value}
    event = world.event(**payload, state_machine_arn=MACHINE)
    payload["run"] = control_check.handler(event, CONTEXT)
    return payload


def balanced(world: World) -> JsonDict:
    """A whole round: every batch run until ControlCheck routes to VerifyRound."""
    payload = control(world, loaded(world))
    while payload["run"]["next"] == Route.BATCH:
        payload["run"] = run_batch.handler(world.event(**payload), CONTEXT)
        payload = control(world, payload)
    assert payload["run"]["next"] == Route.VERIFY
    return payload


# ---- ValidateInput -----------------------------------------------------------------------------------


def test_validate_input_starts_the_run_named_after_the_execution(world: World) -> None:
    payload = validate_input.handler({"input": {"action": "balance"}, "execution": RUN_ID}, CONTEXT)
    assert payload["config"]["action"] == "balance"
    assert payload["run"]["run_id"] == RUN_ID and payload["run"]["cluster"] == CLUSTER
    assert int(payload["run"]["lock"]["expires_at"]) > int(payload["run"]["lock"]["now"])
    assert world.store.items == {}  # nothing changes before the lock is taken


def test_validate_input_refuses_an_unknown_action(world: World) -> None:
    with pytest.raises(InvalidInput, match="unknown action 'shuffle'"):
        validate_input.handler({"input": {"action": "shuffle"}, "execution": RUN_ID}, CONTEXT)


def test_validate_input_refuses_a_continuation_for_another_cluster(world: World) -> None:
    payload = validate_input.handler({"input": {}, "execution": RUN_ID}, CONTEXT)
    payload["run"]["cluster"] = "other"
    with pytest.raises(InvalidInput, match="continuation is for cluster other"):
        validate_input.handler({"input": {"action": "continue", **payload}, "execution": "c1"}, CONTEXT)


# ---- Preflight ---------------------------------------------------------------------------------------


def test_preflight_writes_the_first_lifecycle_of_the_run(world: World) -> None:
    payload = started(world)
    record = world.store.lifecycle(CLUSTER)
    assert (record.state, record.run_id, record.execution_arn) == (State.LOADING, RUN_ID, EXECUTION_ARN)
    assert payload["run"]["run_id"] == RUN_ID


def test_preflight_removes_the_temporary_policies_of_runs_that_are_not_live(world: World) -> None:
    """A stopped execution or a killed CLI left them: they pin their queues until a run removes them."""
    dead = temporary_policy_name(QueueRef("/", "q0"), "dead1")
    world.cluster.add_policy("/", dead, "^q0$", HA_TWO, priority=999)
    started(world)
    assert ("/", dead) not in world.cluster.policy_store
    assert ("/", "ha-two") in world.cluster.policy_store


def test_preflight_refuses_while_a_node_is_down(world: World) -> None:
    world.cluster.kill("c")
    with pytest.raises(ClusterNotReady, match="node c is not running"):
        started(world)


def test_preflight_skips_the_run_when_the_traffic_gate_is_closed(world: World) -> None:
    """A busy hour is not a failure: the run goes to its report as skipped (no exception, no alarm)."""
    world.cluster.publish_rate = 500.0
    run = started(world, {"max_publish_rate": 100})["run"]
    assert run["next"] == "finish"
    assert run["outcome"] == "skipped: traffic gate closed: publish rate 500.0/s is above 100/s"


def test_a_management_5xx_is_named_for_the_state_machines_retry(world: World) -> None:
    world.cluster.fail_next("nodes", ManagementError("GET /api/nodes: HTTP 503", status=503))
    with pytest.raises(ManagementUnavailable, match="503"):
        started(world)


# ---- LoadQueues --------------------------------------------------------------------------------------


def test_load_queues_stores_the_plan_in_batches(world: World) -> None:
    payload = loaded(world, {"batch_size": 3})
    run = payload["run"]
    assert (run["plan_moves"], run["batches"], run["generation"], run["round"]) == (4, 2, 1, 1)
    assert [len(world.store.batches[(RUN_ID, 1, i)]) for i in range(2)] == [3, 1]
    assert '"moves"' not in json.dumps(run)  # the plan never travels in the payload
    assert world.store.lifecycle(CLUSTER).state is State.READY and run["awaiting_go"] is False
    assert world.store.meta(RUN_ID)["before"]["nodes"] == ["a", "b", "c"]


def test_load_queues_waits_for_go_after_a_load(world: World) -> None:
    payload = loaded(world, {"action": "load"})
    assert payload["run"]["awaiting_go"] is True
    assert control(world, payload)["run"]["next"] == Route.WAIT_FOR_GO


# ---- ParkRun -----------------------------------------------------------------------------------------


def test_park_run_keeps_the_token_and_extends_the_lock(world: World) -> None:
    payload = loaded(world, {"action": "load"})
    event = world.event(run=payload["run"], state="READY", token="task-token-1")
    assert park_run.handler(event, CONTEXT) == {"parked": "READY"}
    record = world.store.lifecycle(CLUSTER)
    assert (record.state, record.task_token) == (State.READY, "task-token-1")
    assert world.store.locks[CLUSTER]["expires_at"] > 0


def test_park_run_refuses_when_another_run_holds_the_lock(world: World) -> None:
    payload = loaded(world, {"action": "load"})
    world.store.hold_lock(CLUSTER, "run-2")
    with pytest.raises(LockLost, match="run-1 no longer holds the lock"):
        park_run.handler(world.event(run=payload["run"], state="READY", token="t"), CONTEXT)
    assert world.store.lifecycle(CLUSTER).task_token is None


# ---- ControlCheck ------------------------------------------------------------------------------------


def test_control_check_hands_the_next_batch_after_go(world: World) -> None:
    payload = control(world, loaded(world, {"action": "load"}), Decision.GO)
    assert payload["run"]["next"] == Route.BATCH
    assert payload["run"]["current"] == {"generation": 1, "index": 0}
    assert world.store.lifecycle(CLUSTER).state is State.BALANCING


def test_control_check_honours_a_recorded_pause_once(world: World) -> None:
    payload = loaded(world)
    world.request(Control.PAUSE)
    assert control(world, payload)["run"]["next"] == Route.PAUSE
    assert world.store.lifecycle(CLUSTER).requested is None  # consumed
    assert control(world, payload, Decision.CONTINUE)["run"]["next"] == Route.BATCH


def test_control_check_stops_on_request(world: World) -> None:
    payload = loaded(world)
    world.request(Control.STOP)
    run = control(world, payload)["run"]
    assert (run["next"], run["outcome"]) == (Route.FINISH, "stopped")


def test_control_check_refuses_a_run_that_lost_the_lifecycle(world: World) -> None:
    payload = loaded(world)
    world.store.items[CLUSTER]["run_id"] = "run-2"
    with pytest.raises(LockLost, match="belongs to run run-2"):
        control(world, payload)


# ---- RunBatch ----------------------------------------------------------------------------------------


def test_run_batch_moves_the_batch_and_records_the_results(world: World) -> None:
    payload = control(world, loaded(world))
    run = run_batch.handler(world.event(**payload), CONTEXT)
    assert (run["next"], run["current"], run["done"], run["failed"]) == (Route.CONTROL, {}, 4, 0)
    assert [p.phase for p in world.store.results(RUN_ID)] == [Phase.DONE] * 4
    leaders = sorted(q.leader for q in world.cluster.queues.values())
    assert leaders == ["a", "a", "b", "b", "c", "c"]


def test_run_batch_stops_early_for_a_request_and_keeps_the_progress(world: World) -> None:
    payload = control(world, loaded(world))
    world.request(Control.STOP)
    run = run_batch.handler(world.event(**payload), CONTEXT)
    assert run["next"] == Route.CONTROL and run["current"] == {"generation": 1, "index": 0}
    assert run["attempted"] == 0 and (RUN_ID, 1, 0) in world.store.progress


def test_a_members_run_gives_every_quorum_queue_its_replicas_and_reports_members_per_node(
    world: World,
) -> None:
    for index in range(3):  # two members each where three are wanted: node c holds none
        world.cluster.add_queue(FakeQueue("/", f"qq{index}", "a", mirrors=["b"], kind="quorum", messages=5))
    payload = control(world, loaded(world, {"members": True, "concurrency": 2}))
    assert world.store.kinds[(RUN_ID, 1, 0)] is PlanKind.MEMBERS
    assert world.store.meta(RUN_ID)["kind"] == "members"
    while payload["run"]["next"] == Route.BATCH:
        payload["run"] = run_batch.handler(world.event(**payload), CONTEXT)
        payload = control(world, payload)
    assert (payload["run"]["next"], payload["run"]["done"], payload["run"]["failed"]) == (Route.VERIFY, 3, 0)
    assert [p.added for p in world.store.member_results(RUN_ID)] == [("c",)] * 3
    assert world.store.results(RUN_ID) == []  # no leader moved: the classic queues stay on a
    assert {q.leader for q in world.cluster.queues.values() if q.kind == "classic"} == {"a"}
    payload["run"] = verify_round.handler(world.event(**payload), CONTEXT)
    assert (payload["run"]["next"], payload["run"]["outcome"]) == (Route.FINISH, "completed")
    report = report_run.handler(world.event(**payload), CONTEXT)
    assert report["subject"] == "queue-balancer: main members run completed, members spread 3 -> 0"
    assert "| c | 0 | 3 |" in report["message"]
    stored = world.store.meta(RUN_ID)["report"]
    assert (stored["kind"], stored["changes"], stored["before"], stored["after"]) == (
        "members",
        3,
        {"a": 3, "b": 3, "c": 0},
        {"a": 3, "b": 3, "c": 3},
    )


# ---- VerifyRound -------------------------------------------------------------------------------------


def test_verify_round_finishes_once_the_spread_is_even(world: World) -> None:
    payload = balanced(world)
    run = verify_round.handler(world.event(**payload), CONTEXT)
    assert (run["next"], run["outcome"]) == (Route.FINISH, "completed")


def test_verify_round_plans_another_round_while_it_helps(world: World) -> None:
    payload = balanced(world)
    for index in range(6, 9):  # new queues on a since the round was planned
        world.cluster.add_queue(FakeQueue("/", f"q{index}", "a", messages=1))
        world.cluster.queue_action("/", f"q{index}", "sync")
    run = verify_round.handler(world.event(**payload), CONTEXT)
    assert (run["next"], run["round"], run["generation"]) == (Route.NEXT_ROUND, 2, 2)
    assert (RUN_ID, 2, 0) in world.store.batches


# ---- ReportRun and FinishRun -------------------------------------------------------------------------


def test_report_run_words_the_notification_and_keeps_the_report(world: World) -> None:
    payload = balanced(world)
    payload["run"] = verify_round.handler(world.event(**payload), CONTEXT)
    report = report_run.handler(world.event(**payload), CONTEXT)
    assert report["subject"] == "queue-balancer: main completed, spread 6 -> 0"
    assert "run-1" in report["message"]
    meta = world.store.meta(RUN_ID)
    assert (meta["outcome"], meta["report"]["rounds"]) == ("completed", 1)


def test_finish_run_marks_the_lifecycle_idle(world: World) -> None:
    payload = balanced(world)
    payload["run"] = verify_round.handler(world.event(**payload), CONTEXT)
    assert finish_run.handler(world.event(**payload), CONTEXT) == {"state": "IDLE", "outcome": "completed"}
    record = world.store.lifecycle(CLUSTER)
    assert (record.state, record.outcome, record.counts.done) == (State.IDLE, "completed", 4)


def test_finish_run_after_reset_deletes_the_stored_plan(world: World) -> None:
    payload = loaded(world)
    world.request(Control.RESET)
    payload = control(world, payload)
    assert finish_run.handler(world.event(**payload), CONTEXT)["outcome"] == "reset"
    assert world.store.batches == {} and world.store.lifecycle(CLUSTER).counts.pending == 0


def test_finish_run_leaves_a_newer_runs_lifecycle_alone(world: World) -> None:
    payload = loaded(world)
    world.store.items[CLUSTER]["run_id"] = "run-2"
    assert finish_run.handler(world.event(**payload), CONTEXT)["outcome"] == "completed"
    assert world.store.items[CLUSTER]["run_id"] == "run-2"
    assert world.store.lifecycle(CLUSTER).state is State.READY


# ---- Cleanup -----------------------------------------------------------------------------------------


def failure(name: str, message: str) -> JsonDict:
    return {"Error": name, "Cause": json.dumps({"errorMessage": message, "errorType": name})}


def test_cleanup_removes_temporary_policies_and_marks_the_failure(world: World) -> None:
    payload = loaded(world)
    leftover = temporary_policy_name(QueueRef("/", "q0"))
    world.cluster.add_policy("/", leftover, "^q0$", HA_TWO, priority=999)
    error = failure("ManagementUnavailable", "GET /api/nodes: HTTP 503")
    result = cleanup.handler(world.event(**payload, error=error), CONTEXT)
    assert result["subject"] == "queue-balancer: main run FAILED (ManagementUnavailable)"
    assert (
        "GET /api/nodes: HTTP 503" in result["message"] and "removed 1 temporary policy" in result["message"]
    )
    assert ("/", leftover) not in world.cluster.policy_store
    record = world.store.lifecycle(CLUSTER)
    assert (record.state, record.outcome) == (State.IDLE, "failed: ManagementUnavailable")


def status_change(status: str, execution_arn: str = EXECUTION_ARN) -> JsonDict:
    """What EventBridge sends the Cleanup function when an execution of the state machine ends."""
    detail = {"executionArn": execution_arn, "stateMachineArn": MACHINE, "status": status, "error": None}
    return {"version": "0", "detail-type": STATUS_CHANGE, "source": "aws.states", "detail": detail}


def test_cleanup_undoes_a_stopped_execution_that_still_owns_its_run(world: World) -> None:
    loaded(world)
    mine = temporary_policy_name(QueueRef("/", "q0"), derived_run_id(RUN_ID))
    world.cluster.add_policy("/", mine, "^q0\\z", HA_TWO, priority=999)
    assert world.cluster.global_parameters  # Preflight took the cluster's lock
    result = cleanup.handler(status_change("ABORTED"), CONTEXT)
    assert result["status"] == "ABORTED" and "stopped (StopExecution" in result["message"]
    assert result["subject"] == "queue-balancer: main run FAILED (ExecutionAborted)"
    assert ("/", mine) not in world.cluster.policy_store
    assert world.cluster.global_parameters == {} and world.store.lock(CLUSTER) is None  # both locks
    record = world.store.lifecycle(CLUSTER)
    assert (record.state, record.outcome) == (State.IDLE, "failed: ExecutionAborted")


def test_cleanup_leaves_alone_a_run_the_ended_execution_no_longer_owns(world: World) -> None:
    """A run that cleaned up after itself, or went on in a continuation, or a newer run."""
    loaded(world)
    before = world.store.lifecycle(CLUSTER)
    result = cleanup.handler(status_change("TIMED_OUT", EXECUTION_ARN + "-c1"), CONTEXT)
    assert result["skipped"] == "the execution no longer owns a run: nothing to undo"
    assert world.store.lock(CLUSTER) is not None and world.cluster.global_parameters
    assert world.store.lifecycle(CLUSTER) == before


def test_cleanup_refuses_a_status_it_does_not_handle(world: World) -> None:
    with pytest.raises(InvalidInput, match="execution status 'SUCCEEDED' is not one Cleanup handles"):
        cleanup.handler(status_change("SUCCEEDED"), CONTEXT)


def test_cleanup_leaves_policies_to_the_run_that_holds_the_lock(world: World) -> None:
    payload = loaded(world)
    theirs = temporary_policy_name(QueueRef("/", "q0"), "run2")
    world.cluster.add_policy("/", theirs, "^q0$", HA_TWO, priority=999)
    world.store.hold_lock(CLUSTER, "run-2")
    result = cleanup.handler(world.event(**payload, error=failure("LockLost", "lost")), CONTEXT)
    assert "policies left to the run that holds it" in result["message"]
    assert ("/", theirs) in world.cluster.policy_store
