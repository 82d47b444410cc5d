"""What every phase of a move shares: the cluster's ports, the deadlines, and ending or undoing a move."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from queue_balancer.errors import BalancerError, MoveStateError, NodeDown
from queue_balancer.maintenance import DrainedReader
from queue_balancer.model import Move, Queue, QueueCount, QueueRef
from queue_balancer.movers.policies import put_temporary_policy, temporary_policy_name
from queue_balancer.movers.ports import LeaderTransfer, ManagementApi, MessageCounter, StreamTransfer
from queue_balancer.movers.progress import MoveProgress, MoveSettings, Phase


@dataclass
class MoveContext:
    """The ports a move uses, its deadlines and clock, and the steps every phase may end with."""

    client: ManagementApi
    leader_transfer: LeaderTransfer | None = None
    settings: MoveSettings = field(default_factory=MoveSettings)
    counter: MessageCounter | None = None
    clock: Callable[[], float] = time.time
    run_id: str = ""
    """The run that owns this move's temporary policies (``policies.temporary_policy_name``)."""
    drained: DrainedReader | None = None
    """Maintenance mode where ``/api/nodes`` does not report it (3.x): spare mirrors and targets must
    not be drained nodes (``maintenance``)."""
    stream_transfer: StreamTransfer | None = None
    """Best-effort stream leader moves (``stream_transfer``), through the same eval port as quorum transfers."""

    def live(self, move: Move) -> Queue:
        """The queue as its process sees it now."""
        return Queue.from_api(self.client.queue_now(move.vhost, move.queue))

    def check_running(self, nodes: Sequence[str]) -> None:
        """Raise ``NodeDown`` for the first of ``nodes`` that is not running (one API call)."""
        running = {str(n["name"]) for n in self.client.nodes() if n.get("running")}
        down = [n for n in nodes if n not in running]
        if down:
            raise NodeDown(f"node {down[0]} is not running")

    def counts(self, refs: Sequence[QueueRef]) -> dict[QueueRef, QueueCount | None]:
        """Exact counts from the queue processes, or nothing (then the statistics view has to do)."""
        if not refs or self.counter is None:
            return {}
        try:
            return self.counter.message_counts(refs)
        except BalancerError:
            return {}

    def next_phase(self, progress: MoveProgress, phase: Phase) -> MoveProgress:
        now = self.clock()
        deadline = self.settings.deadline(now, progress.messages_before)
        return replace(progress, phase=phase, deadline=deadline, phase_started_at=now, nudges=0)

    def waited(self, progress: MoveProgress) -> float:
        """Seconds since the current step began."""
        return self.clock() - progress.phase_started_at

    def rollback_deadline(self, progress: MoveProgress) -> float:
        return self.settings.deadline(self.clock(), progress.messages_before, self.settings.rollback_timeout)

    def finish(self, progress: MoveProgress, phase: Phase, outcome: str) -> MoveProgress:
        """End the move; whatever the outcome, its temporary policy does not outlive it. Never raises:
        a policy that cannot be deleted stays named in ``policy`` and in the outcome."""
        try:
            self.delete_policy(progress)
        except BalancerError as exc:
            outcome = (
                f"{outcome}; temporary policy {progress.policy} left in vhost {progress.move.vhost} ({exc})"
            )
        else:
            progress = replace(progress, policy=None)
        return replace(progress, phase=phase, outcome=outcome.lstrip("; "), finished_at=self.clock())

    def policy_name(self, ref: QueueRef) -> str:
        """This run's temporary policy for the queue."""
        return temporary_policy_name(ref, self.run_id)

    def put_policy(self, progress: MoveProgress, ha_definition: Mapping[str, Any]) -> None:
        """Put the move's temporary policy with these HA keys (and the queue's own other keys)."""
        if progress.policy is None:
            raise MoveStateError(f"{progress.move.ref}: no temporary policy to put in phase {progress.phase}")
        put_temporary_policy(
            self.client, progress.move.ref, progress.policy, progress.original_definition, ha_definition
        )

    def delete_policy(self, progress: MoveProgress) -> None:
        if progress.policy:
            self.client.delete_policy(progress.move.vhost, progress.policy)
