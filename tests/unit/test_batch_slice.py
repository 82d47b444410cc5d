"""One slice of a workflow batch: complete, interrupted by a request, handed to the Wait loop, out of time."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import replace

from queue_balancer.batch_slice import (
    CONTROL_INTERVAL,
    GRACE_SECONDS,
    LONG_PHASE_SECONDS,
    SliceEnd,
    SliceLimits,
    drive_slice,
)
from queue_balancer.model import Move, QueueType
from queue_balancer.movers import MoveProgress, Mover, MoveSettings, Phase
from queue_balancer.runner import BatchState


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class ScriptedMover(Mover):
    """A move takes ``polls`` polls of 0.1 s; a queue named ``long*`` syncs until it is aborted."""

    def __init__(self, clock: FakeClock, polls: int = 2) -> None:
        self.settings = MoveSettings(poll_interval=0.1)
        self.clock = clock
        self.polls = polls
        self.started: list[str] = []
        self.aborted: list[str] = []

    def starting(self, moves: Sequence[Move]) -> Iterator[MoveProgress]:
        self.started += [m.queue for m in moves]
        now = self.clock()
        return iter([MoveProgress(m, Phase.SYNCING, now, now + 600, phase_started_at=now) for m in moves])

    def advance(self, progress: MoveProgress) -> MoveProgress:
        if progress.phase is Phase.ROLLING_BACK:
            return replace(progress, phase=Phase.FAILED, finished_at=self.clock())
        if progress.move.queue.startswith("long"):
            return progress
        if progress.nudges + 1 < self.polls:
            return replace(progress, nudges=progress.nudges + 1)
        return replace(progress, phase=Phase.DONE, finished_at=self.clock())

    def abort(self, progress: MoveProgress, reason: str) -> MoveProgress:
        self.aborted.append(progress.move.queue)
        return replace(progress, phase=Phase.ROLLING_BACK, outcome=reason)


def moves(prefix: str, count: int) -> list[Move]:
    return [Move("/", f"{prefix}{i}", QueueType.CLASSIC, "a", "b") for i in range(count)]


def test_a_batch_completes_in_one_slice_with_the_cli_concurrency() -> None:
    clock = FakeClock()
    mover = ScriptedMover(clock)
    state = BatchState(pending=moves("q", 20))
    end = drive_slice(mover, state, SliceLimits(concurrency=8), lambda: False, clock=clock, sleep=clock.sleep)
    assert end is SliceEnd.COMPLETE
    assert [p.phase for p in state.finished] == [Phase.DONE] * 20
    assert clock.now - 1000.0 < 1.0  # 20 moves of two polls, 8 at a time: three waves of 0.2 s


def test_a_request_stops_new_moves_at_once_and_moves_under_way_finish_within_the_grace() -> None:
    clock = FakeClock()
    mover = ScriptedMover(clock, polls=3)
    state = BatchState(pending=moves("q", 100))
    asked: list[bool] = []

    def requested() -> bool:
        asked.append(True)
        return clock.now >= 1000.25

    end = drive_slice(mover, state, SliceLimits(concurrency=8), requested, clock=clock, sleep=clock.sleep)
    assert end is SliceEnd.REQUESTED
    assert clock.now - 1000.25 <= GRACE_SECONDS
    assert not state.active and mover.aborted == []
    assert len(state.finished) + len(state.pending) == 100
    assert len(state.finished) <= 24  # the waves started before the request was read (every 0.5 s)
    assert len(asked) < 10  # the request is read every CONTROL_INTERVAL, not on every poll


def test_moves_still_under_way_after_the_grace_are_rolled_back_and_put_back_first() -> None:
    clock = FakeClock()
    mover = ScriptedMover(clock)
    state = BatchState(pending=moves("long", 2) + moves("q", 3))
    end = drive_slice(mover, state, SliceLimits(concurrency=2), lambda: True, clock=clock, sleep=clock.sleep)
    assert end is SliceEnd.REQUESTED
    assert mover.started == []  # the request was there before anything started
    assert state.pending[:2] == moves("long", 2)

    state = BatchState(pending=moves("long", 2) + moves("q", 3))
    calls = iter([False, True])
    end = drive_slice(
        mover, state, SliceLimits(concurrency=2), lambda: next(calls, True), clock=clock, sleep=clock.sleep
    )
    assert end is SliceEnd.REQUESTED
    assert mover.aborted == ["long0", "long1"]
    assert [m.queue for m in state.pending] == ["long0", "long1", "q0", "q1", "q2"]
    assert state.finished == [] and state.active == []


def test_only_long_syncs_left_are_handed_to_the_wait_loop_and_resume_from_json() -> None:
    clock = FakeClock()
    mover = ScriptedMover(clock)
    state = BatchState(pending=moves("long", 1) + moves("q", 3))
    end = drive_slice(mover, state, SliceLimits(concurrency=8), lambda: False, clock=clock, sleep=clock.sleep)
    assert end is SliceEnd.HANDOFF
    assert LONG_PHASE_SECONDS <= clock.now - 1000.0 < LONG_PHASE_SECONDS + 1
    assert [p.move.queue for p in state.active] == ["long0"]
    assert len(state.finished) == 3
    resumed = BatchState.from_dict(state.to_dict())
    assert resumed == state


def test_the_budget_ends_a_slice_after_its_first_wave() -> None:
    clock = FakeClock()
    mover = ScriptedMover(clock, polls=50)
    state = BatchState(pending=moves("q", 3))
    limits = SliceLimits(concurrency=8, budget_seconds=0.0)
    end = drive_slice(mover, state, limits, lambda: False, clock=clock, sleep=clock.sleep)
    assert end is SliceEnd.BUDGET
    assert len(state.active) == 3 and state.pending == []


def test_a_request_met_by_long_syncs_rolls_them_back_without_waiting_for_the_grace() -> None:
    clock = FakeClock()
    mover = ScriptedMover(clock)
    state = BatchState(pending=moves("long", 2))
    end = drive_slice(mover, state, SliceLimits(concurrency=8), lambda: False, clock=clock, sleep=clock.sleep)
    assert (
        end is SliceEnd.HANDOFF
    )  # the state machine waits poll_seconds, then the next slice sees the request

    resumed = BatchState.from_dict(state.to_dict())
    seen = clock.now
    end = drive_slice(
        mover, resumed, SliceLimits(concurrency=8), lambda: True, clock=clock, sleep=clock.sleep
    )
    assert end is SliceEnd.REQUESTED
    assert mover.aborted == ["long0", "long1"]
    assert [m.queue for m in resumed.pending] == ["long0", "long1"] and resumed.active == []
    assert clock.now - seen < GRACE_SECONDS  # a long sync would not end within the grace: no wait for it


def test_a_request_is_read_at_least_every_control_interval_while_moves_are_under_way() -> None:
    clock = FakeClock()
    mover = ScriptedMover(clock, polls=40)  # every move takes 4 s
    state = BatchState(pending=moves("q", 4))
    reads: list[float] = []

    def requested() -> bool:
        reads.append(clock.now)
        return False

    drive_slice(mover, state, SliceLimits(concurrency=8), requested, clock=clock, sleep=clock.sleep)
    gaps = [later - earlier for earlier, later in itertools.pairwise(reads)]
    assert gaps and max(gaps) <= CONTROL_INTERVAL + mover.settings.poll_interval + 1e-9
