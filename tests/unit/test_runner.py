"""The runner's scheduling: concurrency for classic moves, quorum transfers batched, rollback on interrupt."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import pytest

from queue_balancer.model import Move, QueueRef, QueueType
from queue_balancer.movers import MoveProgress, Mover, MoveSettings, Phase, temporary_policy_name
from queue_balancer.runner import RunInterrupted, run_moves
from tests.unit.fake_cluster import FakeCluster, FakeQueue


class ScriptedMover(Mover):
    """Every move takes two polls; records the batches it was asked to start and what was in flight."""

    def __init__(self) -> None:
        self.settings = MoveSettings(poll_interval=0.0)
        self.batches: list[list[str]] = []
        self.in_flight: set[str] = set()
        self.most_classic_in_flight = 0
        self.aborted: list[str] = []

    def starting(self, moves: Sequence[Move]) -> Iterator[MoveProgress]:
        self.batches.append([m.queue for m in moves])
        self.in_flight |= {m.queue for m in moves}
        classic = sum(1 for q in self.in_flight if q.startswith("c"))
        self.most_classic_in_flight = max(self.most_classic_in_flight, classic)
        return iter([MoveProgress(m, Phase.PROMOTING, 0.0, 0.0) for m in moves])

    def advance(self, progress: MoveProgress) -> MoveProgress:
        if progress.phase is Phase.PROMOTING:
            return replace(progress, phase=Phase.RESTORING)
        self.in_flight.discard(progress.move.queue)
        return replace(progress, phase=Phase.DONE, finished_at=1.0)

    def abort(self, progress: MoveProgress, reason: str) -> MoveProgress:
        self.aborted.append(progress.move.queue)
        return replace(progress, phase=Phase.FAILED, outcome=reason, finished_at=1.0)


def _moves(prefix: str, kind: QueueType, count: int) -> list[Move]:
    return [Move("/", f"{prefix}{i}", kind, "a", "b") for i in range(count)]


def test_classic_moves_respect_the_concurrency_and_quorum_transfers_go_in_one_batch() -> None:
    mover = ScriptedMover()
    moves = _moves("q", QueueType.QUORUM, 30) + _moves("c", QueueType.CLASSIC, 10)
    result = run_moves(mover, moves, concurrency=3, sleep=lambda _s: None)
    assert len(result.done) == 40
    assert mover.most_classic_in_flight == 3
    assert len(mover.batches[0]) == 33  # every quorum transfer at once, plus three classic moves


def test_an_interrupt_aborts_the_moves_in_flight_and_propagates() -> None:
    mover = ScriptedMover()

    def interrupt(_seconds: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_moves(mover, _moves("c", QueueType.CLASSIC, 5), concurrency=2, sleep=interrupt)
    assert sorted(mover.aborted) == ["c0", "c1"]


def test_moves_being_started_are_rolled_back_too() -> None:
    mover = ScriptedMover()

    def interrupted_start(moves: Sequence[Move]) -> Iterator[MoveProgress]:
        raise KeyboardInterrupt

    mover.starting = interrupted_start  # type: ignore[method-assign]
    with pytest.raises(RunInterrupted) as caught:
        run_moves(mover, _moves("c", QueueType.CLASSIC, 3), concurrency=2, sleep=lambda _s: None)
    assert sorted(mover.aborted) == ["c0", "c1"]
    assert [p.outcome for p in caught.value.moves] == ["interrupted", "interrupted"]


class SlowRollback(ScriptedMover):
    """Aborted moves take three polls to roll back; every poll may be interrupted."""

    def abort(self, progress: MoveProgress, reason: str) -> MoveProgress:
        self.aborted.append(progress.move.queue)
        return replace(progress, phase=Phase.ROLLING_BACK, outcome=reason, nudges=0)

    def advance(self, progress: MoveProgress) -> MoveProgress:
        if progress.phase is not Phase.ROLLING_BACK:
            return super().advance(progress)
        if progress.nudges < 2:
            return replace(progress, nudges=progress.nudges + 1)
        return replace(progress, phase=Phase.FAILED, finished_at=1.0)


@pytest.mark.parametrize(("interrupts", "abandoned"), [(1, 0), (2, 0), (3, 2)])
def test_a_second_interrupt_waits_for_the_rollback_and_a_third_abandons_it(
    interrupts: int, abandoned: int
) -> None:
    mover = SlowRollback()
    remaining = [interrupts]
    notices: list[str] = []

    def sleep(_seconds: float) -> None:
        if remaining[0]:
            remaining[0] -= 1
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted) as caught:
        run_moves(mover, _moves("c", QueueType.CLASSIC, 2), concurrency=2, sleep=sleep, notice=notices.append)
    assert len(caught.value.leftovers) == abandoned
    assert len(caught.value.moves) == 2 - abandoned
    assert len(notices) == min(interrupts - 1, 1)


def test_an_interrupt_rolls_back_each_move_from_the_state_the_cluster_holds() -> None:
    """ops-2 #4: q1's step deleted its policy (leader on c), then Ctrl-C lands in q2's call of the same
    poll. q1's new state must already be recorded: no temporary policy put back, reported as moved."""
    cluster = FakeCluster(("a", "b", "c"))
    cluster.add_policy("/", "own", ".*", {"ha-mode": "exactly", "ha-params": 2})
    q1 = cluster.add_queue(FakeQueue("/", "q1", "a", messages=0))
    cluster.add_queue(FakeQueue("/", "q2", "a", messages=0))
    q1_policy = temporary_policy_name(QueueRef("/", "q1"), "r1")
    read = cluster.queue_now
    armed = [True]

    def queue_now(vhost: str, name: str) -> dict[str, Any]:
        if name == "q2" and q1.leader == "c" and ("/", q1_policy) not in cluster.policy_store and armed[0]:
            armed[0] = False
            raise KeyboardInterrupt
        return read(vhost, name)

    put = cluster.put_policy
    q1_puts_on_c: list[object] = []

    def put_policy(vhost: str, name: str, **kwargs: Any) -> None:
        if name == q1_policy and q1.leader == "c":
            q1_puts_on_c.append(kwargs["definition"].get("ha-params"))
        put(vhost, name, **kwargs)

    cluster.queue_now = queue_now  # type: ignore[method-assign]
    cluster.put_policy = put_policy  # type: ignore[method-assign]
    moves = [Move("/", q, QueueType.CLASSIC, "a", "c", 0) for q in ("q1", "q2")]
    with pytest.raises(RunInterrupted) as caught:
        run_moves(
            Mover(cluster, None, MoveSettings(), None, run_id="r1"),
            moves,
            concurrency=2,
            sleep=lambda _s: None,
        )
    assert not armed[0]  # the interrupt did land after q1's policy was deleted
    assert q1_puts_on_c == []  # before: the rollback re-mirrored q1 on [a, b, c] from its stale state
    assert ("/", q1_policy) not in cluster.policy_store
    [q1_outcome] = [p for p in caught.value.moves if p.move.queue == "q1"]
    assert (q1.leader, q1_outcome.outcome) == ("c", "interrupted; stayed on c")
