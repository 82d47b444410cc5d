"""Every phase of a move against an in-memory cluster that mirrors queues by RabbitMQ's rules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import pytest

from queue_balancer.errors import ManagementError, MoveStateError
from queue_balancer.model import Move, QueueType
from queue_balancer.movers import POLICY_PREFIX, MoveContext, MoveProgress, Mover, MoveSettings, Phase
from queue_balancer.movers.mover import DRAINED_FRESH_SECONDS, LIST_READ_MIN
from queue_balancer.movers.policies import temporary_policy_name
from tests.unit.fake_cluster import Counter, FakeCluster, FakeQueue, Transfer

HA_TWO = {"ha-mode": "exactly", "ha-params": 2, "ha-sync-mode": "automatic"}


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cluster() -> FakeCluster:
    fake = FakeCluster()
    fake.add_policy("/", "ha-two", ".*", HA_TWO)
    return fake


@pytest.fixture
def clock() -> Clock:
    return Clock()


def mover(cluster: FakeCluster, clock: Clock, answer: str = "ok") -> Mover:
    settings = MoveSettings(poll_interval=0, sync_nudge_after=5)
    return Mover(cluster, Transfer(cluster, answer), settings, Counter(cluster), clock)


def classic(cluster: FakeCluster, name: str = "q", messages: int = 10) -> Move:
    queue = cluster.add_queue(FakeQueue("/", name, "a", messages=messages))
    cluster.queue_action("/", name, "sync")
    cluster.fewest_copies[("/", name)] = queue.copies
    assert queue.mirrors == ["b"]
    return Move("/", name, QueueType.CLASSIC, "a", "c", messages)


def run(m: Mover, progress: MoveProgress, clock: Clock, polls: int = 50) -> MoveProgress:
    for _ in range(polls):
        if progress.finished:
            return progress
        progress = m.advance(progress)
        clock.now += 1
    return progress


def temporary(cluster: FakeCluster) -> list[str]:
    return [name for (_, name) in cluster.policy_store if name.startswith(POLICY_PREFIX)]


def test_a_classic_move_lands_on_its_target_and_leaves_no_policy(cluster: FakeCluster, clock: Clock) -> None:
    m = mover(cluster, clock)
    [progress] = m.start([classic(cluster)])
    assert progress.phase is Phase.SYNCING
    done = run(m, progress, clock)
    assert (done.phase, done.outcome) == (Phase.DONE, "")
    assert cluster.queues[("/", "q")].leader == "c"
    assert temporary(cluster) == []


def test_a_retried_start_carries_on_syncing_with_the_policy_it_finds(
    cluster: FakeCluster, clock: Clock
) -> None:
    move = classic(cluster)
    cluster.sync_on_read = False
    m = mover(cluster, clock)
    m.start([move])  # the first attempt: policy put, mirror on c not yet synchronised
    [retried] = m.start([move])
    assert retried.phase is Phase.SYNCING
    assert retried.policy == temporary_policy_name(move.ref)
    cluster.sync_on_read = True
    assert run(m, retried, clock).phase is Phase.DONE


def test_a_mirror_that_does_not_sync_by_itself_is_asked_to_sync(cluster: FakeCluster, clock: Clock) -> None:
    cluster.sync_on_read = False
    m = mover(cluster, clock)
    [progress] = m.start([classic(cluster)])
    progress = run(m, progress, clock, polls=8)
    assert ("queue_action", "/", "q", "sync") in cluster.calls
    assert run(m, progress, clock).phase is Phase.DONE


def test_an_abort_keeps_every_copy_then_hands_the_queue_back(cluster: FakeCluster, clock: Clock) -> None:
    cluster.sync_on_read = False
    m = mover(cluster, clock)
    [progress] = m.start([classic(cluster)])
    rolling = m.abort(progress, "interrupted")
    assert rolling.phase is Phase.ROLLING_BACK
    assert temporary(cluster) != []  # until the copies it asked for are synchronised
    failed = run(m, rolling, clock)
    assert (failed.phase, failed.outcome) == (Phase.FAILED, "interrupted; rolled back")
    assert temporary(cluster) == []
    queue = cluster.queues[("/", "q")]
    assert queue.leader == "a" and queue.copies == 2
    assert cluster.fewest_copies[("/", "q")] == 2


def test_an_abort_after_the_promotion_says_the_queue_stayed(cluster: FakeCluster, clock: Clock) -> None:
    m = mover(cluster, clock)
    [progress] = m.start([classic(cluster)])
    while progress.phase is not Phase.RESTORING:
        progress = m.advance(progress)
    failed = run(m, m.abort(progress, "interrupted"), clock)
    assert (failed.phase, failed.outcome) == (Phase.FAILED, "interrupted; stayed on c")


def test_a_rollback_that_cannot_reach_the_api_names_what_it_left(cluster: FakeCluster, clock: Clock) -> None:
    cluster.sync_on_read = False
    m = mover(cluster, clock)
    [progress] = m.start([classic(cluster)])
    down = ManagementError("cannot reach the management API", status=None)
    rolling = m.abort(progress, "interrupted")
    cluster.fail_next("queue_now", down, down)
    assert m.advance(rolling) == rolling  # retried at the next poll
    clock.now = rolling.deadline + 1
    cluster.fail_next("delete_policy", down)
    failed = m.advance(rolling)
    assert failed.phase is Phase.FAILED
    assert failed.policy is not None and f"temporary policy {failed.policy} left" in failed.outcome


def test_a_queue_deleted_mid_move_fails_cleanly(cluster: FakeCluster, clock: Clock) -> None:
    m = mover(cluster, clock)
    cluster.sync_on_read = False
    [progress] = m.start([classic(cluster)])
    del cluster.queues[("/", "q")]
    failed = m.advance(progress)
    assert (failed.phase, failed.outcome) == (Phase.FAILED, "queue was deleted")
    assert temporary(cluster) == []


def test_a_phase_that_outlives_its_deadline_rolls_back(cluster: FakeCluster, clock: Clock) -> None:
    cluster.sync_on_read = False
    m = mover(cluster, clock)
    [progress] = m.start([classic(cluster)])
    clock.now = progress.deadline + 1
    rolling = m.advance(progress)
    assert (rolling.phase, rolling.outcome) == (Phase.ROLLING_BACK, "timed out while syncing")


def test_an_unreachable_api_mid_move_rolls_back(cluster: FakeCluster, clock: Clock) -> None:
    cluster.sync_on_read = False
    m = mover(cluster, clock)
    [progress] = m.start([classic(cluster)])
    cluster.fail_next("queue_now", ManagementError("cannot reach the management API", status=None))
    rolling = m.advance(progress)
    assert rolling.phase is Phase.ROLLING_BACK
    assert "cannot reach" in rolling.outcome
    assert run(m, rolling, clock).phase is Phase.FAILED
    assert temporary(cluster) == []


def test_a_quorum_move_is_one_transfer_then_verified(cluster: FakeCluster, clock: Clock) -> None:
    cluster.add_queue(FakeQueue("/", "qq", "a", ["b", "c"], {"b", "c"}, 5, kind="quorum"))
    m = mover(cluster, clock)
    [progress] = m.start([Move("/", "qq", QueueType.QUORUM, "a", "c", 5)])
    assert progress.phase is Phase.TRANSFERRING
    assert run(m, progress, clock).phase is Phase.DONE


def test_many_quorum_moves_are_observed_with_one_list_read_per_vhost(
    cluster: FakeCluster, clock: Clock
) -> None:
    names = [f"qq{i}" for i in range(LIST_READ_MIN)]
    for name in names:
        cluster.add_queue(FakeQueue("/", name, "a", ["b", "c"], {"b", "c"}, 5, kind="quorum"))
    m = mover(cluster, clock)
    started = m.start([Move("/", n, QueueType.QUORUM, "a", "c", 5) for n in names])
    del cluster.queues[("/", names[0])]  # deleted meanwhile: missing from the list, read alone, named
    cluster.calls.clear()
    observed = list(m.advance_all(started))
    assert [c[0] for c in cluster.calls if c[0].startswith("queue")] == ["queues_now", "queue_now"]
    assert (observed[0].phase, observed[0].outcome) == (Phase.FAILED, "queue was deleted")
    assert all(p.phase is Phase.DONE for p in observed[1:])


def test_a_refused_transfer_fails_the_move(cluster: FakeCluster, clock: Clock) -> None:
    cluster.add_queue(FakeQueue("/", "qq", "a", ["b", "c"], {"b", "c"}, 5, kind="quorum"))
    m = mover(cluster, clock, answer="{error,not_voter}")
    [progress] = m.start([Move("/", "qq", QueueType.QUORUM, "a", "c", 5)])
    assert (progress.phase, progress.outcome) == (Phase.FAILED, "leader transfer refused: {error,not_voter}")


def test_a_target_without_a_vote_is_refused_and_named(cluster: FakeCluster, clock: Clock) -> None:
    """The transfer's own membership check (4.x) answers for a non-voting target: nothing changed."""
    cluster.add_queue(FakeQueue("/", "qq", "a", ["b", "c"], {"b", "c"}, 5, kind="quorum"))
    m = mover(cluster, clock, answer="{error,{not_voter,promotable}}")
    [progress] = m.start([Move("/", "qq", QueueType.QUORUM, "a", "c", 5)])
    assert progress.phase is Phase.FAILED
    assert progress.outcome == "c is a promotable member without a vote: never made leader; nothing changed"


