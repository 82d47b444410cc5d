"""The balancer's vocabulary: nodes, queues, moves, plans, as the management API describes them.

Everything here is an immutable dataclass that converts to and from plain JSON, so the same objects
cross the CLI, the Lambda handlers and the Step Functions payloads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

JsonDict = dict[str, Any]

DOT_SEGMENTS = frozenset({".", ".."})
"""Names no HTTP API can address (clients and servers resolve these path segments away)."""


class QueueType(StrEnum):
    CLASSIC = "classic"
    QUORUM = "quorum"
    STREAM = "stream"


@dataclass(frozen=True, order=True)
class QueueRef:
    """A queue's identity: names are unique per vhost only."""

    vhost: str
    name: str

    def __str__(self) -> str:
        return f"'{self.name}' in vhost '{self.vhost}'"


@dataclass(frozen=True)
class Node:
    name: str
    running: bool
    partitions: tuple[str, ...] = ()
    memory_alarm: bool = False
    disk_alarm: bool = False
    being_drained: bool = False
    """In maintenance mode (``rabbitmq-upgrade drain``): never a target, as for the built-in rebalance."""

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Node:
        return cls(
            name=str(data["name"]),
            running=bool(data.get("running", False)),
            being_drained=bool(data.get("being_drained", False)),
            partitions=tuple(str(p) for p in data.get("partitions") or ()),
            memory_alarm=bool(data.get("mem_alarm", False)),
            disk_alarm=bool(data.get("disk_free_alarm", False)),
        )


@dataclass(frozen=True)
class Queue:
    """One queue as seen by the management API (statistics view, or real-time view where noted).

    ``replicas`` are the nodes holding a copy besides the leader (classic mirrors; quorum members other
    than the leader); ``in_sync`` the subset that could take over without losing messages (classic
    synchronised mirrors; quorum members that are online).
    """

    vhost: str
    name: str
    type: QueueType
    leader: str
    replicas: tuple[str, ...] = ()
    in_sync: tuple[str, ...] = ()
    messages: int = 0
    exclusive: bool = False
    state: str = "running"
    policy: str | None = None
    policy_definition: Mapping[str, Any] = field(default_factory=dict)
    consumers: int = 0
    group_size: int | None = None
    """A quorum queue's ``x-quorum-initial-group-size``: how many members it was declared with."""
    target_group_size: int | None = None
    """A quorum queue's ``x-quorum-target-group-size`` argument or ``target-group-size`` policy key (the
    larger): RabbitMQ 3.13+ membership reconciliation grows the queue back to it, never shrinks it."""
    non_voters: tuple[str, ...] = ()
    """Quorum members that hold no vote (RabbitMQ 4.x: ``non_voter``, or ``promotable`` while a new member
    catches up). ``members``/``online`` list them like voters, yet Ra would make one leader if asked (seen
    on 4.0.5): never a leader's target, and no part of the quorum. Read by ``voters.mark_non_voters``."""

    @property
    def ref(self) -> QueueRef:
        return QueueRef(self.vhost, self.name)

    @property
    def members(self) -> tuple[str, ...]:
        """Every node holding the queue, leader first."""
        return (self.leader, *self.replicas)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> Queue:
        """Build from an element of ``GET /api/queues`` or ``GET /api/queues/{vhost}/{name}``."""
        queue_type = QueueType(data.get("type") or "classic")
        if queue_type is QueueType.CLASSIC:
            leader = str(data.get("node") or "")
            # The statistics view can list a just-promoted master among its own mirrors: not a replica.
            replicas = tuple(str(n) for n in data.get("slave_nodes") or () if n != leader)
            in_sync = tuple(str(n) for n in data.get("synchronised_slave_nodes") or () if n != leader)
        else:
            leader = str(data.get("leader") or data.get("node") or "")
            replicas = tuple(str(n) for n in data.get("members") or () if n != leader)
            online = {str(n) for n in data.get("online") or ()}
            in_sync = tuple(n for n in replicas if n in online)
        return cls(
            vhost=str(data["vhost"]),
            name=str(data["name"]),
            type=queue_type,
            leader=leader,
            replicas=replicas,
            in_sync=in_sync,
            messages=int(data.get("messages") or 0),
            exclusive=bool(data.get("exclusive") or False),
            state=str(data.get("state") or "running"),
            policy=data.get("policy") or None,
            policy_definition=dict(data.get("effective_policy_definition") or {}),
            consumers=int(data.get("consumers") or 0),
            group_size=_size(data.get("arguments"), "x-quorum-initial-group-size"),
            target_group_size=_target_group_size(data),
        )


