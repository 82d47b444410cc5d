"""The RunBatch task's job: one slice of a stored batch, from its stored progress to the run's next route.

The plan waits in the lifecycle store, one item per batch (leader moves, or quorum member changes for a
``members: true`` run); a slice reads where its batch stands, drives it with ``batch_slice.drive_slice``
(``drive_member_slice``) (the CLI's runner, bounded in time, stopping within seconds
of an operator's request), records every finished move, keeps the progress of the unfinished ones for
the next slice, and says where the run goes: back to ControlCheck (batch complete, a request, or this
execution's history needs a continuation) or to the state machine's Wait loop (long syncs left).
Idempotent under retries: the Mover resumes a move that already happened, and the stored progress is
only ever replaced by a later one. The Lambda handler parses the event and makes this one call.

A slice stops starting moves within ``CONTROL_INTERVAL`` when its execution was stopped or timed out:
it marks itself in the lifecycle item (``slices``, keyed by its Lambda request id) before it changes
anything, and Cleanup of the ended execution asks it to stop (``requested`` and ``ending``) and waits
until no mark is left (a retried slice that overlaps another removes only its own)
before it removes policies and gives the locks back; the slice rolls back its moves under way as on
``stop``. A slice also ends once the item is another run's or no longer BALANCING, or a lock is no
longer its own (then without a rollback: that would write without the lock), and makes no write once
its cluster lock's last confirmed renewal is older than half its lease (``RunLease.check``). Its writes
to the lifecycle item are conditional on the run still BALANCING: none lands on a run that moved on.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

from queue_balancer.batch_slice import (
    SliceEnd,
    SliceLimits,
    drive_member_slice,
    drive_slice,
)
from queue_balancer.contract import BUDGET_SECONDS, TIMEOUT_MARGIN_SECONDS
from queue_balancer.lifecycle import (
    EVENTS_PER_CONTROL,
    EVENTS_PER_SLICE,
    LOCK_MARGIN_SECONDS,
    BatchProgress,
    Counts,
    Lifecycle,
    State,
    fits_in_history,
    slice_mark,
)
from queue_balancer.lifecycle.routing import Route
from queue_balancer.lock import Guarded, LockLost, guarding
from queue_balancer.member_moves import MemberBatch, MemberMover, MemberPhase, MemberProgress
from queue_balancer.movers import MoveProgress, Mover, Phase
from queue_balancer.runner import BatchState

PROGRESS_INTERVAL = 1.0
"""Seconds between two writes of a batch's progress to the lifecycle item while its moves finish."""
LOCK_CHECK_SECONDS = 5.0
"""Seconds between two reads of the run's locks while a slice runs (its lifecycle item is read every
``CONTROL_INTERVAL``)."""


class BatchStore(Protocol):
    """The part of the lifecycle store a slice reads and writes (``lambdas.store.Store`` implements it)."""

    def lifecycle(self, cluster: str) -> Lifecycle: ...

    def save(
        self,
        before: Lifecycle,
        after: Lifecycle,
        *,
        expect_requested: bool = False,
        expect_state: bool = False,
    ) -> None:
        """Write what changed while the item belongs to ``after.run_id`` and, with ``expect_state``, is
        still in ``before``'s state and ``ending`` (LockLost otherwise); with ``expect_requested``, while
        its request is ``before``'s (RequestChanged otherwise)."""
        ...

    def batch_state(self, run_id: str, generation: int, index: int) -> BatchState: ...

    def member_batch(self, run_id: str, generation: int, index: int) -> MemberBatch: ...

    def save_batch_state(
        self, run_id: str, generation: int, index: int, state: BatchState | MemberBatch
    ) -> None: ...

    def record_results(
        self,
        run_id: str,
        generation: int,
        index: int,
        results: Sequence[MoveProgress | MemberProgress],
    ) -> None: ...


@dataclass(frozen=True)
class BatchSlice:
    """Which batch of which run, and what the slice may spend."""

    run_id: str
    cluster: str
    generation: int
    index: int
    concurrency: int
    poll_seconds: int
    events: int
    """History events this execution has spent, this slice included."""
    remaining_seconds: float
    """Time left before the Lambda's timeout."""
    counts: Counts = field(default_factory=Counts)
    """The run's counts before this slice (the lifecycle shows them moving as the slice's moves finish)."""
    batches: int = 1
    """Batches in the current plan."""
    invocation: str = ""
    """The Lambda request id: the key of this slice's mark in the lifecycle item."""

    @property
    def key(self) -> tuple[str, int, int]:
        return self.run_id, self.generation, self.index

    @property
    def budget_seconds(self) -> float:
        """How long the slice drives moves: ``BUDGET_SECONDS``, less near the Lambda's timeout."""
        return max(min(BUDGET_SECONDS, self.remaining_seconds - TIMEOUT_MARGIN_SECONDS), 0.0)

    def lease_until(self, now: float) -> int:
        """When the run's locks must expire at the earliest: after this slice and the Wait after it."""
        return int(now + self.budget_seconds + self.poll_seconds + LOCK_MARGIN_SECONDS)