def test_a_move_whose_leader_is_elsewhere_is_refused(cluster: FakeCluster, clock: Clock) -> None:
    move = replace(classic(cluster), source="b")
    [progress] = mover(cluster, clock).start([move])
    assert (progress.phase, progress.outcome) == (Phase.FAILED, "leader is on a, not b")
    assert temporary(cluster) == []


def test_a_policy_change_without_a_temporary_policy_is_a_typed_error(
    cluster: FakeCluster, clock: Clock
) -> None:
    progress = MoveProgress(classic(cluster), Phase.SYNCING, 0, 0)
    with pytest.raises(MoveStateError, match="no temporary policy"):
        MoveContext(cluster).put_policy(progress, {"ha-mode": "all"})


# ---- the one invariant: never fewer synchronised copies than before, and exactly on the target ----

ALL = {"ha-mode": "all", "ha-sync-mode": "automatic"}


@pytest.mark.parametrize(
    ("nodes", "definition", "mirrors", "target", "fewest"),
    [
        (("a", "b", "c"), HA_TWO, ["b"], "c", 2),  # the target is a new node
        (("a", "b", "c"), HA_TWO, ["b"], "b", 2),  # the target is the only mirror: a spare keeps two
        (("a", "b", "c"), ALL, ["b", "c"], "c", 2),  # every node holds a copy: never fewer than N - 1
        (("a", "b", "c"), ALL, ["c", "b"], "c", 2),  # the target is already the oldest mirror
        (("a", "b", "c", "d"), {**HA_TWO, "ha-params": 3}, ["b", "c"], "d", 3),
        (("a", "b", "c"), {}, [], "c", 1),  # unmirrored and empty
    ],
)
def test_a_classic_move_never_holds_fewer_copies_and_lands_on_its_target(
    clock: Clock,
    nodes: tuple[str, ...],
    definition: dict[str, object],
    mirrors: list[str],
    target: str,
    fewest: int,
) -> None:
    cluster = FakeCluster(nodes)
    if definition:
        cluster.add_policy("/", "own", ".*", definition)
    queue = cluster.add_queue(FakeQueue("/", "q", "a", messages=0 if not mirrors else 10))
    queue.mirrors, queue.synced = list(mirrors), set(mirrors)
    cluster.fewest_copies[("/", "q")] = queue.copies
    m = mover(cluster, clock)
    [progress] = m.start([Move("/", "q", QueueType.CLASSIC, "a", target, queue.messages)])
    done = run(m, progress, clock)
    assert (done.phase, done.outcome, queue.leader) == (Phase.DONE, "", target)
    assert cluster.fewest_copies[("/", "q")] >= fewest
    assert not cluster.lost
    assert temporary(cluster) == []


