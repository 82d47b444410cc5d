"""Run a plan in-process: up to K moves at once, each polled until it is done, failed or rolled back.

The Step Functions workflow drives the same ``Mover`` steps from its own Map/Wait loop; this is the
loop for the CLI. Interrupting it (Ctrl-C, SIGTERM) rolls back every move still under way before the
interruption propagates, so no temporary policy outlives the process.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from queue_balancer.model import Move, QueueType
from queue_balancer.movers import MoveProgress, Mover, Phase

Listener = Callable[[MoveProgress], None]
QUORUM_BATCH = 100


@dataclass(frozen=True)
class RunResult:
    """Every move's final state, in the order they finished."""

    moves: tuple[MoveProgress, ...]
    seconds: float

    @property
    def done(self) -> tuple[MoveProgress, ...]:
        return tuple(p for p in self.moves if p.phase is Phase.DONE)

    @property
    def failed(self) -> tuple[MoveProgress, ...]:
        return tuple(p for p in self.moves if p.phase is Phase.FAILED)


def run_moves(
    mover: Mover,
    moves: Iterable[Move],
    *,
    concurrency: int = 1,
    on_change: Listener = lambda _: None,
    sleep: Callable[[float], None] = time.sleep,
) -> RunResult:
    """Carry the moves out, at most ``concurrency`` classic moves at a time (quorum transfers in batches);
    never two moves of one queue at once."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    began = time.monotonic()
    pending: deque[Move] = deque(moves)
    active: list[MoveProgress] = []
    finished: list[MoveProgress] = []
    try:
        while pending or active:
            batch = _next_batch(pending, active, concurrency)
            for progress in mover.start(batch) if batch else ():
                on_change(progress)
                (finished if progress.finished else active).append(progress)
            still: list[MoveProgress] = []
            for progress in active:
                updated = mover.advance(progress)
                if updated.phase is not progress.phase:
                    on_change(updated)
                (finished if updated.finished else still).append(updated)
            active = still
            if active:
                sleep(mover.settings.poll_interval)
    except BaseException:
        finished.extend(_roll_back(mover, active, on_change, sleep))
        raise
    return RunResult(tuple(finished), time.monotonic() - began)


def _next_batch(pending: deque[Move], active: list[MoveProgress], concurrency: int) -> list[Move]:
    """The moves to start now, in plan order: classic ones up to ``concurrency`` in flight, quorum ones
    up to ``QUORUM_BATCH`` (a leader transfer is one Raft election, and a batch is one Ra call)."""
    busy = {p.move.ref for p in active}
    room = {
        False: concurrency - sum(1 for p in active if p.move.type is not QueueType.QUORUM),
        True: QUORUM_BATCH - sum(1 for p in active if p.move.type is QueueType.QUORUM),
    }
    batch: list[Move] = []
    waiting: deque[Move] = deque()
    while pending:
        move = pending.popleft()
        quorum = move.type is QueueType.QUORUM
        if room[quorum] > 0 and move.ref not in busy:
            batch.append(move)
            busy.add(move.ref)
            room[quorum] -= 1
        else:
            waiting.append(move)
    pending.extend(waiting)
    return batch


def _roll_back(
    mover: Mover, active: list[MoveProgress], on_change: Listener, sleep: Callable[[float], None]
) -> list[MoveProgress]:
    """Abort the moves under way and wait (bounded by their deadlines) for their mirrors to return."""
    rolling = [mover.abort(p, "interrupted") for p in active]
    done: list[MoveProgress] = []
    while rolling:
        still = []
        for updated in map(mover.advance, rolling):
            if updated.finished:
                on_change(updated)
                done.append(updated)
            else:
                still.append(updated)
        rolling = still
        if rolling:
            sleep(mover.settings.poll_interval)
    return done
