"""A stopped, ended or taken-over run stops moving queues at once (aws-2 #5, ops-2 #6): the RunBatch slice
under way against Cleanup of its ended execution, a lifecycle another run took, a lock whose last
confirmed renewal is older than half its lease; on the in-memory store and cluster."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from queue_balancer.batch_run import BatchSlice, run_slice
from queue_balancer.batch_slice import SliceEnd
from queue_balancer.lifecycle import Control, Lifecycle, State, slice_mark
from queue_balancer.lifecycle.fsm import SLICE_MARK_PREFIX
from queue_balancer.lock import LOCK_PARAMETER, LockHolder, LockLost
from queue_balancer.member_moves import MemberProgress
from queue_balancer.movers import POLICY_PREFIX, MoveProgress, Mover, MoveSettings, derived_run_id
from queue_balancer.workflow.ended import StatusChange, end_abandoned_run, stop_slice
from queue_balancer.workflow.leases import RunLeases, run_lock
from queue_balancer.workflow.run_state import RunState
from tests.conftest import wait_until
from tests.unit.fake_cluster import Counter, FakeCluster, Members, Transfer
from tests.unit.fake_store import FakeStore
from tests.unit.test_batch_run import CLUSTER, RUN_ID, batch, held, members_world, mover, world

ARN = "arn"
ABORTED = StatusChange(ARN, "ABORTED", "", "")


def one_at_a_time() -> BatchSlice:
    return replace(batch(), concurrency=1)


def slow(cluster: FakeCluster) -> Mover:
    """Polls longer than ``CONTROL_INTERVAL``: the lifecycle is read between any two moves."""
    return Mover(cluster, Transfer(cluster), MoveSettings(poll_interval=0.3), Counter(cluster), run_id="w1")


def hold_both_locks(store: FakeStore, cluster: FakeCluster) -> None:
    store.hold_lock(CLUSTER, RUN_ID)
    now = time.time()
    holder = LockHolder("workflow", derived_run_id(RUN_ID), now, now, 900.0)
    cluster.global_parameters[LOCK_PARAMETER] = holder.to_value()


def test_a_stop_between_two_moves_starts_no_other_and_the_slice_removes_its_mark() -> None:
    store, cluster = world()

    def stop_after_the_first(progress: MoveProgress | MemberProgress) -> None:
        if progress.finished:  # what Cleanup of the stopped execution writes first
            record = store.lifecycle(CLUSTER)
            store.save(record, replace(record, requested=Control.STOP, ending="ABORTED"))

    result = run_slice(store, slow(cluster), one_at_a_time(), renew=held, on_change=stop_after_the_first)
    assert (result.end, result.done, result.pending) == (SliceEnd.REQUESTED, 1, 3)
    assert sorted(q.leader for q in cluster.queues.values()) == ["a", "a", "a", "b"]
    assert not [name for _, name in cluster.policy_store if name.startswith(POLICY_PREFIX)]
    record = store.lifecycle(CLUSTER)
    assert record.slices == {} and record.counts.done == 1  # the board's last word landed


def test_no_slice_starts_once_cleanup_is_ending_the_run() -> None:
    store, cluster = world()
    record = store.lifecycle(CLUSTER)
    store.save(record, replace(record, requested=Control.STOP, ending="ABORTED"))
    calls = list(cluster.calls)
    with pytest.raises(LockLost, match="being ended \\(ABORTED\\)"):
        run_slice(store, mover(cluster), batch(), renew=held)
    assert cluster.calls == calls and store.lifecycle(CLUSTER).slices == {}


def test_cleanup_of_a_stopped_execution_waits_for_the_running_slice_then_undoes_the_run() -> None:
    """New members never catch up, so the slice is busy when the execution is stopped; Cleanup asks it
    to stop, the slice removes the members it added, and only then does Cleanup undo and release."""
    store, cluster, member_mover = members_world(lambda c: Members(c, lagging={"d"}))
    hold_both_locks(store, cluster)
    adds: list[float] = []
    changer = member_mover.changer
    assert isinstance(changer, Members)
    changer.on_add = lambda: adds.append(time.monotonic())
    slice_error: list[BaseException] = []

    def run() -> None:
        try:
            run_slice(store, member_mover, batch(), renew=held, writer=cluster)
        except BaseException as exc:  # reported by the test below
            slice_error.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_until(
        lambda: store.lifecycle(CLUSTER).slices != {} and bool(adds),
        timeout=10,
        what="the slice under way, its members added",
    )
    stopped_at = time.monotonic()
    ended = end_abandoned_run(store, lambda: cluster, CLUSTER, ABORTED, deadline=time.time() + 30)
    assert not thread.is_alive() and not slice_error
    assert ended.failed is not None and "slice under way stopped within" in ended.failed.message
    assert all(at < stopped_at for at in adds)  # no member change began after the stop
    assert all(q.mirrors == ["b", "c"] for q in cluster.queues.values())  # rolled back by the slice
    record = store.lifecycle(CLUSTER)
    assert (record.state, dict(record.slices), record.ending, record.requested) == (
        State.IDLE,
        {},
        None,
        None,
    )
    assert store.lock(CLUSTER) is None and LOCK_PARAMETER not in cluster.global_parameters


def test_cleanup_does_not_wait_without_a_slice_nor_for_a_dead_one_and_gives_up_at_its_deadline() -> None:
    store, _cluster = world()
    record = store.lifecycle(CLUSTER)
    naps: list[float] = []
    _, said = stop_slice(store, record, "ABORTED", deadline=time.time() + 60, sleep=naps.append)
    assert said == "No RunBatch slice was under way." and not naps
    asked = store.lifecycle(CLUSTER)
    assert (asked.requested, asked.ending) == (Control.STOP, "ABORTED")

    def marked(until: float) -> Lifecycle:
        current = store.lifecycle(CLUSTER)
        store.save(current, replace(current, slices={"retried": int(until)}))
        return store.lifecycle(CLUSTER)

    _, said = stop_slice(
        store, marked(time.time() - 1), "ABORTED", deadline=time.time() + 60, sleep=naps.append
    )
    assert "had timed out with its Lambda" in said and not naps
    moment = [time.time()]

    def nap(seconds: float) -> None:
        moment[0] += seconds

    alive = marked(moment[0] + 600)
    _, said = stop_slice(
        store, alive, "ABORTED", deadline=moment[0] + 2.5, clock=lambda: moment[0], sleep=nap
    )
    assert "did not stop within 3 s" in said


def test_a_record_another_run_took_mid_slice_gets_no_write_and_the_cluster_no_more_change() -> None:
    store, cluster = world()
    taken: list[int] = []

    def take_over(progress: MoveProgress | MemberProgress) -> None:
        if progress.finished and not taken:
            store.items[CLUSTER] = {**store.items[CLUSTER], "run_id": "run-2", "done": 0}
            taken.append(len(cluster.calls))

    with pytest.raises(LockLost, match="belongs to run run-2"):
        run_slice(store, slow(cluster), one_at_a_time(), renew=held, on_change=take_over)
    later = [call[0] for call in cluster.calls[taken[0] :]]
    assert not {"put_policy", "delete_policy", "queue_action"} & set(later)
    item = store.items[CLUSTER]
    assert (item["run_id"], item["done"], len([k for k in item if k.startswith(SLICE_MARK_PREFIX)])) == (
        "run-2",
        0,
        1,
    )


def test_a_lock_whose_last_confirmed_renewal_is_past_half_its_lease_stops_every_write() -> None:
    store, cluster = world()
    hold_both_locks(store, cluster)
    clock = [0.0]
    lock = run_lock(cluster, RUN_ID, until=time.time() + 120)
    lock.clock = lambda: clock[0]
    lock.renewed_at = 0.0
    lease = RunLeases(store, lock, RunState(RUN_ID, CLUSTER, 0.0))
    stale: list[int] = []

    def age(progress: MoveProgress | MemberProgress) -> None:
        if progress.finished and not stale:
            clock[0] = lock.lease_seconds / 2 + 1  # no confirmed renewal for over half the lease
            stale.append(len(cluster.calls))

    with pytest.raises(LockLost, match="could not renew the cluster's lock"):
        run_slice(
            store, mover(cluster), one_at_a_time(), renew=lambda _: lease, writer=cluster, on_change=age
        )
    later = [call[0] for call in cluster.calls[stale[0] :]]
    assert not {"put_policy", "delete_policy", "queue_action"} & set(later)
    assert cluster.guard is None  # the writer is the slice's only while it runs


def test_a_slice_ends_once_a_lock_is_no_longer_its_own() -> None:
    store, cluster = world()
    hold_both_locks(store, cluster)
    lease = RunLeases(
        store, run_lock(cluster, RUN_ID, until=time.time() + 120), RunState(RUN_ID, CLUSTER, 0.0)
    )
    lease.verify()
    store.hold_lock(CLUSTER, "run-2")
    with pytest.raises(LockLost, match="held by run-2"):
        lease.verify()
    store.hold_lock(CLUSTER, RUN_ID)
    del cluster.global_parameters[LOCK_PARAMETER]
    with pytest.raises(LockLost, match="held by nobody"):
        lease.verify()


def test_a_retried_slice_that_overlaps_another_removes_only_its_own_mark() -> None:
    """aws-3 #8: Step Functions retried RunBatch while the first invocation still runs; the slice that
    ends first leaves the other's mark, so Cleanup still waits for that one."""
    store, cluster = world()
    record = store.lifecycle(CLUSTER)
    other = slice_mark("0a1b-first-invocation")
    store.save(record, replace(record, slices={other: int(time.time()) + 300}))
    run_slice(store, mover(cluster), replace(batch(), invocation="9f8e-retry"), renew=held)
    assert store.lifecycle(CLUSTER).slices.keys() == {other}
    now = [time.time()]

    def later(seconds: float) -> None:
        now[0] += seconds

    _, waited = stop_slice(
        store, store.lifecycle(CLUSTER), "ABORTED", deadline=now[0] + 5, clock=lambda: now[0], sleep=later
    )
    assert "did not stop within 5 s" in waited
