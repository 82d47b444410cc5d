"""One slice of a workflow batch: the CLI's runner, driven for a bounded time inside one Lambda invocation.

A move of a small queue takes 0.3-0.5 s; a Step Functions Wait has 1 s granularity and each state
transition costs history, so the workflow does not loop per move. Its RunBatch task drives the batch
with ``runner.drive`` (sub-second polling, bounded concurrency) until one of:

- the batch is complete;
- the operator asked for something (pause, stop, reset, load): the request is read every
  ``CONTROL_INTERVAL`` (so within that no new move starts), moves under way get ``GRACE_SECONDS`` to
  finish - none for a long phase, which would not finish in time anyway - and are otherwise rolled back
  and put back in front of the queue. So a request ends the slice within ``CONTROL_INTERVAL`` +
  ``GRACE_SECONDS`` + the rollback of a small queue (well under a second), whatever the batch size; a
  request made while long syncs wait in the state machine is seen by the next slice, ``poll_seconds``
  later at most, and rolls them back at once;
- only long phases are left (a mirror sync of a large queue): handed to the state machine's Wait loop,
  which calls RunBatch again every few seconds instead of keeping a Lambda busy;
- the time budget of the invocation is spent (well under the Lambda timeout).

``drive_member_slice`` applies the same rule to a batch of quorum member changes (``members: true``).
The ``BatchState`` and ``MemberBatch`` are plain JSON: the handler keeps it in DynamoDB between two slices.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from queue_balancer.contract import BUDGET_SECONDS
from queue_balancer.member_moves import MemberBatch, MemberMover, MemberProgress, drive_members
from queue_balancer.model import QueueType
from queue_balancer.movers import MoveProgress, Mover, Phase
from queue_balancer.runner import BatchState, Listener, drive, roll_back

CONTROL_INTERVAL = 0.25
"""Seconds between two reads of the operator's request while a slice runs (a DynamoDB GetItem each)."""
GRACE_SECONDS = 1.0
"""How long moves under way may take to finish once a request is seen, before they are rolled back: a
small queue's move takes 0.3-1 s, and every second here is a second of the <= 5 s the operator waits."""
LONG_PHASE_SECONDS = 15.0
"""A sync or re-mirroring phase older than this is long: it waits in the state machine, not in a Lambda.
Not less: on a busy 2-core machine a 100-message queue's re-mirroring took 5-10 s (bench, load average
27), and handing it to the Wait loop cost ``poll_seconds`` plus three states; a Lambda waiting 15 s
costs a fraction of a cent."""
LONG_PHASES = frozenset({Phase.SYNCING, Phase.RESTORING, Phase.ROLLING_BACK})


class SliceEnd(StrEnum):
    COMPLETE = "complete"  # every move of the batch has finished
    REQUESTED = "requested"  # the operator asked for something; nothing is under way any more
    HANDOFF = "handoff"  # only long phases are left: wait in the state machine, then resume
    BUDGET = "budget"  # the slice's time is spent: resume in the next invocation


@dataclass(frozen=True)
class SliceLimits:
    concurrency: int
    budget_seconds: float = BUDGET_SECONDS


