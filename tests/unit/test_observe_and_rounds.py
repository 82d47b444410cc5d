"""Never judge on stale statistics; one round policy; the traffic gate."""

from __future__ import annotations

from typing import Any, cast

import pytest

from queue_balancer.cli.connection import Connection
from queue_balancer.cli.engine import eval_notices, round_options
from queue_balancer.counts import AmqpCounter, CountUnavailable, amqp_listeners, discover_amqp
from queue_balancer.errors import ClusterNotReady, NotFound
from queue_balancer.maintenance import with_maintenance
from queue_balancer.management import ManagementClient
from queue_balancer.model import Move, Plan, QueueRef, QueueType, Snapshot
from queue_balancer.movers import MoveProgress, Phase
from queue_balancer.observe import looks_unsettled, refresh_unsettled, settle
from queue_balancer.planner import PlanOptions, plan
from queue_balancer.safety import another_round, traffic_gate

NODES = [{"name": n, "running": True} for n in ("a", "b", "c")]


def classic(name: str, leader: str = "a", **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "vhost": "/",
        "name": name,
        "type": "classic",
        "node": leader,
        "slave_nodes": ["b", "c"],
        "synchronised_slave_nodes": ["b", "c"],
        "state": "running",
        "messages": 10,
    }
    return data | fields


class RealtimeView:
    """What ``GET /api/queues/{vhost}/{name}?disable_stats=true`` answers, per queue; counts the reads."""

    def __init__(self, now: dict[str, dict[str, Any]]) -> None:
        self.now = now
        self.reads: list[str] = []

    def queue_now(self, vhost: str, name: str) -> dict[str, Any]:
        self.reads.append(name)
        if name not in self.now:
            raise NotFound(f"queue {name} not found", status=404)
        return self.now[name]


def test_a_queue_the_statistics_show_syncing_is_reread_and_planned_when_it_is_in_sync() -> None:
    stale = Snapshot.from_api(
        NODES,
        [
            classic("q1", state="syncing"),
            classic("q2", synchronised_slave_nodes=["b"]),
            classic("q3"),
            classic("q4"),
        ],
    )
    assert plan(stale).skipped  # what the statistics alone would say
    view = RealtimeView({"q1": classic("q1"), "q2": classic("q2")})
    fresh = refresh_unsettled(view, stale)
    assert sorted(view.reads) == ["q1", "q2"]  # only the queues that looked unsettled
    result = plan(fresh)
    assert result.skipped == () and len(result.moves) == 2
    assert fresh.queues[0].messages == 10  # counts stay the statistics'


def test_a_queue_still_syncing_keeps_a_true_reason_and_a_deleted_one_is_dropped() -> None:
    stale = Snapshot.from_api(NODES, [classic("q1", state="syncing"), classic("gone", state="syncing")])
    fresh = refresh_unsettled(RealtimeView({"q1": classic("q1", state="syncing")}), stale)
    assert [q.name for q in fresh.queues] == ["q1"]
    [skipped] = plan(fresh).skipped
    assert skipped.reason == "queue is syncing"


def test_a_new_master_listed_among_its_mirrors_is_not_out_of_sync() -> None:
    """The statistics view can list a just-promoted master as its own mirror: '2 of 2 synchronised'."""
    queue = Snapshot.from_api(NODES, [classic("q", slave_nodes=["a", "b", "c"])]).queues[0]
    assert queue.replicas == ("b", "c") and not looks_unsettled(queue)


def test_settle_waits_a_bounded_time_for_queues_still_syncing() -> None:
    answers = iter(["syncing", "syncing", "running"])
    clock = [0.0]

    class Source:
        def snapshot(self) -> Snapshot:
            return Snapshot.from_api(NODES, [classic("q", state=next(answers))])

    settled = settle(
        Source(), timeout=10, sleep=lambda s: clock.__setitem__(0, clock[0] + s), clock=lambda: clock[0]
    )
    assert settled.queues[0].state == "running" and clock[0] == 1.0

    answers = iter(["syncing"] * 100)
    late = settle(
        Source(), timeout=2, sleep=lambda s: clock.__setitem__(0, clock[0] + s), clock=lambda: clock[0]
    )
    assert late.queues[0].state == "syncing"


def _plan(before: dict[str, int], after: dict[str, int], moves: int) -> Plan:
    move = Move("/", "q", QueueType.CLASSIC, "a", "b")
    return Plan(tuple(before), before, after, (move,) * moves, ())


def test_another_round_while_rounds_are_left_and_the_replan_improves_the_spread() -> None:
    better = _plan({"a": 3, "b": 0}, {"a": 2, "b": 1}, 1)
    assert another_round(better, 1, 3)
    assert not another_round(better, 3, 3)  # no rounds left
    assert not another_round(_plan({"a": 2, "b": 1}, {"a": 2, "b": 1}, 0), 1, 3)  # nothing to do
    assert not another_round(_plan({"a": 2, "b": 1}, {"a": 1, "b": 2}, 1), 1, 3)  # no better


def test_the_traffic_gate_names_every_rate_above_its_limit() -> None:
    overview = {"message_stats": {"publish_details": {"rate": 120.0}, "deliver_get_details": {"rate": 5.0}}}
    traffic_gate(overview, None, None)
    traffic_gate(overview, 200, 10)
    with pytest.raises(ClusterNotReady, match=r"publish rate 120\.0/s is above 100/s"):
        traffic_gate(overview, 100, 10)


