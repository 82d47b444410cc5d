"""The local RabbitMQ 4.0.5 cluster (Debian 13's package in a chroot) and the engine on it.

What matters: `local up --rabbitmq 4` really runs 4.0 (classic mirroring removed, so no `ha-*` policy can
exist), the nodes can be stopped, killed and restarted one by one like the 3.10 ones, nothing stays mounted
on the host, and quorum leaders are balanced by the same CLI as on 3.10.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pika
import pytest
import requests

from queue_balancer.cli import main
from queue_balancer.leader_transfer import RaLeaderTransfer
from queue_balancer.local.cluster import ENV_BASE_DIR, LocalCluster
from queue_balancer.local.seed import delete_seeded, seed
from queue_balancer.management import ManagementClient
from queue_balancer.model import Move, Queue, QueueRef, QueueType
from queue_balancer.planner import PlanOptions, plan
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


def _client(cluster: LocalCluster) -> ManagementClient:
    return ManagementClient(cluster.nodes[0].management_url, *cluster.credentials)


def test_it_is_rabbitmq_4_with_classic_mirroring_removed(local_cluster_4: LocalCluster) -> None:
    overview = _client(local_cluster_4).overview()
    assert overview["rabbitmq_version"].startswith("4.0.")
    deprecated = local_cluster_4.rabbitmqctl("list_deprecated_features", "--formatter", "json")
    assert '"classic_queue_mirroring"' in deprecated and '"removed"' in deprecated
    refused = requests.put(
        f"{local_cluster_4.nodes[0].management_url}/api/policies/%2F/ha-test",
        json={"pattern": "^nothing$", "definition": {"ha-mode": "all"}},
        auth=local_cluster_4.credentials,
        timeout=10,
    )
    assert refused.status_code == 400, "4.0 rejects ha-* keys: the engine must never write them"


def test_nothing_is_mounted_on_the_host_and_nodes_restart_one_by_one(local_cluster_4: LocalCluster) -> None:
    assert str(local_cluster_4.runtime.root) not in Path("/proc/self/mountinfo").read_text()
    others = [s.pid for s in local_cluster_4.status()[:2]]
    local_cluster_4.kill_node(3)
    assert not local_cluster_4.status()[2].running
    local_cluster_4.start_node(3)
    assert [s.pid for s in local_cluster_4.status()[:2]] == others and local_cluster_4.status()[2].running
    running = {n["name"] for n in _client(local_cluster_4).nodes() if n.get("running")}
    assert running == {n.name for n in local_cluster_4.nodes}


def test_a_non_voting_member_is_read_and_never_made_leader(
    local_cluster_4: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each queue: 2 voters and, on the third node, a member added as `non_voter` (as a promotable one is
    until it catches up). The API lists it in members and online, and Ra 2.14 would make it leader if asked."""
    monkeypatch.setenv(ENV_BASE_DIR, str(local_cluster_4.base_dir))
    for name in ("RABBITMQ_MANAGEMENT_URL", "RABBITMQ_USER", "RABBITMQ_PASSWORD", "RABBITMQ_EVAL_COMMAND"):
        monkeypatch.delenv(name, raising=False)
    client = _client(local_cluster_4)
    node_one = local_cluster_4.nodes[0]
    names = [f"nv.{i}" for i in range(6)]
    params = pika.ConnectionParameters(
        "127.0.0.1", node_one.amqp_port, "/", pika.PlainCredentials(*local_cluster_4.credentials)
    )
    try:
        with pika.BlockingConnection(params) as connection:
            channel = connection.channel()
            for name in names:
                arguments = {"x-queue-type": "quorum", "x-quorum-initial-group-size": 2}
                channel.queue_declare(
                    name, durable=True, arguments={**arguments, "x-queue-leader-locator": "client-local"}
                )
        listed = {q["name"]: Queue.from_api(q) for q in client.queues_now() if q["name"] in names}
        non_voter = {}
        for name, queue in listed.items():
            assert queue.leader == node_one.name
            [non_voter[name]] = [n.name for n in local_cluster_4.nodes if n.name not in queue.members]
        # One eval for all six (each eval starts an Erlang CLI in the chroot: about a second).
        added = local_cluster_4.eval_erlang(
            "["
            + ", ".join(
                f'rabbit_quorum_queue:add_member(<<"/">>, <<"{name}">>, \'{node}\', non_voter, 30000)'
                for name, node in non_voter.items()
            )
            + "]."
        )
        assert added == "[" + ",".join(["ok"] * len(non_voter)) + "]"
        snapshot = client.snapshot()
        marked = {q.name: q.non_voters for q in snapshot.queues if q.name in names}
        assert marked == {name: (node,) for name, node in non_voter.items()}
        unmarked = replace(snapshot, queues=tuple(replace(q, non_voters=()) for q in snapshot.queues))
        assert any(
            m.target == non_voter[m.queue] for m in plan(unmarked, PlanOptions(pattern=r"^nv\.")).moves
        )

        refused = RaLeaderTransfer(local_cluster_4.eval_erlang).transfer(
            [Move("/", "nv.0", QueueType.QUORUM, node_one.name, non_voter["nv.0"])]
        )
        assert refused[QueueRef("/", "nv.0")] == "{error,{not_voter,non_voter}}"

        assert main(["--local", "balance", "--pattern", r"^nv\."]) == 0
        after = {q["name"]: Queue.from_api(q) for q in client.queues_now() if q["name"] in names}
        assert not [name for name, q in after.items() if q.leader == non_voter[name]]
        assert len({q.leader for q in after.values()}) > 1, "the voters took leaders over"
    finally:
        delete_seeded(local_cluster_4, prefix="nv")


