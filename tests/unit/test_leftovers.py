"""cleanup of a dead run's temporary policy keeps every synchronised copy (ops-2 #1, on the 3.10-rule fake)."""

from __future__ import annotations

from queue_balancer.model import Move, QueueRef, QueueType
from queue_balancer.movers import Mover, MoveSettings, cleanup, temporary_policy_name
from tests.unit.fake_cluster import FakeCluster, FakeQueue


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def cut_off_after_reordering() -> tuple[FakeCluster, FakeQueue]:
    """Own policy ``nodes [a, b, c]``, manual sync; a dead run moving q a -> c re-added b (REORDERING):
    mirrors [c, d, b], synchronised c and d (3 copies), b syncing. Then the run died."""
    cluster = FakeCluster(("a", "b", "c", "d"))
    cluster.sync_on_read = False
    cluster.add_policy("/", "own", "^q$", {"ha-mode": "nodes", "ha-params": ["a", "b", "c"]})
    queue = cluster.add_queue(FakeQueue("/", "q", "a", mirrors=["b", "c"], synced={"b", "c"}, messages=100))
    mover = Mover(cluster, None, MoveSettings(), None, run_id="dead1")
    [progress] = mover.start([Move("/", "q", QueueType.CLASSIC, "a", "c", 100)])
    dropped_b = False
    while not (dropped_b and "b" in queue.mirrors):
        dropped_b = dropped_b or "b" not in queue.mirrors
        if not dropped_b:
            queue.synced |= set(queue.mirrors)
        progress = mover.advance(progress)
    assert (queue.leader, queue.mirrors, sorted(queue.synced), queue.copies) == (
        "a",
        ["c", "d", "b"],
        ["c", "d"],
        3,
    )
    return cluster, queue


def test_cleanup_keeps_every_synchronised_copy_of_a_dead_runs_queue() -> None:
    cluster, queue = cut_off_after_reordering()
    clock = Clock()
    result = cleanup(cluster, frozenset({"newrun"}), sleep=clock.sleep, clock=clock)
    assert result.removed == [("/", temporary_policy_name(QueueRef("/", "q"), "dead1"))]
    assert result.syncing == []
    # Before: the policy was deleted on the spot, d (synced) dropped and b (unsynced) kept: 2 copies.
    assert cluster.fewest_copies[("/", "q")] >= 3
    assert (queue.leader, sorted(queue.mirrors), sorted(queue.synced)) == ("a", ["b", "c"], ["b", "c"])


def test_cleanup_leaves_a_policy_whose_copies_do_not_sync_in_time_and_says_so() -> None:
    cluster, _queue = cut_off_after_reordering()
    cluster.queue_action = lambda vhost, name, action: None  # type: ignore[method-assign]
    clock = Clock()
    result = cleanup(cluster, frozenset(), wait_seconds=10, sleep=clock.sleep, clock=clock)
    name = temporary_policy_name(QueueRef("/", "q"), "dead1")
    assert result.removed == []
    assert result.syncing == [("/", name, "queue q: mirrors on b not synchronised yet")]
    assert ("/", name) in cluster.policy_store  # pinning every copy, losing none
    assert cluster.fewest_copies[("/", "q")] >= 3
    assert 10 <= clock.now <= 12


def test_cleanup_removes_a_policy_that_governs_no_queue_at_once() -> None:
    cluster = FakeCluster()
    cluster.add_policy(
        "/", temporary_policy_name(QueueRef("/", "gone"), "dead"), "^gone\\z", {"ha-mode": "all"}
    )
    result = cleanup(cluster, frozenset(), sleep=lambda _s: None)
    assert [name for _, name in result.removed] == [temporary_policy_name(QueueRef("/", "gone"), "dead")]
