"""Member changes against an in-memory quorum queue: add before remove, quorum kept at every step, rollback."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from queue_balancer.lock import LockLost
from queue_balancer.member_changes import Change, MemberChangeError, MemberState
from queue_balancer.member_moves import (
    MemberBatch,
    MemberMover,
    MemberPhase,
    MemberProgress,
    drive_members,
    run_member_moves,
)
from queue_balancer.members import MemberMove, quorum_of
from queue_balancer.model import QueueCount, QueueRef
from queue_balancer.movers import MoveSettings

REF = QueueRef("/", "q")


@dataclass
class FakeQueue:
    """One quorum queue: members, the nodes that are up, and how many polls a new member needs to catch up."""

    members: list[str]
    up: set[str]
    leader: str
    commit: int = 10
    lag: dict[str, int] = field(default_factory=dict)
    non_voters: set[str] = field(default_factory=set)
    """Members that hold no vote (4.x) and so count for no quorum."""
    messages: int = 7
    history: list[tuple[str, str, int, int]] = field(default_factory=list)
    """(action, node, members in sync, members) after every change."""

    def in_sync(self) -> list[str]:
        return [m for m in self.members if m in self.up and not self.lag.get(m) and m not in self.non_voters]


@dataclass
class FakeCluster:
    """The management API's real-time view, the member-change port and the message counter in one."""

    queue: FakeQueue
    catch_up_polls: int = 2
    refuse_add: str | None = None
    refusals: int = 10**9
    """How many adds ``refuse_add`` refuses."""
    lose_answers: int = 0
    """How many add calls make the change and then fail in the port (a lost answer)."""
    election_polls: int = 0
    """Observations without a leader after the leader's member is removed."""
    failing_status: int = 0
    """How many status calls right after an add fail in the port (an eval timeout)."""
    _just_added: bool = False
    departed: set[str] = field(default_factory=set)
    """Nodes forgotten by the cluster: gone from /api/nodes. Every other node of the queue is listed."""
    restart_after: int = 0
    """Observations after which the stopped nodes come back (0: never)."""
    _electing: int = 0
    _observations: int = 0

    def nodes(self) -> list[dict[str, Any]]:
        q = self.queue
        known = (set(q.members) | q.up) - self.departed
        return [{"name": n, "running": n in q.up} for n in sorted(known)]

    def queue_now(self, vhost: str, name: str) -> dict[str, Any]:
        q = self.queue
        self._observations += 1
        if self._observations == self.restart_after:
            q.up |= set(q.members) - self.departed
        if self._electing:
            self._electing -= 1
            leader = "" if self._electing else q.in_sync()[0]
            q.leader = leader
        return {
            "vhost": vhost,
            "name": name,
            "type": "quorum",
            "leader": q.leader,
            "members": list(q.members),
            "online": [m for m in q.members if m in q.up],
        }

    def add(self, changes: Sequence[Change]) -> dict[Change, str]:
        answers = {}
        for change in changes:
            node = change[1]
            if self.refuse_add and self.refusals > 0:
                self.refusals -= 1
                answers[change] = self.refuse_add
                continue
            self._check_quorum(grown=True)
            self.queue.members.append(node)
            self.queue.lag[node] = self.catch_up_polls
            self._record("add", node)
            answers[change] = "ok"
        self._just_added = True
        if self.lose_answers > 0:
            self.lose_answers -= 1
            raise MemberChangeError("rabbitmqctl eval timed out")
        return answers

    def remove(self, changes: Sequence[Change]) -> dict[Change, str]:
        for _, node in changes:
            self.queue.members.remove(node)
            self.queue.lag.pop(node, None)
            if self.queue.leader == node:
                self.queue.leader = ""
                self._electing = self.election_polls + 1
            self._record("remove", node)
        return dict.fromkeys(changes, "ok")

    def status(self, refs: Sequence[QueueRef]) -> dict[QueueRef, list[MemberState] | str]:
        just_added, self._just_added = self._just_added, False
        if just_added and self.failing_status > 0:
            self.failing_status -= 1
            raise MemberChangeError("rabbitmqctl eval timed out")
        q = self.queue
        states = []
        for m in q.members:
            lag = q.lag.get(m, 0)
            if lag:
                q.lag[m] = lag - 1
            index = q.commit - lag * 5
            role = "leader" if m == q.leader else "follower"
            states.append(MemberState(m, role, q.commit, index, voter=m not in q.non_voters))
        return dict.fromkeys(refs, states)

    def message_counts(self, refs: Sequence[QueueRef]) -> dict[QueueRef, QueueCount | None]:
        return {r: QueueCount(self.queue.messages, 0) for r in refs}

    def _check_quorum(self, grown: bool) -> None:
        q = self.queue
        voters = len([m for m in q.members if m not in q.non_voters])
        assert len(q.in_sync()) >= quorum_of(voters + grown), "a change left the queue without a quorum"

    def _record(self, action: str, node: str) -> None:
        self.queue.history.append((action, node, len(self.queue.in_sync()), len(self.queue.members)))