def drive_slice(
    mover: Mover,
    state: BatchState,
    limits: SliceLimits,
    requested: Callable[[], bool],
    *,
    on_change: Listener = lambda _: None,
    check: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> SliceEnd:
    """Drive ``state`` (updated in place) until the batch is complete or the slice must end. ``check``
    runs before every step and ends the slice by raising (the run's lock: nothing more is changed)."""
    return _bounded(
        _Driven(
            run=functools.partial(
                drive,
                mover,
                state,
                concurrency=limits.concurrency,
                on_change=on_change,
                sleep=sleep,
                check=check,
            ),
            complete=lambda: state.complete,
            active=lambda: bool(state.active),
            all_long=lambda: all(_in_long_phase(p, mover.clock()) for p in state.active),
            busy=lambda: not state.pending or _classic_busy(state) >= limits.concurrency,
            put_back=lambda: _put_back(mover, state, on_change, sleep),
        ),
        limits,
        requested,
        clock,
    )


def drive_member_slice(
    mover: MemberMover,
    batch: MemberBatch,
    limits: SliceLimits,
    requested: Callable[[], bool],
    *,
    on_change: Callable[[MemberProgress], None] = lambda _: None,
    check: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> SliceEnd:
    """``drive_slice`` for quorum member changes: the same budget, request and hand-off rules; a new
    member catching up for longer than ``LONG_PHASE_SECONDS`` is a long phase."""

    def all_long() -> bool:  # new members catching up for a while: a large queue's log being copied
        now = mover.clock()
        return all(p.catching_up and now - p.started_at >= LONG_PHASE_SECONDS for p in batch.active)

    def put_back() -> None:
        interrupted = [p.move for p in batch.active]
        for progress in batch.active:  # removes the members each change added: the queue is as it was
            on_change(mover.abort(progress, "interrupted by a request"))
        batch.active = []
        batch.pending = interrupted + batch.pending  # rolled back, not failed: they run again on resume

    return _bounded(
        _Driven(
            run=functools.partial(
                drive_members,
                mover,
                batch,
                concurrency=limits.concurrency,
                on_change=on_change,
                sleep=sleep,
                check=check,
            ),
            complete=lambda: batch.complete,
            active=lambda: bool(batch.active),
            all_long=all_long,
            busy=lambda: not batch.pending or len(batch.active) >= limits.concurrency,
            put_back=put_back,
        ),
        limits,
        requested,
        clock,
    )


@dataclass(frozen=True)
class _Driven:
    """What a slice drives (a batch of leader moves or of member changes), as the slice rule needs it."""

    run: Callable[..., object]
    """``drive``/``drive_members`` of the batch, called with ``may_start`` (start new moves only while it
    says so) and ``stop`` (end when it says so)."""
    complete: Callable[[], bool]
    active: Callable[[], bool]
    all_long: Callable[[], bool]
    """Every move under way is in a long phase (it will not end in a moment)."""
    busy: Callable[[], bool]
    """No other move can start meanwhile (none pending, or as many under way as allowed)."""
    put_back: Callable[[], None]
    """Roll back what is under way and put it back in front of the batch."""


def _bounded(
    driven: _Driven, limits: SliceLimits, requested: Callable[[], bool], clock: Callable[[], float]
) -> SliceEnd:
    """The slice rule, whatever is driven (see the module's docstring)."""
    began = clock()
    watch = _RequestWatch(requested, clock)
    watch.poll(force=True)

    def stop() -> bool:
        watch.poll()
        if watch.seen_at is not None:
            return not driven.active() or clock() - watch.seen_at >= GRACE_SECONDS or driven.all_long()
        long_only = driven.active() and driven.all_long() and driven.busy()
        return clock() - began >= limits.budget_seconds or long_only

    # the budget ends a slice after a wave, never before
    driven.run(may_start=lambda: watch.seen_at is None, stop=lambda _: stop())
    if driven.complete():
        return SliceEnd.COMPLETE
    if watch.seen_at is not None:
        if driven.active():
            driven.put_back()
        return SliceEnd.REQUESTED
    return SliceEnd.BUDGET if clock() - began >= limits.budget_seconds else SliceEnd.HANDOFF


@dataclass
class _RequestWatch:
    """Reads the operator's request at most every ``CONTROL_INTERVAL`` and remembers when it was seen."""

    requested: Callable[[], bool]
    clock: Callable[[], float]
    seen_at: float | None = None
    checked_at: float | None = None

    def poll(self, *, force: bool = False) -> None:
        now = self.clock()
        if self.seen_at is not None:
            return
        if force or self.checked_at is None or now - self.checked_at >= CONTROL_INTERVAL:
            self.checked_at = now
            if self.requested():
                self.seen_at = now


def _classic_busy(state: BatchState) -> int:
    """Classic moves under way (quorum transfers go in batches of their own)."""
    return sum(1 for p in state.active if p.move.type is not QueueType.QUORUM)


def _in_long_phase(progress: MoveProgress, now: float) -> bool:
    """A sync or re-mirroring under way for ``LONG_PHASE_SECONDS`` already: it will not end in a moment."""
    return progress.phase in LONG_PHASES and now - progress.phase_started_at >= LONG_PHASE_SECONDS


def _put_back(mover: Mover, state: BatchState, on_change: Listener, sleep: Callable[[float], None]) -> None:
    """Roll back what is still under way after the grace period; those moves go back to the front."""
    interrupted = [p.move for p in state.active]
    roll_back(mover, state.active, on_change, sleep, reason="interrupted by a request")
    state.active = []
    state.pending = interrupted + state.pending  # rolled back, not failed: they run again on resume