@pytest.mark.parametrize("victim", ["target", "source"])
@pytest.mark.parametrize("step", range(8))
def test_a_node_killed_at_any_step_of_a_move_loses_nothing(clock: Clock, victim: str, step: int) -> None:
    cluster = FakeCluster()
    cluster.add_policy("/", "own", ".*", HA_TWO)
    queue = cluster.add_queue(FakeQueue("/", "q", "a", ["b"], {"b"}, messages=10))
    m = mover(cluster, clock)
    [progress] = m.start([Move("/", "q", QueueType.CLASSIC, "a", "c", 10)])
    for _ in range(step):
        progress = m.advance(progress)
        clock.now += 1
    assert queue.copies >= 2  # up to the kill, as many copies as before
    cluster.kill("c" if victim == "target" else "a")
    run(m, progress, clock, polls=200)
    assert not cluster.lost
    assert queue.leader in ("a", "b", "c") and cluster.running[queue.leader]


def test_a_target_that_goes_down_aborts_the_move_within_seconds(cluster: FakeCluster, clock: Clock) -> None:
    cluster.sync_on_read = False
    m = mover(cluster, clock)
    [progress] = m.start([classic(cluster)])
    cluster.kill("c")
    failed = run(m, progress, clock)
    assert (failed.phase, failed.outcome) == (Phase.FAILED, "node c is not running; rolled back")
    assert (
        failed.finished_at is not None and failed.finished_at - progress.started_at < 20
    )  # 60 s is the phase deadline
    assert temporary(cluster) == []


