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
3. **Order**: cheapest moves first (quorum transfers, classic queues by message count, streams), so large
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
from queue_balancer.model import DOT_SEGMENTS, Move, Plan, Queue, QueueRef, QueueType, Skipped, Snapshot


@dataclass(frozen=True)
class PlanOptions:
    """What to balance: all queues, or those of some vhosts / whose name matches a regex."""

    vhosts: tuple[str, ...] = ()
    pattern: str | None = None
    per_vhost: bool = False
    max_moves: int | None = None
    quorum_transfer: bool = True
    """False when no leader-transfer primitive is configured: quorum queues are then skipped."""
    move_streams: bool = False
    """Streams movable, best effort (``--move-streams``): their coordinator may choose another member."""
    streams_left: frozenset[QueueRef] = frozenset()
    """Streams the coordinator left elsewhere earlier in this run: not restarted again before the next run."""

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
    """The queues the options ask for (``check_filters`` refuses filters that select none)."""
    wanted = set(options.vhosts)
    pattern = re.compile(options.pattern) if options.pattern is not None else None
    return [
        q
        for q in snapshot.queues
        if (not wanted or q.vhost in wanted) and (pattern is None or pattern.search(q.name))
    ]


def classify(
    queue: Queue,
    running: frozenset[str],
    *,
    quorum_transfer: bool = True,
    classic_mirroring: bool = True,
    drained: frozenset[str] = frozenset(),
    streams: StreamRules | None = None,
) -> Candidate | Skipped:
    """Movable (with its possible targets) or skipped (with a reason an operator can act on).

    ``running`` are the nodes a leader may go to (running, not in maintenance mode); ``drained`` the
    running nodes in maintenance mode; ``classic_mirroring`` False on RabbitMQ 4+, which removed it;
    ``streams`` whether streams may move (``--move-streams``) and how, None to leave them alone.
    """

    def skip(reason: str) -> Skipped:
        return Skipped(queue.vhost, queue.name, queue.leader, reason)

    if queue.type is QueueType.STREAM and streams is None:
        return skip("stream: streams are left alone (--move-streams moves them, best effort)")
    if queue.exclusive:
        return skip("exclusive: owned by one connection, it lives and dies with it")
    if queue.name in DOT_SEGMENTS or queue.vhost in DOT_SEGMENTS:
        return skip("named '.' or '..': the management API cannot address it (rename it to move it)")
    if queue.leader in drained:
        return skip(
            f"its node {queue.leader} is in maintenance mode (rabbitmq-upgrade drain): "
            "`rabbitmq-upgrade revive` it to have its queues balanced"
        )
    if queue.leader not in running:
        return skip(f"leader node {queue.leader or '(none)'} is not running")
    if queue.state not in ("running", "live", "idle", "flow"):
        return skip(f"queue is {queue.state}")
    if queue.type is QueueType.QUORUM:
        return _classify_quorum(queue, running, quorum_transfer, skip)
    if queue.type is QueueType.STREAM and streams is not None:
        return _classify_stream(queue, running, streams, skip)
    if not classic_mirroring:
        return skip(
            "classic queue on RabbitMQ 4+, which removed classic mirroring: no move can keep a copy, so it "
            "stays as fixed load (declare it as a quorum queue to have it balanced)"
        )
    return _classify_classic(queue, running, skip)


def _classify_quorum(
    queue: Queue, running: frozenset[str], quorum_transfer: bool, skip: Callable[[str], Skipped]
) -> Candidate | Skipped:
    # A 4.x non-voting member neither counts in the quorum nor may lead (Queue.non_voters).
    voting = "voting " if queue.non_voters else ""
    voters = [n for n in queue.members if n not in queue.non_voters]
    online = [n for n in (queue.leader, *queue.in_sync) if n not in queue.non_voters]
    if len(online) < len(voters) // 2 + 1:
        return skip(f"quorum queue without a quorum online ({len(online)} of {len(voters)} {voting}members)")
    if not quorum_transfer:
        return skip("quorum queue: no leader-transfer primitive configured (see --eval-command)")
    targets = frozenset({queue.leader, *(n for n in online if n in running)})
    if len(targets) == 1:
        held = f" ({', '.join(queue.non_voters)}: no vote, never made leader)" if queue.non_voters else ""
        return skip(f"quorum queue with no other online {voting}member to lead it{held}")
    return Candidate(queue, targets)


@dataclass(frozen=True)
class StreamRules:
    """What a stream move needs: ``rabbit_stream_queue:transfer_leadership/2`` on this version (3.12+) and
    an eval port to call it through."""

    version: str
    supported: bool
    eval_port: bool
    left: frozenset[QueueRef] = frozenset()


