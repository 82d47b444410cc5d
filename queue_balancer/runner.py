"""Run a plan in-process: up to K moves at once, each polled until it is done, failed or rolled back.

One loop (``drive``) serves the CLI and the Step Functions workflow: the CLI drives a whole plan in one
call (``run_moves``); the workflow's RunBatch task drives a batch for a slice of time, keeps the
``BatchState`` (plain JSON) in DynamoDB and resumes it in its next invocation
(``queue_balancer.batch_slice``). Interrupting the CLI (Ctrl-C, SIGTERM) rolls back every move under way, those being
started included (they are registered before their first change), and then raises ``RunInterrupted``
with what happened to each move. The rollback is not itself interruptible by one more Ctrl-C: the
second one is answered with a notice and the rollback goes on; only a third abandons it, and the
moves it leaves behind are named (queue, vhost, temporary policy).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from queue_balancer.model import JsonDict, Move, QueueType
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


@dataclass
class BatchState:
    """Moves not started yet, being started, under way, and finished: all it takes to resume them."""

    pending: list[Move] = field(default_factory=list)
    active: list[MoveProgress] = field(default_factory=list)
    finished: list[MoveProgress] = field(default_factory=list)
    starting: list[Move] = field(default_factory=list)
    """Registered before their first change, so an interruption rolls them back too (never stored)."""

    @property
    def complete(self) -> bool:
        return not self.pending and not self.active and not self.starting

    def under_way(self, mover: Mover) -> list[MoveProgress]:
        """What a rollback must undo: the moves under way and those being started."""
        active = {p.move.ref for p in self.active}
        return self.active + [mover.blank(m) for m in self.starting if m.ref not in active]

    def to_dict(self) -> JsonDict:
        return {
            "pending": [m.to_dict() for m in self.starting + self.pending],
            "active": [p.to_dict() for p in self.active],
            "finished": [p.to_dict() for p in self.finished],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchState:
        return cls(
            pending=[Move.from_dict(m) for m in data.get("pending") or ()],
            active=[MoveProgress.from_dict(p) for p in data.get("active") or ()],
            finished=[MoveProgress.from_dict(p) for p in data.get("finished") or ()],
        )


def drive(
    mover: Mover,
    state: BatchState,
    *,
    concurrency: int,
    on_change: Listener = lambda _: None,
    sleep: Callable[[float], None] = time.sleep,
    check: Callable[[], None] = lambda: None,
    may_start: Callable[[], bool] = lambda: True,
    stop: Callable[[BatchState], bool] = lambda _: False,
) -> BatchState:
    """Start and poll moves until the batch is complete or ``stop(state)`` says so; returns ``state``.

    At most ``concurrency`` classic moves at a time (quorum transfers in batches of ``QUORUM_BATCH``, one
    Ra call each), never two moves of one queue at once, new moves only while ``may_start()``. ``check``
    runs before every step and stops the loop by raising. ``state`` is kept accurate at every step, so
    the caller can roll back what is under way after an exception.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    while not state.complete:
        check()  # e.g. the cluster lock is still this run's; raising rolls back what is under way
        state.starting = _next_batch(state, concurrency) if may_start() else []
        # Each move's new state is recorded as soon as it is made, before the next move's call: an
        # interrupt then rolls back what the cluster holds, not what the previous step saw.
        for progress in mover.starting(state.starting) if state.starting else ():
            on_change(progress)
            state.starting = [m for m in state.starting if m.ref != progress.move.ref]
            (state.finished if progress.finished else state.active).append(progress)
        # a move the mover did not hand back changed nothing (its transfer was never sent): later
        state.pending[:0], state.starting = state.starting, []
        for index, updated in enumerate(mover.advance_all(list(state.active))):
            if updated.phase is not state.active[index].phase:
                on_change(updated)
            state.active[index] = updated
        state.finished += [p for p in state.active if p.finished]
        state.active = [p for p in state.active if not p.finished]
        if state.complete or stop(state):
            break
        if state.active:
            sleep(mover.settings.poll_interval)
    return state


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
    state = BatchState(pending=list(moves))
    try:
        drive(mover, state, concurrency=concurrency, on_change=on_change, sleep=sleep, check=check)
    except KeyboardInterrupt:
        rolled, leftovers = roll_back(mover, state.under_way(mover), on_change, sleep, notice)
        raise RunInterrupted(tuple(state.finished + rolled), leftovers) from None
    except BaseException:
        roll_back(mover, state.under_way(mover), on_change, sleep, notice)
        raise
    return RunResult(tuple(state.finished), time.monotonic() - began)


def _next_batch(state: BatchState, concurrency: int) -> list[Move]:
    """The moves to start now, in plan order: classic ones up to ``concurrency`` in flight, quorum ones
    up to ``QUORUM_BATCH`` (a leader transfer is one Raft election, and a batch is one Ra call)."""
    active = state.active
    busy = {p.move.ref for p in active}
    room = {
        False: concurrency - sum(1 for p in active if p.move.type is not QueueType.QUORUM),
        True: QUORUM_BATCH - sum(1 for p in active if p.move.type is QueueType.QUORUM),
    }
    batch: list[Move] = []
    waiting: list[Move] = []
    for move in state.pending:
        quorum = move.type is QueueType.QUORUM
        if room[quorum] > 0 and move.ref not in busy:
            batch.append(move)
            busy.add(move.ref)
            room[quorum] -= 1
        else:
            waiting.append(move)
    state.pending = waiting
    return batch


def roll_back(
    mover: Mover,
    under_way: list[MoveProgress],
    on_change: Listener,
    sleep: Callable[[float], None],
    notice: Notice = lambda _: None,
    reason: str = "interrupted",
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
                rolling.append(mover.abort(to_abort[0], reason))
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