def test_a_move_to_a_node_that_is_down_is_refused_before_any_change(
    cluster: FakeCluster, clock: Clock
) -> None:
    move = classic(cluster)
    cluster.running["c"] = False
    [progress] = mover(cluster, clock).start([move])
    assert (progress.phase, progress.outcome) == (Phase.FAILED, "node c is not running")
    assert not [c for c in cluster.calls if c[0] == "put_policy" and c[2].startswith(POLICY_PREFIX)]


def test_a_resumed_slice_puts_the_policy_a_lost_slice_changed(clock: Clock) -> None:
    """ops-2 #5: the stored progress says SYNCING with [a, b, c, d] asked; the lost slice went on to
    REORDERING and put [a, c, d]. The resumed move must put [a, b, c, d] again, not wait for b."""
    cluster = FakeCluster(("a", "b", "c", "d"))
    cluster.add_policy("/", "own", "^q$", {"ha-mode": "exactly", "ha-params": 3})
    queue = cluster.add_queue(FakeQueue("/", "q", "a", mirrors=["b", "c"], synced={"b", "c"}, messages=100))
    m = mover(cluster, clock)
    [stored] = m.start([Move("/", "q", QueueType.CLASSIC, "a", "c", 100)])
    lost = m.advance(MoveProgress.from_dict(stored.to_dict()))
    assert (lost.phase, lost.asked, queue.mirrors) == (Phase.REORDERING, ("a", "c", "d"), ["c", "d"])
    done = run(m, stored, clock, polls=30)
    assert (done.phase, queue.leader) == (Phase.DONE, "c")
    assert clock.now < 1030  # before: no PUT, the move waited for b until its deadline, then failed


class Drained:
    """The maintenance-mode port of 3.x (an eval on AWS and in the CLI): these nodes are drained."""

    def __init__(self, *nodes: str) -> None:
        self.nodes, self.asked = set(nodes), 0

    def __call__(self, running: Sequence[str]) -> set[str]:
        self.asked += 1
        return self.nodes & set(running)