def _size(settings: Any, key: str) -> int | None:
    """A positive integer setting (queue argument or policy key), else None."""
    size = settings.get(key) if isinstance(settings, Mapping) else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def _target_group_size(data: Mapping[str, Any]) -> int | None:
    """The larger of the argument and the effective policy's key, as RabbitMQ's reconciliation reads them
    (``rabbit_quorum_queue_periodic_membership_reconciliation:get_target_size``)."""
    sizes = [
        size
        for size in (
            _size(data.get("arguments"), "x-quorum-target-group-size"),
            _size(data.get("effective_policy_definition"), "target-group-size"),
        )
        if size is not None
    ]
    return max(sizes, default=None)


@dataclass(frozen=True)
class QueueCount:
    """Messages and consumers of one queue, as its leader process reports them right now."""

    messages: int
    consumers: int


@dataclass(frozen=True)
class Platform:
    """What the RabbitMQ version allows: 4.0 removed classic queue mirroring (``ha-*`` policies are refused
    with HTTP 400, classic queues report no mirrors), so a classic queue can no longer be moved safely; and
    4.0 brought non-voting quorum members, whose membership only the quorum status shows."""

    version: str = ""
    classic_mirroring: bool = True

    @classmethod
    def from_overview(cls, overview: Mapping[str, Any]) -> Platform:
        """From ``GET /api/overview``'s ``rabbitmq_version`` (an unknown version keeps 3.x rules)."""
        version = str(overview.get("rabbitmq_version") or "")
        major = version.split(".", 1)[0]
        return cls(version=version, classic_mirroring=not (major.isdigit() and int(major) >= 4))

    @property
    def stream_transfer(self) -> bool:
        """Whether ``rabbit_stream_queue:transfer_leadership/2`` exists (RabbitMQ 3.12+; checked in the
        3.10.8, 3.11 and 3.12.0 sources). An unknown version counts as without: the eval checks again."""
        parts = self.version.split(".")
        if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
            return False
        return (int(parts[0]), int(parts[1])) >= (3, 12)

    @property
    def non_voting_members(self) -> bool:
        """Whether quorum queues may have members without a vote (RabbitMQ 4+, the generation without
        classic mirroring)."""
        return not self.classic_mirroring


@dataclass(frozen=True)
class Snapshot:
    """What the planner needs to know about a cluster at one instant."""

    nodes: tuple[Node, ...]
    queues: tuple[Queue, ...]
    platform: Platform = Platform()
    drain_reported: bool = True
    """False when ``GET /api/nodes`` has no ``being_drained`` (3.10): maintenance mode must be asked elsewhere."""

    @property
    def running_nodes(self) -> tuple[str, ...]:
        return tuple(sorted(n.name for n in self.nodes if n.running))

    @property
    def serving_nodes(self) -> tuple[str, ...]:
        """Running nodes not in maintenance mode: the only ones a leader may move to."""
        return tuple(sorted(n.name for n in self.nodes if n.running and not n.being_drained))

    @property
    def drained_nodes(self) -> tuple[str, ...]:
        """Running nodes in maintenance mode (``rabbitmq-upgrade drain``)."""
        return tuple(sorted(n.name for n in self.nodes if n.running and n.being_drained))

    def with_drained(self, names: Iterable[str]) -> Snapshot:
        """The same snapshot with ``names`` marked as drained (3.x reports it only over the Erlang CLI)."""
        drained = set(names)
        nodes = tuple(replace(n, being_drained=n.being_drained or n.name in drained) for n in self.nodes)
        return replace(self, nodes=nodes, drain_reported=True)

    def with_non_voters(self, non_voters: Mapping[QueueRef, Iterable[str]]) -> Snapshot:
        """The same snapshot with each listed queue's non-voting members marked (``Queue.non_voters``)."""
        if not non_voters:
            return self
        queues = tuple(
            replace(q, non_voters=tuple(sorted(non_voters[q.ref]))) if q.ref in non_voters else q
            for q in self.queues
        )
        return replace(self, queues=queues)

    @classmethod
    def from_api(
        cls,
        nodes: Iterable[Mapping[str, Any]],
        queues: Iterable[Mapping[str, Any]],
        overview: Mapping[str, Any] | None = None,
    ) -> Snapshot:
        """From ``GET /api/nodes``, ``GET /api/queues`` and (for the version) ``GET /api/overview``."""
        nodes = list(nodes)
        return cls(
            drain_reported=not nodes or any("being_drained" in n for n in nodes),
            nodes=tuple(sorted((Node.from_api(n) for n in nodes), key=lambda n: n.name)),
            queues=tuple(sorted((Queue.from_api(q) for q in queues), key=lambda q: (q.vhost, q.name))),
            platform=Platform.from_overview(overview or {}),
        )


