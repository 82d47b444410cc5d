"""RunBatch's job in the core (``queue_balancer.batch_run``): a slice of a stored batch against the
in-memory store and cluster: complete, stopped by a request, handed to the Wait loop, resumed, refused."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from queue_balancer.batch_run import BatchSlice, run_slice
from queue_balancer.batch_slice import SliceEnd
from queue_balancer.contract import BUDGET_SECONDS, TIMEOUT_MARGIN_SECONDS, PlanKind
from queue_balancer.lifecycle import (
    HISTORY_LIMIT,
    LOCK_MARGIN_SECONDS,
    BatchProgress,
    Control,
    Counts,
    Lifecycle,
    State,
    Step,
    advance,
    finished,
    started,
)
from queue_balancer.lifecycle.routing import Route
from queue_balancer.lock import LockLost
from queue_balancer.member_moves import MemberMover
from queue_balancer.members import MemberMove
from queue_balancer.model import Move, QueueType
from queue_balancer.movers import Mover, MoveSettings, Phase
from tests.unit.fake_cluster import Counter, FakeCluster, FakeQueue, Members, Transfer
from tests.unit.fake_store import FakeStore

CLUSTER, RUN_ID = "main", "run-1"
HA_TWO = {"ha-mode": "exactly", "ha-params": 2, "ha-sync-mode": "automatic"}


def world(queues: int = 4) -> tuple[FakeStore, FakeCluster]:
    """A run holding the lifecycle, and one stored batch that moves ``queues`` leaders off node a."""
    store, cluster = FakeStore(), FakeCluster()
    cluster.add_policy("/", "ha-two", ".*", HA_TWO)
    for index in range(queues):
        cluster.add_queue(FakeQueue("/", f"q{index}", "a", messages=10))
        cluster.queue_action("/", f"q{index}", "sync")
    store.start(balancing())
    moves = [Move("/", f"q{i}", QueueType.CLASSIC, "a", "bc"[i % 2]) for i in range(queues)]
    store.put_plan(RUN_ID, 1, [moves])
    return store, cluster


def balancing() -> Lifecycle:
    """The lifecycle of a run whose ControlCheck handed RunBatch a batch."""
    record = started(CLUSTER, run_id=RUN_ID, execution_arn="arn", action="balance", now="t")
    return replace(record, state=State.BALANCING)


class Held:
    """A lease that holds: the tests of the lease gate itself use the workflow's ``RunLeases``."""

    def check(self) -> None:
        """Never refuses."""

    def verify(self) -> None:
        """Never refuses."""


def held(_: int) -> Held:
    return Held()


def mover(cluster: FakeCluster) -> Mover:
    return Mover(cluster, Transfer(cluster), MoveSettings(poll_interval=0.01), Counter(cluster), run_id="w1")


def batch(*, events: int = 100, remaining: float = 900.0, poll: int = 3) -> BatchSlice:
    return BatchSlice(
        RUN_ID, CLUSTER, 1, 0, concurrency=2, poll_seconds=poll, events=events, remaining_seconds=remaining
    )


def test_a_slice_completes_the_batch_records_every_move_and_goes_back_to_control() -> None:
    store, cluster = world()
    leases: list[int] = []

    def renew(until: int) -> Held:
        leases.append(until)
        return Held()

    result = run_slice(store, mover(cluster), batch(), renew=renew, now=lambda: 1000.0)
    assert (result.end, result.route, result.wait) == (SliceEnd.COMPLETE, Route.CONTROL, 0)
    assert (result.done, result.failed, result.batch_complete) == (4, 0, True)
    assert [p.phase for p in store.results(RUN_ID)] == [Phase.DONE] * 4
    assert sorted(q.leader for q in cluster.queues.values()) == ["b", "b", "c", "c"]
    assert leases == [int(1000.0 + BUDGET_SECONDS + 3 + LOCK_MARGIN_SECONDS)]
    assert (RUN_ID, 1, 0) not in store.progress  # nothing left to resume


def test_a_request_ends_the_slice_with_nothing_started_and_the_batch_kept_for_later() -> None:
    store, cluster = world()
    store.items[CLUSTER]["requested"] = Control.PAUSE.value
    result = run_slice(store, mover(cluster), batch(), renew=held)
    assert (result.end, result.route, result.finished) == (SliceEnd.REQUESTED, Route.CONTROL, 0)
    assert len(store.progress[(RUN_ID, 1, 0)].pending) == 4
    assert {q.leader for q in cluster.queues.values()} == {"a"}