@dataclass(frozen=True)
class SliceResult:
    """How the slice ended, where the run goes next, and what it finished."""

    end: SliceEnd
    route: str
    wait: int
    """Seconds the state machine waits before the next slice (``Route.WAIT_BATCH`` only)."""
    done: int
    failed: int
    """Moves (or member changes) this slice finished, done and failed."""
    pending: int
    active: int

    @property
    def batch_complete(self) -> bool:
        return self.end is SliceEnd.COMPLETE

    @property
    def finished(self) -> int:
        return self.done + self.failed


Finished = Callable[[MoveProgress | MemberProgress], None]
"""Called with every move (or member change) whose phase changed: the handler logs the finished ones."""


class RunLease(Protocol):
    """The run's hold on the cluster while a slice runs (``workflow.leases.RunLeases``)."""

    def check(self) -> None:
        """``LockLost`` once the cluster lock's last confirmed renewal is older than the safe part of its
        lease (no I/O: asked before every step and every write)."""
        ...

    def verify(self) -> None:
        """``LockLost`` when either of the run's locks is another run's, or nobody's (reads them)."""
        ...


def stop_requested(store: BatchStore, cluster: str) -> bool:
    """Whether ``cluster``'s run was asked to stop or pause (by the operator or by Cleanup of an ended
    execution): an SSM eval under way then sends no further command."""
    return store.lifecycle(cluster).requested is not None


def run_slice(
    store: BatchStore,
    mover: Mover | MemberMover,
    batch: BatchSlice,
    *,
    renew: Callable[[int], RunLease],
    writer: Guarded | None = None,
    on_change: Finished = lambda _: None,
    now: Callable[[], float] = time.time,
) -> SliceResult:
    """Drive one slice of ``batch``: mark the slice under way in the lifecycle item, renew the run's
    locks (``renew(expires_at)``, raising when they are another run's), resume the batch's stored
    progress, record what finished, keep what did not, and remove the mark. A ``MemberMover`` drives a
    batch of member changes (``members: true``), a ``Mover`` one of leader moves. ``writer``, the client
    the moves write through, makes no write once the lease's ``check`` fails."""
    started = now()
    record = _running(store.lifecycle(batch.cluster), batch)
    if record.ending is not None:
        raise LockLost(f"run {batch.run_id} is being ended ({record.ending}): this slice changes nothing")
    until = int(started + batch.remaining_seconds) + 1
    mark = slice_mark(batch.invocation)
    store.save(record, replace(record, slices={**record.slices, mark: until}), expect_state=True)
    try:
        lease = renew(batch.lease_until(started))
        with guarding(writer, lease.check):
            return _drive(store, mover, batch, lease, on_change, now)
    finally:
        _unmark(store, batch, mark)


