"""The members plan against brute force: the most even spread of quorum members, then the fewest changes."""

from __future__ import annotations

import itertools
import time
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queue_balancer.errors import ConfigurationError
from queue_balancer.members import (
    MemberMove,
    MembersOptions,
    MembersPlan,
    plan_members,
    replica_count,
    staying_members,
    target_size,
)
from queue_balancer.model import Node, Queue, QueueType, Snapshot
from queue_balancer.planner import PlanOptions

NODES = ("rabbit@a", "rabbit@b", "rabbit@c", "rabbit@d", "rabbit@e")
OLD = "rabbit@old"  # a node that left the cluster (forgotten): no longer listed by GET /api/nodes


def quorum(
    name: str,
    members: tuple[str, ...],
    *,
    leader: str | None = None,
    size: int | None = None,
    target: int | None = None,
    online: tuple[str, ...] | None = None,
    messages: int = 0,
    vhost: str = "/",
) -> Queue:
    leader = leader or members[0]
    others = tuple(m for m in members if m != leader)
    alive = others if online is None else tuple(m for m in others if m in online)
    return Queue(
        vhost, name, QueueType.QUORUM, leader, others, alive, messages,
        group_size=size, target_group_size=target,
    )  # fmt: skip


def snapshot(queues: list[Queue], nodes: tuple[str, ...] = NODES[:3], down: tuple[str, ...] = ()) -> Snapshot:
    return Snapshot(tuple(Node(n, n not in down) for n in nodes), tuple(queues))


def test_replacement_new_node_gets_its_share_and_the_departed_one_none() -> None:
    # 12 queues of 3 on a, b, old; old was replaced by d: every queue needs a member on d instead.
    queues = [quorum(f"q{i:02}", ("rabbit@a", "rabbit@b", OLD), leader=NODES[i % 2]) for i in range(12)]
    result = plan_members(snapshot(queues, nodes=("rabbit@a", "rabbit@b", "rabbit@d")))
    assert result.before == {"rabbit@a": 12, "rabbit@b": 12, "rabbit@d": 0, OLD: 12}
    assert result.after == {"rabbit@a": 12, "rabbit@b": 12, "rabbit@d": 12, OLD: 0}
    assert result.changes == 24
    assert all(m.add == ("rabbit@d",) and m.remove == (OLD,) for m in result.moves)


def test_five_nodes_three_replicas_spread_evenly_with_the_fewest_changes() -> None:
    # 10 queues of 3 members on a, b, c of a 5-node cluster: 30 members, 6 per node once spread.
    queues = [quorum(f"q{i}", NODES[:3], leader=NODES[i % 3], size=3) for i in range(10)]
    result = plan_members(snapshot(queues, nodes=NODES))
    assert result.after == dict.fromkeys(NODES, 6)
    assert result.changes == 2 * 12  # 12 members move from a, b, c to d, e: an add and a remove each
    assert all(m.leader not in m.remove for m in result.moves)  # the leaders keep their members


def test_queues_with_fewer_members_than_declared_grow() -> None:
    queues = [quorum("declared", ("rabbit@a",), size=4), quorum("undeclared", ("rabbit@b",))]
    moves = {m.queue: m for m in plan_members(snapshot(queues, nodes=NODES)).moves}
    assert len(moves["declared"].add) == 3 and not moves["declared"].remove
    assert len(moves["undeclared"].add) == 2 and not moves["undeclared"].remove  # RabbitMQ's default, 3


def test_queues_grown_beyond_their_declared_size_are_left_alone() -> None:
    # `rabbitmq-queues grow <node> all` on 5 nodes: 5 members each, declared with 3 or without a size.
    queues = [
        quorum("q1", NODES, leader="rabbit@a", size=3),
        quorum("q2", NODES, leader="rabbit@a"),
        quorum("q3", NODES, leader="rabbit@c", size=3),
    ]
    result = plan_members(snapshot(queues, nodes=NODES))
    assert result.moves == ()
    assert result.after == result.before == dict.fromkeys(NODES, 3)