def test_a_spent_budget_hands_the_moves_under_way_to_the_wait_loop_and_the_next_slice_resumes_them() -> None:
    store, cluster = world()
    near_timeout = batch(remaining=TIMEOUT_MARGIN_SECONDS, poll=2)  # budget 0: one wave, then out
    assert near_timeout.budget_seconds == 0.0
    first = run_slice(store, mover(cluster), near_timeout, renew=held)
    assert (first.end, first.route, first.wait) == (SliceEnd.BUDGET, Route.WAIT_BATCH, 2)
    kept = store.progress[(RUN_ID, 1, 0)]
    assert len(kept.pending) + len(kept.active) + len(kept.finished) == 4 and kept.pending
    second = run_slice(store, mover(cluster), batch(), renew=held)
    assert second.end is SliceEnd.COMPLETE
    assert first.done + second.done == 4
    assert len(store.results(RUN_ID)) == 4  # the first slice's finished moves are not counted twice


def test_a_full_history_goes_back_to_control_instead_of_the_wait_loop() -> None:
    store, cluster = world()
    result = run_slice(store, mover(cluster), batch(events=HISTORY_LIMIT, remaining=0.0), renew=held)
    assert (result.end, result.route) == (SliceEnd.BUDGET, Route.CONTROL)  # ControlCheck continues anew
    assert (RUN_ID, 1, 0) in store.progress


def test_a_run_that_lost_the_lifecycle_moves_nothing() -> None:
    store, cluster = world()
    store.items[CLUSTER]["run_id"] = "run-2"
    with pytest.raises(LockLost, match="belongs to run run-2"):
        run_slice(store, mover(cluster), batch(), renew=held)
    assert {q.leader for q in cluster.queues.values()} == {"a"}


def test_a_lease_that_cannot_be_renewed_stops_the_slice_before_any_move() -> None:
    store, cluster = world()

    def lost(_: int) -> Held:
        raise LockLost("run run-1 no longer holds the lock of cluster main")

    set_up = list(cluster.calls)
    with pytest.raises(LockLost):
        run_slice(store, mover(cluster), batch(), renew=lost)
    assert cluster.calls == set_up


def members_world(
    changer: Callable[[FakeCluster], Members] = Members,
) -> tuple[FakeStore, FakeCluster, MemberMover]:
    """Four nodes; three quorum queues with members on a, b, c: a stored batch moves one member each to d."""
    store, cluster = FakeStore(), FakeCluster(("a", "b", "c", "d"))
    for index in range(3):
        cluster.add_queue(FakeQueue("/", f"qq{index}", "a", mirrors=["b", "c"], kind="quorum", messages=5))
    store.start(balancing())
    changes = [
        MemberMove("/", f"qq{i}", "a", ("a", "b", "c"), add=("d",), remove=("bc"[i % 2],), messages=5)
        for i in range(3)
    ]
    store.put_plan(RUN_ID, 1, [changes], PlanKind.MEMBERS)
    mover = MemberMover(cluster, changer(cluster), MoveSettings(poll_interval=0.01), Counter(cluster))
    return store, cluster, mover


def test_a_members_slice_adds_before_it_removes_and_records_every_change() -> None:
    store, cluster, mover = members_world()
    result = run_slice(store, mover, batch(), renew=held)
    assert (result.end, result.route, result.done, result.failed) == (SliceEnd.COMPLETE, Route.CONTROL, 3, 0)
    assert [(p.added, p.removed) for p in store.member_results(RUN_ID)] == [
        (("d",), ("b",)),
        (("d",), ("c",)),
        (("d",), ("b",)),
    ]
    assert store.results(RUN_ID) == []  # a members batch records member changes, not leader moves
    assert [sorted([q.leader, *q.mirrors]) for q in cluster.queues.values()] == [
        ["a", "c", "d"],
        ["a", "b", "d"],
        ["a", "c", "d"],
    ]


def test_a_members_slice_honours_a_request_before_any_change() -> None:
    store, cluster, mover = members_world()
    store.items[CLUSTER]["requested"] = Control.STOP.value
    result = run_slice(store, mover, batch(), renew=held)
    assert (result.end, result.route, result.finished) == (SliceEnd.REQUESTED, Route.CONTROL, 0)
    assert len(store.progress[(RUN_ID, 1, 0)].pending) == 3
    assert all(q.mirrors == ["b", "c"] for q in cluster.queues.values())