def mover(cluster: FakeCluster, **settings: float) -> MemberMover:
    return MemberMover(cluster, cluster, MoveSettings(poll_interval=0, **settings), cluster)  # type: ignore[arg-type]


def move(
    members: tuple[str, ...], add: tuple[str, ...], remove: tuple[str, ...], leader: str = "a"
) -> MemberMove:
    return MemberMove("/", "q", leader, members, add, remove, 7)


def run(cluster: FakeCluster, change: MemberMove, **settings: float) -> MemberProgress:
    result = run_member_moves(mover(cluster, **settings), [change], sleep=lambda _: None)
    assert len(result.moves) == 1
    return result.moves[0]


def test_replacement_adds_waits_for_catch_up_then_removes() -> None:
    cluster = FakeCluster(FakeQueue(["a", "b", "old"], up={"a", "b", "old", "new"}, leader="a"))
    done = run(cluster, move(("a", "b", "old"), ("new",), ("old",)))
    assert done.phase is MemberPhase.DONE, done.outcome
    assert cluster.queue.members == ["a", "b", "new"]
    assert [h[:2] for h in cluster.queue.history] == [("add", "new"), ("remove", "old")]
    assert cluster.queue.history[1][2] == 3  # removed only once the new member was in sync: 3 of 3 after


def test_member_on_a_departed_node_goes_first_when_an_add_would_break_the_quorum() -> None:
    cluster = FakeCluster(FakeQueue(["a", "b", "old"], up={"a", "b", "new"}, leader="a"), departed={"old"})
    done = run(cluster, move(("a", "b", "old"), ("new",), ("old",)))
    assert done.phase is MemberPhase.DONE, done.outcome
    assert [h[:2] for h in cluster.queue.history] == [("remove", "old"), ("add", "new")]


def test_member_on_a_stopped_node_that_restarts_is_kept_until_its_replacement_caught_up() -> None:
    """A stopped node still in /api/nodes keeps its member's data on disk: never removed before the add."""
    cluster = FakeCluster(FakeQueue(["a", "b", "old"], up={"a", "b", "new"}, leader="a"), restart_after=4)
    done = run(cluster, move(("a", "b", "old"), ("new",), ("old",)))
    assert done.phase is MemberPhase.DONE, done.outcome
    assert [h[:2] for h in cluster.queue.history] == [("add", "new"), ("remove", "old")]
    assert cluster.queue.history[1][2] == 3  # old went only once new was in sync


def test_member_on_a_stopped_node_that_stays_down_is_never_removed_first() -> None:
    cluster = FakeCluster(FakeQueue(["a", "b", "old"], up={"a", "b", "new"}, leader="a"))
    failed = run(cluster, move(("a", "b", "old"), ("new",), ("old",)), phase_timeout=0.05)
    assert failed.phase is MemberPhase.FAILED and failed.outcome == "timed out"
    assert cluster.queue.members == ["a", "b", "old"] and not cluster.queue.history