def test_a_spare_mirror_is_never_put_on_a_drained_node(clock: Clock) -> None:
    cluster = FakeCluster(("a", "b", "c", "d"))
    cluster.add_policy("/", "ha-two", ".*", HA_TWO)
    classic(cluster)  # leader a, mirror b; moved to b, a spare keeps the two copies while a goes
    drained = Drained("c")
    m = replace(mover(cluster, clock), drained=drained)
    [progress] = m.start([Move("/", "q", QueueType.CLASSIC, "a", "b", 10)])
    assert progress.mirrors == ("b", "d") and drained.asked == 1
    done = run(m, progress, clock)
    assert done.phase is Phase.DONE and "c" not in cluster.queues[("/", "q")].mirrors


def test_a_move_to_a_drained_node_is_refused_before_any_change(cluster: FakeCluster, clock: Clock) -> None:
    move = classic(cluster)
    [progress] = replace(mover(cluster, clock), drained=Drained("c")).start([move])
    assert (progress.phase, progress.outcome) == (
        Phase.FAILED,
        "node c is in maintenance mode (rabbitmq-upgrade drain)",
    )
    assert not [c for c in cluster.calls if c[0] == "put_policy" and c[2].startswith(POLICY_PREFIX)]


def test_a_quorum_only_batch_does_not_ask_for_maintenance_mode(cluster: FakeCluster, clock: Clock) -> None:
    cluster.add_queue(FakeQueue("/", "qq", "a", ["b", "c"], {"b", "c"}, 5, kind="quorum"))
    drained = Drained()
    m = replace(mover(cluster, clock), drained=drained)
    [progress] = m.start([Move("/", "qq", QueueType.QUORUM, "a", "c", 5)])
    assert progress.phase is Phase.TRANSFERRING and drained.asked == 0


def test_maintenance_mode_is_asked_again_only_after_a_while(cluster: FakeCluster, clock: Clock) -> None:
    """On 3.x each answer is an Erlang VM start: a run starting a classic move whenever one ends must not
    pay it every time, yet a node drained mid-run is seen within DRAINED_FRESH_SECONDS."""
    drained = Drained()
    m = replace(mover(cluster, clock), drained=drained)
    first = m.start([classic(cluster, "q1")])
    m.start([classic(cluster, "q2")])
    assert drained.asked == 1 and first[0].phase is not Phase.FAILED
    drained.nodes.add("c")
    clock.now += DRAINED_FRESH_SECONDS
    [late] = m.start([classic(cluster, "q3")])
    assert drained.asked == 2 and late.outcome == "node c is in maintenance mode (rabbitmq-upgrade drain)"


def test_an_election_won_by_a_third_member_is_named_as_our_transfers_outcome(
    cluster: FakeCluster, clock: Clock
) -> None:
    """ops-2 #9 (d): Ra may elect another member after our own transfer (a lagging target does not win)."""
    queue = cluster.add_queue(FakeQueue("/", "qq", "a", ["b", "c"], {"b", "c"}, 5, kind="quorum"))
    m = mover(cluster, clock)
    [progress] = m.start([Move("/", "qq", QueueType.QUORUM, "a", "c", 5)])
    queue.leader = "b"  # the election after the transfer
    assert progress.phase is Phase.TRANSFERRING
    failed = m.advance(progress)
    assert (failed.phase, failed.outcome) == (Phase.FAILED, "the election after the transfer chose b, not c")


def test_a_classic_leader_taken_elsewhere_mid_move_is_someone_elses_doing(
    cluster: FakeCluster, clock: Clock
) -> None:
    m = mover(cluster, clock)
    [progress] = m.start([classic(cluster)])
    cluster.queues[("/", "q")].leader = "b"
    assert m.advance(progress).outcome.startswith("leader moved to b by someone else")