def _classify_stream(
    queue: Queue, running: frozenset[str], rules: StreamRules, skip: Callable[[str], Skipped]
) -> Candidate | Skipped:
    if not rules.supported:
        return skip(
            f"stream on RabbitMQ {rules.version or '(unknown version)'}, which has no "
            "rabbit_stream_queue:transfer_leadership/2 (3.12+): it stays as fixed load (upgrade to move streams)"
        )
    if not rules.eval_port:
        return skip("stream: no leader-transfer primitive configured (see --eval-command)")
    if queue.ref in rules.left:
        # Under a publisher the writer's tail is ahead of its replicas: it wins the election again.
        return skip("stream: its coordinator kept it elsewhere earlier in this run (tried again next run)")
    # The restart stops every member and elects among a majority: all must run, or the choice narrows.
    if set(queue.in_sync) != set(queue.replicas):
        return skip(f"stream with members offline ({len(queue.in_sync) + 1} of {len(queue.members)} online)")
    targets = frozenset({queue.leader, *(n for n in queue.replicas if n in running)})
    if len(targets) == 1:
        return skip("stream with no other running member to lead it")
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
    scopes: Mapping[tuple[str, str], _Scope]
    """(vhost, or "" for the whole cluster; queue type) -> its fixed load and candidates."""
    skipped: tuple[Skipped, ...]


def survey(snapshot: Snapshot, options: PlanOptions) -> Survey:
    """Select and classify; unmovable queues become fixed load of their scope.

    A scope is one queue type (of one vhost with ``per_vhost``): each type is made even on its own, since a
    node that leads all quorum queues is hot even when the totals are even.
    """
    check_filters(snapshot, options)
    running = frozenset(snapshot.serving_nodes)
    drained = frozenset(snapshot.drained_nodes)
    streams = (
        StreamRules(
            snapshot.platform.version,
            snapshot.platform.stream_transfer,
            options.quorum_transfer,
            options.streams_left,
        )
        if options.move_streams
        else None
    )
    scopes: dict[tuple[str, str], _Scope] = defaultdict(_Scope)
    skipped: list[Skipped] = []
    counted: list[Queue] = []
    for queue in select(snapshot, options):
        verdict = classify(
            queue,
            running,
            quorum_transfer=options.quorum_transfer,
            classic_mirroring=snapshot.platform.classic_mirroring,
            drained=drained,
            streams=streams,
        )
        scope = scopes[(queue.vhost if options.per_vhost else "", queue.type.value)]
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
    """The fewest moves that make each queue type, then the total, as even as the movable queues allow.

    With ``per_vhost`` each vhost is balanced on its own, one after the other (see ``balance``).
    """
    options = options or PlanOptions()
    found = survey(snapshot, options)
    moves: list[Move] = []
    placed: Counter[str] = Counter()  # leaders of the vhosts planned so far, where they will end up
    for vhost in sorted({key[0] for key in found.scopes}):
        scopes = {QueueType(t): scope for (v, t), scope in found.scopes.items() if v == vhost}
        fixed = {t: scope.fixed for t, scope in scopes.items()}
        candidates = [c for scope in scopes.values() for c in scope.candidates]
        scope_moves = balance(found.nodes, fixed, candidates, placed)
        moves.extend(scope_moves)
        for scope in scopes.values():
            placed.update(scope.fixed)
            placed.update(c.queue.leader for c in scope.candidates)
        for move in scope_moves:
            placed[move.source] -= 1
            placed[move.target] += 1
    before = distribution(found.counted, found.nodes)
    if options.max_moves is not None:
        moves = most_even_first(moves, before, options.max_moves)
    moves.sort(key=move_cost)
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


def most_even_first(moves: Sequence[Move], before: Mapping[str, int], limit: int) -> list[Move]:
    """``limit`` moves of the plan that leave the most even distribution: each next move goes from the most
    loaded source to the least loaded target among the moves left (cheapest first on a tie), so 22/7/7 with
    3 moves becomes 19/9/8, not 19/10/7."""
    by_pair: dict[tuple[str, str], list[Move]] = defaultdict(list)
    for move in sorted(moves, key=move_cost, reverse=True):
        by_pair[(move.source, move.target)].append(move)  # cheapest last: popped first
    load = Counter(before)
    chosen: list[Move] = []
    while len(chosen) < limit and by_pair:
        source, target = max(
            by_pair,
            key=lambda pair: (
                load[pair[0]] - load[pair[1]],
                [-c for c in move_cost(by_pair[pair][-1])[:2]],
                pair,
            ),
        )
        pair_moves = by_pair[(source, target)]
        chosen.append(pair_moves.pop())
        if not pair_moves:
            del by_pair[(source, target)]
        load[source] -= 1
        load[target] += 1
    return chosen


