"""The planner against brute force: optimal spread, then the fewest moves, with constraints honoured."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queue_balancer.errors import ConfigurationError
from queue_balancer.model import Node, Plan, Platform, Queue, QueueType, Skipped, Snapshot, spread
from queue_balancer.planner import PlanOptions, classify, plan

NODES = ("rabbit@a", "rabbit@b", "rabbit@c", "rabbit@d")


def snapshot(queues: list[Queue], nodes: tuple[str, ...] = NODES[:3], down: tuple[str, ...] = ()) -> Snapshot:
    return Snapshot(tuple(Node(n, n not in down) for n in nodes), tuple(queues))


def mirrored(
    name: str, leader: str, nodes: tuple[str, ...] = NODES[:3], messages: int = 0, vhost: str = "/"
) -> Queue:
    mirrors = tuple(n for n in nodes if n != leader)
    return Queue(
        vhost,
        name,
        QueueType.CLASSIC,
        leader,
        mirrors,
        mirrors,
        messages,
        policy="ha-all",
        policy_definition={"ha-mode": "all"},
    )


def quorum(name: str, leader: str, members: tuple[str, ...], online: tuple[str, ...] | None = None) -> Queue:
    others = tuple(m for m in members if m != leader)
    alive = others if online is None else tuple(m for m in others if m in online)
    return Queue("/", name, QueueType.QUORUM, leader, others, alive)


def unmirrored(name: str, leader: str, messages: int) -> Queue:
    return Queue("/", name, QueueType.CLASSIC, leader, (), (), messages)


def test_seed_example_21_mirrored_queues_on_one_node_become_7_7_7_in_14_moves() -> None:
    result = plan(snapshot([mirrored(f"q{i:02}", "rabbit@a", messages=100) for i in range(21)]))
    assert result.after == {"rabbit@a": 7, "rabbit@b": 7, "rabbit@c": 7}
    assert len(result.moves) == 14
    assert all(m.source == "rabbit@a" for m in result.moves)


def test_unmovable_queues_count_as_fixed_load() -> None:
    queues = [mirrored(f"m{i}", "rabbit@a") for i in range(10)]
    queues += [unmirrored(f"u{i}", "rabbit@b", messages=5) for i in range(6)]
    result = plan(snapshot(queues))
    assert result.after == {"rabbit@a": 5, "rabbit@b": 6, "rabbit@c": 5}
    assert {s.queue for s in result.skipped} == {f"u{i}" for i in range(6)}
    assert all(m.target != "rabbit@b" for m in result.moves)


def test_a_non_voting_member_is_never_a_target() -> None:
    """4.x: c is listed among members and online, but holds no vote (promotable or non_voter)."""
    queues = [
        replace(quorum(f"q{i}", "rabbit@a", ("rabbit@a", "rabbit@b", "rabbit@c")), non_voters=("rabbit@c",))
        for i in range(6)
    ]
    result = plan(snapshot(queues))
    assert result.after == {"rabbit@a": 3, "rabbit@b": 3, "rabbit@c": 0}
    assert all(m.target == "rabbit@b" for m in result.moves)


def test_non_voting_members_count_for_no_quorum() -> None:
    """a (leader) and the non-voter n are online, voter b is down: 1 of 2 votes is no quorum."""
    lonely = quorum("q", "rabbit@a", ("rabbit@a", "rabbit@b", "rabbit@c"), online=("rabbit@c",))
    verdict = classify(replace(lonely, non_voters=("rabbit@c",)), frozenset(NODES[:3]))
    assert isinstance(verdict, Skipped)
    assert verdict.reason == "quorum queue without a quorum online (1 of 2 voting members)"
    only_voter_elsewhere = replace(
        quorum("r", "rabbit@a", ("rabbit@a", "rabbit@c")), non_voters=("rabbit@c",)
    )
    verdict = classify(only_voter_elsewhere, frozenset(NODES[:3]))
    assert isinstance(verdict, Skipped)
    assert verdict.reason == (
        "quorum queue with no other online voting member to lead it (rabbit@c: no vote, never made leader)"
    )


def test_quorum_leaders_only_move_to_their_members() -> None:
    queues = [quorum(f"q{i}", "rabbit@a", ("rabbit@a", "rabbit@b")) for i in range(9)]
    result = plan(snapshot(queues))
    assert all(m.target == "rabbit@b" for m in result.moves)
    assert result.after == {"rabbit@a": 5, "rabbit@b": 4, "rabbit@c": 0}


def test_skip_reasons() -> None:
    running = frozenset(NODES[:3])
    cases = {
        "unmirrored with 120 messages: add an HA policy first": unmirrored("u", "rabbit@a", 120),
        "mirrors out of sync (1 of 2 synchronised)": Queue(
            "/", "x", QueueType.CLASSIC, "rabbit@a", ("rabbit@b", "rabbit@c"), ("rabbit@b",), 10
        ),
        "exclusive: owned by one connection, it lives and dies with it": Queue(
            "/", "e", QueueType.CLASSIC, "rabbit@a", exclusive=True
        ),
        "quorum queue without a quorum online (1 of 3 members)": quorum(
            "q", "rabbit@a", ("rabbit@a", "rabbit@b", "rabbit@c"), online=()
        ),
        "stream: streams are left alone (--move-streams moves them, best effort)": Queue(
            "/", "s", QueueType.STREAM, "rabbit@a"
        ),
        "leader node rabbit@z is not running": mirrored("z", "rabbit@z"),
    }
    for reason, queue in cases.items():
        verdict = classify(queue, running)
        assert getattr(verdict, "reason", None) == reason


def test_empty_unmirrored_queues_are_movable_and_nothing_moves_to_a_stopped_node() -> None:
    queues = [unmirrored(f"e{i}", "rabbit@a", 0) for i in range(4)]
    result = plan(snapshot(queues, down=("rabbit@c",)))
    assert result.after == {"rabbit@a": 2, "rabbit@b": 2}
    assert all(m.target == "rabbit@b" for m in result.moves)


def test_ha_mode_nodes_queues_stay_within_their_listed_nodes() -> None:
    queues = [
        Queue(
            "/",
            f"n{i}",
            QueueType.CLASSIC,
            "rabbit@a",
            ("rabbit@b",),
            ("rabbit@b",),
            policy="pinned",
            policy_definition={"ha-mode": "nodes", "ha-params": ["rabbit@a", "rabbit@b"]},
        )
        for i in range(6)
    ]
    result = plan(snapshot(queues))
    assert {m.target for m in result.moves} == {"rabbit@b"}


def test_filters_and_per_vhost() -> None:
    queues = [mirrored(f"orders.{i}", "rabbit@a", vhost="shop") for i in range(3)]
    queues += [mirrored(f"logs.{i}", "rabbit@a", vhost="ops") for i in range(3)]
    only_orders = plan(snapshot(queues), PlanOptions(pattern=r"^orders\."))
    assert {m.queue for m in only_orders.moves} <= {f"orders.{i}" for i in range(3)}
    assert len(only_orders.moves) == 2
    per_vhost = plan(snapshot(queues), PlanOptions(per_vhost=True))
    for vhost in ("shop", "ops"):
        assert sum(1 for m in per_vhost.moves if m.vhost == vhost) == 2
    with pytest.raises(ConfigurationError, match="invalid queue name pattern"):
        PlanOptions(pattern="orders[")
    with pytest.raises(ConfigurationError, match="no queues in vhost 'nope'"):
        plan(snapshot(queues), PlanOptions(vhosts=("nope",)))


def test_per_vhost_balance_keeps_the_cluster_even_too() -> None:
    queues = [mirrored(f"q{i}", "rabbit@a", vhost=f"v{v}") for v in range(10) for i in range(4)]
    result = plan(snapshot(queues), PlanOptions(per_vhost=True))
    for v in range(10):
        per_node = Counter(q.leader for q in queues if q.vhost == f"v{v}")
        for move in result.moves:
            if move.vhost == f"v{v}":
                per_node[move.source] -= 1
                per_node[move.target] += 1
        assert spread({n: per_node.get(n, 0) for n in NODES[:3]}) <= 1
    assert spread(result.after) <= 1


def test_cheapest_queues_move_and_large_ones_come_last() -> None:
    queues = [mirrored(f"q{i}", "rabbit@a", messages=m) for i, m in enumerate([5000, 10, 0, 700, 3, 90])]
    result = plan(snapshot(queues))
    assert [m.messages for m in result.moves] == sorted(m.messages for m in result.moves)
    assert 5000 not in [m.messages for m in result.moves]


def test_max_moves_truncates_the_plan_and_its_after_figures() -> None:
    result = plan(snapshot([mirrored(f"q{i}", "rabbit@a") for i in range(9)]), PlanOptions(max_moves=2))
    assert len(result.moves) == 2
    assert sum(result.after.values()) == 9 and result.after["rabbit@a"] == 7


def test_max_moves_keeps_the_most_even_distribution_reachable_with_that_many_moves() -> None:
    queues = [mirrored(f"q{i:02}", "rabbit@a") for i in range(22)]
    queues += [mirrored(f"r{i}", "rabbit@b") for i in range(7)] + [
        mirrored(f"s{i}", "rabbit@c") for i in range(7)
    ]
    result = plan(snapshot(queues), PlanOptions(max_moves=3))
    assert sorted(result.after.values()) == [8, 9, 19]


def test_every_type_is_even_and_the_total_as_even_as_that_allows() -> None:
    """Issue 10's run on 4.0: 30 quorum queues, 3 classic and 2 streams, all led by node 1."""
    members = NODES[:3]
    queues = [quorum(f"q{i:02}", "rabbit@a", members) for i in range(30)]
    queues += [unmirrored(f"c{i}", "rabbit@a", 5) for i in range(3)]
    queues += [Queue("/", f"s{i}", QueueType.STREAM, "rabbit@a", ("rabbit@b", "rabbit@c")) for i in range(2)]
    result = plan(snapshot(queues))
    assert type_distribution(queues, result, QueueType.QUORUM, members) == dict.fromkeys(members, 10)
    assert result.after == {"rabbit@a": 15, "rabbit@b": 10, "rabbit@c": 10}


