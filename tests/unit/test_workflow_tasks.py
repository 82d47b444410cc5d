"""The workflow's tasks as core calls (``queue_balancer.workflow``), on the in-memory store and cluster.

``test_handlers`` drives them through the handlers as Lambda calls them; this file checks the rules the
handlers no longer hold: which task touches the cluster and when, continuations, and what a failure
records and says.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from queue_balancer.contract import PlanKind
from queue_balancer.errors import ConfigurationError
from queue_balancer.lifecycle import Control, Decision, RunInput, State, Step, advance
from queue_balancer.lifecycle.routing import Route
from queue_balancer.lock import LOCK_PARAMETER, LockHeld, LockLost
from queue_balancer.member_moves import MemberBatch, MemberMover, MemberPhase, MemberProgress
from queue_balancer.members import MemberMove
from queue_balancer.model import QueueRef
from queue_balancer.movers.policies import temporary_policy_name
from queue_balancer.workflow.control import ControlEvent, child_execution_arn, control
from queue_balancer.workflow.failure import CaughtError, fail_run
from queue_balancer.workflow.finish import finish_run
from queue_balancer.workflow.leases import run_lock
from queue_balancer.workflow.park import park_run
from queue_balancer.workflow.planning import MalformedItem, load_plan, report_from_dict
from queue_balancer.workflow.ports import ClusterApi
from queue_balancer.workflow.run_report import report_run
from queue_balancer.workflow.run_state import RunState
from queue_balancer.workflow.start import accept_input, begin_run
from queue_balancer.workflow.verify import verify_round
from tests.unit.fake_cluster import FakeCluster, FakeQueue, Members
from tests.unit.fake_store import FakeStore

CLUSTER = "main"
MACHINE = "arn:aws:states:us-east-1:123456789012:stateMachine:balancer"
EXECUTION = "arn:aws:states:us-east-1:123456789012:execution:balancer:run-1"
HA_TWO = {"ha-mode": "exactly", "ha-params": 2, "ha-sync-mode": "automatic"}


def no_cluster() -> ClusterApi:
    raise AssertionError("this task must not reach the cluster here")


def begun(db: FakeStore, fake: FakeCluster, raw: object = None) -> tuple[RunInput, RunState]:
    """ValidateInput and Preflight of a new run ``run-1`` that holds the DynamoDB lock."""
    db.hold_lock(CLUSTER, "run-1")
    accepted = accept_input(raw if raw is not None else {}, "run-1", CLUSTER)
    return accepted.config, begin_run(db, fake, accepted.config, accepted.run, EXECUTION)


def reports(db: FakeStore, *steps: Step) -> None:
    """What the tasks between (LoadQueues, RunBatch...) report on the lifecycle item."""
    for step in steps:
        record = db.lifecycle(CLUSTER)
        db.save(record, advance(record, step, now="t"))


@pytest.fixture
def fake() -> FakeCluster:
    cluster = FakeCluster()
    cluster.add_policy("/", "ha-two", ".*", HA_TWO)
    cluster.add_queue(FakeQueue("/", "q0", "a", messages=1))
    cluster.queue_action("/", "q0", "sync")  # in sync: settled, so VerifyRound re-reads nothing
    return cluster


def test_accept_input_starts_a_run_named_after_its_execution_with_a_lease_to_plan() -> None:
    accepted = accept_input({"action": "load"}, "run-1", CLUSTER)
    run = accepted.run
    assert (accepted.config.action, run.run_id, run.cluster, run.continuation) == (
        "load",
        "run-1",
        CLUSTER,
        False,
    )
    assert int(run.lock["expires_at"]) - int(run.lock["now"]) == 900 and run.events > 0


def test_accept_input_takes_a_continuation_over_with_its_counts() -> None:
    first = accept_input({}, "run-1", CLUSTER).to_dict()
    first["run"].update(done=7, next="continue_as_new")
    continued = accept_input({"action": "continue", **first}, "run-1-c1", CLUSTER).run
    assert (continued.run_id, continued.done, continued.continuation, continued.next) == (
        "run-1",
        7,
        True,
        "",
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"action": "continue"}, "a continuation needs the config and run"),
        ({"action": "continue", "config": {}, "run": {"cluster": CLUSTER}}, "a continuation needs"),
        ([1], "must be a JSON object, not list"),
    ],
)
def test_accept_input_refuses_what_it_cannot_read(raw: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        accept_input(raw, "run-1", CLUSTER)


def test_begin_run_is_refused_while_a_cli_run_holds_the_cluster(fake: FakeCluster) -> None:
    cli = run_lock(fake, "cli-run", until=None)
    cli.acquire()
    with pytest.raises(LockHeld):
        begun(FakeStore(), fake)


def test_begin_run_hands_a_continuation_to_the_new_execution(fake: FakeCluster) -> None:
    db = FakeStore()
    config, run = begun(db, fake)
    reports(db, Step.PLANNED, Step.BATCH)  # a run continues in a fresh execution between batches
    child = "arn:aws:states:us-east-1:123456789012:execution:balancer:run-1-c1"
    record = db.lifecycle(CLUSTER)  # the parent hands the run over (continue_as_new) before the child starts
    db.save(record, advance(record, Step.CONTINUED, now="t", execution_arn=child))
    again = begin_run(db, fake, config, replace(run, continuation=True), child)
    assert again.run_id == "run-1" and db.lifecycle(CLUSTER).execution_arn == child
    assert LOCK_PARAMETER in fake.global_parameters


def test_begin_run_refuses_a_continuation_the_parent_did_not_hand_the_run_to(fake: FakeCluster) -> None:
    db = FakeStore()
    config, run = begun(db, fake)
    reports(db, Step.PLANNED, Step.BATCH)
    copy = "arn:aws:states:us-east-1:123456789012:execution:balancer:copy-of-run-1-c1"
    before = db.lifecycle(CLUSTER)
    with pytest.raises(LockLost, match=r"was handed to .*:run-1, not to .*:copy-of-run-1-c1"):
        begin_run(db, fake, config, replace(run, continuation=True), copy)
    assert db.lifecycle(CLUSTER) == before  # the live run keeps its lifecycle


def test_control_reaches_the_cluster_only_to_renew_the_locks(fake: FakeCluster) -> None:
    db = FakeStore()
    config, run = begun(db, fake)
    run = replace(run, batches=1, generation=1)
    reports(db, Step.PLANNED)
    db.items[CLUSTER]["requested"] = Control.PAUSE.value
    event = ControlEvent(config, run, None, EXECUTION, MACHINE)
    paused = control(db, no_cluster, event)  # a pause records nothing in the cluster
    assert paused.next == Route.PAUSE and db.lifecycle(CLUSTER).requested is None
    batch = control(db, lambda: fake, replace(event, answer=Decision.CONTINUE))
    assert (batch.next, batch.current) == (Route.BATCH, {"generation": 1, "index": 0})
    assert db.lifecycle(CLUSTER).state is State.BALANCING


def test_the_child_execution_is_named_before_it_starts() -> None:
    assert child_execution_arn(MACHINE, "run-1-c1") == EXECUTION.replace(":run-1", ":run-1-c1")


def test_park_run_stores_the_token_only_while_it_holds_both_locks(fake: FakeCluster) -> None:
    db = FakeStore()
    _, run = begun(db, fake)
    reports(db, Step.PLANNED)
    assert park_run(db, fake, run, State.READY, "token-1", EXECUTION) is State.READY
    assert db.lifecycle(CLUSTER).task_token == "token-1"
    run_lock(fake, "run-1").release()
    run_lock(fake, "cli-run").acquire()  # the cluster's lock expired and a CLI run took it
    with pytest.raises(LockLost):
        park_run(db, fake, run, State.PAUSE, "token-2", EXECUTION)


def test_finish_run_gives_the_clusters_lock_back(fake: FakeCluster) -> None:
    db = FakeStore()
    _, run = begun(db, fake)
    assert finish_run(db, fake, replace(run, outcome="stopped")).to_dict() == {
        "state": "IDLE",
        "outcome": "stopped",
    }
    assert LOCK_PARAMETER not in fake.global_parameters
    assert db.lifecycle(CLUSTER).outcome == "stopped"


def test_a_caught_error_reads_a_lambdas_error_document_or_keeps_the_cause() -> None:
    document = {"Error": "LockLost", "Cause": json.dumps({"errorMessage": "gone", "errorType": "LockLost"})}
    assert CaughtError.parse(document) == CaughtError("LockLost", "gone")
    assert CaughtError.parse({"Error": "States.Timeout", "Cause": "timed out"}).reason == "timed out"
    assert CaughtError.parse({}) == CaughtError("Unknown", "")


def test_fail_run_undoes_the_runs_policies_and_records_the_failure(fake: FakeCluster) -> None:
    db = FakeStore()
    _, run = begun(db, fake)
    leftover = temporary_policy_name(QueueRef("/", "q0"), "run1")
    fake.add_policy("/", leftover, "^q0$", HA_TWO, priority=999)
    failed = fail_run(db, lambda: fake, replace(run, next="batch", done=2), CaughtError("X", "why"))
    assert ("/", leftover) not in fake.policy_store and LOCK_PARAMETER not in fake.global_parameters
    assert "removed 1 temporary policy" in failed.message and "Moves: 2 done" in failed.message
    assert failed.subject == "queue-balancer: main run FAILED (X)" and failed.run.next == ""
    assert db.meta("run-1")["reason"] == "why"
    assert (db.lifecycle(CLUSTER).state, db.lifecycle(CLUSTER).outcome) == (State.IDLE, "failed: X")


def test_fail_run_without_the_lock_leaves_the_cluster_alone(fake: FakeCluster) -> None:
    db = FakeStore()
    _, run = begun(db, fake)
    db.hold_lock(CLUSTER, "run-2")
    failed = fail_run(db, no_cluster, run, CaughtError("LockLost", "lost"))
    assert "policies left to the run that holds it" in failed.message


def test_load_plan_keeps_the_first_plans_figures_and_a_reload_waits_for_go(fake: FakeCluster) -> None:
    for index in range(1, 4):
        fake.add_queue(FakeQueue("/", f"q{index}", "a", messages=1))
        fake.queue_action("/", f"q{index}", "sync")
    db = FakeStore()
    config, run = begun(db, fake)
    first = load_plan(db, fake, config, run)
    assert (first.run.generation, first.run.plan_moves, first.run.awaiting_go) == (1, 2, False)
    assert db.meta("run-1")["before"]["by_type"] and db.lifecycle(CLUSTER).state is State.READY
    db.put_meta("run-1", before={"nodes": ["kept"]})
    reloaded = load_plan(db, fake, config, replace(first.run, generation=1))
    assert (reloaded.run.generation, reloaded.run.awaiting_go) == (2, True)
    assert db.meta("run-1")["before"] == {"nodes": ["kept"]}  # the run's before figures stay its first


def test_verify_round_finishes_when_nothing_is_left_and_the_report_is_stored(fake: FakeCluster) -> None:
    db = FakeStore()
    config, run = begun(db, fake)
    planned = load_plan(db, fake, config, run).run
    verified = verify_round(db, fake, config, planned)
    assert (verified.run.next, verified.run.outcome, verified.next_moves) == (Route.FINISH, "completed", 0)
    report = report_run(db, fake, config, verified.run, "run-1")
    assert report.subject == "queue-balancer: main completed, spread 1 -> 1"
    assert db.meta("run-1")["report"]["outcome"] == "completed" and "run-1" in report.message


def test_a_stored_before_report_of_another_shape_is_named_not_asserted() -> None:
    assert report_from_dict({}).nodes == ()
    with pytest.raises(MalformedItem, match="stored before report"):
        report_from_dict({"nodes": "a,b"})


def cut_off_member_change(db: FakeStore, fake: FakeCluster) -> RunState:
    """A run whose member change of qq (add d, then remove b) was cut off after d joined, still catching
    up: 4 members where there were 3 (quorum 3 of 4: no further failure tolerated until it has)."""
    _, run = begun(db, fake)
    fake.add_queue(FakeQueue("/", "qq", "a", ["b", "c"], {"b", "c"}, 5, kind="quorum"))
    change = MemberMove("/", "qq", "a", ("a", "b", "c"), add=("d",), remove=("b",))
    db.put_plan("run-1", 1, [[change]], kind=PlanKind.MEMBERS)
    under_way = MemberProgress(change, MemberPhase.CHANGING, 0.0, 600.0, added=("d",), catching_up={"d": 7})
    db.save_batch_state("run-1", 1, 0, MemberBatch(active=[under_way]))
    fake.queues[("/", "qq")].mirrors.append("d")
    return replace(run, current={"generation": 1, "index": 0})


def test_fail_run_names_a_quorum_member_change_it_cut_off(fake: FakeCluster) -> None:
    """ops-2 #8: without a way to change members, the notification names the change left mid-way."""
    db = FakeStore()
    failed = fail_run(db, lambda: fake, cut_off_member_change(db, fake), CaughtError("X", "why"))
    assert "Quorum queues whose member change was cut off (1;" in failed.message
    assert "- `/` / `qq`: 4 members, 3 before (added d; catching up: d)" in failed.message


def test_fail_run_rolls_back_the_member_changes_under_way(fake: FakeCluster) -> None:
    """ops-2 #8: Cleanup removes the member the cut-off change added, and stores the batch as ended."""
    db = FakeStore()
    failed = fail_run(
        db,
        lambda: fake,
        cut_off_member_change(db, fake),
        CaughtError("X", "why"),
        member_mover=lambda: MemberMover(fake, Members(fake)),
    )
    assert fake.queues[("/", "qq")].mirrors == ["b", "c"]
    assert "Rolled back 1 quorum member change under way:" in failed.message
    assert "- `/` / `qq`: the run failed; rolled back: removed d" in failed.message
    assert "cut off" not in failed.message
    assert db.member_batch("run-1", 1, 0).active == []