def test_a_queue_with_more_members_than_nodes_to_spread_on_keeps_them() -> None:
    # 4 members on 4 of 5 nodes: the spread cannot improve without dropping a copy, so nothing changes.
    queues = [quorum("wide", NODES[:4], size=3), quorum("narrow", ("rabbit@e",), size=1)]
    assert plan_members(snapshot(queues, nodes=NODES)).moves == ()


def test_an_explicit_smaller_group_size_shrinks() -> None:
    queues = [quorum("q", NODES, leader="rabbit@c", size=3), quorum("small", ("rabbit@a",), size=1)]
    result = plan_members(snapshot(queues, nodes=NODES), MembersOptions(group_size=3))
    moves = {m.queue: m for m in result.moves}
    assert len(moves["q"].remove) == 2 and not moves["q"].add
    assert "rabbit@c" not in moves["q"].remove  # the leader's member stays
    assert len(moves["small"].add) == 2  # an explicit size grows the smaller queues too
    assert sum(result.after.values()) == 6


def test_an_explicit_size_never_shrinks_below_the_target_group_size() -> None:
    # RabbitMQ 3.13+ membership reconciliation would grow the queue back to its target group size.
    queues = [quorum("q", NODES, target=4), quorum("p", NODES)]
    moves = {
        m.queue: m for m in plan_members(snapshot(queues, nodes=NODES), MembersOptions(group_size=2)).moves
    }
    assert len(moves["q"].remove) == 1 and len(moves["p"].remove) == 3


def test_the_target_group_size_is_a_declared_size() -> None:
    queues = [quorum("q", ("rabbit@a", "rabbit@b", "rabbit@c"), size=3, target=5)]
    [move] = plan_members(snapshot(queues, nodes=NODES)).moves
    assert move.add == ("rabbit@d", "rabbit@e") and move.remove == ()


def test_a_departed_nodes_member_is_replaced_up_to_the_declared_size() -> None:
    # 5 members with a target group size of 5 (4.x policy); OLD left the cluster and e replaced it.
    queues = [quorum("q", (*NODES[:4], OLD), target=5)]
    [move] = plan_members(snapshot(queues, nodes=NODES)).moves
    assert (move.add, move.remove) == (("rabbit@e",), (OLD,))


def test_a_departed_nodes_member_above_the_declared_size_is_removed_without_a_replacement() -> None:
    # No copy is lost: a member on a node gone from the cluster holds nothing (as after forget_cluster_node).
    queues = [quorum("q", (*NODES[:4], OLD), size=3)]
    [move] = plan_members(snapshot(queues, nodes=NODES)).moves
    assert (move.add, move.remove) == ((), (OLD,))


def test_a_stopped_nodes_member_stays_when_no_other_node_can_take_it() -> None:
    # 5 members on 5 nodes, one stopped (a restart): removing its member would only drop a copy.
    queues = [quorum(f"q{i}", NODES, leader=NODES[i], size=3) for i in range(4)]
    result = plan_members(snapshot(queues, nodes=NODES, down=("rabbit@e",)))
    assert result.moves == ()


def test_a_stopped_nodes_member_moves_to_a_free_running_node() -> None:
    queues = [quorum("q", NODES[:3], size=3)]
    [move] = plan_members(snapshot(queues, nodes=NODES[:4], down=("rabbit@c",))).moves
    assert (move.add, move.remove) == (("rabbit@d",), ("rabbit@c",))


def test_the_declared_sizes_are_read_from_arguments_and_the_effective_policy() -> None:
    listed = {"vhost": "/", "name": "q", "type": "quorum", "leader": "rabbit@a", "members": ["rabbit@a"]}
    arguments = {"x-quorum-initial-group-size": 3, "x-quorum-target-group-size": 4}
    queue = Queue.from_api(
        {**listed, "arguments": arguments, "effective_policy_definition": {"target-group-size": 5}}
    )
    assert (queue.group_size, queue.target_group_size) == (3, 5)  # the larger target, as RabbitMQ's
    assert Queue.from_api({**listed, "arguments": arguments}).target_group_size == 4
    assert Queue.from_api(listed).target_group_size is None


