"""The balancer's workflow end to end: the real ASL on the local endpoint, the real cluster, and the
operator's commands through ``queue_balancer.cli`` (what ``queue-balancer go|pause|...`` runs).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from queue_balancer.cli import main, workflow
from queue_balancer.cli.events import perform
from queue_balancer.cli.exit_codes import EXIT_ERROR, EXIT_OK
from queue_balancer.errors import BalancerError
from queue_balancer.lifecycle import Counts, Event, EventRefused, Lifecycle, RunInput, State, cluster_pk
from queue_balancer.lock import ClusterLock
from queue_balancer.model import QueueRef
from queue_balancer.movers import derived_run_id, exact_pattern, temporary_policy_name
from queue_balancer.workflow.start import accept_input
from tests.conftest import wait_until
from tests.statemachine.conftest import Harness, spread

pytestmark = pytest.mark.integration

FAST = {"poll_seconds": 1}


def test_balance_spreads_leaders_reports_and_releases_the_lock(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    harness.seed(3, "classic", "c")
    harness.seed(3, "quorum", "q")
    assert spread(harness.leaders()) == 6

    started = perform(harness.workflow, Event.RUN, RunInput.parse({"concurrency": 4, **FAST}))
    assert started.execution_arn is not None
    assert workflow._wait(harness.workflow, started.execution_arn, timeout=90) == EXIT_OK  # `run --wait`
    out = capsys.readouterr().out
    assert "Leaders per node, before -> after" in out and "|---" not in out  # a table for people

    done = harness.describe(started.execution_arn)
    assert done["status"] == "SUCCEEDED", done.get("cause")
    assert spread(harness.leaders()) == 0
    assert harness.temporary_policies() == []
    assert harness.lock() is None
    assert harness.cluster_lock() is None
    record = harness.lifecycle()
    assert (record.state, record.outcome, record.counts.done, record.counts.failed) == (
        State.IDLE,
        "completed",
        4,
        0,
    )
    [note] = harness.notifications()
    assert note["subject"] == "queue-balancer: local completed, spread 6 -> 0"
    assert "| node | before | after |" in note["message"]
    assert "moves: 4 done, 0 failed" in note["message"]


def test_load_waits_in_ready_until_go(harness: Harness) -> None:
    harness.seed(3, "quorum", "q")
    arn = harness.start({"action": "load", **FAST})
    ready = harness.wait_state(State.READY, token=True)
    assert (ready.counts.pending, ready.execution_arn) == (2, arn)
    assert harness.leaders()[harness.cluster.nodes[0].name] == 3  # nothing moved while READY
    with pytest.raises(EventRefused, match="READY"):
        perform(harness.workflow, Event.PAUSE)

    assert str(perform(harness.workflow, Event.GO)) == "balancing"
    done = harness.finished(arn)

    assert done["status"] == "SUCCEEDED", done.get("cause")
    assert spread(harness.leaders()) == 0
    assert harness.lifecycle().counts.done == 2


def test_pause_parks_the_run_and_continue_resumes_it(harness: Harness) -> None:
    harness.seed(3, "quorum", "q")
    arn = harness.start({"action": "balance", "batch_size": 1, **FAST})
    harness.wait_state(State.BALANCING)
    assert "pause requested" in str(perform(harness.workflow, Event.PAUSE))

    paused = harness.wait_state(State.PAUSE, token=True)
    assert paused.counts.done + paused.counts.pending == 2 and paused.counts.pending >= 1
    assert harness.describe(arn)["status"] == "RUNNING"
    with pytest.raises(EventRefused, match="PAUSE"):
        perform(harness.workflow, Event.GO)

    assert str(perform(harness.workflow, Event.CONTINUE)) == "balancing again"
    done = harness.finished(arn)
    assert done["status"] == "SUCCEEDED", done.get("cause")
    assert harness.lifecycle().counts.done == 2, (harness.lifecycle(), done.get("output"))


def test_load_during_a_run_replans_after_the_batch_and_waits_for_go(harness: Harness) -> None:
    harness.seed(3, "quorum", "q")
    arn = harness.start({"action": "balance", "batch_size": 1, **FAST})
    harness.wait_state(State.BALANCING)
    assert "reload requested" in str(perform(harness.workflow, Event.LOAD))

    ready = harness.wait_state(State.READY, token=True)
    assert ready.counts.done + ready.counts.pending == 2  # re-planned from the cluster as it is now
    assert str(perform(harness.workflow, Event.GO)) == "balancing"
    assert harness.finished(arn)["status"] == "SUCCEEDED"
    assert spread(harness.leaders()) == 0


def test_stop_ends_the_run_within_seconds_and_keeps_the_counts(harness: Harness) -> None:
    harness.seed(3, "quorum", "q")
    arn = harness.start({"action": "balance", "batch_size": 1, **FAST})
    harness.wait_state(State.BALANCING)
    perform(harness.workflow, Event.STOP)

    done = harness.finished(arn)
    assert done["status"] == "SUCCEEDED", done.get("cause")
    record = harness.lifecycle()
    assert (record.state, record.outcome) == (State.IDLE, "stopped")
    assert record.counts.done + record.counts.pending == 2 and record.counts.pending >= 1
    assert harness.lock() is None
    [note] = harness.notifications()
    assert "stopped" in note["subject"]
    assert harness.workflow.run_meta(record.run_id or "")["summary"] == note["message"]  # `last-report`


def test_a_second_run_is_skipped_while_one_holds_the_lock_and_reset_clears_everything(
    harness: Harness,
) -> None:
    harness.seed(3, "quorum", "q")
    first = harness.start({"action": "load", **FAST})
    harness.wait_state(State.READY, token=True)

    second = harness.finished(harness.start({"action": "balance"}), timeout=30)
    # A refusal is no failure (FailedRuns counts FAILED executions, EndedRuns sends them to Cleanup): it
    # succeeds, skipped, and its notice says why.
    assert second["status"] == "SUCCEEDED"
    assert _states_entered(harness, second["executionArn"])[-1] == "Skipped"
    [notice] = harness.notifications()
    assert "skipped" in notice["subject"] and "already running" in notice["message"], notice
    with pytest.raises(EventRefused, match="READY"):
        perform(harness.workflow, Event.RUN)
    assert harness.lifecycle().execution_arn == first  # the second run changed nothing

    assert "ends now" in str(perform(harness.workflow, Event.RESET))
    assert harness.finished(first)["status"] == "SUCCEEDED"
    record = harness.lifecycle()
    assert (record.state, record.outcome, record.counts.pending) == (State.IDLE, "reset", 0)
    assert harness.lock() is None
    assert harness.cluster_lock() is None


def test_a_copied_continuation_input_cannot_take_over_a_live_run(harness: Harness) -> None:
    """The console's "New execution" on a continuation copies its input; the run it names is live (parked
    here): the copy must change nothing, since the parent handed the run to another execution."""
    harness.seed(3, "quorum", "q")
    live = harness.start({"action": "load", **FAST}, name="live-run")
    harness.wait_state(State.READY, token=True)
    handed = accept_input({"action": "load", **FAST}, "live-run", harness.outputs.ClusterName).to_dict()

    copy = harness.finished(harness.start({"action": "continue", **handed}, name="live-run-c9"), timeout=30)

    assert copy["status"] == "SUCCEEDED"
    assert _states_entered(harness, copy["executionArn"])[-1] == "Skipped"
    assert harness.lifecycle().execution_arn == live
    lock = harness.lock()
    assert lock is not None and (lock["run_id"], lock["execution_arn"]) == ("live-run", live)
    perform(harness.workflow, Event.RESET)
    assert harness.finished(live)["status"] == "SUCCEEDED"


def _states_entered(harness: Harness, execution: str) -> list[str]:
    return [
        e["stateEnteredEventDetails"]["name"]
        for e in harness.history(execution)
        if "stateEnteredEventDetails" in e
    ]


def _temporary_policy(harness: Harness, run_id: str) -> str:
    """A temporary policy of ``run_id`` (a move under way), on a queue name nothing else uses."""
    name = temporary_policy_name(QueueRef("/", "lock-probe"), run_id)
    harness.client.put_policy(
        "/", name, pattern=exact_pattern("lock-probe"), definition={"max-length": 10**6}, priority=9
    )
    return name


def test_a_cli_run_holding_the_cluster_lock_refuses_a_workflow_run_that_then_changes_nothing(
    harness: Harness,
) -> None:
    harness.seed(3, "quorum", "q")
    ClusterLock(harness.client, "ops@bastion (queue-balancer balance)", "c1i0run").acquire()
    policy = _temporary_policy(harness, "c1i0run")

    done = harness.finished(harness.start({"action": "balance", **FAST}), timeout=30)

    assert done["status"] == "SUCCEEDED"
    assert _states_entered(harness, done["executionArn"])[-1] == "Skipped"
    [notice] = harness.notifications()
    assert "another balancer run holds this cluster: run c1i0run of ops@bastion" in notice["message"]
    assert "holding it for" in notice["message"]
    assert harness.temporary_policies() == [policy]  # the CLI's move under way is left alone
    assert spread(harness.leaders()) == 3  # nothing moved
    assert harness.lock() is None  # the DynamoDB lock it took is given back
    assert harness.lifecycle().run_id is None
    held = harness.cluster_lock()
    assert held is not None and held.run_id == "c1i0run"


def test_a_workflow_run_holding_the_cluster_lock_refuses_cli_balance_and_cleanup(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    harness.seed(3, "quorum", "q")
    arn = harness.start({"action": "load", **FAST})
    record = harness.wait_state(State.READY, token=True)
    held = harness.cluster_lock()
    assert held is not None and held.run_id == derived_run_id(record.run_id or "")
    assert held.owner.startswith("workflow run ")
    policy = _temporary_policy(harness, held.run_id)

    user, password = harness.cluster.credentials
    monkeypatch.setenv("RABBITMQ_PASSWORD", password)
    target = ["--url", harness.cluster.nodes[0].management_url, "--user", user]
    for command in (["balance"], ["cleanup"]):
        assert main([*target, *command]) == EXIT_ERROR
        err = capsys.readouterr().err
        assert f"another balancer run holds this cluster: run {held.run_id} of workflow run" in err
    assert harness.temporary_policies() == [policy]
    assert spread(harness.leaders()) == 3

    perform(harness.workflow, Event.RESET)
    assert harness.finished(arn)["status"] == "SUCCEEDED"
    assert harness.cluster_lock() is None  # released on the way out (stop/reset/finish)
    assert harness.workflow.run_meta(record.run_id or "") == {}  # the run's plan and report are gone
    assert harness.leaders()[harness.cluster.nodes[0].name] == 3


def test_reset_clears_a_run_whose_execution_died(harness: Harness) -> None:
    """E.g. aborted from the console: the item still says BALANCING, the lock is still held."""
    dead = harness.finished(harness.start({"action": "nope"}), timeout=30)["executionArn"]
    ghost = Lifecycle(
        cluster=harness.outputs.ClusterName,
        state=State.BALANCING,
        run_id="ghost",
        execution_arn=dead,
        counts=Counts(pending=3, done=2),
    )
    harness.table.put_item(Item=ghost.to_item())
    harness.table.put_item(
        Item={
            "pk": cluster_pk(ghost.cluster),
            "sk": "lock",
            "run_id": "ghost",
            "execution_arn": dead,
            "expires_at": int(time.time()) + 3600,
        }
    )

    for event in (Event.RUN, Event.GO, Event.PAUSE):
        with pytest.raises(EventRefused, match="`reset` clears it"):
            perform(harness.workflow, event)
    assert "released its lock" in str(perform(harness.workflow, Event.RESET))
    record = harness.lifecycle()
    assert (record.state, record.counts.done, record.outcome) == (
        State.IDLE,
        0,
        "reset after the execution ended (FAILED)",
    )
    assert harness.lock() is None


def test_a_failure_mid_move_cleans_up_notifies_and_releases_the_lock(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    import queue_balancer.batch_run

    monkeypatch.setattr(
        queue_balancer.batch_run, "BUDGET_SECONDS", 0.0
    )  # the first slice leaves the moves under way
    harness.seed(2, "classic", "c", messages=50)
    name = next(k for k in harness.endpoint.dispatcher.handlers if k.endswith("run-batch"))
    slices = [harness.endpoint.dispatcher.handlers[name]]

    def broken(event: dict[str, Any], context: object) -> dict[str, Any]:
        if slices:
            result: dict[str, Any] = slices.pop()(event, context)
            return result
        raise RuntimeError("injected: the batch's slice crashed")

    harness.endpoint.dispatcher.handlers[name] = broken
    arn = harness.start({"action": "balance", "concurrency": 1, **FAST})
    wait_until(lambda: harness.temporary_policies(), timeout=120, what="the move's temporary policy")

    done = harness.finished(arn)
    assert (done["status"], done["error"]) == ("FAILED", "RuntimeError")
    assert harness.temporary_policies() == []
    assert harness.lock() is None
    assert harness.cluster_lock() is None
    record = harness.lifecycle()
    assert (record.state, record.outcome) == (State.IDLE, "failed: RuntimeError")
    [note] = harness.notifications()
    assert "FAILED" in note["subject"]
    assert "injected: the batch's slice crashed" in note["message"]
    assert "Cleanup removed 1 temporary policy" in note["message"]
    mirrored = wait_until(
        lambda: all(
            q.get("messages") == 50
            and set(q.get("slave_nodes") or ()) == set(q.get("synchronised_slave_nodes") or ())
            and len(q.get("slave_nodes") or ()) == 2
            for q in harness.client.queues()
        ),
        timeout=60,
        what="the queues back on their own policy, all mirrors in sync, no message lost",
    )
    assert mirrored


def test_a_run_continues_in_a_fresh_execution_when_the_next_batch_would_not_fit(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The history budget is forced to run out once, after the first batch."""
    import queue_balancer.workflow.control

    budget = iter([True, False])
    monkeypatch.setattr(
        queue_balancer.workflow.control, "fits_in_history", lambda used, cost: next(budget, True)
    )
    harness.seed(3, "quorum", "q")
    first = harness.start({"action": "balance", "batch_size": 1, **FAST}, name="big-run")
    assert harness.finished(first)["status"] == "SUCCEEDED"

    child = first + "-c1"
    done = harness.finished(child)
    assert done["status"] == "SUCCEEDED", done.get("cause")
    record = harness.lifecycle()
    assert (record.run_id, record.execution_arn, record.state) == ("big-run", child, State.IDLE)
    assert (record.counts.done, record.outcome) == (2, "completed")
    assert spread(harness.leaders()) == 0
    assert harness.lock() is None
    [note] = harness.notifications()
    assert "moves: 2 done" in note["message"]  # one report for the whole run, across both executions


