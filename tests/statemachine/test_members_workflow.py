"""A members run through the real ASL (issue 11): `queue-balancer run --members --wait` against the local
endpoint and the session's RabbitMQ 3.10 cluster, whose Lambdas change quorum members through
`rabbitmqctl eval` (the SSM document's member operations, run by the local endpoint on a node).

Cost: 50-80 s on a loaded 2-core machine (six small quorum queues, four member moves, one round and its
verification; most of it `rabbitmqctl eval` through the endpoint's SSM), plus the session cluster and
endpoint that the other state-machine tests share.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from queue_balancer.cli import main
from queue_balancer.counts import AmqpCounter
from queue_balancer.lifecycle import State
from queue_balancer.member_changes import member_changer
from queue_balancer.model import Queue, QueueRef
from tests.conftest import wait_until
from tests.integration.test_balance import declare, publish
from tests.statemachine.conftest import Harness

pytestmark = pytest.mark.integration


def members_per_node(h: Harness) -> Counter[str]:
    """Quorum members per node, from the real-time view (the statistics view lags member changes)."""
    return Counter(n for q in h.client.queues_now() for n in Queue.from_api(q).members)


def message_counts(h: Harness, names: list[str]) -> dict[str, int]:
    user, password = h.cluster.credentials
    counter = AmqpCounter("127.0.0.1", h.cluster.nodes[0].amqp_port, user, password)
    try:
        found = counter.message_counts([QueueRef("/", n) for n in names])
    finally:
        counter.close()
    return {ref.name: count.messages if count else -1 for ref, count in found.items()}


def test_run_members_spreads_quorum_members_and_reports_them(
    cli: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second, third = (n.name for n in cli.cluster.nodes)
    names = [f"members-{i}" for i in range(6)]
    for name in names:
        declare(cli.client, "/", name, **{"x-queue-type": "quorum", "x-quorum-initial-group-size": 2})
        publish(cli.client, "/", name, 20)
    changer = member_changer(cli.client, cli.cluster.eval_erlang)
    assert changer is not None
    refs = [QueueRef("/", n) for n in names]
    changer.add([(r, node) for r in refs for node in (first, second)])  # skewed: none on the third node
    changer.remove([(r, third) for r in refs])
    wait_until(lambda: members_per_node(cli) == {first: 6, second: 6}, timeout=30, what="skewed members")
    before = message_counts(cli, names)
    assert set(before.values()) == {20}
    leaders = {q["name"]: Queue.from_api(q).leader for q in cli.client.queues_now()}

    assert main(["run", "--members", "--poll-seconds", "1", "--wait"]) == 0
    assert "members per node" in capsys.readouterr().out  # the run's report, as `run --wait` prints it
    assert main(["last-report", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["kind"], report["changes"], report["failed"]) == ("members", 8, [])
    assert report["before"] == {first: 6, second: 6, third: 0}
    assert report["after"] == {first: 4, second: 4, third: 4}
    assert members_per_node(cli) == {first: 4, second: 4, third: 4}
    assert message_counts(cli, names) == before
    for queue in cli.client.queues_now():
        parsed = Queue.from_api(queue)
        assert len(parsed.members) == 2 and set(parsed.in_sync) == set(parsed.replicas), parsed
        assert parsed.leader in parsed.members
    moved_leaders = {
        q["name"] for q in cli.client.queues_now() if Queue.from_api(q).leader != leaders[q["name"]]
    }
    assert len(moved_leaders) <= 4  # only a queue whose leader's member moved elects another leader

    record = cli.lifecycle()
    assert (record.state, record.outcome, record.counts.done, record.counts.failed) == (
        State.IDLE,
        "completed",
        4,
        0,
    )
    assert cli.lock() is None and cli.cluster_lock() is None
    [note] = cli.notifications()
    assert note["subject"] == "queue-balancer: local members run completed, members spread 6 -> 0"
    assert "| node | members before | members after |" in note["message"]
    assert "8 member changes in 4 queues, 0 failed" in note["message"]
