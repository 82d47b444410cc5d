"""The Cleanup function on an execution stopped from the console, with the real DynamoDB store on moto:
both locks released, the run's temporary policies removed, the lifecycle IDLE with the reason; a second
delivery of the same event (EventBridge retries) finds nothing left to undo."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import boto3
import pytest
from moto import mock_aws

from lambdas import cleanup
from lambdas.common import ClusterAccess, Dependencies, inject, reset
from lambdas.store import Store
from queue_balancer.contract import (
    ENVIRONMENT_VARIABLES,
    LOCK_SK,
    PARTITION_KEY,
    SORT_KEY,
    STATUS_CHANGE,
    cluster_pk,
    table_definition,
)
from queue_balancer.lifecycle import Control, Counts, Lifecycle, State, started
from queue_balancer.lock import LockLost
from queue_balancer.model import QueueRef
from queue_balancer.movers import derived_run_id, exact_pattern, temporary_policy_name
from queue_balancer.workflow.leases import iso, run_lock
from tests.conftest import wait_until
from tests.unit.fake_cluster import Counter, FakeCluster, FakeQueue, Transfer
from tests.unit.test_handlers import CONTEXT

CLUSTER = "main"
RUN_ID = "balance-2026-11-27T17-00-00"
EXECUTION = f"arn:aws:states:us-east-1:123456789012:execution:queue-balancer-main:{RUN_ID}"
TABLE = "lifecycle"
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    for field, variable in ENVIRONMENT_VARIABLES.items():
        value = {"cluster_name": CLUSTER, "lifecycle_table": TABLE}.get(field, f"test-{field}")
        monkeypatch.setenv(variable, value)
    for name, value in (
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "x"),
        ("AWS_SECRET_ACCESS_KEY", "x"),
    ):
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    reset()
    with mock_aws():
        boto3.resource("dynamodb").create_table(**table_definition(TABLE))
        yield Store(TABLE)
    reset()


def stopped(execution: str) -> dict[str, Any]:
    detail = {"executionArn": execution, "status": "ABORTED", "error": None, "cause": None}
    return {"version": "0", "detail-type": STATUS_CHANGE, "source": "aws.states", "detail": detail}


def hold_both_locks(store: Store, fake: FakeCluster) -> None:
    """The execution's DynamoDB lock (as AcquireLock writes it) and the cluster's."""
    expires = int(time.time()) + 900
    store.table.put_item(
        Item={
            PARTITION_KEY: cluster_pk(CLUSTER),
            SORT_KEY: LOCK_SK,
            "run_id": RUN_ID,
            "execution_arn": EXECUTION,
            "expires_at": expires,
            "acquired_at": iso(),
        }
    )
    run_lock(fake, RUN_ID, until=expires).acquire()


def test_a_stopped_execution_leaves_no_lock_policy_or_busy_lifecycle(store: Store) -> None:
    fake = FakeCluster()
    fake.add_queue(FakeQueue("/", "q0", "a", messages=10))
    policy = temporary_policy_name(QueueRef("/", "q0"), derived_run_id(RUN_ID))
    fake.add_policy(
        "/", policy, exact_pattern("q0"), {"ha-mode": "nodes", "ha-params": ["a", "b"]}, priority=9
    )
    hold_both_locks(store, fake)
    store.start(started(CLUSTER, run_id=RUN_ID, execution_arn=EXECUTION, action="balance", now=iso()))
    access = ClusterAccess(fake, Transfer(fake), Counter(fake))

    with inject(Dependencies(store=lambda: store, cluster=lambda: access)):
        result = cleanup.handler(stopped(EXECUTION), CONTEXT)
        again = cleanup.handler(stopped(EXECUTION), CONTEXT)

    assert "stopped (StopExecution or the console)" in result["message"]
    assert f"Cleanup removed 1 temporary policy: `/`/`{policy}`" in result["message"]
    assert store.lock(CLUSTER) is None and fake.global_parameters == {}
    assert ("/", policy) not in fake.policy_store
    record = store.lifecycle(CLUSTER)
    assert (record.state, record.outcome) == (State.IDLE, "failed: ExecutionAborted")
    assert store.meta(RUN_ID)["error"] == "ExecutionAborted"
    assert again["skipped"] == "the execution no longer owns a run: nothing to undo"


def test_cleanup_waits_until_the_slice_under_way_removes_its_mark_on_the_real_table(store: Store) -> None:
    """The slice's side is played here through the same store: it sees the stop, writes its last counts
    (only while its run is still BALANCING and as Cleanup asked) and removes its mark; Cleanup, which
    waited for that, then writes IDLE with those counts."""
    fake = FakeCluster()
    hold_both_locks(store, fake)
    record = started(CLUSTER, run_id=RUN_ID, execution_arn=EXECUTION, action="balance", now=iso())
    store.start(replace(record, state=State.BALANCING, slices={"slice": int(time.time()) + 300}))
    slice_error: list[BaseException] = []

    def stop_asked() -> Lifecycle | None:
        current = store.lifecycle(CLUSTER)
        return current if current.ending else None

    def running_slice() -> None:
        try:
            asked = wait_until(stop_asked, timeout=10, what="Cleanup's stop")
            assert asked.requested is Control.STOP and asked.slices != {}
            store.save(asked, replace(asked, counts=Counts(done=3)), expect_state=True)
            store.save(store.lifecycle(CLUSTER), replace(store.lifecycle(CLUSTER), slices={}))
        except BaseException as exc:  # reported by the test below
            slice_error.append(exc)

    thread = threading.Thread(target=running_slice, daemon=True)
    thread.start()
    with inject(
        Dependencies(store=lambda: store, cluster=lambda: ClusterAccess(fake, Transfer(fake), Counter(fake)))
    ):
        result = cleanup.handler(stopped(EXECUTION), CONTEXT)
    thread.join(timeout=5)
    assert not slice_error
    assert "The RunBatch slice under way stopped within" in result["message"]
    assert "Moves: 3 done" in result["message"]
    ended = store.lifecycle(CLUSTER)
    assert (ended.state, dict(ended.slices), ended.ending, ended.counts.done) == (State.IDLE, {}, None, 3)
    as_the_slice_read_it = replace(ended, state=State.BALANCING)
    with pytest.raises(LockLost, match="is IDLE now"):  # a late board write of the slice lands nowhere
        store.save(as_the_slice_read_it, replace(ended, counts=Counts(done=4)), expect_state=True)
    assert store.lifecycle(CLUSTER).counts.done == 3
