"""Carry out one move as a small state machine: start, observe, finish or roll back.

Every step is non-blocking: ``start`` makes the first change, ``advance`` observes the queue once and
makes the next change when the observed state allows it, ``abort`` undoes what can be undone. The CLI
calls them in a polling loop; the Step Functions workflow calls them from a start -> Wait -> check loop.
``MoveProgress`` is plain JSON, so the same move can be continued by another process.

Classic queue (the seed plugin's policy transitions, driven by observed state instead of fixed delays):
a temporary policy ``queue-balancer-<hash>`` matching exactly this queue, above every other policy of
the vhost and carrying the queue's own policy keys (so TTLs, length limits and dead-lettering stay in
force during the move), mirrors it on [leader, target] with automatic sync -> once the target mirror is
synchronised the policy becomes [target] -> RabbitMQ promotes the target -> the temporary policy is
deleted -> the queue's own policy re-mirrors it -> the move is verified.

Quorum queue: Ra transfers the leadership exactly (see ``leader_transfer``), then the move is verified.

Verification: leader on target, replicas back in sync (as many as the queue's own policy implies), and
the message count unchanged once the statistics view has caught up with the real-time view.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import partial
from typing import Any, Protocol

from queue_balancer.errors import BalancerError, NotFound
from queue_balancer.leader_transfer import SUCCESS
from queue_balancer.management import ManagementClient
from queue_balancer.model import JsonDict, Move, Queue, QueueCount, QueueRef, QueueType

POLICY_PREFIX = "queue-balancer-"
MAX_NUDGES = 5


class Phase(StrEnum):
    SYNCING = "syncing"  # waiting for the target mirror to be synchronised
    PROMOTING = "promoting"  # waiting for the target mirror to become the master
    TRANSFERRING = "transferring"  # waiting for Ra to report the new quorum leader
    RESTORING = "restoring"  # waiting for the queue's own policy to re-mirror it
    VERIFYING = "verifying"  # waiting for the statistics to settle, then comparing message counts
    ROLLING_BACK = "rolling_back"  # temporary policy removed, waiting for the mirrors to come back
    DONE = "done"
    FAILED = "failed"


TERMINAL = frozenset({Phase.DONE, Phase.FAILED})


class LeaderTransfer(Protocol):
    """Moves quorum leaders exactly (see ``leader_transfer``)."""

    def transfer(self, moves: Sequence[Move]) -> dict[QueueRef, str]: ...


class MessageCounter(Protocol):
    """Exact, current message counts (see ``counts``); without one the statistics view has to do."""

    def message_counts(self, refs: Sequence[QueueRef]) -> dict[QueueRef, QueueCount | None]: ...


@dataclass(frozen=True)
class MoveSettings:
    """Deadlines scale with the queue's size: a mirror sync copies every message (~40k msg/s)."""

    poll_interval: float = 0.1
    phase_timeout: float = 60.0
    messages_per_second: float = 5_000.0
    settle_timeout: float = 30.0
    """How long the statistics view may take to catch up (it is refreshed every 5 s by default)."""

    sync_nudge_after: float = 5.0
    """Seconds a mirror may stay unsynchronised before the mover asks for a sync itself."""
    rollback_timeout: float = 60.0
    """How long a rolled-back move waits for its own mirrors to be back in sync."""

    def deadline(self, now: float, messages: int, base: float | None = None) -> float:
        return now + (self.phase_timeout if base is None else base) + messages / self.messages_per_second


