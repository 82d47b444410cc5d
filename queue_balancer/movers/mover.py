"""The Mover: starts a batch of moves, advances each by one observation, aborts what must be undone.

Every step is non-blocking: ``start`` makes the first change, ``advance`` observes the queue once and
calls the function of the move's phase (``PHASES``), ``abort`` undoes what can be undone. The CLI calls
them in a polling loop (``runner``); the Step Functions workflow from its own loop. ``MoveProgress`` is
plain JSON, so the same move can be continued by another process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from queue_balancer.errors import BalancerError, NotFound
from queue_balancer.maintenance import with_maintenance
from queue_balancer.model import Move, Queue, QueueCount, QueueRef, QueueType, Snapshot
from queue_balancer.movers import classic, quorum, stream
from queue_balancer.movers.context import MoveContext
from queue_balancer.movers.policies import own_policy
from queue_balancer.movers.progress import MoveProgress, Phase
from queue_balancer.movers.verify import has_traffic, verify

PhaseStep = Callable[[MoveContext, MoveProgress, Queue], MoveProgress]

PHASES: dict[Phase, PhaseStep] = {
    Phase.SYNCING: classic.preparing,
    Phase.REORDERING: classic.preparing,
    Phase.PROMOTING: classic.promoting,
    Phase.RESTORING: classic.restoring,
    Phase.ROLLING_BACK: classic.rolling_back,
    Phase.TRANSFERRING: quorum.transferring,
    Phase.RESTARTING: stream.restarting,
    Phase.VERIFYING: verify,
}
"""What ``advance`` does in each phase, given the queue as its process sees it now."""

UNGUARDED = frozenset({Phase.VERIFYING, Phase.ROLLING_BACK, Phase.RESTARTING})
"""Phases exempt from the phase deadline and the leader check (they end by themselves, bounded; a restarted
stream may lead on any member and fails at its own deadline with what it saw)."""

LIST_READ_MIN = 8
"""From this many quorum moves waiting for their new leader, one real-time list per vhost replaces a read
per queue and poll (150 transfers polled one by one cost more CPU than the whole built-in rebalance)."""
_LISTED_PHASES = frozenset({Phase.TRANSFERRING, Phase.VERIFYING})
"""Quorum phases that need only the leader, which the real-time list reports like the single view. Classic
moves keep the single view: the list's synchronised mirrors can lag (3.10)."""

DRAINED_FRESH_SECONDS = 10.0
"""How long a move start trusts the last answer about maintenance mode (3.x; 4.x reports it with the nodes)."""


def elsewhere(progress: MoveProgress, leader: str | None) -> str:
    """Why a move ends with its leader on a third node. After our own transfer, Ra's election may choose
    another member (a lagging target does not win): that is our call's outcome, not another actor's."""
    if progress.phase is Phase.TRANSFERRING:
        return f"the election after the transfer chose {leader}, not {progress.move.target}"
    if progress.phase is Phase.PROMOTING:
        # The policy left the source out; with the target gone, RabbitMQ promoted another kept copy.
        return f"RabbitMQ promoted {leader}, not {progress.move.target}"
    return f"leader moved to {leader} by someone else"