def test_on_rabbitmq_4_classic_queues_are_fixed_load_with_a_reason_that_works_there() -> None:
    queues = [unmirrored(f"c{i}", "rabbit@a", 0) for i in range(3)] + [mirrored("m", "rabbit@a")]
    four = Snapshot(
        snapshot(queues).nodes, tuple(queues), Platform.from_overview({"rabbitmq_version": "4.0.5"})
    )
    result = plan(four)
    assert not result.moves
    assert {s.queue for s in result.skipped} == {"c0", "c1", "c2", "m"}
    assert all("quorum queue" in s.reason and "HA policy" not in s.reason for s in result.skipped)
    assert Platform.from_overview({"rabbitmq_version": "3.10.8"}).classic_mirroring
    assert len(plan(snapshot(queues)).moves) == 2  # the same queues on 3.10 are movable: 2/1/1


def test_a_drained_node_is_never_a_target_and_its_queues_say_why() -> None:
    queues = [quorum(f"q{i}", "rabbit@a", NODES[:3]) for i in range(6)] + [quorum("d", "rabbit@c", NODES[:3])]
    drained = snapshot(queues).with_drained(["rabbit@c"])
    result = plan(drained)
    assert {m.target for m in result.moves} == {"rabbit@b"}
    assert sorted(result.after.values()) == [3, 3]
    (skipped,) = result.skipped
    assert skipped.queue == "d" and "maintenance mode" in skipped.reason and "revive" in skipped.reason