def check_filters(snapshot: Snapshot, options: PlanOptions) -> None:
    """A filter that selects no queue is an input error, never an empty plan: ``--vhost`` naming a vhost
    without queues (or none at all) and ``--pattern`` matching no queue name fail the same way, because
    either is almost always a typo, and a run that balances nothing must not report success."""
    known = {q.vhost for q in snapshot.queues}
    missing = [v for v in options.vhosts if v not in known]
    if missing:
        raise ConfigurationError(f"no queues in vhost {', '.join(repr(v) for v in missing)} (does it exist?)")
    if options.pattern is not None and not select(snapshot, options):
        where = f" in vhost {', '.join(repr(v) for v in options.vhosts)}" if options.vhosts else ""
        raise ConfigurationError(f"no queue name matches --pattern {options.pattern!r}{where}")


_TYPE_COST = {QueueType.QUORUM: 0, QueueType.CLASSIC: 1, QueueType.STREAM: 2}
"""Quorum transfers are cheap; a classic move copies its messages to a new mirror first; a stream move
restarts the stream (its clients reconnect) and may land elsewhere: last."""


def move_cost(move: Move) -> tuple[int, int, str, str]:
    return (_TYPE_COST[move.type], move.messages, move.vhost, move.queue)


def queue_cost(queue: Queue) -> tuple[int, int, str, str]:
    return (_TYPE_COST[queue.type], queue.messages, queue.vhost, queue.name)


GroupKey = tuple[QueueType, str, frozenset[str]]
"""Interchangeable queues: same type, same leader, same possible targets."""
Bounds = tuple[int, int]


def balance(
    nodes: Sequence[str],
    fixed: Mapping[str, int] | Mapping[QueueType, Mapping[str, int]],
    candidates: Iterable[Candidate],
    elsewhere: Mapping[str, int] | None = None,
) -> list[Move]:
    """The fewest moves making every queue type, then the total, as even as reachable over ``nodes``.

    ``fixed``: unmovable leaders per node, per queue type (a flat mapping counts as one type's). First each
    type's own bounds: the smallest reachable maximum of its leaders on a node, then the largest minimum
    under it. Then, with every type held within its bounds, the same for the total; then the fewest moves.
    One min-cost flow holds all of it (see ``_Network``), so the result is exact, not a greedy pass per type.

    ``elsewhere`` (leaders per node outside this scope, e.g. other vhosts): when a node must get one queue
    more than another, it goes to the node with fewer leaders elsewhere, even at the price of more moves,
    so balancing every vhost on its own also keeps the cluster even.
    """
    fixed_by_type = _fixed_by_type(fixed)
    groups: dict[GroupKey, list[Queue]] = defaultdict(list)
    for c in candidates:
        groups[(c.queue.type, c.queue.leader, c.targets)].append(c.queue)
    if not groups or len(nodes) < 2:
        return []
    type_bounds: dict[QueueType, Bounds] = {}
    for queue_type in sorted({key[0] for key in groups}):
        alone = _Network(
            nodes,
            {queue_type: fixed_by_type.get(queue_type, {})},
            {k: v for k, v in groups.items() if k[0] == queue_type},
            {},
        )
        type_bounds[queue_type] = alone.even_bounds({})
    network = _Network(nodes, fixed_by_type, groups, elsewhere or {})
    lo, hi = network.even_bounds(type_bounds)
    assignment = network.assign((lo, hi), type_bounds)
    assert assignment is not None  # the bounds were found feasible together
    return network.moves(assignment)


def _fixed_by_type(
    fixed: Mapping[str, int] | Mapping[QueueType, Mapping[str, int]],
) -> dict[QueueType, Mapping[str, int]]:
    if all(isinstance(v, int) for v in fixed.values()):
        return {QueueType.CLASSIC: fixed} if fixed else {}  # type: ignore[dict-item]
    return dict(fixed)  # type: ignore[arg-type]


