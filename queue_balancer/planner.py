"""Decide which queue leaders move where: a pure function of a snapshot.

1. **Classify**: a queue is movable only when moving it cannot lose a message (mirrors in sync, a
   quorum online, or nothing to lose); every other queue is skipped with a reason and stays where it
   is as *fixed load* that the balance has to account for.
2. **Balance**: among all placements that respect each queue's possible targets (running nodes; for a
   quorum queue only its online members; for an ``ha-mode: nodes`` queue only its listed nodes), find
   the smallest possible maximum load, then the largest possible minimum load under that maximum (both
   are reachable at once, the feasible load vectors being the bases of a polymatroid), and among the
   placements within those bounds the one with the fewest moves: a min-cost flow over groups of
   interchangeable queues.
3. **Order**: cheapest moves first (quorum transfers, then classic queues by message count), so large
   mirror syncs, which block their queue while they run, come last.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from queue_balancer.errors import ConfigurationError
from queue_balancer.flow import MinCostFlow, largest_feasible, smallest_feasible
from queue_balancer.model import DOT_SEGMENTS, Move, Plan, Queue, QueueType, Skipped, Snapshot


@dataclass(frozen=True)
class PlanOptions:
    """What to balance: all queues, or those of some vhosts / whose name matches a regex."""

    vhosts: tuple[str, ...] = ()
    pattern: str | None = None
    per_vhost: bool = False
    max_moves: int | None = None
    quorum_transfer: bool = True
    """False when no leader-transfer primitive is configured: quorum queues are then skipped."""

    def __post_init__(self) -> None:
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ConfigurationError(f"invalid queue name pattern {self.pattern!r}: {exc}") from exc
        if self.max_moves is not None and self.max_moves < 0:
            raise ConfigurationError(f"--max-moves must be 0 or more, got {self.max_moves}")


@dataclass(frozen=True)
class Candidate:
    """A movable queue and the nodes that may lead it (its current leader included)."""

    queue: Queue
    targets: frozenset[str]


@dataclass
class _Scope:
    """The queues balanced against each other: the cluster, or one vhost."""

    fixed: Counter[str] = field(default_factory=Counter)
    candidates: list[Candidate] = field(default_factory=list)


def select(snapshot: Snapshot, options: PlanOptions) -> list[Queue]:
    """The queues the options ask for; unknown vhosts are an error rather than an empty plan."""
    wanted = set(options.vhosts)
    pattern = re.compile(options.pattern) if options.pattern is not None else None
    return [
        q
        for q in snapshot.queues
        if (not wanted or q.vhost in wanted) and (pattern is None or pattern.search(q.name))
    ]


def classify(queue: Queue, running: frozenset[str], *, quorum_transfer: bool = True) -> Candidate | Skipped:
    """Movable (with its possible targets) or skipped (with a reason an operator can act on)."""

    def skip(reason: str) -> Skipped:
        return Skipped(queue.vhost, queue.name, queue.leader, reason)

    if queue.type is QueueType.STREAM:
        return skip("stream: streams are left alone")
    if queue.exclusive:
        return skip("exclusive: owned by one connection, it lives and dies with it")
    if queue.name in DOT_SEGMENTS or queue.vhost in DOT_SEGMENTS:
        return skip("named '.' or '..': the management API cannot address it (rename it to move it)")
    if queue.leader not in running:
        return skip(f"leader node {queue.leader or '(none)'} is not running")
    if queue.state not in ("running", "live", "idle", "flow"):
        return skip(f"queue is {queue.state}")
    if queue.type is QueueType.QUORUM:
        return _classify_quorum(queue, running, quorum_transfer, skip)
    return _classify_classic(queue, running, skip)


def _classify_quorum(
    queue: Queue, running: frozenset[str], quorum_transfer: bool, skip: Callable[[str], Skipped]
) -> Candidate | Skipped:
    members = len(queue.members)
    online = 1 + len(queue.in_sync)
    if online < members // 2 + 1:
        return skip(f"quorum queue without a quorum online ({online} of {members} members)")
    if not quorum_transfer:
        return skip("quorum queue: no leader-transfer primitive configured (see --eval-command)")
    targets = frozenset({queue.leader, *(n for n in queue.in_sync if n in running)})
    if len(targets) == 1:
        return skip("quorum queue with no other online member to lead it")
    return Candidate(queue, targets)


def _classify_classic(
    queue: Queue, running: frozenset[str], skip: Callable[[str], Skipped]
) -> Candidate | Skipped:
    unsynced = [n for n in queue.replicas if n not in queue.in_sync]
    if unsynced:
        return skip(f"mirrors out of sync ({len(queue.in_sync)} of {len(queue.replicas)} synchronised)")
    if not queue.replicas and queue.messages:
        return skip(f"unmirrored with {queue.messages} messages: add an HA policy first")
    targets = running
    if queue.policy_definition.get("ha-mode") == "nodes":
        # The queue's own policy pins its mirrors; a leader elsewhere would be moved back by it.
        listed = {str(n) for n in queue.policy_definition.get("ha-params") or ()}
        targets = frozenset((listed & running) | {queue.leader})
    if len(targets) == 1:
        return skip("no other node may lead it (ha-mode nodes lists only its current leader)")
    return Candidate(queue, frozenset(targets))


@dataclass(frozen=True)
class Survey:
    """The selected queues sorted into movable candidates and skipped ones, per balancing scope."""

    nodes: tuple[str, ...]
    counted: tuple[Queue, ...]
    """Selected queues whose leader runs on a running node: the load the distribution is made of."""
    scopes: Mapping[str, _Scope]
    skipped: tuple[Skipped, ...]


def survey(snapshot: Snapshot, options: PlanOptions) -> Survey:
    """Select and classify; unmovable queues become fixed load of their scope."""
    check_vhosts(snapshot, options)
    running = frozenset(snapshot.running_nodes)
    scopes: dict[str, _Scope] = defaultdict(_Scope)
    skipped: list[Skipped] = []
    counted: list[Queue] = []
    for queue in select(snapshot, options):
        verdict = classify(queue, running, quorum_transfer=options.quorum_transfer)
        scope = scopes[queue.vhost if options.per_vhost else ""]
        if queue.leader in running:
            counted.append(queue)
        if isinstance(verdict, Skipped):
            skipped.append(verdict)
            if queue.leader in running:
                scope.fixed[queue.leader] += 1
        else:
            scope.candidates.append(verdict)
    return Survey(tuple(sorted(running)), tuple(counted), dict(scopes), tuple(skipped))


def plan(snapshot: Snapshot, options: PlanOptions | None = None) -> Plan:
    """The fewest moves that make the leader distribution as even as the movable queues allow."""
    options = options or PlanOptions()
    found = survey(snapshot, options)
    moves: list[Move] = []
    placed: Counter[str] = Counter()  # leaders of the scopes planned so far, where they will end up
    for key in sorted(found.scopes):
        scope = found.scopes[key]
        scope_moves = balance(found.nodes, scope.fixed, scope.candidates, placed)
        moves.extend(scope_moves)
        placed.update(scope.fixed)
        placed.update(c.queue.leader for c in scope.candidates)
        for move in scope_moves:
            placed[move.source] -= 1
            placed[move.target] += 1
    moves.sort(key=move_cost)
    if options.max_moves is not None:
        moves = moves[: options.max_moves]
    before = distribution(found.counted, found.nodes)
    after = Counter(before)
    for move in moves:
        after[move.source] -= 1
        after[move.target] += 1
    return Plan(
        nodes=found.nodes,
        before=before,
        after=dict(after),
        moves=tuple(moves),
        skipped=found.skipped,
        per_vhost=options.per_vhost,
    )


def check_vhosts(snapshot: Snapshot, options: PlanOptions) -> None:
    """Unknown vhosts are an error rather than an empty plan."""
    known = {q.vhost for q in snapshot.queues}
    missing = [v for v in options.vhosts if v not in known]
    if missing:
        raise ConfigurationError(f"no queues in vhost {', '.join(repr(v) for v in missing)} (does it exist?)")


def move_cost(move: Move) -> tuple[int, int, str, str]:
    """Quorum transfers are cheap; a classic move copies its messages to a new mirror first."""
    return (0 if move.type is QueueType.QUORUM else 1, move.messages, move.vhost, move.queue)


def queue_cost(queue: Queue) -> tuple[int, int, str, str]:
    return (0 if queue.type is QueueType.QUORUM else 1, queue.messages, queue.vhost, queue.name)


def balance(
    nodes: Sequence[str],
    fixed: Mapping[str, int],
    candidates: Iterable[Candidate],
    elsewhere: Mapping[str, int] | None = None,
) -> list[Move]:
    """The fewest moves reaching the most even distribution over ``nodes`` (see the module docstring).

    ``elsewhere`` (leaders per node outside this scope, e.g. other vhosts): when a node must get one queue
    more than another, it goes to the node with fewer leaders elsewhere, even at the price of more moves,
    so balancing every vhost on its own also keeps the cluster even.
    """
    groups: dict[tuple[str, frozenset[str]], list[Queue]] = defaultdict(list)
    for c in candidates:
        groups[(c.queue.leader, c.targets)].append(c.queue)
    if not groups or len(nodes) < 2:
        return []
    network = _Network(nodes, fixed, groups, elsewhere or {})
    current = [fixed.get(n, 0) + network.movable_on(n) for n in nodes]
    total = sum(current)
    hi = smallest_feasible(
        max(math.ceil(total / len(nodes)), max(fixed.get(n, 0) for n in nodes)),
        max(current),
        lambda h: network.assign(0, h) is not None,
    )
    lo = largest_feasible(0, total // len(nodes), lambda low: network.assign(low, hi) is not None)
    assignment = network.assign(lo, hi)
    assert assignment is not None  # lo and hi were both found feasible together
    return network.moves(assignment)


class _Network:
    """source → group of interchangeable queues → possible leader node → sink.

    A node's load must lie in [lo, hi]: its first ``lo - fixed`` units run over an arc with a large negative
    cost (so every feasible solution fills them), the rest up to ``hi - fixed`` over an optional arc. Costs,
    in decreasing order of weight: filling the mandatory arcs; a unit on an optional arc of a node that leads
    more queues elsewhere (other vhosts) than the least loaded node; moving a queue (1).
    """

    def __init__(
        self,
        nodes: Sequence[str],
        fixed: Mapping[str, int],
        groups: Mapping[tuple[str, frozenset[str]], list[Queue]],
        elsewhere: Mapping[str, int],
    ) -> None:
        self.nodes = list(nodes)
        self.fixed = [fixed.get(n, 0) for n in nodes]
        self.keys = sorted(groups, key=lambda k: (k[0], sorted(k[1])))
        self.groups = {k: sorted(groups[k], key=queue_cost) for k in self.keys}
        self.count = sum(len(g) for g in self.groups.values())
        # A queue more on a node that already leads more elsewhere outweighs any number of moves.
        least = min(elsewhere.get(n, 0) for n in nodes)
        self.excess_cost = [(elsewhere.get(n, 0) - least) * (self.count + 1) for n in nodes]
        self.big = (max(self.excess_cost) + 1) * self.count + 1  # more than all other costs together

    def movable_on(self, node: str) -> int:
        return sum(len(self.groups[k]) for k in self.keys if k[0] == node)

    def assign(self, lo: int, hi: int) -> dict[tuple[tuple[str, frozenset[str]], str], int] | None:
        """Queues per (group, node) with every load in [lo, hi] and the fewest moves; None if impossible."""
        source, sink, first_group = 0, 1, 2
        first_node = first_group + len(self.keys)
        network = MinCostFlow(first_node + len(self.nodes))
        group_arcs: dict[tuple[tuple[str, frozenset[str]], str], int] = {}
        for g, key in enumerate(self.keys):
            size = len(self.groups[key])
            network.add_arc(source, first_group + g, size, 0)
            for n, node in enumerate(self.nodes):
                if node in key[1]:
                    cost = 0 if node == key[0] else 1
                    group_arcs[(key, node)] = network.add_arc(first_group + g, first_node + n, size, cost)
        mandatory_arcs: list[tuple[int, int]] = []
        for n, fixed in enumerate(self.fixed):
            mandatory = max(0, lo - fixed)
            optional = max(0, hi - fixed) - mandatory
            if mandatory:
                mandatory_arcs.append(
                    (network.add_arc(first_node + n, sink, mandatory, -self.big), mandatory)
                )
            if optional > 0:
                network.add_arc(first_node + n, sink, optional, self.excess_cost[n])
        flow, _cost = network.solve(source, sink, self.count)
        if flow < self.count or any(network.flow_on(arc) < need for arc, need in mandatory_arcs):
            return None
        return {k: network.flow_on(a) for k, a in group_arcs.items() if network.flow_on(a)}

    def moves(self, assignment: Mapping[tuple[tuple[str, frozenset[str]], str], int]) -> list[Move]:
        """Turn per-group counts into named moves: the cheapest queues of each group move."""
        result: list[Move] = []
        for key in self.keys:
            leader = key[0]
            leaving = iter(self.groups[key])
            for node in self.nodes:
                if node == leader:
                    continue
                for _ in range(assignment.get((key, node), 0)):
                    queue = next(leaving)
                    result.append(Move(queue.vhost, queue.name, queue.type, leader, node, queue.messages))
        return result


def distribution(queues: Iterable[Queue], nodes: Iterable[str]) -> dict[str, int]:
    """Leaders per node (nodes without leaders included, with 0)."""
    counts = Counter({n: 0 for n in nodes})
    for q in queues:
        if q.leader in counts:
            counts[q.leader] += 1
    return dict(counts)
