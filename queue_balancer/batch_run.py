"""The RunBatch task's job: one slice of a stored batch, from its stored progress to the run's next route.

The plan waits in the lifecycle store, one item per batch (leader moves, or quorum member changes for a
``members: true`` run); a slice reads where its batch stands, drives it with ``batch_slice.drive_slice``
(``drive_member_slice``) (the CLI's runner, bounded in time, stopping within seconds
of an operator's request), records every finished move, keeps the progress of the unfinished ones for
the next slice, and says where the run goes: back to ControlCheck (batch complete, a request, or this
execution's history needs a continuation) or to the state machine's Wait loop (long syncs left).
Idempotent under retries: the Mover resumes a move that already happened, and the stored progress is
only ever replaced by a later one. The Lambda handler parses the event and makes this one call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from queue_balancer.batch_slice import (
    BUDGET_SECONDS,
    SliceEnd,
    SliceLimits,
    drive_member_slice,
    drive_slice,
)
from queue_balancer.lifecycle import (
    EVENTS_PER_CONTROL,
    EVENTS_PER_SLICE,
    LOCK_MARGIN_SECONDS,
    Lifecycle,
    fits_in_history,
)
from queue_balancer.lifecycle.routing import Route
from queue_balancer.lock import LockLost
from queue_balancer.member_moves import MemberBatch, MemberMover, MemberPhase, MemberProgress
from queue_balancer.movers import MoveProgress, Mover, Phase
from queue_balancer.runner import BatchState

TIMEOUT_MARGIN_SECONDS = 30.0
"""Time left to the Lambda timeout when a slice ends at the latest (rollbacks, the final write)."""


class BatchStore(Protocol):
    """The part of the lifecycle store a slice reads and writes (``lambdas.store.Store`` implements it)."""

    def lifecycle(self, cluster: str) -> Lifecycle: ...

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


def run_slice(
    store: BatchStore,
    mover: Mover | MemberMover,
    batch: BatchSlice,
    *,
    renew: Callable[[int], None],
    on_change: Finished = lambda _: None,
    now: Callable[[], float] = time.time,
) -> SliceResult:
    """Drive one slice of ``batch``: renew the run's locks (``renew(expires_at)``, raising when they are
    another run's), resume the batch's stored progress, record what finished, keep what did not. A
    ``MemberMover`` drives a batch of member changes (``members: true``), a ``Mover`` one of leader moves."""
    renew(batch.lease_until(now()))

    def requested() -> bool:
        record = store.lifecycle(batch.cluster)
        if record.run_id != batch.run_id:
            raise LockLost(f"the lifecycle of cluster {batch.cluster} belongs to run {record.run_id} now")
        return record.requested is not None

    limits = SliceLimits(concurrency=batch.concurrency, budget_seconds=batch.budget_seconds)
    state: BatchState | MemberBatch
    if isinstance(mover, MemberMover):
        state = store.member_batch(*batch.key)
        counted = len(state.finished)
        end = drive_member_slice(mover, state, limits, requested, on_change=on_change)
        store.record_results(*batch.key, state.finished)
        done = sum(1 for p in state.finished[counted:] if p.phase is MemberPhase.DONE)
    else:
        state = store.batch_state(*batch.key)
        counted = len(state.finished)
        end = drive_slice(mover, state, limits, requested, on_change=on_change)
        store.record_results(*batch.key, state.finished)
        done = sum(1 for p in state.finished[counted:] if p.phase is Phase.DONE)
    route, wait = Route.CONTROL, 0
    if end is not SliceEnd.COMPLETE:
        store.save_batch_state(*batch.key, state)
        if end is not SliceEnd.REQUESTED and fits_in_history(
            batch.events, EVENTS_PER_SLICE + EVENTS_PER_CONTROL
        ):
            route, wait = Route.WAIT_BATCH, batch.poll_seconds
    return SliceResult(
        end=end,
        route=route,
        wait=wait,
        done=done,
        failed=len(state.finished) - counted - done,
        pending=len(state.pending),
        active=len(state.active),
    )