@dataclass(frozen=True)
class Move:
    """Move the leader of one queue from ``source`` to ``target``."""

    vhost: str
    queue: str
    type: QueueType
    source: str
    target: str
    messages: int = 0

    @property
    def ref(self) -> QueueRef:
        return QueueRef(self.vhost, self.queue)

    def to_dict(self) -> JsonDict:
        return {
            "vhost": self.vhost,
            "queue": self.queue,
            "type": self.type.value,
            "from": self.source,
            "to": self.target,
            "messages": self.messages,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Move:
        return cls(
            vhost=str(data["vhost"]),
            queue=str(data["queue"]),
            type=QueueType(data["type"]),
            source=str(data["from"]),
            target=str(data["to"]),
            messages=int(data.get("messages", 0)),
        )


@dataclass(frozen=True)
class Skipped:
    """A queue the planner will not move, and why (shown to the operator)."""

    vhost: str
    queue: str
    node: str
    reason: str

    def to_dict(self) -> JsonDict:
        return {"vhost": self.vhost, "queue": self.queue, "node": self.node, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Skipped:
        return cls(str(data["vhost"]), str(data["queue"]), str(data.get("node", "")), str(data["reason"]))


@dataclass(frozen=True)
class Distribution:
    """What a plan says of the cluster: the nodes it places on, and per node the count before and after
    (leaders for ``Plan``, quorum members for ``members.MembersPlan``)."""

    nodes: tuple[str, ...]
    before: Mapping[str, int]
    after: Mapping[str, int]

    @property
    def spread_before(self) -> int:
        """max - min over the plan's nodes now (a node of ``nodes`` with none counts 0)."""
        return spread({n: self.before.get(n, 0) for n in self.nodes})

    def distribution_dict(self) -> JsonDict:
        return {"nodes": list(self.nodes), "before": dict(self.before), "after": dict(self.after)}

    @staticmethod
    def distribution_fields(data: Mapping[str, Any]) -> dict[str, Any]:
        """The constructor's ``nodes``, ``before`` and ``after`` from ``distribution_dict``'s JSON."""
        return {"nodes": tuple(data["nodes"]), "before": dict(data["before"]), "after": dict(data["after"])}


@dataclass(frozen=True)
class Plan(Distribution):
    """The moves that take the distribution ``before`` to ``after`` (leaders per node)."""

    moves: tuple[Move, ...]
    skipped: tuple[Skipped, ...]
    per_vhost: bool = False

    def to_dict(self) -> JsonDict:
        return {
            **self.distribution_dict(),
            "moves": [m.to_dict() for m in self.moves],
            "skipped": [s.to_dict() for s in self.skipped],
            "per_vhost": self.per_vhost,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        return cls(
            **cls.distribution_fields(data),
            moves=tuple(Move.from_dict(m) for m in data["moves"]),
            skipped=tuple(Skipped.from_dict(s) for s in data["skipped"]),
            per_vhost=bool(data.get("per_vhost", False)),
        )


def spread(distribution: Mapping[str, int]) -> int:
    """max - min leaders per node: 0 or 1 is as even as it gets."""
    return max(distribution.values()) - min(distribution.values()) if distribution else 0


def equilibrium(distribution: Mapping[str, int]) -> float:
    """The seed plugin's figure: least-loaded node / (total / nodes); 1.0 is perfectly even."""
    total = sum(distribution.values())
    if not distribution or total == 0:
        return 1.0
    return min(distribution.values()) / (total / len(distribution))