def test_no_member_lands_on_a_stopped_or_excluded_node() -> None:
    queues = [quorum(f"q{i}", ("rabbit@a",), size=3) for i in range(4)]
    result = plan_members(
        snapshot(queues, nodes=NODES[:4], down=("rabbit@c",)),
        MembersOptions(excluded=frozenset({"rabbit@d"})),
    )
    assert result.nodes == ("rabbit@a", "rabbit@b")
    assert {n for m in result.moves for n in m.add} == {"rabbit@b"}  # the target is capped at 2 nodes


def test_a_node_in_maintenance_mode_gets_no_member_and_sheds_its_own() -> None:
    queues = [quorum(f"q{i}", NODES[:3], size=3) for i in range(3)]
    drained = snapshot(queues, nodes=NODES[:4]).with_drained(["rabbit@c"])
    result = plan_members(drained)
    assert "rabbit@c" not in result.nodes
    assert result.after["rabbit@c"] == 0 and result.after["rabbit@d"] == 3


def test_draining_a_node_never_costs_a_queue_a_replica() -> None:
    # 3 nodes, one in maintenance (an upgrade): queues of 3 have nowhere else to go, so nothing changes.
    queues = [quorum(f"q{i}", NODES[:3], size=3) for i in range(3)]
    result = plan_members(snapshot(queues).with_drained(["rabbit@c"]))
    assert result.moves == ()
    assert result.after == {"rabbit@a": 3, "rabbit@b": 3, "rabbit@c": 3}


def test_members_on_an_excluded_node_move_off_it() -> None:
    queues = [quorum(f"q{i}", NODES[:3], size=3) for i in range(3)]
    result = plan_members(snapshot(queues, nodes=NODES[:4]), MembersOptions(excluded=frozenset({"rabbit@c"})))
    assert result.after["rabbit@c"] == 0
    assert result.after["rabbit@d"] == 3


def test_queues_without_a_quorum_online_are_skipped_and_count_as_fixed_load() -> None:
    stuck = quorum("stuck", NODES[:2], online=())
    result = plan_members(snapshot([stuck, quorum("ok", ("rabbit@a",), size=1)], nodes=NODES[:3]))
    assert [s.reason for s in result.skipped] == ["quorum queue without a quorum online (1 of 2 members)"]
    assert [(m.queue, m.add, m.remove) for m in result.moves] == [("ok", ("rabbit@c",), ("rabbit@a",))]


def test_classic_ha_exactly_mirrors_are_reported_not_changed() -> None:
    mirrored = Queue(
        "/", "c", QueueType.CLASSIC, "rabbit@a", ("rabbit@b",), ("rabbit@b",),
        policy="two", policy_definition={"ha-mode": "exactly", "ha-params": 2},
    )  # fmt: skip
    result = plan_members(snapshot([mirrored]))
    assert result.mirrors == {"rabbit@a": 1, "rabbit@b": 1, "rabbit@c": 0}
    assert result.moves == ()


def test_options_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="not a node of this cluster"):
        plan_members(snapshot([]), MembersOptions(excluded=frozenset({"rabbit@zz"})))
    with pytest.raises(ConfigurationError, match="no queues in vhost"):
        plan_members(snapshot([]), MembersOptions(selection=PlanOptions(vhosts=("nope",))))
    with pytest.raises(ConfigurationError, match="group size must be 1 or more"):
        MembersOptions(group_size=0)


def test_plan_round_trips_through_json() -> None:
    queues = [quorum(f"q{i}", ("rabbit@a", OLD), size=2, messages=i) for i in range(3)]
    result = plan_members(snapshot(queues))
    assert MembersPlan.from_dict(result.to_dict()) == result
    assert all(MemberMove.from_dict(m.to_dict()) == m for m in result.moves)
    assert [m.messages for m in result.moves] == [0, 1, 2]  # the cheapest changes first


def test_ten_thousand_queues_plan_in_seconds() -> None:
    queues = [
        quorum(f"q{i:05}", (NODES[i % 3], NODES[(i + 1) % 3], OLD), size=3, messages=i % 100)
        for i in range(10_000)
    ]
    began = time.monotonic()
    result = plan_members(snapshot(queues, nodes=NODES))
    assert time.monotonic() - began < 20
    assert max(result.after[n] for n in NODES) - min(result.after[n] for n in NODES) <= 1
    assert result.after[OLD] == 0