def test_ten_thousand_queues_on_five_nodes_plan_in_under_a_second() -> None:
    nodes = tuple(f"rabbit@n{i}" for i in range(5))
    queues = [mirrored(f"q{i:05}", nodes[i % 2], nodes) for i in range(7000)]
    queues += [quorum(f"r{i:05}", nodes[0], nodes[:3]) for i in range(3000)]
    began = time.process_time()
    result = plan(snapshot(queues, nodes))
    assert time.process_time() - began < 1.0
    # Each type even on the nodes it may use (quorum members are on n0..n2 only): types come first.
    assert spread(type_distribution(queues, result, QueueType.CLASSIC, nodes)) <= 1
    assert spread(type_distribution(queues, result, QueueType.QUORUM, nodes[:3])) <= 1


# ---- properties against brute force --------------------------------------------------------------


def type_distribution(
    queues: list[Queue], result: Plan, queue_type: QueueType, nodes: tuple[str, ...]
) -> dict[str, int]:
    """Leaders of one type per node after the plan."""
    load = Counter({n: 0 for n in nodes})
    load.update(q.leader for q in queues if q.type is queue_type)
    for move in result.moves:
        if move.type is queue_type:
            load[move.source] -= 1
            load[move.target] += 1
    return dict(load)


def _brute_force(snap: Snapshot) -> tuple[tuple[int, ...], int, int]:
    """(best spread of each queue type, then best total spread, then fewest moves) over every placement."""
    running = frozenset(snap.running_nodes)
    types = (QueueType.CLASSIC, QueueType.QUORUM, QueueType.STREAM)
    fixed = {t: {n: 0 for n in sorted(running)} for t in types}
    options: list[tuple[QueueType, str, list[str]]] = []
    for q in snap.queues:
        verdict = classify(q, running)
        if hasattr(verdict, "targets"):
            options.append((q.type, q.leader, sorted(verdict.targets)))
        elif q.leader in running:
            fixed[q.type][q.leader] += 1
    best: tuple[tuple[int, ...], int, int] = ((10**9,), 10**9, 10**9)
    for choice in itertools.product(*(targets for _, _, targets in options)):
        load = {t: dict(fixed[t]) for t in types}
        for (queue_type, _, _), node in zip(options, choice, strict=True):
            load[queue_type][node] += 1
        moves = sum(1 for (_, leader, _), node in zip(options, choice, strict=True) if node != leader)
        total = {n: sum(load[t][n] for t in types) for n in running}
        best = min(best, (tuple(spread(load[t]) for t in types), spread(total), moves))
    return best


