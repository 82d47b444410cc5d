"""The runner's scheduling: concurrency for classic moves, quorum transfers batched, rollback on interrupt."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from queue_balancer.model import Move, QueueType
from queue_balancer.movers import MoveProgress, Mover, MoveSettings, Phase
from queue_balancer.runner import run_moves


class ScriptedMover(Mover):
    """Every move takes two polls; records the batches it was asked to start and what was in flight."""

    def __init__(self) -> None:
        self.settings = MoveSettings(poll_interval=0.0)
        self.batches: list[list[str]] = []
        self.in_flight: set[str] = set()
        self.most_classic_in_flight = 0
        self.aborted: list[str] = []

    def start(self, moves: Sequence[Move]) -> list[MoveProgress]:
        self.batches.append([m.queue for m in moves])
        self.in_flight |= {m.queue for m in moves}
        classic = sum(1 for q in self.in_flight if q.startswith("c"))
        self.most_classic_in_flight = max(self.most_classic_in_flight, classic)
        return [MoveProgress(m, Phase.PROMOTING, 0.0, 0.0) for m in moves]

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