@dataclass
class Mover(MoveContext):
    """Moves queue leaders through the management API (and a leader-transfer port for quorum queues)."""

    _drained_seen: tuple[float, frozenset[str]] | None = field(default=None, init=False, repr=False)

    def start(self, moves: Sequence[Move]) -> list[MoveProgress]:
        """Start a batch of moves; quorum transfers of the batch go to the cluster in one call."""
        return list(self.starting(moves))

    def starting(self, moves: Sequence[Move]) -> Iterator[MoveProgress]:
        """``start``, each move handed over as soon as it made its first change (quorum ones after the
        batch's one transfer call): a caller that records each before the next is never interrupted
        holding a stale state."""
        nodes = Snapshot.from_api(self.client.nodes(), [])
        if any(m.type is QueueType.CLASSIC for m in moves):
            # Spare mirrors come from these nodes; a quorum-only batch (one Ra call, well under a second)
            # does not pay an eval on 3.x and keeps the plan's view of maintenance mode.
            nodes = with_maintenance(nodes, self._recently_drained)
        counts = self.counts([m.ref for m in moves])
        transfers, restarts = [], []
        for move in moves:
            progress = self._guarded(move, partial(self._start_one, move, nodes, counts.get(move.ref)))
            if progress.phase is Phase.TRANSFERRING:
                transfers.append(progress)
            elif progress.phase is Phase.RESTARTING:
                restarts.append(progress)
            else:
                yield progress
        yield from quorum.transfer(self, transfers)
        yield from stream.transfer(self, restarts)

    def _recently_drained(self, running: Sequence[str]) -> frozenset[str]:
        """The ``drained`` port's answer, asked again after ``DRAINED_FRESH_SECONDS``: on 3.x it is an
        Erlang VM start (0.5-4 s), and a run starts a classic batch whenever a move ends."""
        if self.drained is None:
            return frozenset()
        now = self.clock()
        if self._drained_seen is None or now - self._drained_seen[0] >= DRAINED_FRESH_SECONDS:
            self._drained_seen = (now, frozenset(self.drained(running)))
        return self._drained_seen[1]

    def _start_one(self, move: Move, nodes: Snapshot, count: QueueCount | None) -> MoveProgress:
        now = self.clock()
        running = nodes.running_nodes
        live = self.live(move)
        own: tuple[str, Mapping[str, Any]] | None = None
        idle: bool | None = None
        if count is not None and move.type is not QueueType.CLASSIC:
            # A transfer writes no policy and an exact count needs no settled statistics: the statistics
            # view and the queue's own policy (two API calls per move) would go unused.
            messages = count.messages
        else:
            raw = self.client.queue(move.vhost, move.queue)
            stats = Queue.from_api(raw)
            own = own_policy(self.client, stats)
            messages = count.messages if count else stats.messages
            idle = not has_traffic(raw) and not int(raw.get("messages_unacknowledged") or 0)
            idle = idle and (count is None or count.consumers == 0)
        progress = MoveProgress(
            move=move,
            phase=Phase.VERIFYING,
            started_at=now,
            phase_started_at=now,
            deadline=self.settings.deadline(now, messages),
            messages_before=messages,
            exact_count=count is not None,
            original_policy=own[0] if own else None,
            original_definition=dict(own[1]) if own else {},
            cluster_size=len(running),
            idle_at_start=idle,
        )
        down = [n for n in (move.source, move.target) if n not in running]
        if down:
            return self.finish(progress, Phase.FAILED, f"node {down[0]} is not running")
        if move.target in nodes.drained_nodes:
            reason = f"node {move.target} is in maintenance mode (rabbitmq-upgrade drain)"
            return self.finish(progress, Phase.FAILED, reason)
        if live.leader == move.target:
            # A retried start (or a move RabbitMQ already made): finish the job instead of failing it.
            if move.type is QueueType.CLASSIC:
                return classic.resume_on_target(self, progress)
            return progress
        if live.leader != move.source:
            return self.finish(progress, Phase.FAILED, f"leader is on {live.leader}, not {move.source}")
        if move.type is QueueType.QUORUM:
            return quorum.start(self, progress)
        if move.type is QueueType.STREAM:
            return stream.start(self, progress)
        return classic.start(self, progress, live, nodes.serving_nodes)

    def advance(self, progress: MoveProgress) -> MoveProgress:
        """Observe the queue once and take the next steps the observed state allows."""
        return self._observed(progress, None)

    def _observed(self, progress: MoveProgress, seen: Queue | None) -> MoveProgress:
        """``advance`` with the queue as ``seen`` just now, when it was (else read alone)."""
        if progress.finished:
            return progress
        return self._guarded(progress.move, partial(self._advance, progress, seen), progress)

    def advance_all(self, progresses: Sequence[MoveProgress]) -> Iterator[MoveProgress]:
        """``advance`` every move once, in order, each handed over as soon as it advanced (a caller
        records it before the next move's call); many quorum moves waiting for their leader share one
        real-time list read per vhost (a queue missing from it is read alone: was it deleted?)."""
        waiting = [
            p.move
            for p in progresses
            if not p.finished and p.move.type is QueueType.QUORUM and p.phase in _LISTED_PHASES
        ]
        seen = self._listed(waiting) if len(waiting) >= LIST_READ_MIN else {}
        for p in progresses:
            yield self._observed(p, seen[p.move.ref]) if p.move.ref in seen else self.advance(p)

    def _listed(self, moves: Sequence[Move]) -> dict[QueueRef, Queue]:
        wanted = {m.ref for m in moves}
        seen: dict[QueueRef, Queue] = {}
        for vhost in sorted({m.vhost for m in moves}):
            try:
                listed = self.client.queues_now(vhost)
            except BalancerError:
                return {}  # each move reads its queue alone, and fails by itself if it must
            for data in listed:
                queue = Queue.from_api(data)
                if queue.ref in wanted:
                    seen[queue.ref] = queue
        return seen

    def _advance(self, progress: MoveProgress, seen: Queue | None) -> MoveProgress:
        move, phase = progress.move, progress.phase
        live = seen or self.live(move)
        if phase not in UNGUARDED:
            if self.clock() > progress.deadline:
                return self.abort(progress, f"timed out while {phase.value}")
            if live.leader not in (move.source, move.target):
                return self.abort(progress, elsewhere(progress, live.leader))
        return PHASES[phase](self, progress, live)

    def abort(self, progress: MoveProgress, reason: str) -> MoveProgress:
        """Undo what can be undone; never raises (what could not be undone is named in the outcome).

        A classic move keeps every copy, then hands the queue back to its own policy
        (``classic.roll_back``); ``advance`` carries the rollback on until it ends.
        """
        if progress.finished or progress.phase is Phase.ROLLING_BACK:
            return progress
        if (
            progress.move.type is QueueType.STREAM
            and progress.phase is Phase.RESTARTING
            and progress.attempts
        ):
            return stream.interrupted(self, progress, reason)
        try:
            if progress.move.type is QueueType.CLASSIC:
                return classic.roll_back(self, progress, reason)
        except BalancerError as exc:
            return self.finish(progress, Phase.FAILED, f"{reason}; rollback failed: {exc}")
        return self.finish(progress, Phase.FAILED, reason)

    def blank(self, move: Move) -> MoveProgress:
        """A move whose start may have made its first change: what an abort needs to undo it."""
        now = self.clock()
        policy = self.policy_name(move.ref) if move.type is QueueType.CLASSIC else None
        return MoveProgress(move=move, phase=Phase.SYNCING, started_at=now, deadline=now, policy=policy)

    def _guarded(
        self, move: Move, step: Callable[[], MoveProgress], progress: MoveProgress | None = None
    ) -> MoveProgress:
        """Turn the errors of one step into a failed (and rolled back) move instead of a crash."""
        try:
            return step()
        except NotFound:
            return self.finish(progress or self.blank(move), Phase.FAILED, "queue was deleted")
        except BalancerError as exc:
            failed = progress or self.blank(move)
            if failed.phase is Phase.ROLLING_BACK:
                if self.clock() <= failed.deadline:
                    return failed  # a rollback goes on: the next poll tries again, until its deadline
                return self.finish(failed, Phase.FAILED, f"{failed.outcome}; {exc}")
            return self.abort(failed, str(exc))