@st.composite
def small_clusters(draw: st.DrawFn) -> Snapshot:
    nodes = NODES[: draw(st.integers(2, 4))]
    queues = []
    for i in range(draw(st.integers(0, 7))):
        leader = draw(st.sampled_from(nodes))
        kind = draw(st.sampled_from(["mirrored", "quorum", "unmirrored_full", "unmirrored_empty"]))
        if kind == "mirrored":
            queues.append(mirrored(f"q{i}", leader, nodes))
        elif kind == "quorum":
            others = draw(st.lists(st.sampled_from(nodes), unique=True, max_size=len(nodes)))
            queues.append(quorum(f"q{i}", leader, (leader, *[n for n in others if n != leader])))
        else:
            queues.append(unmirrored(f"q{i}", leader, 7 if kind == "unmirrored_full" else 0))
    return snapshot(queues, nodes)


@settings(max_examples=300, deadline=None)
@given(small_clusters())
def test_every_type_is_as_even_as_reachable_with_the_fewest_moves(snap: Snapshot) -> None:
    result = plan(snap)
    nodes = snap.running_nodes
    queues = list(snap.queues)
    spreads = tuple(spread(type_distribution(queues, result, t, nodes)) for t in QueueType)
    assert (spreads, spread(result.after), len(result.moves)) == _brute_force(snap)


