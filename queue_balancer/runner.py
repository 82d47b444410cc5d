"""Run a plan in-process: up to K moves at once, each polled until it is done, failed or rolled back.

The Step Functions workflow drives the same ``Mover`` steps from its own Map/Wait loop; this is the
loop for the CLI. Interrupting it (Ctrl-C, SIGTERM) rolls back every move under way, those being
started included (they are registered before their first change), and then raises ``RunInterrupted``
with what happened to each move. The rollback is not itself interruptible by one more Ctrl-C: the
second one is answered with a notice and the rollback goes on; only a third abandons it, and the
moves it leaves behind are named (queue, vhost, temporary policy).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from queue_balancer.model import Move, QueueType
from queue_balancer.movers import MoveProgress, Mover, Phase

Listener = Callable[[MoveProgress], None]
Notice = Callable[[str], None]
QUORUM_BATCH = 100
ABANDON_AFTER = 2
"""Interrupts during a rollback before it is abandoned (Ctrl-C three times in all)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: every finished move (rolled back ones included) and what was left behind."""

    def __init__(self, moves: tuple[MoveProgress, ...], leftovers: tuple[MoveProgress, ...]) -> None:
        super().__init__(f"interrupted: {len(moves)} moves ended, {len(leftovers)} left behind")
        self.moves = moves
        self.leftovers = leftovers


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
    notice: Notice = lambda _: None,
    check: Callable[[], None] = lambda: None,
) -> RunResult:
    """Carry the moves out, at most ``concurrency`` classic moves at a time (quorum transfers in batches);
    never two moves of one queue at once. ``check`` runs before every step and stops the run by raising."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    began = time.monotonic()
    pending: deque[Move] = deque(moves)
    active: list[MoveProgress] = []
    finished: list[MoveProgress] = []
    starting: list[Move] = []
    try:
        while pending or active:
            check()  # e.g. the cluster lock is still this run's; raising rolls back what is under way
            starting = _next_batch(pending, active, concurrency)
            for progress in mover.start(starting) if starting else ():
                on_change(progress)
                (finished if progress.finished else active).append(progress)
            starting = []
            still: list[MoveProgress] = []
            for progress in active:
                updated = mover.advance(progress)
                if updated.phase is not progress.phase:
                    on_change(updated)
                (finished if updated.finished else still).append(updated)
            active = still
            if active:
                sleep(mover.settings.poll_interval)
    except KeyboardInterrupt:
        under_way = active + [mover.blank(m) for m in starting if m.ref not in {p.move.ref for p in active}]
        rolled, leftovers = _roll_back(mover, under_way, on_change, sleep, notice)
        finished.extend(rolled)
        raise RunInterrupted(tuple(finished), leftovers) from None
    except BaseException:
        _roll_back(mover, active + [mover.blank(m) for m in starting], on_change, sleep, notice)
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
    mover: Mover,
    under_way: list[MoveProgress],
    on_change: Listener,
    sleep: Callable[[float], None],
    notice: Notice,
) -> tuple[list[MoveProgress], tuple[MoveProgress, ...]]:
    """Abort every move under way (each on its own: one failing never stops the others), then advance
    them until their rollbacks end (bounded by their deadlines). Returns (finished, abandoned)."""
    to_abort = list(under_way)
    rolling: list[MoveProgress] = []
    done: list[MoveProgress] = []
    interrupts = 0
    while to_abort or rolling:
        try:
            while to_abort:
                rolling.append(mover.abort(to_abort[0], "interrupted"))
                to_abort.pop(0)
            for index, progress in enumerate(rolling):
                if not progress.finished:
                    rolling[index] = mover.advance(progress)
                    if rolling[index].finished:
                        on_change(rolling[index])
            done += [p for p in rolling if p.finished]
            rolling = [p for p in rolling if not p.finished]
            if rolling:
                sleep(mover.settings.poll_interval)
        except KeyboardInterrupt:
            interrupts += 1
            if interrupts >= ABANDON_AFTER:
                done += [p for p in rolling if p.finished]
                return done, tuple([p for p in rolling if not p.finished] + to_abort)
            notice(
                f"rolling back {len(rolling) + len(to_abort)} moves under way; waiting for them to end "
                "(interrupt once more to abandon them, leaving their temporary policies behind)"
            )
    return done, ()
