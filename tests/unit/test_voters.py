"""Reading quorum membership on 4.x: which members hold no vote, marked on the snapshot the planner reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from queue_balancer.errors import ManagementError, NotFound
from queue_balancer.model import Node, Platform, Queue, QueueType, Snapshot
from queue_balancer.voters import mark_non_voters, non_voting

NODES = ("rabbit@a", "rabbit@b", "rabbit@c")


def member(node: str, membership: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"Node Name": node, "Raft State": "follower"}
    if membership is not None:
        entry["Membership"] = membership
    return entry


@dataclass
class StatusSource:
    """The management API's quorum status, per queue name; a name missing from it answers 404."""

    statuses: dict[str, list[dict[str, Any]] | ManagementError]
    asked: list[str] = field(default_factory=list)

    def quorum_status(self, vhost: str, name: str) -> list[dict[str, Any]]:
        self.asked.append(name)
        answer = self.statuses.get(name, NotFound("not found", status=404))
        if isinstance(answer, ManagementError):
            raise answer
        return answer

    def fork(self) -> StatusSource:
        return self  # the list appends are atomic; the test only counts them


def quorum(name: str, members: tuple[str, ...] = NODES) -> Queue:
    return Queue("/", name, QueueType.QUORUM, members[0], members[1:], members[1:])


def snapshot(queues: list[Queue], version: str) -> Snapshot:
    return Snapshot(
        tuple(Node(n, True) for n in NODES),
        tuple(queues),
        Platform.from_overview({"rabbitmq_version": version}),
    )


def test_promotable_and_non_voter_hold_no_vote_and_3x_reports_only_voters() -> None:
    status = [member("rabbit@a", "voter"), member("rabbit@c", "promotable"), member("rabbit@b", "non_voter")]
    assert non_voting(status) == ("rabbit@b", "rabbit@c")
    assert non_voting([member("rabbit@a", None), member("rabbit@b", None)]) == ()  # 3.10: no Membership key


def test_non_voters_are_marked_on_4x_and_unreadable_statuses_are_left_as_listed() -> None:
    source = StatusSource(
        {
            "grown": [
                member("rabbit@a", "voter"),
                member("rabbit@b", "voter"),
                member("rabbit@c", "promotable"),
            ],
            "settled": [member(n, "voter") for n in NODES],
            "busy": ManagementError("management API refused the request: timeout", status=500),
        }
    )
    queues = [quorum("grown"), quorum("settled"), quorum("busy"), quorum("gone"), quorum("alone", NODES[:1])]
    queues.append(Queue("/", "classic", QueueType.CLASSIC, "rabbit@a"))
    marked = mark_non_voters(source, snapshot(queues, "4.0.5"), workers=3)
    assert {q.name: q.non_voters for q in marked.queues if q.non_voters} == {"grown": ("rabbit@c",)}
    assert sorted(source.asked) == ["busy", "gone", "grown", "settled"]  # one member alone: nothing to ask


def test_3x_snapshots_are_not_asked() -> None:
    source = StatusSource({})
    unchanged = snapshot([quorum("q")], "3.10.8")
    assert mark_non_voters(source, unchanged) is unchanged and source.asked == []