@dataclass(frozen=True)
class MoveProgress:
    """Where one move stands; plain JSON in and out (``to_dict``/``from_dict``)."""

    move: Move
    phase: Phase
    started_at: float
    deadline: float
    messages_before: int = 0
    policy: str | None = None
    original_policy: str | None = None
    original_definition: Mapping[str, Any] = field(default_factory=dict)
    cluster_size: int = 0
    nudges: int = 0
    """Remedies tried in the current phase (see ``Mover._nudge_sync``)."""
    phase_started_at: float = 0.0
    exact_count: bool = False
    """messages_before came from the queue process itself, so verification can ask it again."""
    finished_at: float | None = None
    outcome: str = ""

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL

    @property
    def seconds(self) -> float:
        return (self.finished_at or time.time()) - self.started_at

    def to_dict(self) -> JsonDict:
        return {
            "move": self.move.to_dict(),
            "phase": self.phase.value,
            "started_at": self.started_at,
            "deadline": self.deadline,
            "messages_before": self.messages_before,
            "policy": self.policy,
            "original_policy": self.original_policy,
            "original_definition": dict(self.original_definition),
            "cluster_size": self.cluster_size,
            "nudges": self.nudges,
            "phase_started_at": self.phase_started_at,
            "exact_count": self.exact_count,
            "finished_at": self.finished_at,
            "outcome": self.outcome,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MoveProgress:
        return cls(
            move=Move.from_dict(data["move"]),
            phase=Phase(data["phase"]),
            started_at=float(data["started_at"]),
            deadline=float(data["deadline"]),
            messages_before=int(data.get("messages_before", 0)),
            policy=data.get("policy"),
            original_policy=data.get("original_policy"),
            original_definition=dict(data.get("original_definition") or {}),
            cluster_size=int(data.get("cluster_size", 0)),
            nudges=int(data.get("nudges", 0)),
            phase_started_at=float(data.get("phase_started_at", 0.0)),
            exact_count=bool(data.get("exact_count", False)),
            finished_at=data.get("finished_at"),
            outcome=str(data.get("outcome", "")),
        )


def temporary_policy_name(ref: QueueRef) -> str:
    """Deterministic per queue, so a retried start finds (and reuses) its own policy."""
    digest = hashlib.sha256(f"{ref.vhost}\0{ref.name}".encode()).hexdigest()[:16]
    return POLICY_PREFIX + digest


def exact_pattern(name: str) -> str:
    """A regex matching exactly ``name`` (``orders.v2`` must not match ``ordersXv2``).

    Every character that is not a letter or a digit is escaped: PCRE, which RabbitMQ uses, reads an
    escaped punctuation character as itself; letters and digits are never escaped (``\\d`` means a digit).
    """
    escaped = "".join(c if c.isalnum() or ord(c) > 127 else "\\" + c for c in name)
    return f"^{escaped}$"


def expected_mirrors(definition: Mapping[str, Any], cluster_size: int, leader: str) -> int:
    """How many synchronised mirrors the queue's own policy gives it once it has settled."""
    mode = definition.get("ha-mode")
    params = definition.get("ha-params")
    if mode == "all":
        return max(cluster_size - 1, 0)
    if mode == "exactly" and isinstance(params, int):
        return max(min(params, cluster_size) - 1, 0)
    if mode == "nodes" and isinstance(params, list):
        return len({str(n) for n in params} - {leader})
    return 0


def _traffic(stats: Mapping[str, Any]) -> bool:
    """Whether clients are using the queue, in which case its message count may change legitimately."""
    rates = stats.get("message_stats") or {}
    busy = any(
        (rates.get(f"{key}_details") or {}).get("rate", 0) > 0 for key in ("publish", "deliver_get", "ack")
    )
    return busy or int(stats.get("consumers") or 0) > 0


@dataclass
class Mover:
    """Moves queue leaders through the management API (and a leader-transfer port for quorum queues)."""

    client: ManagementClient
    leader_transfer: LeaderTransfer | None = None
    settings: MoveSettings = field(default_factory=MoveSettings)
    counter: MessageCounter | None = None
    clock: Callable[[], float] = time.time

    # ---- start -----------------------------------------------------------------------------------

    def start(self, moves: Sequence[Move]) -> list[MoveProgress]:
        """Start a batch of moves; quorum transfers of the batch go to the cluster in one call."""
        cluster_size = sum(1 for n in self.client.nodes() if n.get("running"))
        counts = self._counts([m.ref for m in moves])
        started = [
            self._guarded(m, partial(self._start_one, m, cluster_size, counts.get(m.ref))) for m in moves
        ]
        transfers = [p for p in started if p.phase is Phase.TRANSFERRING]
        if transfers:
            started = self._transfer(started, transfers)
        return started

    def _start_one(self, move: Move, cluster_size: int, count: QueueCount | None) -> MoveProgress:
        now = self.clock()
        live = Queue.from_api(self.client.queue_now(move.vhost, move.queue))
        stats = Queue.from_api(self.client.queue(move.vhost, move.queue))
        own = self._own_policy(stats)
        messages = count.messages if count else stats.messages
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
            cluster_size=cluster_size,
        )
        if live.leader == move.target:
            return self._resume_on_target(progress)
        if live.leader != move.source:
            return self._finish(progress, Phase.FAILED, f"leader is on {live.leader}, not {move.source}")
        if move.type is QueueType.QUORUM:
            if self.leader_transfer is None:
                return self._finish(progress, Phase.FAILED, "no leader-transfer primitive configured")
            return replace(progress, phase=Phase.TRANSFERRING)
        unsynced = set(live.replicas) - set(live.in_sync)
        if unsynced and self._policy_exists(move.vhost, temporary_policy_name(move.ref)):
            # A retried start (the first attempt put the policy, then its Lambda died): carry on syncing
            # instead of failing on the mirror the first attempt asked for.
            progress = replace(progress, policy=temporary_policy_name(move.ref))
            self._put_policy(progress, [move.source, move.target])
            return replace(progress, phase=Phase.SYNCING)
        if unsynced:
            return self._finish(
                progress, Phase.FAILED, f"mirrors out of sync on {', '.join(sorted(unsynced))}"
            )
        if not live.replicas and progress.messages_before:
            reason = f"unmirrored with {progress.messages_before} messages: add an HA policy first"
            return self._finish(progress, Phase.FAILED, reason)
        direct = move.target in live.in_sync
        progress = replace(progress, policy=temporary_policy_name(move.ref))
        self._put_policy(progress, [move.target] if direct else [move.source, move.target])
        return replace(progress, phase=Phase.PROMOTING if direct else Phase.SYNCING)

    def _resume_on_target(self, progress: MoveProgress) -> MoveProgress:
        """A retried start (or a move RabbitMQ already made): finish the job instead of failing it."""
        if progress.move.type is QueueType.CLASSIC:
            self.client.delete_policy(progress.move.vhost, temporary_policy_name(progress.move.ref))
            return replace(progress, phase=Phase.RESTORING)
        return replace(progress, phase=Phase.VERIFYING)

    def _transfer(self, started: list[MoveProgress], transfers: list[MoveProgress]) -> list[MoveProgress]:
        assert self.leader_transfer is not None
        try:
            answers = self.leader_transfer.transfer([p.move for p in transfers])
        except BalancerError as exc:
            answers = {p.move.ref: f"leader transfer failed: {exc}" for p in transfers}
        asked = {id(p) for p in transfers}
        result = []
        for p in started:
            answer = answers.get(p.move.ref, "no answer from the leader transfer")
            if id(p) not in asked or answer in SUCCESS:
                result.append(p)
            elif "not_found" in answer:
                result.append(self._finish(p, Phase.FAILED, "queue was deleted"))
            else:
                result.append(self._finish(p, Phase.FAILED, f"leader transfer refused: {answer}"))
        return result

    # ---- advance ---------------------------------------------------------------------------------

    def advance(self, progress: MoveProgress) -> MoveProgress:
        """Observe the queue once and take the next steps the observed state allows."""
        if progress.finished:
            return progress
        return self._guarded(progress.move, partial(self._advance, progress), progress)

    def _advance(self, progress: MoveProgress) -> MoveProgress:
        move = progress.move
        live = Queue.from_api(self.client.queue_now(move.vhost, move.queue))
        phase = progress.phase
        if phase is Phase.ROLLING_BACK:
            return self._roll_back(progress, live)
        if phase is not Phase.VERIFYING:
            if self.clock() > progress.deadline:
                return self.abort(progress, f"timed out while {phase.value}")
            if live.leader not in (move.source, move.target):
                return self.abort(progress, f"leader moved to {live.leader} by someone else")
        if phase is Phase.SYNCING:
            if move.target not in live.in_sync:
                return self._nudge_sync(progress, live)
            self._put_policy(progress, [move.target])
            return self._next(progress, Phase.PROMOTING)
        if phase is Phase.PROMOTING:
            if live.leader != move.target:
                return progress
            self._delete_policy(progress)
            return self._next(replace(progress, policy=None), Phase.RESTORING)
        if phase is Phase.RESTORING and not self._restored(progress, live):
            return self._nudge_sync(progress, live)
        if phase is Phase.TRANSFERRING and live.leader != move.target:
            return progress
        # Restored, transferred or verifying: the counts can be compared right away.
        return self._verify(replace(progress, phase=Phase.VERIFYING), live)

    def _roll_back(self, progress: MoveProgress, live: Queue) -> MoveProgress:
        """The temporary policy is gone: wait (bounded) for the queue's own mirrors to be back in sync."""
        if self._restored(progress, live):
            return self._finish(progress, Phase.FAILED, progress.outcome)
        if self.clock() > progress.deadline:
            return self._finish(progress, Phase.FAILED, progress.outcome + "; mirrors not yet back in sync")
        return self._nudge_sync(progress, live)

    def _restored(self, progress: MoveProgress, live: Queue) -> bool:
        """Mirrors back as the queue's own policy wants them, and all of them synchronised."""
        if live.type is QueueType.QUORUM:
            return len(live.in_sync) == len(live.replicas)
        wanted = expected_mirrors(progress.original_definition, progress.cluster_size, live.leader)
        return len(live.in_sync) >= wanted and set(live.replicas) <= set(live.in_sync)

    def _nudge_sync(self, progress: MoveProgress, live: Queue) -> MoveProgress:
        """Help mirrors that do not come by themselves; bounded, and only after waiting on them first.

        - Mirrors the queue's own policy wants but the queue does not have (after the temporary policy
          was deleted): now and then the queue process misses that policy change and keeps running
          unmirrored (seen on 3.10 in about 1 of 20 large moves, and after the built-in rebalance too).
          Putting and deleting a one-queue policy with the queue's own HA keys makes it re-read its
          policy; a sync request does nothing there, as there is no mirror to sync.
        - Mirrors present but not synchronised: with ``ha-sync-mode: manual`` they never sync by
          themselves, and now and then an automatic sync does not start; a sync request starts it.
        """
        waited = self.clock() - progress.phase_started_at
        if waited < self.settings.sync_nudge_after * progress.nudges:
            return progress
        restoring = progress.phase in (Phase.RESTORING, Phase.ROLLING_BACK)
        wanted = expected_mirrors(progress.original_definition, progress.cluster_size, live.leader)
        if restoring and len(live.replicas) < wanted:
            if waited > self.settings.sync_nudge_after and progress.nudges < MAX_NUDGES:
                self._touch_own_policy(progress)
                return replace(progress, nudges=progress.nudges + 1)
            return progress
        if progress.nudges or set(live.replicas) <= set(live.in_sync):
            return progress
        manual = restoring and progress.original_definition.get("ha-sync-mode", "manual") != "automatic"
        if (manual and progress.messages_before) or waited > self.settings.sync_nudge_after:
            self.client.queue_action(progress.move.vhost, progress.move.queue, "sync")
            return replace(progress, nudges=1)
        return progress

    def _touch_own_policy(self, progress: MoveProgress) -> None:
        """Put a one-queue policy with the queue's own HA keys, then delete it: the queue re-reads its policy."""
        touched = replace(progress, policy=temporary_policy_name(progress.move.ref))
        ha = {k: v for k, v in progress.original_definition.items() if k.startswith("ha-")}
        self._put_policy(touched, ha_definition=ha)
        self._delete_policy(touched)

    def _verify(self, progress: MoveProgress, live: Queue) -> MoveProgress:
        """Leader on target, then the message count compared with the one before the move."""
        if live.leader != progress.move.target:
            return self._finish(progress, Phase.FAILED, f"verification: leader is on {live.leader}")
        counts = self._counts([progress.move.ref]) if progress.exact_count else {}
        if progress.move.ref not in counts:
            return self._verify_stats(progress, live)
        count = counts[progress.move.ref]
        if count is None:
            return self._finish(progress, Phase.FAILED, "queue was deleted")
        return self._judge(progress, count.messages, lambda: count.consumers > 0 or self._traffic(progress))

    def _traffic(self, progress: MoveProgress) -> bool:
        return _traffic(self.client.queue(progress.move.vhost, progress.move.queue))

    def _judge(
        self, progress: MoveProgress, messages: int, traffic: Callable[[], bool], source: str = ""
    ) -> MoveProgress:
        if messages == progress.messages_before:
            return self._finish(progress, Phase.DONE, "")
        change = f"message count changed from {progress.messages_before} to {messages}{source}"
        if traffic():
            return self._finish(progress, Phase.DONE, f"{change} under client traffic")
        return self._finish(progress, Phase.FAILED, f"verification: {change} with no client traffic")

    def _verify_stats(self, progress: MoveProgress, live: Queue) -> MoveProgress:
        """Without an Erlang shell: compare counts once the statistics view has caught up with the queue."""
        move = progress.move
        stats_raw = self.client.queue(move.vhost, move.queue)
        stats = Queue.from_api(stats_raw)
        settled = (
            stats.leader == live.leader
            and set(stats.replicas) == set(live.replicas)
            and stats.policy == progress.original_policy
        )
        if not settled:
            if self.clock() > progress.deadline + self.settings.settle_timeout:
                return self._finish(progress, Phase.FAILED, "verification: statistics never caught up")
            return progress
        return self._judge(progress, stats.messages, lambda: _traffic(stats_raw), " (statistics view)")

    # ---- abort -----------------------------------------------------------------------------------

    def abort(self, progress: MoveProgress, reason: str) -> MoveProgress:
        """Undo what can be undone: remove the temporary policy, then wait for the mirrors to return."""
        if progress.finished:
            return progress
        if progress.policy is None:
            return self._finish(progress, Phase.FAILED, reason)
        self._delete_policy(progress)  # idempotent: a policy already gone is fine
        now = self.clock()
        return replace(
            progress,
            policy=None,
            phase=Phase.ROLLING_BACK,
            phase_started_at=now,
            nudges=0,
            outcome=reason,
            deadline=self.settings.deadline(now, progress.messages_before, self.settings.rollback_timeout),
        )

    # ---- helpers ---------------------------------------------------------------------------------

    def _guarded(
        self, move: Move, step: Callable[[], MoveProgress], progress: MoveProgress | None = None
    ) -> MoveProgress:
        """Turn the errors of one step into a failed (and rolled back) move instead of a crash."""
        try:
            return step()
        except NotFound:
            return self._finish(progress or self._blank(move), Phase.FAILED, "queue was deleted")
        except BalancerError as exc:
            failed = progress or self._blank(move)
            if failed.phase is Phase.ROLLING_BACK:
                return self._finish(failed, Phase.FAILED, f"{failed.outcome}; {exc}")
            return self.abort(failed, str(exc))

    def _counts(self, refs: Sequence[QueueRef]) -> dict[QueueRef, QueueCount | None]:
        """Exact counts from the queue processes, or nothing (then the statistics view has to do)."""
        if not refs or self.counter is None:
            return {}
        try:
            return self.counter.message_counts(refs)
        except BalancerError:
            return {}

    def _blank(self, move: Move) -> MoveProgress:
        """A move that failed while starting; a classic one may have created its policy already."""
        now = self.clock()
        policy = temporary_policy_name(move.ref) if move.type is QueueType.CLASSIC else None
        return MoveProgress(move=move, phase=Phase.SYNCING, started_at=now, deadline=now, policy=policy)

    def _next(self, progress: MoveProgress, phase: Phase) -> MoveProgress:
        now = self.clock()
        deadline = self.settings.deadline(now, progress.messages_before)
        return replace(progress, phase=phase, deadline=deadline, phase_started_at=now, nudges=0)

    def _finish(self, progress: MoveProgress, phase: Phase, outcome: str) -> MoveProgress:
        """End the move; whatever the outcome, its temporary policy does not outlive it."""
        self._delete_policy(progress)
        return replace(progress, phase=phase, outcome=outcome, finished_at=self.clock())

    def _own_policy(self, queue: Queue) -> tuple[str, Mapping[str, Any]] | None:
        """The queue's own policy (name, definition), also while a temporary policy hides it."""
        if queue.policy and not queue.policy.startswith(POLICY_PREFIX):
            try:
                return queue.policy, self.client.policy(queue.vhost, queue.policy).get("definition") or {}
            except NotFound:
                return None
        if not queue.policy and queue.type is not QueueType.CLASSIC:
            # Nothing to return to for mirroring (ha-* keys never apply to a quorum queue); a search could
            # name a policy the statistics view never shows for it.
            return None
        # A retried start finds its temporary policy in effect, or a new queue's statistics do not show its
        # policy yet: find the policy RabbitMQ applies, as RabbitMQ does (matching, highest priority).
        candidates = [
            p
            for p in self.client.policies(queue.vhost)
            if not str(p["name"]).startswith(POLICY_PREFIX)
            and p.get("apply-to", "all") in ("all", "queues", f"{queue.type.value}_queues")
            and re.search(str(p["pattern"]), queue.name)
        ]
        if not candidates:
            return None
        best = max(candidates, key=lambda p: int(p.get("priority", 0)))
        return str(best["name"]), best.get("definition") or {}

    def _policy_exists(self, vhost: str, name: str) -> bool:
        try:
            self.client.policy(vhost, name)
        except NotFound:
            return False
        return True

    def _put_policy(
        self,
        progress: MoveProgress,
        nodes: list[str] | None = None,
        ha_definition: Mapping[str, Any] | None = None,
    ) -> None:
        """The temporary policy: the queue's own keys, with mirrors on ``nodes`` (or the given HA keys)."""
        move = progress.move
        assert progress.policy is not None
        others = [p for p in self.client.policies(move.vhost) if not str(p["name"]).startswith(POLICY_PREFIX)]
        priority = max((int(p.get("priority", 0)) for p in others), default=0) + 1
        definition = {k: v for k, v in progress.original_definition.items() if not k.startswith("ha-")}
        if ha_definition is None:
            ha_definition = {"ha-mode": "nodes", "ha-params": nodes, "ha-sync-mode": "automatic"}
        definition.update(ha_definition)
        self.client.put_policy(
            move.vhost,
            progress.policy,
            pattern=exact_pattern(move.queue),
            definition=definition,
            priority=priority,
        )

    def _delete_policy(self, progress: MoveProgress) -> None:
        if progress.policy:
            self.client.delete_policy(progress.move.vhost, progress.policy)


def cleanup(client: ManagementClient) -> list[tuple[str, str]]:
    """Remove every temporary policy a balancer run left behind (after a crash); returns (vhost, name)."""
    removed = []
    for policy in client.policies():
        name = str(policy["name"])
        if name.startswith(POLICY_PREFIX) and client.delete_policy(str(policy["vhost"]), name):
            removed.append((str(policy["vhost"]), name))
    return removed