class _Network:
    """source → group of interchangeable queues → (queue type, node) → node → sink.

    Each (type, node) arc pair holds that type's load on the node within the type's bounds, each node → sink
    pair the node's total within the total bounds: the first ``lo - fixed`` units over an arc with a large
    negative cost (so every feasible solution fills them), the rest up to ``hi - fixed`` over an optional
    arc. Costs, in decreasing order of weight: filling the mandatory arcs; a unit on an optional total arc of
    a node that leads more queues elsewhere (other vhosts) than the least loaded node; moving a queue (1).
    """

    def __init__(
        self,
        nodes: Sequence[str],
        fixed: Mapping[QueueType, Mapping[str, int]],
        groups: Mapping[GroupKey, list[Queue]],
        elsewhere: Mapping[str, int],
    ) -> None:
        self.nodes = list(nodes)
        self.types = sorted({key[0] for key in groups})
        self.fixed_of_type = {t: [fixed.get(t, {}).get(n, 0) for n in nodes] for t in self.types}
        self.fixed = [sum(f.get(n, 0) for f in fixed.values()) for n in nodes]
        self.keys = sorted(groups, key=lambda k: (k[0], k[1], sorted(k[2])))
        self.groups = {k: sorted(groups[k], key=queue_cost) for k in self.keys}
        self.count = sum(len(g) for g in self.groups.values())
        # A queue more on a node that already leads more elsewhere outweighs any number of moves.
        least = min(elsewhere.get(n, 0) for n in nodes)
        self.excess_cost = [(elsewhere.get(n, 0) - least) * (self.count + 1) for n in nodes]
        # Two mandatory arcs lie on a path: each weighs more than all other costs together.
        self.big = (max(self.excess_cost) + 1) * self.count + 1

    def even_bounds(self, type_bounds: Mapping[QueueType, Bounds]) -> Bounds:
        """(lo, hi) of the total: the smallest reachable maximum, then the largest minimum under it."""
        current = [
            self.fixed[i] + sum(len(self.groups[k]) for k in self.keys if k[1] == node)
            for i, node in enumerate(self.nodes)
        ]
        total = sum(current)
        # The current placement may break the type bounds; every placement is within count + max(fixed).
        ceiling = max(current) if not type_bounds else self.count + max(self.fixed)
        hi = smallest_feasible(
            max(math.ceil(total / len(self.nodes)), max(self.fixed)),
            ceiling,
            lambda h: self.assign((0, h), type_bounds) is not None,
        )
        lo = largest_feasible(
            0, total // len(self.nodes), lambda low: self.assign((low, hi), type_bounds) is not None
        )
        return lo, hi

    def assign(
        self, bounds: Bounds, type_bounds: Mapping[QueueType, Bounds]
    ) -> dict[tuple[GroupKey, str], int] | None:
        """Queues per (group, node) within every bound and with the fewest moves; None if impossible."""
        source, sink, first_group = 0, 1, 2
        first_typed = first_group + len(self.keys)
        first_node = first_typed + len(self.types) * len(self.nodes)
        network = MinCostFlow(first_node + len(self.nodes))
        mandatory: list[tuple[int, int]] = []

        def bounded(tail: int, head: int, fixed: int, lo: int, hi: int, cost: int) -> None:
            need = max(0, lo - fixed)
            optional = max(0, hi - fixed) - need
            if need:
                mandatory.append((network.add_arc(tail, head, need, -self.big), need))
            if optional > 0:
                network.add_arc(tail, head, optional, cost)

        def typed(t: int, n: int) -> int:
            return first_typed + t * len(self.nodes) + n

        group_arcs: dict[tuple[GroupKey, str], int] = {}
        for g, key in enumerate(self.keys):
            size = len(self.groups[key])
            t = self.types.index(key[0])
            network.add_arc(source, first_group + g, size, 0)
            for n, node in enumerate(self.nodes):
                if node in key[2]:
                    cost = 0 if node == key[1] else 1
                    group_arcs[(key, node)] = network.add_arc(first_group + g, typed(t, n), size, cost)
        for t, queue_type in enumerate(self.types):
            lo, hi = type_bounds.get(queue_type, (0, self.count + max(self.fixed)))
            for n in range(len(self.nodes)):
                bounded(typed(t, n), first_node + n, self.fixed_of_type[queue_type][n], lo, hi, 0)
        for n, fixed in enumerate(self.fixed):
            bounded(first_node + n, sink, fixed, bounds[0], bounds[1], self.excess_cost[n])
        flow, _cost = network.solve(source, sink, self.count)
        if flow < self.count or any(network.flow_on(arc) < need for arc, need in mandatory):
            return None
        return {k: network.flow_on(a) for k, a in group_arcs.items() if network.flow_on(a)}

    def moves(self, assignment: Mapping[tuple[GroupKey, str], int]) -> list[Move]:
        """Turn per-group counts into named moves: the cheapest queues of each group move."""
        result: list[Move] = []
        for key in self.keys:
            leader = key[1]
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