def quorum_move(
    cluster: FakeCluster, clock: Clock, transfer: str = "already_leader"
) -> tuple[Mover, MoveProgress]:
    """A quorum move whose transfer Ra accepted ("already_leader" moves nothing in the fake)."""
    cluster.add_queue(FakeQueue("/", "qq", "a", ["b", "c"], {"b", "c"}, 5, kind="quorum"))
    m = Mover(cluster, Transfer(cluster, transfer), MoveSettings(poll_interval=0), Counter(cluster), clock)
    [progress] = m.start([Move("/", "qq", QueueType.QUORUM, "a", "c", 5)])
    assert progress.phase is Phase.TRANSFERRING
    return m, progress


def test_a_quorum_transfer_to_a_target_that_went_down_fails_within_seconds(
    cluster: FakeCluster, clock: Clock
) -> None:
    """Ra accepted the transfer, then the target's node died before it won: the move fails once two
    readings a few seconds apart found the node down, naming it, not at the phase's deadline."""
    m, progress = quorum_move(cluster, clock)
    cluster.kill("c")
    failed = run(m, progress, clock)
    assert (failed.phase, failed.outcome) == (Phase.FAILED, "node c is not running")
    assert failed.finished_at is not None and failed.finished_at - progress.started_at < 15


def test_a_quorum_target_offline_on_a_running_node_only_waits_asking_now_and_then(
    cluster: FakeCluster, clock: Clock
) -> None:
    """A member offline while its node runs (recovering, slow), or a node list that cannot be read: the
    transfer waits for its deadline, asking about the node at most once every few seconds."""
    m, progress = quorum_move(cluster, clock)
    cluster.queues[("/", "qq")].mirrors = ["b"]  # c's member offline: not listed as online
    cluster.queues[("/", "qq")].leader = "a"
    for _ in range(30):
        progress = m.advance(progress)
        clock.now += 1
    assert progress.phase is Phase.TRANSFERRING
    assert 3 <= sum(1 for c in cluster.calls if c[0] == "nodes") <= 7


def test_a_classic_target_promoted_when_its_source_died_is_handed_back_and_verified(clock: Clock) -> None:
    """The source's node died and RabbitMQ promoted the target, seen synchronised before: the move hands
    the queue back to its own policy and verifies its count, instead of waiting for the sync of a copy
    that is gone until the phase's deadline."""
    cluster = FakeCluster()
    cluster.add_policy("/", "own", ".*", HA_TWO)
    cluster.sync_on_read = False
    cluster.add_queue(FakeQueue("/", "q", "a", ["c"], {"c"}, messages=10))
    m = mover(cluster, clock)
    [progress] = m.start([Move("/", "q", QueueType.CLASSIC, "a", "c", 10)])
    progress = m.advance(progress)
    assert progress.phase is Phase.SYNCING and progress.target_synced
    cluster.kill("a")
    cluster.sync_on_read = True
    done = run(m, progress, clock)
    assert (done.phase, done.outcome) == (Phase.DONE, "")
    assert done.finished_at is not None and done.finished_at - progress.started_at < 15
    assert temporary(cluster) == [] and not cluster.lost


def test_a_classic_target_promoted_before_it_synchronised_fails_saying_messages_may_be_lost(
    clock: Clock,
) -> None:
    """The source and the synchronised mirror died while the target was still syncing: RabbitMQ promoted
    the unsynchronised target (ha-promote-on-failure: always). Never a clean "done", even with a consumer
    making the count's change look like traffic."""
    cluster = FakeCluster()
    cluster.add_policy("/", "own", ".*", HA_TWO)
    cluster.sync_on_read = False
    queue = cluster.add_queue(FakeQueue("/", "q", "a", ["b"], {"b"}, messages=10))
    m = mover(cluster, clock)
    [progress] = m.start([Move("/", "q", QueueType.CLASSIC, "a", "c", 10)])
    progress = m.advance(progress)
    assert queue.mirrors == ["b", "c"] and not progress.target_synced
    queue.consumers = 1
    cluster.kill("b")
    cluster.kill("a")
    assert queue.leader == "c" and cluster.lost
    failed = run(m, progress, clock, polls=200)
    assert failed.phase is Phase.FAILED
    assert failed.outcome.startswith(
        "a went down and RabbitMQ promoted c before it was seen synchronised: messages may be lost "
        "(message count 10 -> 0); stayed on c"
    )
    assert temporary(cluster) == []


