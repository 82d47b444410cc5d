"""Carry out member changes of quorum queues safely, a batch of queues at a time.

One queue's change (a ``MemberMove``) is a small state machine driven by observation, never by delays:

1. **Add before remove.** Every new member is added first; a member is removed only once every new one has
   caught up: it is a voting ``leader``/``follower`` (on 4.x a new member starts as a non-voter that Ra
   promotes once it has the log), ``online`` in the real-time view, and its log has reached the leader's
   commit index of the moment it was added (its own commit index may only learn of that with the next
   command, which an idle queue may not get for seconds).
2. **Quorum at every step.** Decisions are made on observed Raft states only (a round whose status call
   failed changes nothing), counting only voting members (a 4.x non-voter holds no vote). An add is made
   only while the voters in sync already form a quorum of the grown group (on 3.x a new member votes
   before it has caught up); when they do not, a member on a node gone from the cluster (no longer in
   ``/api/nodes``) is removed first, which drops no copy. A member on a node merely stopped still holds its
   data on disk and may come back: the change waits for it (until its deadline) instead. A member that is
   online is removed only when the rest still form a quorum, and only after the adds: a change that adds
   members never holds fewer in-sync copies than before it. A remove-only change drops the copies it names:
   the plan makes one only for a member on a departed node (no copy) or when the operator asks for fewer
   members (an explicit group size, ``members.replica_count``).
3. **Verify** as a leader move is verified: the members are exactly the planned ones, all online, and the
   exact message count (passive declare over AMQP) is unchanged.
4. **Roll back** on failure or interruption: the members this change added and no longer needs are
   removed, so the queue keeps its replica count.

Every round of ``step`` makes at most one status call, one add call and one remove call for the whole
batch: on 3.x each is a ``rabbitmqctl eval``, whose start-up dominates its cost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from queue_balancer.errors import BalancerError, NotFound
from queue_balancer.member_changes import Change, MemberChanger, MemberState, succeeded
from queue_balancer.members import MemberMove, quorum_of
from queue_balancer.model import JsonDict, Queue, QueueRef
from queue_balancer.movers import ManagementApi, MessageCounter, MoveSettings
from queue_balancer.movers.progress import progress_dict, progress_fields


class MemberPhase(StrEnum):
    CHANGING = "changing"  # adding and removing members, each step when the observed state allows it
    VERIFYING = "verifying"  # members as planned: comparing message counts
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class MemberProgress:
    """Where one queue's member change stands; plain JSON in and out."""

    move: MemberMove
    phase: MemberPhase
    started_at: float
    deadline: float
    messages_before: int = 0
    exact_count: bool = False
    catching_up: Mapping[str, int] = field(default_factory=dict)
    """New members not yet caught up, and the leader's commit index when each was added."""
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    finished_at: float | None = None
    outcome: str = ""

    @property
    def finished(self) -> bool:
        return self.phase in (MemberPhase.DONE, MemberPhase.FAILED)

    @property
    def seconds(self) -> float:
        return (self.finished_at or time.time()) - self.started_at

    def to_dict(self) -> JsonDict:
        return {
            **progress_dict(self),
            "catching_up": dict(self.catching_up),
            "added": list(self.added),
            "removed": list(self.removed),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MemberProgress:
        return cls(
            move=MemberMove.from_dict(data["move"]),
            phase=MemberPhase(data["phase"]),
            **progress_fields(data),
            catching_up={str(k): int(v) for k, v in (data.get("catching_up") or {}).items()},
            added=tuple(data.get("added") or ()),
            removed=tuple(data.get("removed") or ()),
        )


@dataclass(frozen=True)
class _Observed:
    """A queue's members right now (real-time view) and, when asked for, their Raft states."""

    members: frozenset[str]
    online: frozenset[str]
    leader: str
    states: Mapping[str, MemberState] = field(default_factory=dict)


UNKNOWN_MARK = -1
"""The commit index a new member must reach, not known yet (a member found added, see ``_adopt``, or the
status call right after the add failed): measured at the next successful status call, never caught up."""

TRANSIENT = ("port failure", "cluster_change_not_permitted", "timeout")
"""Answers after which a change is retried next round: Ra refuses a membership change while the previous
one is uncommitted (or during an election), and a timed-out add is undone by RabbitMQ itself."""


def transient(answer: str) -> bool:
    return any(marker in answer for marker in TRANSIENT)


def _adopt(progress: MemberProgress, seen: _Observed) -> MemberProgress:
    """Record changes found made but not recorded (an answer lost with the port): a member added is
    watched until it has caught up before anything is removed, and counts for the rollback."""
    added = [n for n in progress.move.add if n in seen.members and n not in progress.added]
    removed = [n for n in progress.move.remove if n not in seen.members and n not in progress.removed]
    if progress.finished or not (added or removed):
        return progress
    return replace(
        progress,
        added=(*progress.added, *added),
        removed=(*progress.removed, *removed),
        catching_up={**progress.catching_up, **dict.fromkeys(added, UNKNOWN_MARK)},
    )


def _leader_commit(states: Mapping[str, MemberState]) -> int:
    """The leader's commit index, ``UNKNOWN_MARK`` without the leader's state (the status call failed)."""
    marks = [
        s.commit_index for s in states.values() if s.raft_state == "leader" and s.commit_index is not None
    ]
    return max(marks, default=UNKNOWN_MARK)


def _voters_in_sync(seen: _Observed, catching_up: Mapping[str, int]) -> tuple[int, int]:
    """How many members vote (one without a state counts: the larger quorum) and how many of those are in
    sync (observed voting, online and caught up): a 4.x non-voter counts for neither."""
    voting = {n for n in seen.members if (state := seen.states.get(n)) is None or state.voter}
    in_sync = {n for n in voting & seen.online if n in seen.states and n not in catching_up}
    return len(voting), len(in_sync)


CHANGE_TIMEOUT = 180.0
"""How long one queue's member change may take (plus the time to copy its messages): on 3.x it takes about
six ``rabbitmqctl eval`` calls (status, add, status, status until caught up, remove), each a few seconds
through SSM Run Command or SSH on a busy node (measured: 52 s for 4 small queues through the local
endpoint's SSM on a loaded 2-core machine), three times what a leader move's phase may take."""


@dataclass
class MemberMover:
    """Member changes through a ``MemberChanger`` (eval on 3.x, HTTP on 4.x), observed through the API."""

    client: ManagementApi
    changer: MemberChanger
    settings: MoveSettings = field(default_factory=lambda: MoveSettings(phase_timeout=CHANGE_TIMEOUT))
    counter: MessageCounter | None = None
    clock: Callable[[], float] = time.time
    _cluster_nodes: frozenset[str] | None = field(default=None, init=False, repr=False)

    def start(self, moves: Sequence[MemberMove]) -> list[MemberProgress]:
        """Record each queue's message count; the first changes are made by the next ``step``."""
        counts = self._counts([m.ref for m in moves])
        now = self.clock()
        started = []
        for move in moves:
            count = counts.get(move.ref)
            messages = count.messages if count else move.messages
            started.append(
                MemberProgress(
                    move=move,
                    phase=MemberPhase.CHANGING,
                    started_at=now,
                    deadline=self.settings.deadline(now, messages * (len(move.add) or 1)),
                    messages_before=messages,
                    exact_count=count is not None,
                )
            )
        return started

    def step(self, progresses: Sequence[MemberProgress]) -> list[MemberProgress]:
        """Observe every unfinished change once and make the next changes the observations allow."""
        observed: dict[QueueRef, _Observed | str] = {}
        for p in progresses:
            if not p.finished:
                observed[p.move.ref] = self._observe(p.move.ref)
        progresses = [
            _adopt(p, seen) if isinstance(seen := observed.get(p.move.ref), _Observed) else p
            for p in progresses
        ]
        self._cluster_nodes = None  # /api/nodes, read at most once a round and only when needed
        states = self._status([p.move.ref for p in progresses if p.phase is MemberPhase.CHANGING])
        result: list[MemberProgress] = []
        adds: list[tuple[int, Change]] = []
        removes: list[tuple[int, Change]] = []
        for index, progress in enumerate(progresses):
            seen = observed.get(progress.move.ref)
            if progress.finished or seen is None:
                result.append(progress)
                continue
            if isinstance(seen, str):
                result.append(self.abort(progress, seen))
                continue
            if isinstance(states.get(progress.move.ref), dict):
                seen = replace(seen, states=states[progress.move.ref])
            updated, action = self._decide(progress, seen)
            result.append(updated)
            if action is not None:
                (adds if action[0] == "add" else removes).append((index, (progress.move.ref, action[1])))
        self._apply(result, adds, removes)
        return result

    # ---- one queue ---------------------------------------------------------------------------------

    def _decide(
        self, progress: MemberProgress, seen: _Observed
    ) -> tuple[MemberProgress, tuple[str, str] | None]:
        """The next state of one change, and the member to add or remove now (if any)."""
        move = progress.move
        if self.clock() > progress.deadline and progress.phase is MemberPhase.CHANGING:
            return self.abort(progress, "timed out"), None
        if not seen.leader:  # decide once a leader is elected, within the deadline
            if self.clock() > progress.deadline:
                return self._finish(progress, MemberPhase.FAILED, "verification: no leader elected"), None
            return progress, None
        if progress.phase is MemberPhase.VERIFYING:
            return self._verify(progress, seen), None
        if not seen.states or (seen.online & seen.members) - set(seen.states):
            return progress, None  # an online member's Raft state unread (the status call failed): next round
        progress = self._caught_up(progress, seen)
        to_add = [n for n in move.add if n not in seen.members]
        to_remove = [n for n in move.remove if n in seen.members]
        voters, up = _voters_in_sync(seen, progress.catching_up)
        offline = [n for n in to_remove if n not in seen.online]
        if to_add:
            return self._grow(progress, to_add[0], offline, voters, up)
        if progress.catching_up:
            return progress, None
        if to_remove:
            node = offline[0] if offline else to_remove[0]
            if node in seen.online and up - 1 < quorum_of(voters - 1):
                reason = f"removing {node} would leave no quorum ({up} of {voters} in sync)"
                return self.abort(progress, reason), None
            return progress, ("remove", node)
        return self._verify(replace(progress, phase=MemberPhase.VERIFYING), seen), None

    def _grow(
        self, progress: MemberProgress, node: str, offline: list[str], voters: int, up: int
    ) -> tuple[MemberProgress, tuple[str, str] | None]:
        """Add ``node`` while the voters in sync form a quorum of the grown group; else make room."""
        if up >= quorum_of(voters + 1):
            return progress, ("add", node)
        gone = self._gone(offline)
        if gone:  # a member on a node gone from the cluster holds no copy: dropping it keeps the quorum
            return progress, ("remove", gone[0])
        if offline:  # a stopped node keeps its member's data on disk and may come back: wait for it
            return progress, None
        reason = f"adding a member would leave no quorum until it catches up ({up} of {voters} in sync)"
        return self.abort(progress, reason), None

    def _caught_up(self, progress: MemberProgress, seen: _Observed) -> MemberProgress:
        """Drop the new members that have caught up from ``catching_up``."""
        still = {}
        leader = seen.states.get(seen.leader)
        for node, mark in progress.catching_up.items():
            if mark == UNKNOWN_MARK:  # adopted: measure from now on, which is later than the add
                still[node] = leader.commit_index if leader and leader.commit_index is not None else mark
                continue
            state = seen.states.get(node)
            ready = (
                state is not None and state.serving and (state.log_index or 0) >= mark and node in seen.online
            )
            if not ready:
                still[node] = mark
        return replace(progress, catching_up=still) if still != progress.catching_up else progress

    def _verify(self, progress: MemberProgress, seen: _Observed) -> MemberProgress:
        expected = set(progress.move.after)
        if set(seen.members) != expected:
            return self._finish(
                progress, MemberPhase.FAILED, f"verification: members are {', '.join(sorted(seen.members))}"
            )
        if not expected <= seen.online:
            if self.clock() > progress.deadline:
                offline = ", ".join(sorted(expected - seen.online))
                return self._finish(progress, MemberPhase.FAILED, f"verification: {offline} not online")
            return progress
        if not progress.exact_count:
            return self._finish(progress, MemberPhase.DONE, "")
        counts = self._counts([progress.move.ref])
        count = counts.get(progress.move.ref)
        if count is None:
            return self._finish(progress, MemberPhase.DONE, "message count not re-read (AMQP unavailable)")
        if count.messages == progress.messages_before:
            return self._finish(progress, MemberPhase.DONE, "")
        change = f"message count changed from {progress.messages_before} to {count.messages}"
        if count.consumers:
            return self._finish(progress, MemberPhase.DONE, f"{change} under client traffic")
        return self._finish(progress, MemberPhase.FAILED, f"verification: {change} with no client traffic")

    # ---- abort -------------------------------------------------------------------------------------

    def abort(self, progress: MemberProgress, reason: str) -> MemberProgress:
        """Remove the members this change added beyond the removals it made (the newest first), so the
        queue keeps its replica count; then fail the change with the reason."""
        if progress.finished:
            return progress
        undo = list(reversed(progress.added))[: max(0, len(progress.added) - len(progress.removed))]
        undone: list[str] = []
        if undo:
            try:
                answers = self.changer.remove([(progress.move.ref, n) for n in undo])
                undone = [n for n in undo if succeeded(answers.get((progress.move.ref, n), ""))]
            except BalancerError as exc:
                reason = f"{reason}; rollback failed: {exc}"
        if undone:
            reason = f"{reason}; rolled back: removed {', '.join(undone)}"
        return self._finish(progress, MemberPhase.FAILED, reason)

    # ---- helpers -----------------------------------------------------------------------------------

    def _observe(self, ref: QueueRef) -> _Observed | str:
        try:
            live = Queue.from_api(self.client.queue_now(ref.vhost, ref.name))
        except NotFound:
            return "queue was deleted"
        except BalancerError as exc:
            return str(exc)
        return _Observed(  # no leader (""): an election is under way, e.g. after its member was removed
            members=frozenset(n for n in live.members if n),
            online=frozenset(n for n in (live.leader, *live.in_sync) if n),
            leader=live.leader,
        )

    def _status(self, refs: Sequence[QueueRef]) -> dict[QueueRef, dict[str, MemberState]]:
        if not refs:
            return {}
        try:
            answers = self.changer.status(refs)
        except BalancerError:
            return {}  # no states this round: the new members simply do not count as caught up yet
        return {
            ref: {s.node: s for s in answer} for ref, answer in answers.items() if isinstance(answer, list)
        }

    def _apply(
        self, result: list[MemberProgress], adds: list[tuple[int, Change]], removes: list[tuple[int, Change]]
    ) -> None:
        """Make the batch's adds and removes, one call each, and record every answer."""
        for kind, batch in (("add", adds), ("remove", removes)):
            if not batch:
                continue
            call = self.changer.add if kind == "add" else self.changer.remove
            try:
                answers = call([change for _, change in batch])
            except BalancerError as exc:  # the change may or may not have been made: retried or adopted
                answers = {change: f"{TRANSIENT[0]}: {kind} failed: {exc}" for _, change in batch}
            marks = self._status([change[0] for _, change in batch]) if kind == "add" else {}
            for index, change in batch:
                progress, (ref, node) = result[index], change
                answer = answers.get(change, f"no answer to the {kind}")
                if transient(answer):
                    continue  # the next round observes the queue again and retries, within the deadline
                if not succeeded(answer):
                    result[index] = self.abort(progress, f"{kind} {node} refused: {answer}")
                elif kind == "add":
                    result[index] = replace(
                        progress,
                        added=(*progress.added, node),
                        catching_up={**progress.catching_up, node: _leader_commit(marks.get(ref, {}))},
                    )
                else:
                    result[index] = replace(progress, removed=(*progress.removed, node))

    def _gone(self, nodes: Sequence[str]) -> list[str]:
        """Those of ``nodes`` the cluster no longer knows (``/api/nodes`` lists stopped nodes too); none
        when ``/api/nodes`` cannot be read."""
        if nodes and self._cluster_nodes is None:
            try:
                self._cluster_nodes = frozenset(str(n.get("name", "")) for n in self.client.nodes())
            except BalancerError:
                return []
        return [n for n in nodes if self._cluster_nodes is not None and n not in self._cluster_nodes]

    def _counts(self, refs: Sequence[QueueRef]) -> dict[QueueRef, Any]:
        if not refs or self.counter is None:
            return {}
        try:
            return {
                ref: count for ref, count in self.counter.message_counts(refs).items() if count is not None
            }
        except BalancerError:
            return {}

    def _finish(self, progress: MemberProgress, phase: MemberPhase, outcome: str) -> MemberProgress:
        return replace(progress, phase=phase, outcome=outcome, finished_at=self.clock())


@dataclass(frozen=True)
class MemberRunResult:
    """Every change's final state, in the order they finished."""

    moves: tuple[MemberProgress, ...]
    seconds: float

    @property
    def done(self) -> tuple[MemberProgress, ...]:
        return tuple(p for p in self.moves if p.phase is MemberPhase.DONE)

    @property
    def failed(self) -> tuple[MemberProgress, ...]:
        return tuple(p for p in self.moves if p.phase is MemberPhase.FAILED)

    @property
    def changes(self) -> int:
        return sum(len(p.added) + len(p.removed) for p in self.moves)


@dataclass
class MemberBatch:
    """Changes not started yet, under way and finished: plain JSON, so another process (the workflow's next
    Lambda invocation) can resume them where this one stopped."""

    pending: list[MemberMove] = field(default_factory=list)
    active: list[MemberProgress] = field(default_factory=list)
    finished: list[MemberProgress] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.pending and not self.active

    def to_dict(self) -> JsonDict:
        return {
            "pending": [m.to_dict() for m in self.pending],
            "active": [p.to_dict() for p in self.active],
            "finished": [p.to_dict() for p in self.finished],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MemberBatch:
        return cls(
            pending=[MemberMove.from_dict(m) for m in data.get("pending") or ()],
            active=[MemberProgress.from_dict(p) for p in data.get("active") or ()],
            finished=[MemberProgress.from_dict(p) for p in data.get("finished") or ()],
        )


def drive_members(
    mover: MemberMover,
    batch: MemberBatch,
    *,
    concurrency: int,
    on_change: Callable[[MemberProgress], None] = lambda _: None,
    sleep: Callable[[float], None] = time.sleep,
    check: Callable[[], None] = lambda: None,
    may_start: Callable[[], bool] = lambda: True,
    stop: Callable[[MemberBatch], bool] = lambda _: False,
) -> MemberBatch:
    """Start and step changes, up to ``concurrency`` queues at once (new ones only while ``may_start()``),
    until the batch is complete or ``stop(batch)`` says so (a time budget); ``batch`` is accurate at every
    step, so after an exception the caller can roll back what is under way (``roll_back_members``)."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    while not batch.complete:
        check()  # e.g. the cluster lock is still ours; raising leaves the changes under way to roll back
        room = min(concurrency - len(batch.active), len(batch.pending)) if may_start() else 0
        starting, batch.pending = batch.pending[:room], batch.pending[room:]
        batch.active.extend(mover.start(starting))
        stepped = mover.step(batch.active)
        for before, after in zip(batch.active, stepped, strict=True):
            if after.phase is not before.phase or after.finished:
                on_change(after)
        batch.finished += [p for p in stepped if p.finished]
        batch.active = [p for p in stepped if not p.finished]
        if batch.complete or stop(batch):
            break
        if batch.active:
            sleep(mover.settings.poll_interval)
    return batch


def roll_back_members(
    mover: MemberMover, batch: MemberBatch, reason: str, on_change: Callable[[MemberProgress], None]
) -> None:
    """Abort every change under way (removing the members it added); they move to ``finished``."""
    for progress in batch.active:
        rolled = mover.abort(progress, reason)
        on_change(rolled)
        batch.finished.append(rolled)
    batch.active = []


def run_member_moves(
    mover: MemberMover,
    moves: Iterable[MemberMove],
    *,
    concurrency: int = 50,
    on_change: Callable[[MemberProgress], None] = lambda _: None,
    sleep: Callable[[float], None] = time.sleep,
    check: Callable[[], None] = lambda: None,
) -> MemberRunResult:
    """Carry the changes out, up to ``concurrency`` queues at once (one queue's changes one after another);
    interrupting (Ctrl-C, SIGTERM) or an error of ``check`` rolls back the changes under way first."""
    began = time.monotonic()
    batch = MemberBatch(pending=list(moves))
    try:
        drive_members(mover, batch, concurrency=concurrency, on_change=on_change, sleep=sleep, check=check)
    except BaseException as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"stopped: {exc}"
        roll_back_members(mover, batch, reason, on_change)
        raise
    return MemberRunResult(tuple(batch.finished), time.monotonic() - began)