def test_a_failed_status_call_after_an_add_never_counts_the_new_member_as_caught_up() -> None:
    """The catch-up mark is unknown until a status call answers; the new member's log starts far behind."""
    cluster = FakeCluster(
        FakeQueue(["a", "b", "c"], up=set("abcd"), leader="a", commit=1000),
        catch_up_polls=3,
        failing_status=1,
    )
    done = run(cluster, move(("a", "b", "c"), ("d",), ("c",)))
    assert done.phase is MemberPhase.DONE, done.outcome
    assert [h[:2] for h in cluster.queue.history] == [("add", "d"), ("remove", "c")]
    assert cluster.queue.history[1][2] == 3  # d was in sync before c went


def test_a_non_voting_member_counts_for_no_quorum() -> None:
    """4.x: an online non-voter (n) must not make up for a voter that is down (c)."""
    cluster = FakeCluster(FakeQueue(["a", "b", "c", "n"], up={"a", "b", "n"}, leader="a", non_voters={"n"}))
    failed = run(cluster, move(("a", "b", "c", "n"), (), ("b",)))
    assert failed.phase is MemberPhase.FAILED
    assert failed.outcome == "removing b would leave no quorum (2 of 3 in sync)"
    assert cluster.queue.members == ["a", "b", "c", "n"]


def test_a_refused_add_fails_the_change_and_removes_nothing() -> None:
    cluster = FakeCluster(
        FakeQueue(["a", "b", "c"], up={"a", "b", "c", "d"}, leader="a"), refuse_add="{error,node_not_running}"
    )
    failed = run(cluster, move(("a", "b", "c"), ("d",), ("c",)))
    assert failed.phase is MemberPhase.FAILED
    assert "add d refused: {error,node_not_running}" in failed.outcome
    assert cluster.queue.members == ["a", "b", "c"]


def test_a_membership_change_refused_while_the_previous_one_commits_is_retried() -> None:
    refused = "{error,cluster_change_not_permitted}"
    cluster = FakeCluster(
        FakeQueue(["a", "b", "c"], up=set("abcd"), leader="a"), refuse_add=refused, refusals=2
    )
    done = run(cluster, move(("a", "b", "c"), ("d",), ("c",)))
    assert done.phase is MemberPhase.DONE, done.outcome
    assert cluster.queue.members == ["a", "b", "d"]


def test_an_add_whose_answer_was_lost_is_adopted_and_waited_for_before_any_removal() -> None:
    cluster = FakeCluster(
        FakeQueue(["a", "b", "c"], up=set("abcd"), leader="a"), catch_up_polls=3, lose_answers=1
    )
    done = run(cluster, move(("a", "b", "c"), ("d",), ("c",)))
    assert done.phase is MemberPhase.DONE, done.outcome
    assert [h[:2] for h in cluster.queue.history] == [("add", "d"), ("remove", "c")]
    assert cluster.queue.history[1][2] == 3  # d was in sync before c went
    assert done.added == ("d",) and done.removed == ("c",)


def test_removing_the_leaders_member_waits_out_the_election() -> None:
    cluster = FakeCluster(FakeQueue(["a", "b", "c"], up=set("abcd"), leader="a"), election_polls=3)
    done = run(cluster, move(("a", "b", "c"), ("d",), ("a",)))
    assert done.phase is MemberPhase.DONE, done.outcome
    assert sorted(cluster.queue.members) == ["b", "c", "d"] and cluster.queue.leader in ("b", "c", "d")