@settings(max_examples=200, deadline=None)
@given(small_clusters())
def test_no_queue_moves_twice_skipped_never_move_and_targets_are_allowed(snap: Snapshot) -> None:
    result = plan(snap)
    refs = [m.ref for m in result.moves]
    assert len(refs) == len(set(refs))
    skipped = {(s.vhost, s.queue) for s in result.skipped}
    running = frozenset(snap.running_nodes)
    by_ref = {q.ref: q for q in snap.queues}
    for move in result.moves:
        assert (move.vhost, move.queue) not in skipped
        verdict = classify(by_ref[move.ref], running)
        assert move.target in verdict.targets  # type: ignore[union-attr]
        assert move.source == by_ref[move.ref].leader
    assert sum(result.after.values()) == sum(result.before.values())


def test_planning_is_deterministic() -> None:
    queues = [mirrored(f"q{i}", "rabbit@a") for i in range(12)]
    assert plan(snapshot(queues)) == plan(snapshot(list(reversed(queues))))


def test_a_snapshot_file_with_the_version_plans_by_that_version() -> None:
    nodes = [{"name": n, "running": True} for n in NODES[:3]]
    queues = [
        {"vhost": "/", "name": f"c{i}", "type": "classic", "node": "rabbit@a", "messages": 0}
        for i in range(3)
    ]
    assert len(plan(Snapshot.from_api(nodes, queues)).moves) == 2  # no version: 3.x rules, empty ones move
    four = Snapshot.from_api(nodes, queues, {"rabbitmq_version": "4.0.5"})
    assert (four.platform.classic_mirroring, four.drain_reported) == (False, False)
    assert not plan(four).moves


def _streams_on_a(
    version: str, count: int = 6, online: tuple[str, ...] = ("rabbit@b", "rabbit@c")
) -> Snapshot:
    queues = [
        Queue("/", f"s{i}", QueueType.STREAM, "rabbit@a", ("rabbit@b", "rabbit@c"), online)
        for i in range(count)
    ]
    queues += [quorum(f"q{i}", "rabbit@a", NODES[:3]) for i in range(3)]
    return replace(snapshot(queues), platform=Platform.from_overview({"rabbitmq_version": version}))


def test_streams_stay_fixed_load_unless_asked_and_then_are_even_on_their_own() -> None:
    four = _streams_on_a("4.0.5")
    assert not [m for m in plan(four).moves if m.type is QueueType.STREAM]
    asked = plan(four, PlanOptions(move_streams=True))
    streams = [m for m in asked.moves if m.type is QueueType.STREAM]
    assert Counter(m.target for m in streams) == {"rabbit@b": 2, "rabbit@c": 2}
    assert asked.after == {"rabbit@a": 3, "rabbit@b": 3, "rabbit@c": 3}
    assert asked.moves[-1].type is QueueType.STREAM  # restarts come after every cheaper move


def test_streams_asked_on_a_version_without_the_primitive_or_the_eval_port_say_why() -> None:
    for version, options, says in [
        ("3.10.8", PlanOptions(move_streams=True), "no rabbit_stream_queue:transfer_leadership/2 (3.12+)"),
        ("3.11.28", PlanOptions(move_streams=True), "RabbitMQ 3.11.28"),
        ("", PlanOptions(move_streams=True), "(unknown version)"),
        ("4.0.5", PlanOptions(move_streams=True, quorum_transfer=False), "see --eval-command"),
    ]:
        result = plan(_streams_on_a(version), options)
        reasons = {s.reason for s in result.skipped if s.queue.startswith("s")}
        assert len(reasons) == 1 and says in reasons.pop(), version
        assert not [m for m in result.moves if m.type is QueueType.STREAM]
    assert Platform(version="3.12.0").stream_transfer and not Platform(version="3.11.9").stream_transfer


def test_a_stream_with_a_member_offline_is_not_restarted() -> None:
    result = plan(_streams_on_a("4.0.5", 2, online=("rabbit@b",)), PlanOptions(move_streams=True))
    assert {s.reason for s in result.skipped} == {"stream with members offline (2 of 3 online)"}