DEEP = 100
"""Nesting of the deeply nested input: far past any real input. The local endpoint's ASL interpreter (moto)
fails an execution nested 500 deep with ``States.Runtime`` (a RecursionError) before ValidateInput runs."""


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"action": "rebalance"}', "unknown action"),
        ('{"action": "balance", "concurrency": 0}', "concurrency must be between 1 and 40"),
        ('{"action": "balance", "pattern": "(oops"}', "invalid queue name pattern"),
        ('{"concurrency": "4"}', "concurrency must be an integer, not '4'"),
        ('{"concurrency": 2.5}', "concurrency must be an integer"),
        ('{"vhosts": "/"}', "vhosts must be a list of vhost names"),
        ('{"vhosts": [""]}', "vhosts must be a list of vhost names"),
        ('{"per_vhost": 1}', "per_vhost must be true or false"),
        ('{"pattern": 7}', "pattern must be a string"),
        ('{"max_publish_rate": "fast"}', "max_publish_rate must be a number"),
        ('{"max_deliver_rate": -1}', "max_deliver_rate must be a number of messages per second (0 or more)"),
        ('{"rounds": -3}', "rounds must be between 1"),
        ('{"max_moves": -1}', "max_moves must be between 0"),
        ('{"batch_size": 1000000000000000000000000000000}', "batch_size must be between 1"),
        ('{"poll_seconds": 99999999}', "poll_seconds must be between 1"),
        ('{"max_publish_rate": 1e999}', "max_publish_rate must be a number"),
        ('{"pattern": ' + "[" * DEEP + "]" * DEEP + "}", "pattern must be a string"),
        ('{"concurency": 2}', "unknown field(s) concurency"),
        ('["balance"]', "the input must be a JSON object, not list"),
        ('"balance"', "the input must be a JSON object, not str"),
        ("42", "the input must be a JSON object, not int"),
        ("null", "the input must be a JSON object, not NoneType"),
    ],
    ids=lambda value: value[:40] if isinstance(value, str) else None,
)
def test_invalid_input_fails_with_a_named_error_and_changes_nothing(
    harness: Harness, text: str, problem: str
) -> None:
    """Refused by ValidateInput, before the lock: no lifecycle, no lock, nothing in the table."""
    done = harness.finished(harness.start(text=text), timeout=30)
    assert (done["status"], done["error"]) == ("FAILED", "InvalidInput"), done.get("cause", "")[-600:]
    assert problem in done["cause"]
    assert harness.table.scan()["Items"] == []
    with pytest.raises(BalancerError, match=re.escape(problem)):
        RunInput.parse(json.loads(text))  # the CLI refuses the same input before starting anything