@pytest.mark.parametrize(
    ("consumers_at_start", "consumers_after", "evidence"),
    [
        (0, 0, None),
        (1, 1, "clients were using the queue when the move began"),
        (0, 1, "message count 10 unchanged, but clients use the queue"),
    ],
    ids=["idle", "consumer-throughout", "consumer-after"],
)
def test_a_classic_target_promoted_in_sync_but_unseen_is_verified_by_an_exact_quiet_count(
    clock: Clock, consumers_at_start: int, consumers_after: int, evidence: str | None
) -> None:
    """The target had synchronised between two polls when the source and the older mirror died: RabbitMQ
    promoted it with every message. An exact count, unchanged with no client in sight, shows it and the
    move is done. A consumer then or now makes the same count show nothing: clients could keep it level,
    and what a consumer on the dead node held unacknowledged is in neither count."""
    cluster = FakeCluster(("a", "b", "c", "d"))
    cluster.add_policy("/", "own", ".*", HA_TWO)
    cluster.sync_on_read = False
    queue = cluster.add_queue(
        FakeQueue("/", "q", "a", ["b"], {"b"}, messages=10, consumers=consumers_at_start)
    )
    m = mover(cluster, clock)
    [progress] = m.start([Move("/", "q", QueueType.CLASSIC, "a", "c", 10)])
    progress = m.advance(progress)
    assert queue.mirrors == ["b", "c"] and not progress.target_synced
    queue.synced.add("c")  # synchronised, not yet seen so
    queue.consumers = consumers_after
    cluster.kill("b")
    cluster.kill("a")
    assert queue.leader == "c" and not cluster.lost
    cluster.sync_on_read = True
    ended = run(m, progress, clock)
    if evidence is None:
        assert (ended.phase, ended.outcome) == (Phase.DONE, "")
    else:
        assert ended.phase is Phase.FAILED
        assert ended.outcome.startswith(
            "a went down and RabbitMQ promoted c before it was seen synchronised: messages may be lost "
            f"({evidence}); stayed on c"
        )
    assert temporary(cluster) == []


def stats_only_quorum_move(cluster: FakeCluster, clock: Clock) -> tuple[Mover, MoveProgress, FakeQueue]:
    """A quorum move verified through the statistics view alone (no exact counts), settle time 10 s."""
    queue = cluster.add_queue(FakeQueue("/", "qq", "a", ["b", "c"], {"b", "c"}, 5, kind="quorum"))
    settings = MoveSettings(poll_interval=0, settle_timeout=10)
    m = Mover(cluster, Transfer(cluster), settings, None, clock)
    [progress] = m.start([Move("/", "qq", QueueType.QUORUM, "a", "c", 5)])
    return m, progress, queue


def test_a_count_that_fell_in_the_statistics_view_passes_only_by_coming_back(
    cluster: FakeCluster, clock: Clock
) -> None:
    """The statistics view shows the old leader's count (0 for a quorum queue whose leader's node died)
    until the new leader publishes its own: the move waits for it, and passes when it is back."""
    m, progress, queue = stats_only_quorum_move(cluster, clock)
    clock.now += 50  # verification begins long after the move started (within its 60 s deadline)
    queue.messages = 0
    waiting = m.advance(progress)
    assert waiting.phase is Phase.VERIFYING and waiting.quiet_drop_at == clock.now
    clock.now += 3
    queue.messages = 5
    assert (m.advance(waiting).phase, m.advance(waiting).outcome) == (Phase.DONE, "")