def test_a_request_mid_change_removes_the_members_added_and_keeps_the_changes_for_later() -> None:
    """New members on d never catch up; the operator pauses right after the adds: once the grace period is
    over the changes are rolled back (d's members removed) and wait, unchanged, for `continue`."""
    store: FakeStore | None = None

    def pausing(cluster: FakeCluster) -> Members:
        def pause() -> None:
            assert store is not None
            store.items[CLUSTER]["requested"] = Control.PAUSE.value

        return Members(cluster, lagging={"d"}, on_add=pause)

    store, cluster, mover = members_world(pausing)
    result = run_slice(store, mover, batch(), renew=held)
    assert (result.end, result.route, result.finished, result.active) == (
        SliceEnd.REQUESTED,
        Route.CONTROL,
        0,
        0,
    )
    kept = store.progress[(RUN_ID, 1, 0)]
    assert [m.queue for m in kept.pending] == ["qq0", "qq1", "qq2"] and not kept.active
    assert all(q.mirrors == ["b", "c"] for q in cluster.queues.values())  # as before the run


def test_a_leader_slice_never_reads_a_members_batch() -> None:
    store, cluster, _ = members_world()
    with pytest.raises(KeyError, match="holds members"):
        run_slice(store, mover(cluster), batch(), renew=held)


def test_the_lifecycle_follows_the_batch_move_by_move_and_ends_with_the_payloads_counts() -> None:
    """`status` reads the lifecycle item: it shows the batch before its first move and as the moves
    finish, and the slice's last word holds the counts its payload takes on (ControlCheck finds them)."""
    store, cluster = world()
    shown: list[tuple[Counts, BatchProgress | None]] = []
    save = store.save

    def watched(
        before: Lifecycle, after: Lifecycle, *, expect_requested: bool = False, expect_state: bool = False
    ) -> None:
        save(before, after, expect_requested=expect_requested, expect_state=expect_state)
        record = store.lifecycle(CLUSTER)
        shown.append((record.counts, record.batch))

    store.save = watched  # type: ignore[method-assign]
    before = Counts(pending=4, done=3, failed=1, skipped=2)  # earlier batches of the run
    result = run_slice(store, mover(cluster), replace(batch(), counts=before, batches=3), renew=held)
    assert shown[1] == (before, BatchProgress(number=1, of=3, moves=4))  # before any move, after the mark
    assert shown[-1] == (
        Counts(pending=0, done=7, failed=1, skipped=2),
        BatchProgress(number=1, of=3, moves=4, done=4),
    )
    assert result.done == 4
    assert BatchProgress(1, 3, 4, done=3, under_way=1).describe() == (
        "batch 1 of 3: 3 of 4 moves done, 0 failed, 1 under way, 0 to start"
    )


def test_a_batch_over_many_slices_counts_each_move_into_the_run_once() -> None:
    """Each slice starts from the payload's counts (the handler adds the slice's moves to them); the
    lifecycle shows the same counts after every slice, and the batch's own figures across slices."""
    store, cluster = world()
    counts, slices = Counts(pending=4), 0
    while slices < 50:
        slices += 1
        short = replace(batch(remaining=TIMEOUT_MARGIN_SECONDS), counts=counts)  # one wave per slice
        result = run_slice(store, mover(cluster), short, renew=held)
        counts = Counts(
            pending=counts.pending - result.finished,
            done=counts.done + result.done,
            failed=counts.failed + result.failed,
        )
        record = store.lifecycle(CLUSTER)
        assert record.counts == counts
        assert record.batch is not None and record.batch.done == 4 - counts.pending - counts.failed
        if result.batch_complete:
            break
    assert slices > 2 and counts == Counts(pending=0, done=4)
    assert store.lifecycle(CLUSTER).batch == BatchProgress(number=1, of=1, moves=4, done=4)


def test_a_new_plan_or_the_end_of_the_run_clears_the_batch_progress() -> None:
    record = replace(
        started(CLUSTER, run_id=RUN_ID, execution_arn="arn", action="balance", now="t"),
        state=State.BALANCING,
        batch=BatchProgress(number=2, of=2, moves=5, done=5),
    )
    assert Lifecycle.from_item(record.to_item(), CLUSTER) == record
    assert advance(record, Step.REPLANNED, now="t").batch is None
    assert finished(record, "completed", now="t").batch is None
    assert advance(record, Step.WAITING, now="t", state=State.PAUSE).batch == record.batch  # paused mid-plan


def test_status_follows_a_members_batch_as_it_follows_leader_moves() -> None:
    store, _cluster, mover = members_world()
    run_slice(store, mover, replace(batch(), counts=Counts(pending=3)), renew=held)
    record = store.lifecycle(CLUSTER)
    assert (record.counts, record.batch) == (Counts(done=3), BatchProgress(1, 1, 3, done=3))