OVERVIEW = {
    "node": "rabbit@b",
    "listeners": [
        {"node": "rabbit@a", "protocol": "amqp", "ip_address": "::", "port": 5701},
        {"node": "rabbit@b", "protocol": "amqp", "ip_address": "::", "port": 5702},
        {"node": "rabbit@b", "protocol": "http", "ip_address": "::", "port": 15672},
        {"node": "rabbit@b", "protocol": "amqp/ssl", "ip_address": "::", "port": 5671},
    ],
}


def test_the_amqp_listener_comes_from_the_management_api() -> None:
    assert amqp_listeners(OVERVIEW) == {"rabbit@a": ("::", 5701), "rabbit@b": ("::", 5702)}
    assert discover_amqp("http://nlb.internal:15672", OVERVIEW) == ("nlb.internal", 5702)
    assert discover_amqp("http://nlb.internal:15672", OVERVIEW, 5672) == ("nlb.internal", 5672)
    specific = {
        "node": "n",
        "listeners": [{"node": "n", "protocol": "amqp", "ip_address": "10.0.1.5", "port": 5672}],
    }
    assert discover_amqp("http://nlb.internal:15672", specific) == ("10.0.1.5", 5672)
    assert discover_amqp("http://h:15672", {}) == ("h", 5672)


def test_unreachable_amqp_is_said_once() -> None:
    said: list[str] = []
    counter = AmqpCounter("127.0.0.1", 1, "u", "p", timeout=1.0, on_unreachable=said.append)
    refs = [QueueRef("/", "q")]
    for _ in range(2):
        with pytest.raises(CountUnavailable):
            counter.message_counts(refs)
    assert len(said) == 1 and "127.0.0.1:1" in said[0] and "--amqp-port" in said[0]


def test_quorum_queues_that_cannot_move_are_said_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    quorum = {
        "vhost": "/",
        "name": "qq",
        "type": "quorum",
        "leader": "a",
        "members": ["a", "b"],
        "online": ["a"],
    }
    reported = [{**n, "being_drained": False} for n in NODES]
    snapshot = Snapshot.from_api(reported, [quorum, classic("c")])
    without = Connection(cast(ManagementClient, None), None, None)
    eval_notices(without, snapshot)
    [line] = capsys.readouterr().err.splitlines()
    assert "1 quorum queues cannot be moved" in line and "--eval-command" in line
    eval_notices(without, Snapshot.from_api(reported, [classic("c")]))
    assert capsys.readouterr().err == ""


def test_maintenance_mode_that_cannot_be_read_is_said_once_at_the_top(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """3.10 without an eval command: /api/nodes has no being_drained, and nothing else can read it."""
    blind = Snapshot.from_api(NODES, [classic("c")], {"rabbitmq_version": "3.10.8"})
    without = Connection(cast(ManagementClient, None), None, None)
    eval_notices(without, blind)
    [line] = capsys.readouterr().err.splitlines()
    assert "maintenance mode cannot be read (RabbitMQ 3.10.8" in line
    assert "treated as not drained" in line and "--eval-command" in line
    eval_notices(without, with_maintenance(blind, lambda nodes: {"b"}))
    assert capsys.readouterr().err == ""


def history(done: int) -> list[MoveProgress]:
    return [
        MoveProgress(Move("/", f"q{i}", QueueType.CLASSIC, "a", "b", 0), Phase.DONE, 0.0, 1.0)
        for i in range(done)
    ]


def test_max_moves_bounds_the_whole_run_counting_each_move_once() -> None:
    """ops-2 #9 (b): --max-moves 10 with 4 then 2 moves leaves 4 for round 3 (it used to leave 0)."""
    run = PlanOptions(max_moves=10)
    assert round_options(run, history(4)).max_moves == 6
    assert round_options(run, history(6)).max_moves == 4
    assert round_options(run, history(12)).max_moves == 0
    assert round_options(PlanOptions(), history(50)) == PlanOptions()


def test_a_stream_its_coordinator_left_elsewhere_is_not_planned_again_in_the_run() -> None:
    """ops-3 #4: under a publisher the writer wins every election: each re-plan restarted it 3 more times."""

    def stream(name: str) -> dict[str, Any]:
        return {**classic(name), "type": "stream", "members": ["a", "b", "c"], "online": ["a", "b", "c"]}

    snapshot = Snapshot.from_api(NODES, [stream(f"s{i}") for i in (1, 2, 3)], {"rabbitmq_version": "4.0.5"})
    options = PlanOptions(move_streams=True)
    first, second = plan(snapshot, options).moves
    left = MoveProgress(
        first, Phase.DONE, 0.0, 1.0, outcome=f"best effort: coordinator chose a, not {first.target}"
    )
    landed = MoveProgress(second, Phase.DONE, 0.0, 1.0, outcome="moved (best effort, 1 attempt)")
    again = plan(snapshot, round_options(options, [left, landed]))
    assert again.moves and first.queue not in {m.queue for m in again.moves}
    assert first.queue in {m.queue for m in plan(snapshot, round_options(options, [landed])).moves}
    assert any(s.queue == first.queue and "earlier in this run" in s.reason for s in again.skipped)