def test_a_count_that_fell_quietly_fails_once_it_held_whatever_traffic_comes_later(
    cluster: FakeCluster, clock: Clock
) -> None:
    m, progress, queue = stats_only_quorum_move(cluster, clock)
    queue.messages = 3
    waiting = m.advance(progress)
    assert waiting.phase is Phase.VERIFYING
    queue.consumers = 1  # a client attaches during the wait: it excuses nothing
    clock.now += 5
    waiting = m.advance(waiting)
    assert waiting.phase is Phase.VERIFYING
    failed = run(m, waiting, clock)
    assert (failed.phase, failed.outcome) == (
        Phase.FAILED,
        "verification: message count 5 -> 3 (statistics view); it fell with no client traffic",
    )


def promotion_asked(cluster: FakeCluster, clock: Clock) -> tuple[Mover, MoveProgress, FakeQueue]:
    """A move of q from a to c that has just asked for the promotion, which RabbitMQ has not made yet
    (policies are applied only when the test says so from here on)."""
    queue = cluster.add_queue(FakeQueue("/", "q", "a", ["c", "b"], {"b", "c"}, messages=10))
    m = mover(cluster, clock)
    [progress] = m.start([Move("/", "q", QueueType.CLASSIC, "a", "c", 10)])
    cluster.defer_policies = True
    while (progress := m.advance(progress)).phase is not Phase.PROMOTING:
        cluster.apply_policies()
        clock.now += 1
    return m, progress, queue


def test_a_rollback_lets_a_promotion_under_way_land_before_it_hands_the_queue_back(clock: Clock) -> None:
    """Interrupted once the promotion was asked but before RabbitMQ made it: asking for the source again
    would race the promotion (RabbitMQ can lose the later change). The rollback asks nothing more, sees
    the promotion land, then hands the queue back to its own policy: it stays on the target."""
    cluster = FakeCluster()
    cluster.add_policy("/", "own", ".*", {"ha-mode": "all", "ha-sync-mode": "automatic"})
    m, progress, queue = promotion_asked(cluster, clock)
    assert queue.leader == "a"  # the promotion asked for, not made yet
    writes = len([c for c in cluster.calls if c[0] == "put_policy"])
    rolling = m.abort(progress, "interrupted")
    rolling = m.advance(rolling)
    assert len([c for c in cluster.calls if c[0] == "put_policy"]) == writes  # the source not asked back
    cluster.defer_policies = False
    cluster.apply_policies()  # the promotion lands
    ended = run(m, rolling, clock)
    assert (ended.phase, ended.outcome, queue.leader) == (Phase.FAILED, "interrupted; stayed on c", "c")
    assert temporary(cluster) == [] and sorted(queue.mirrors) == ["a", "b"] and not cluster.lost


def test_a_rollback_awaiting_a_promotion_whose_target_died_hands_back_once_another_copy_leads(
    clock: Clock,
) -> None:
    """The target's node went while the promotion it was asked for was under way: RabbitMQ promotes the
    other kept copy (the policy leaves the source out). The rollback sees the source no longer lead and
    hands the queue back, instead of waiting for a target that cannot lead and then asking for the source
    again (an empty mirror to synchronise)."""
    cluster = FakeCluster(("a", "b", "c", "d"))
    cluster.add_policy("/", "own", ".*", {"ha-mode": "exactly", "ha-params": 3, "ha-sync-mode": "automatic"})
    m, progress, queue = promotion_asked(cluster, clock)
    rolling = m.abort(progress, "interrupted")
    cluster.kill("c")
    cluster.defer_policies = False
    cluster.apply_policies()  # the promotion lands on b
    assert queue.leader == "b"
    writes = sum(1 for c in cluster.calls if c[0] == "put_policy")
    ended = run(m, rolling, clock)
    assert (ended.phase, ended.outcome) == (Phase.FAILED, "interrupted; stayed on b")
    assert sum(1 for c in cluster.calls if c[0] == "put_policy") == writes  # no empty mirror on a to sync
    assert temporary(cluster) == [] and not cluster.lost
