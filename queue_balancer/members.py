"""Decide which quorum queue *members* (replicas) go where: a pure function of a snapshot.

After a node is replaced or added it holds no quorum members at all, leaders can only move among the
old nodes, and losing one more old node can cost queues their quorum. The members plan puts it right:

1. **Targets**: every quorum queue keeps at least the members it has on nodes still in the cluster and
   grows to its declared size (``x-quorum-target-group-size`` argument or ``target-group-size`` policy
   key, which RabbitMQ 3.13+ grows queues back to, and ``x-quorum-initial-group-size``, else RabbitMQ's
   default of 3): a queue grown by ``rabbitmq-queues grow <node> all`` keeps its extra members. Only an
   explicit ``group_size`` shrinks a queue (never below its target group size). Members sit on *eligible*
   nodes (running, not drained, not excluded): a member on a departed node is replaced, one on a stopped or
   drained node too while the eligible nodes can make the count up; otherwise it stays.
2. **Balance**: members per eligible node as even as reachable (the smallest possible maximum, then the
   largest possible minimum under it), then the fewest member changes (each kept member saves an add and
   a remove), then the fewest leaders losing their member: a min-cost flow over groups of interchangeable
   queues (same leader, same eligible members, same target), as the leader planner does.
3. **Named changes**: each group's node counts are dealt out to its queues round-robin (no queue gets a
   node twice), the largest queues first, so the adds (which copy a queue's log) fall on the smallest ones.

How each change is carried out safely (add first, remove once the new member has caught up) is the
business of ``member_moves``; here only *what* changes.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from queue_balancer.errors import ConfigurationError
from queue_balancer.flow import MinCostFlow, largest_feasible, smallest_feasible
from queue_balancer.model import Distribution, JsonDict, Queue, QueueRef, QueueType, Skipped, Snapshot
from queue_balancer.planner import PlanOptions, check_filters, select

DEFAULT_GROUP_SIZE = 3
"""RabbitMQ's ``quorum_cluster_size`` default: the members of a quorum queue declared without a size."""

_QUEUE_STATES = ("running", "live", "idle", "flow", "minority")


@dataclass(frozen=True)
class MembersOptions:
    """Which queues (``selection``: vhosts, name pattern), the replica count the operator asks for, and the
    nodes that must hold no members (drained or in maintenance)."""

    selection: PlanOptions = field(default_factory=PlanOptions)
    group_size: int | None = None
    """Members every selected queue gets, grown *or shrunk* to it (never below its target group size).
    None: every queue keeps its members and grows to its declared size (``replica_count``)."""
    excluded: frozenset[str] = frozenset()
    """Besides the nodes in maintenance mode, which the snapshot names."""

    def __post_init__(self) -> None:
        if self.group_size is not None and self.group_size < 1:
            raise ConfigurationError(f"the group size must be 1 or more, got {self.group_size}")