def test_quorum_leaders_are_balanced_and_streams_move_only_when_asked_best_effort(
    local_cluster_4: LocalCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """9 quorum queues and 4 streams of 50 messages, all on node 1: a plain balance spreads the quorum
    leaders 3/3/3 (no ha-* policy written) and leaves the streams; with --move-streams each stream ends moved
    or left by the coordinator on another member (said so, exit 0), every member back, counts whole."""
    monkeypatch.setenv(ENV_BASE_DIR, str(local_cluster_4.base_dir))
    for name in ("RABBITMQ_MANAGEMENT_URL", "RABBITMQ_USER", "RABBITMQ_PASSWORD", "RABBITMQ_EVAL_COMMAND"):
        monkeypatch.delenv(name, raising=False)
    client = _client(local_cluster_4)
    node_one = local_cluster_4.nodes[0]
    names = [f"st.{i}" for i in range(4)]
    params = pika.ConnectionParameters(
        "127.0.0.1", node_one.amqp_port, "/", pika.PlainCredentials(*local_cluster_4.credentials)
    )

    def counts() -> dict[str, int]:
        with pika.BlockingConnection(params) as connection:
            channel = connection.channel()
            return {n: channel.queue_declare(n, passive=True).method.message_count for n in names}

    def streams() -> dict[str, Queue]:
        # The real-time list with queue totals names no stream leader or members (4.0.5): one by one.
        return {n: Queue.from_api(client.queue_now("/", n)) for n in names}

    summary = seed(local_cluster_4, queues=9, messages=20, queue_type="quorum", prefix="four")
    try:
        assert dict(summary.leaders_per_node) == {node_one.name: 9}
        with pika.BlockingConnection(params) as connection:
            channel = connection.channel()
            channel.confirm_delivery()
            for name in names:
                arguments = {"x-queue-type": "stream", "x-queue-leader-locator": "client-local"}
                channel.queue_declare(name, durable=True, arguments=arguments)
                for i in range(50):
                    channel.basic_publish("", name, f"{name}-{i}".encode())
        wait_until(
            lambda: {q.leader for q in streams().values()} == {node_one.name} or None,
            timeout=30,
            what="every stream's writer running on node 1",
        )
        wait_until(lambda: counts() == dict.fromkeys(names, 50) or None, timeout=30, what="stream counts")

        assert main(["--local", "balance", "--pattern", r"^(four|st)\."]) == 0
        assert {q.leader for q in streams().values()} == {node_one.name}, "streams move only when asked"
        quorum = [Queue.from_api(q) for q in client.queues("/") if q["name"].startswith("four.")]
        assert sorted(Counter(q.leader for q in quorum).values()) == [3, 3, 3]
        assert not [p for p in client.policies() if "ha-mode" in p.get("definition", {})]

        capsys.readouterr()
        assert main(["--local", "balance", "--pattern", r"^st\.", "--move-streams", "--format", "json"]) == 0
        run = json.loads(capsys.readouterr().out)
        moves = run["moves"]
        assert len(moves) >= 2 and all(m["type"] == "stream" and m["result"] == "done" for m in moves)
        for move in moves:
            landed = move["outcome"].startswith("moved (best effort, ")
            assert landed or move["outcome"].startswith("best effort: coordinator chose "), move
            assert move["offsets_verified"], "the writer's offsets were read before and after the restart"
        after = streams()
        assert all(set(q.in_sync) == set(q.replicas) and len(q.members) == 3 for q in after.values())
        # The offsets judged the move; a freshly started writer answers 0 for a moment: wait on the count.
        wait_until(
            lambda: counts() == dict.fromkeys(names, 50) or None, timeout=30, what="every message kept"
        )
    finally:
        delete_seeded(local_cluster_4, prefix="st")
        delete_seeded(local_cluster_4, prefix="four")