def _drive(
    store: BatchStore,
    mover: Mover | MemberMover,
    batch: BatchSlice,
    lease: RunLease,
    on_change: Finished,
    now: Callable[[], float],
) -> SliceResult:
    state: BatchState | MemberBatch
    done_phase: Phase | MemberPhase
    if isinstance(mover, MemberMover):
        members = store.member_batch(*batch.key)
        state, done_phase = members, MemberPhase.DONE
        drive = functools.partial(drive_member_slice, mover, members)
    else:
        leaders = store.batch_state(*batch.key)
        state, done_phase = leaders, Phase.DONE
        drive = functools.partial(drive_slice, mover, leaders)
    board = _ProgressBoard(store, batch, state, len(state.finished), done_phase)
    verified_at = now()

    def requested() -> bool:
        """The operator's request, or Cleanup's for an ended execution (read every ``CONTROL_INTERVAL``);
        the batch's progress goes with it. ``LockLost`` once the run is another's or over, or a lock is
        no longer its own (checked every ``LOCK_CHECK_SECONDS``): a rollback then would write without
        the lock, so the moves under way are left to the next holder's cleanup."""
        nonlocal verified_at
        record = _running(store.lifecycle(batch.cluster), batch)
        if now() - verified_at >= LOCK_CHECK_SECONDS:
            lease.verify()
            verified_at = now()
        board.show(record, now())
        return record.requested is not None

    limits = SliceLimits(concurrency=batch.concurrency, budget_seconds=batch.budget_seconds)
    end = drive(limits, requested, on_change=on_change, check=lease.check)
    store.record_results(*batch.key, state.finished)
    counted = board.counted
    done = sum(1 for p in state.finished[counted:] if p.phase is done_phase)
    route, wait = Route.CONTROL, 0
    if end is not SliceEnd.COMPLETE:
        store.save_batch_state(*batch.key, state)
        if end is not SliceEnd.REQUESTED and fits_in_history(
            batch.events, EVENTS_PER_SLICE + EVENTS_PER_CONTROL
        ):
            route, wait = Route.WAIT_BATCH, batch.poll_seconds
    board.show(store.lifecycle(batch.cluster), now(), final=True)
    return SliceResult(
        end=end,
        route=route,
        wait=wait,
        done=done,
        failed=len(state.finished) - counted - done,
        pending=len(state.pending),
        active=len(state.active),
    )


def _running(record: Lifecycle, batch: BatchSlice) -> Lifecycle:
    """``record`` while it is this run's and BALANCING; ``LockLost`` once another run took it, or the
    run ended without this slice (Cleanup, ``stop`` after a dead execution: its locks are given back)."""
    if record.run_id != batch.run_id:
        raise LockLost(f"the lifecycle of cluster {batch.cluster} belongs to run {record.run_id} now")
    if record.state is not State.BALANCING:
        raise LockLost(
            f"run {batch.run_id} is {record.state} now ({record.outcome or 'ended'}): its slice changes nothing more"
        )
    return record


def _unmark(store: BatchStore, batch: BatchSlice, mark: str) -> None:
    """Remove this slice's mark, and only its own (Cleanup of an ended execution waits until no mark is
    left), while the item is the run's."""
    record = store.lifecycle(batch.cluster)
    if record.run_id == batch.run_id and mark in record.slices:
        others = {key: until for key, until in record.slices.items() if key != mark}
        with suppress(LockLost):  # another run took the item meanwhile: its own now
            store.save(record, replace(record, slices=others))


@dataclass
class _ProgressBoard:
    """Puts the run's counts and the batch's progress, as the slice's ``state`` has them, into the
    lifecycle item while the moves finish: ``status`` follows a batch move by move, not only between
    batches. The counts are the ones the run's payload carries after the slice, so the next control
    check finds them unchanged."""

    store: BatchStore
    batch: BatchSlice
    state: BatchState | MemberBatch
    counted: int
    """Moves of the batch that earlier slices finished (already in ``batch.counts``)."""
    done_phase: Phase | MemberPhase
    written_at: float | None = None

    def show(self, record: Lifecycle, moment: float, *, final: bool = False) -> None:
        """Write what changed; at most every ``PROGRESS_INTERVAL`` seconds, except the slice's last word.
        An item that another run owns now is left alone (its next control check says so)."""
        recent = self.written_at is not None and moment - self.written_at < PROGRESS_INTERVAL
        if (recent and not final) or record.run_id != self.batch.run_id:
            return
        counts, progress = self._now()
        if (record.counts, record.batch) != (counts, progress):
            updated_at = datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")
            with suppress(LockLost):  # the run ended or is being ended meanwhile: the next poll says so
                self.store.save(
                    record,
                    replace(record, counts=counts, batch=progress, updated_at=updated_at),
                    expect_state=True,
                )
                self.written_at = moment

    def _now(self) -> tuple[Counts, BatchProgress]:
        base, state = self.batch.counts, self.state
        finished = state.finished[self.counted :]
        done = sum(1 for p in finished if p.phase is self.done_phase)
        counts = replace(
            base,
            pending=max(base.pending - len(finished), 0),
            done=base.done + done,
            failed=base.failed + len(finished) - done,
        )
        batch_done = sum(1 for p in state.finished if p.phase is self.done_phase)
        progress = BatchProgress(
            number=self.batch.index + 1,
            of=self.batch.batches,
            moves=len(state.pending) + len(state.active) + len(state.finished),
            done=batch_done,
            failed=len(state.finished) - batch_done,
            under_way=len(state.active),
        )
        return counts, progress