@dataclass(frozen=True)
class MemberMove:
    """Change one quorum queue's members: ``add`` these nodes, then ``remove`` those."""

    vhost: str
    queue: str
    leader: str
    members: tuple[str, ...]
    """The members before the change (leader included), sorted."""
    add: tuple[str, ...]
    remove: tuple[str, ...]
    messages: int = 0

    @property
    def ref(self) -> QueueRef:
        return QueueRef(self.vhost, self.queue)

    @property
    def after(self) -> tuple[str, ...]:
        return tuple(sorted((set(self.members) - set(self.remove)) | set(self.add)))

    @property
    def changes(self) -> int:
        return len(self.add) + len(self.remove)

    def to_dict(self) -> JsonDict:
        return {
            "vhost": self.vhost,
            "queue": self.queue,
            "leader": self.leader,
            "members": list(self.members),
            "add": list(self.add),
            "remove": list(self.remove),
            "messages": self.messages,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MemberMove:
        return cls(
            vhost=str(data["vhost"]),
            queue=str(data["queue"]),
            leader=str(data["leader"]),
            members=tuple(str(n) for n in data["members"]),
            add=tuple(str(n) for n in data["add"]),
            remove=tuple(str(n) for n in data["remove"]),
            messages=int(data.get("messages", 0)),
        )


@dataclass(frozen=True)
class MembersPlan(Distribution):
    """The member changes that take ``before`` to ``after`` (quorum members per node); ``nodes`` are the
    eligible ones: running and not excluded."""

    moves: tuple[MemberMove, ...]
    skipped: tuple[Skipped, ...]
    mirrors: Mapping[str, int] = field(default_factory=dict)
    """Classic queues under ``ha-mode: exactly``: copies (master and mirrors) per node, reported only."""

    @property
    def changes(self) -> int:
        return sum(m.changes for m in self.moves)

    def to_dict(self) -> JsonDict:
        return {
            **self.distribution_dict(),
            "moves": [m.to_dict() for m in self.moves],
            "changes": self.changes,
            "skipped": [s.to_dict() for s in self.skipped],
            "mirrors": dict(self.mirrors),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MembersPlan:
        return cls(
            **cls.distribution_fields(data),
            moves=tuple(MemberMove.from_dict(m) for m in data.get("moves") or ()),
            skipped=tuple(Skipped.from_dict(s) for s in data.get("skipped") or ()),
            mirrors=dict(data.get("mirrors") or {}),
        )


def quorum_of(members: int) -> int:
    """Votes a Raft group of ``members`` voters needs to commit anything."""
    return members // 2 + 1


def replica_count(queue: Queue, options: MembersOptions, known: frozenset[str]) -> int:
    """Members a queue should have in all. By default never fewer than it has on ``known`` nodes (the
    cluster's, running or not: a member on a departed node is no copy), and at least its declared size.
    An explicit ``options.group_size`` is taken as asked, shrinking too, but never below the target group
    size, which RabbitMQ 3.13+ would grow the queue back to."""
    floor = queue.target_group_size or 0
    if options.group_size is not None:
        return max(options.group_size, floor)
    current = sum(1 for n in queue.members if n in known)
    return max(current, floor, queue.group_size or DEFAULT_GROUP_SIZE)


def target_size(count: int, eligible: int, staying: int = 0) -> int:
    """Members a queue of ``count`` replicas gets on the eligible nodes: the count less the members that
    stay elsewhere, at most one per node."""
    return min(count - staying, eligible)


def staying_members(
    queue: Queue, count: int, eligible: int, held: frozenset[str], running: frozenset[str]
) -> tuple[str, ...]:
    """Members on ``held`` nodes (in the cluster but not eligible: stopped, drained, excluded) that stay:
    only as many as the eligible nodes cannot make up to ``count``, running ones first. Draining or
    stopping a node never costs a queue a replica: its members leave only to a new home."""
    missing = count - eligible
    kept = sorted((n for n in queue.members if n in held), key=lambda n: (n not in running, n))
    return tuple(sorted(kept[: max(0, missing)]))


def classify_members(queue: Queue, running: frozenset[str]) -> Skipped | None:
    """None when the queue's members may be changed, else why not (an operator can act on the reason)."""

    def skip(reason: str) -> Skipped:
        return Skipped(queue.vhost, queue.name, queue.leader, reason)

    if queue.leader not in running:
        return skip(f"leader node {queue.leader or '(none)'} is not running")
    if queue.state not in _QUEUE_STATES:
        return skip(f"queue is {queue.state}")
    online = 1 + len(queue.in_sync)
    if online < quorum_of(len(queue.members)):
        return skip(f"quorum queue without a quorum online ({online} of {len(queue.members)} members)")
    return None


def plan_members(snapshot: Snapshot, options: MembersOptions | None = None) -> MembersPlan:
    """The fewest member changes that give every selected quorum queue its replica count on eligible
    nodes, spread as evenly as reachable (see the module docstring)."""
    options = options or MembersOptions()
    running = frozenset(snapshot.running_nodes)
    eligible = tuple(sorted(frozenset(snapshot.serving_nodes) - options.excluded))  # never on a drained node
    known = {n.name for n in snapshot.nodes}
    unknown = sorted(options.excluded - known)
    if unknown:
        raise ConfigurationError(f"cannot exclude {', '.join(unknown)}: not a node of this cluster")
    check_filters(snapshot, options.selection)
    queues = [q for q in select(snapshot, options.selection) if q.type is QueueType.QUORUM]
    fixed: Counter[str] = Counter()
    movable: list[Queue] = []
    skipped: list[Skipped] = []
    for queue in queues:
        verdict = classify_members(queue, running)
        if verdict is None:
            movable.append(queue)
        else:
            skipped.append(verdict)
            fixed.update(n for n in queue.members if n in eligible)
    moves = _balance(eligible, fixed, movable, options, frozenset(known), running)
    moves.sort(key=lambda m: (m.messages, m.vhost, m.queue))
    before = _members_per_node(queues, eligible)
    after = Counter(before)
    for move in moves:
        after.subtract(move.remove)
        after.update(move.add)
    return MembersPlan(
        nodes=eligible,
        before=before,
        after=dict(sorted(after.items())),
        moves=tuple(moves),
        skipped=tuple(skipped),
        mirrors=mirror_spread(snapshot, options.selection),
    )


def mirror_spread(snapshot: Snapshot, selection: PlanOptions) -> dict[str, int]:
    """Copies (master and mirrors) per running node of the classic queues mirrored by ``ha-mode: exactly``.

    Reported, not balanced: RabbitMQ picks an ``exactly`` queue's mirror nodes itself (randomly, on 3.x)."""
    queues = [
        q
        for q in select(snapshot, selection)
        if q.type is QueueType.CLASSIC and q.policy_definition.get("ha-mode") == "exactly"
    ]
    if not queues:
        return {}
    return _members_per_node(queues, snapshot.running_nodes)


def _members_per_node(queues: Iterable[Queue], nodes: Iterable[str]) -> dict[str, int]:
    """Members per node: every listed node (0 when empty), and any other node that holds a member."""
    counts: Counter[str] = Counter({n: 0 for n in nodes})
    for queue in queues:
        counts.update(n for n in queue.members if n)
    return dict(sorted(counts.items()))


_GroupKey = tuple[str, frozenset[str], int]  # (leader if eligible else "", eligible members, target size)


def _balance(
    nodes: Sequence[str],
    fixed: Mapping[str, int],
    queues: Sequence[Queue],
    options: MembersOptions,
    known: frozenset[str],
    running: frozenset[str],
) -> list[MemberMove]:
    eligible = frozenset(nodes)
    if not eligible:
        return []
    held = known - eligible
    groups: dict[_GroupKey, list[Queue]] = defaultdict(list)
    staying: dict[QueueRef, tuple[str, ...]] = {}
    for queue in queues:
        kept = frozenset(n for n in queue.members if n in eligible)
        leader = queue.leader if queue.leader in eligible else ""
        count = replica_count(queue, options, known)
        staying[queue.ref] = staying_members(queue, count, len(nodes), held, running)
        groups[(leader, kept, target_size(count, len(nodes), len(staying[queue.ref])))].append(queue)
    if not groups:
        return []
    network = _MembersNetwork(nodes, fixed, groups)
    total = sum(fixed.get(n, 0) for n in nodes) + network.units
    hi = smallest_feasible(
        max(math.ceil(total / len(nodes)), max(fixed.get(n, 0) for n in nodes)),
        max(fixed.get(n, 0) for n in nodes) + len(queues),
        lambda h: network.assign(0, h) is not None,
    )
    lo = largest_feasible(0, total // len(nodes), lambda low: network.assign(low, hi) is not None)
    assignment = network.assign(lo, hi)
    assert assignment is not None  # lo and hi were both found feasible together
    return [
        move for key in network.keys for move in _deal(key, network.groups[key], assignment, nodes, staying)
    ]


def _deal(
    key: _GroupKey,
    queues: Sequence[Queue],
    assignment: Mapping[tuple[_GroupKey, str], int],
    nodes: Sequence[str],
    staying: Mapping[QueueRef, tuple[str, ...]],
) -> list[MemberMove]:
    """Hand each queue of a group ``size`` distinct nodes, the group's per-node counts being at most one per
    queue: the nodes laid out in a row (the leader's, then kept members, then new ones), dealt round-robin."""
    leader, kept, size = key
    order = sorted(nodes, key=lambda n: (n != leader, n not in kept, n))
    row = [n for n in order for _ in range(assignment.get((key, n), 0))]
    ordered = sorted(queues, key=lambda q: (-q.messages, q.vhost, q.name))
    count = len(ordered)
    moves = []
    for index, queue in enumerate(ordered):
        chosen = set(row[index::count])
        assert len(chosen) == size  # a node appears at most `count` times in a row, never twice per queue
        members = set(queue.members)
        add, remove = chosen - members, members - chosen - set(staying[queue.ref])
        if add or remove:
            moves.append(
                MemberMove(
                    vhost=queue.vhost,
                    queue=queue.name,
                    leader=queue.leader,
                    members=tuple(sorted(members)),
                    add=tuple(sorted(add)),
                    remove=tuple(sorted(remove)),
                    messages=queue.messages,
                )
            )
    return moves


class _MembersNetwork:
    """source → group of interchangeable queues → eligible node → sink.

    A group of k queues needing t members each sends k·t units, at most k to one node (one member per
    queue and node). A node's load must lie in [lo, hi] (mandatory units at a large negative cost, as in
    the leader planner). Costs: a unit on a node that is not yet a member is an add (``add_cost``, more
    than every other cost together); on a kept follower 1; on the kept leader 0, so a leader loses its own
    member only when the balance needs it.
    """

    def __init__(
        self, nodes: Sequence[str], fixed: Mapping[str, int], groups: Mapping[_GroupKey, list[Queue]]
    ):
        self.nodes = list(nodes)
        self.fixed = [fixed.get(n, 0) for n in nodes]
        self.keys = sorted(groups, key=lambda k: (k[0], sorted(k[1]), k[2]))
        self.groups = {k: groups[k] for k in self.keys}
        self.units = sum(len(groups[k]) * k[2] for k in self.keys)
        self.add_cost = self.units + 1
        self.big = (self.add_cost + 1) * self.units + 1

    def assign(self, lo: int, hi: int) -> dict[tuple[_GroupKey, str], int] | None:
        """Members per (group, node) with every load in [lo, hi] at least cost; None if impossible."""
        source, sink, first_group = 0, 1, 2
        first_node = first_group + len(self.keys)
        network = MinCostFlow(first_node + len(self.nodes))
        arcs: dict[tuple[_GroupKey, str], int] = {}
        for g, key in enumerate(self.keys):
            leader, kept, size = key
            count = len(self.groups[key])
            network.add_arc(source, first_group + g, count * size, 0)
            for n, node in enumerate(self.nodes):
                cost = 0 if node == leader else 1 if node in kept else self.add_cost
                arcs[(key, node)] = network.add_arc(first_group + g, first_node + n, count, cost)
        mandatory: list[tuple[int, int]] = []
        for n, fixed in enumerate(self.fixed):
            need = max(0, lo - fixed)
            optional = max(0, hi - fixed) - need
            if need:
                mandatory.append((network.add_arc(first_node + n, sink, need, -self.big), need))
            if optional > 0:
                network.add_arc(first_node + n, sink, optional, 0)
        flow, _cost = network.solve(source, sink, self.units)
        if flow < self.units or any(network.flow_on(arc) < need for arc, need in mandatory):
            return None
        return {k: network.flow_on(a) for k, a in arcs.items() if network.flow_on(a)}