def test_a_member_that_never_catches_up_is_rolled_back() -> None:
    cluster = FakeCluster(
        FakeQueue(["a", "b", "c"], up={"a", "b", "c", "d"}, leader="a"), catch_up_polls=10**6
    )
    failed = run(cluster, move(("a", "b", "c"), ("d",), ("c",)), phase_timeout=0.05)
    assert failed.phase is MemberPhase.FAILED
    assert failed.outcome == "timed out; rolled back: removed d"
    assert cluster.queue.members == ["a", "b", "c"]  # the original members untouched


def test_removing_an_online_member_that_would_break_the_quorum_is_refused() -> None:
    cluster = FakeCluster(FakeQueue(["a", "b", "c"], up={"a", "b"}, leader="a"))
    failed = run(cluster, move(("a", "b", "c"), (), ("b",)))
    assert failed.phase is MemberPhase.FAILED
    assert failed.outcome == "removing b would leave no quorum (2 of 3 in sync)"
    assert cluster.queue.members == ["a", "b", "c"]


def test_a_changed_message_count_without_traffic_fails_verification() -> None:
    cluster = FakeCluster(FakeQueue(["a", "b"], up={"a", "b", "c"}, leader="a"))

    class Losing(FakeCluster):
        def message_counts(self, refs: Sequence[QueueRef]) -> dict[QueueRef, QueueCount | None]:
            self.queue.messages -= 1
            return super().message_counts(refs)

    losing = Losing(cluster.queue)
    failed = run(losing, move(("a", "b"), ("c",), ()))
    assert failed.phase is MemberPhase.FAILED
    assert "message count changed from 6 to 5" in failed.outcome


def test_interrupting_the_run_rolls_back_the_changes_under_way() -> None:
    cluster = FakeCluster(
        FakeQueue(["a", "b", "c"], up={"a", "b", "c", "d"}, leader="a"), catch_up_polls=10**6
    )
    seen: list[MemberProgress] = []

    def interrupt(_: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_member_moves(
            mover(cluster), [move(("a", "b", "c"), ("d",), ("c",))], on_change=seen.append, sleep=interrupt
        )
    assert cluster.queue.members == ["a", "b", "c"]
    assert seen[-1].outcome == "interrupted; rolled back: removed d"


def test_a_lost_lock_rolls_back_the_changes_under_way() -> None:
    cluster = FakeCluster(FakeQueue(["a", "b", "c"], up=set("abcd"), leader="a"), catch_up_polls=10**6)
    calls = iter([None, None])

    def check() -> None:
        if next(calls, "lost") == "lost":
            raise LockLost("the lock of this cluster was taken over")

    with pytest.raises(LockLost):
        run_member_moves(
            mover(cluster), [move(("a", "b", "c"), ("d",), ("c",))], sleep=lambda _: None, check=check
        )
    assert cluster.queue.members == ["a", "b", "c"]


def test_a_batch_stopped_by_its_time_budget_resumes_from_json_in_another_process() -> None:
    cluster = FakeCluster(FakeQueue(["a", "b", "c"], up=set("abcd"), leader="a"), catch_up_polls=3)
    first = drive_members(
        mover(cluster), MemberBatch(pending=[move(("a", "b", "c"), ("d",), ("c",))]), concurrency=4,
        sleep=lambda _: None, stop=lambda _: True,
    )  # fmt: skip
    assert not first.complete and cluster.queue.members == ["a", "b", "c", "d"]
    resumed = MemberBatch.from_dict(json.loads(json.dumps(first.to_dict())))
    done = drive_members(mover(cluster), resumed, concurrency=4, sleep=lambda _: None)
    assert done.complete and done.finished[0].phase is MemberPhase.DONE, done.finished[0].outcome
    assert cluster.queue.members == ["a", "b", "d"]


def test_progress_round_trips_through_json() -> None:
    progress = MemberProgress(
        move(("a", "b"), ("c",), ("b",)), MemberPhase.CHANGING, 1.0, 2.0, 5, True, {"c": 12}, ("c",), ()
    )
    assert MemberProgress.from_dict(progress.to_dict()) == progress