# ---- brute force ---------------------------------------------------------------------------------


@st.composite
def clusters(draw: st.DrawFn) -> tuple[Snapshot, MembersOptions]:
    nodes = NODES[: draw(st.integers(2, 4))]
    down = tuple(n for n in nodes[1:] if draw(st.booleans()) and draw(st.booleans()))
    excluded = frozenset(n for n in nodes[1:] if n not in down and draw(st.integers(0, 5)) == 0)
    holders = (*nodes, OLD)
    queues = []
    for i in range(draw(st.integers(0, 4))):
        members = draw(st.lists(st.sampled_from(holders), min_size=1, max_size=4, unique=True))
        leader = draw(st.sampled_from(members))
        size = draw(st.one_of(st.none(), st.integers(1, 4)))
        target = draw(st.one_of(st.none(), st.integers(1, 4)))
        online = tuple(m for m in members if m in nodes and m not in down)
        messages = draw(st.integers(0, 3))
        queues.append(
            quorum(
                f"q{i}",
                tuple(members),
                leader=leader,
                size=size,
                target=target,
                online=online,
                messages=messages,
            )
        )
    return snapshot(queues, nodes=nodes, down=down), MembersOptions(
        group_size=draw(st.one_of(st.none(), st.integers(1, 3))), excluded=excluded
    )


def _score(loads: Counter[str], nodes: tuple[str, ...], changes: int, leaders_kept: int) -> tuple[int, ...]:
    values = [loads[n] for n in nodes]
    return (max(values), -min(values), changes, -leaders_kept)


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_plan_matches_brute_force(case: tuple[Snapshot, MembersOptions]) -> None:
    snap, options = case
    result = plan_members(snap, options)
    eligible = result.nodes
    moved = {m.queue: m for m in result.moves}
    skipped = {s.queue for s in result.skipped}
    fixed: Counter[str] = Counter()
    free = []
    for q in snap.queues:
        if q.name in skipped:
            assert q.name not in moved
            fixed.update(n for n in q.members if n in eligible)
        else:
            free.append(q)
    if not eligible:
        assert not result.moves
        return

    def evaluate(choice: tuple[tuple[str, ...], ...]) -> tuple[int, ...]:
        loads = fixed.copy()
        changes = kept_leaders = 0
        for q, nodes_ in zip(free, choice, strict=True):
            loads.update(nodes_)
            changes += len(set(nodes_) ^ set(q.members))
            kept_leaders += q.leader in nodes_
        return _score(loads, eligible, changes, kept_leaders)

    known = frozenset(n.name for n in snap.nodes)
    held = known - frozenset(eligible)
    running = frozenset(snap.running_nodes)
    count = {q.name: replica_count(q, options, known) for q in free}
    staying = {q.name: staying_members(q, count[q.name], len(eligible), held, running) for q in free}
    options_per_queue = [
        [
            (*c, *staying[q.name])
            for c in itertools.combinations(
                eligible, target_size(count[q.name], len(eligible), len(staying[q.name]))
            )
        ]
        for q in free
    ]
    best = min(evaluate(c) for c in itertools.product(*options_per_queue))
    planned = tuple(moved[q.name].after if q.name in moved else tuple(sorted(q.members)) for q in free)
    for q, members in zip(free, planned, strict=True):
        off = set(members) - set(eligible)
        assert off == set(staying[q.name]), f"{q.name} keeps a member off the eligible nodes"
        assert len(members) == min(count[q.name], len(eligible) + len(off))
        if options.group_size is None:  # no copy on a node of the cluster is dropped unless asked
            assert len(members) >= min(sum(n in known for n in q.members), len(eligible) + len(held))
    assert evaluate(planned) == best
    untouched = Counter(n for q in snap.queues if q.name in skipped for n in q.members)
    expected = untouched + Counter(n for members in planned for n in members)
    assert {n: c for n, c in result.after.items() if c} == dict(expected)
