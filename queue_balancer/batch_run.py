"""The RunBatch task's job: one slice of a stored batch, from its stored progress to the run's next route.

The plan waits in the lifecycle store, one item per batch; a slice reads where its batch stands,
drives it with ``batch_slice.drive_slice`` (the CLI's runner, bounded in time, stopping within seconds
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

from queue_balancer.batch_slice import BUDGET_SECONDS, SliceEnd, SliceLimits, drive_slice
from queue_balancer.lifecycle import (
    EVENTS_PER_CONTROL,
    EVENTS_PER_SLICE,
    LOCK_MARGIN_SECONDS,
    Lifecycle,
    fits_in_history,
)
from queue_balancer.lifecycle.routing import Route
from queue_balancer.lock import LockLost
from queue_balancer.movers import MoveProgress, Mover, Phase
from queue_balancer.runner import BatchState, Listener

TIMEOUT_MARGIN_SECONDS = 30.0
"""Time left to the Lambda timeout when a slice ends at the latest (rollbacks, the final write)."""


class BatchStore(Protocol):
    """The part of the lifecycle store a slice reads and writes (``lambdas.store.Store`` implements it)."""

    def lifecycle(self, cluster: str) -> Lifecycle: ...

    def batch_state(self, run_id: str, generation: int, index: int) -> BatchState: ...

    def save_batch_state(self, run_id: str, generation: int, index: int, state: BatchState) -> None: ...

    def record_results(
        self, run_id: str, generation: int, index: int, results: Sequence[MoveProgress]
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
    def budget_seconds(self) -> float:
        """How long the slice drives moves: ``BUDGET_SECONDS``, less near the Lambda's timeout."""
        return max(min(BUDGET_SECONDS, self.remaining_seconds - TIMEOUT_MARGIN_SECONDS), 0.0)

    def lease_until(self, now: float) -> int:
        """When the run's locks must expire at the earliest: after this slice and the Wait after it."""
        return int(now + self.budget_seconds + self.poll_seconds + LOCK_MARGIN_SECONDS)


@dataclass(frozen=True)
class SliceResult:
    """How the slice ended, where the run goes next, and the moves it finished."""

    end: SliceEnd
    route: str
    wait: int
    """Seconds the state machine waits before the next slice (``Route.WAIT_BATCH`` only)."""
    finished: tuple[MoveProgress, ...]
    """The moves this slice finished (done or failed), in the order they finished."""
    pending: int
    active: int

    @property
    def batch_complete(self) -> bool:
        return self.end is SliceEnd.COMPLETE

    @property
    def done(self) -> int:
        return sum(1 for p in self.finished if p.phase is Phase.DONE)

    @property
    def failed(self) -> int:
        return len(self.finished) - self.done


def run_slice(
    store: BatchStore,
    mover: Mover,
    batch: BatchSlice,
    *,
    renew: Callable[[int], None],
    on_change: Listener = lambda _: None,
    now: Callable[[], float] = time.time,
) -> SliceResult:
    """Drive one slice of ``batch``: renew the run's locks (``renew(expires_at)``, raising when they are
    another run's), resume the batch's stored progress, record what finished, keep what did not."""
    renew(batch.lease_until(now()))

    def requested() -> bool:
        record = store.lifecycle(batch.cluster)
        if record.run_id != batch.run_id:
            raise LockLost(f"the lifecycle of cluster {batch.cluster} belongs to run {record.run_id} now")
        return record.requested is not None

    key = (batch.run_id, batch.generation, batch.index)
    state = store.batch_state(*key)
    counted = len(state.finished)
    limits = SliceLimits(concurrency=batch.concurrency, budget_seconds=batch.budget_seconds)
    end = drive_slice(mover, state, limits, requested, on_change=on_change)
    store.record_results(*key, state.finished)
    result = SliceResult(
        end=end,
        route=Route.CONTROL,
        wait=0,
        finished=tuple(state.finished[counted:]),
        pending=len(state.pending),
        active=len(state.active),
    )
    if end is SliceEnd.COMPLETE:
        return result
    store.save_batch_state(*key, state)
    if end is SliceEnd.REQUESTED or not fits_in_history(batch.events, EVENTS_PER_SLICE + EVENTS_PER_CONTROL):
        return result
    return SliceResult(
        end=end,
        route=Route.WAIT_BATCH,
        wait=batch.poll_seconds,
        finished=result.finished,
        pending=result.pending,
        active=result.active,
    )
