"""Real faults during a real `balance` run: nothing confirmed is lost, nothing is left behind.

Each case seeds mirrored classic and quorum queues with uniquely numbered persistent messages
(publisher confirms), injects the fault, then drains every queue and counts the ids.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from urllib.parse import quote

import pika
import pytest

from queue_balancer.cli import main
from queue_balancer.local.cluster import ENV_BASE_DIR, LocalCluster
from queue_balancer.lock import ClusterLock
from queue_balancer.management import ManagementClient
from queue_balancer.movers import POLICY_PREFIX
from tests.conftest import wait_until

MESSAGES = 300
CLASSIC, QUORUM = 8, 2


@pytest.fixture
def client(clean_cluster: LocalCluster) -> Iterator[ManagementClient]:
    user, password = clean_cluster.credentials
    yield ManagementClient(clean_cluster.nodes[0].management_url, user, password)


def seed_numbered(cluster: LocalCluster, client: ManagementClient) -> dict[str, set[int]]:
    """Mirrored classic and quorum queues on node 1, each with MESSAGES confirmed ids."""
    client.put_policy(
        "/",
        "ha-two",
        pattern="^fault\\.c",
        definition={"ha-mode": "exactly", "ha-params": 2, "ha-sync-mode": "automatic"},
        priority=0,
    )
    user, password = cluster.credentials
    params = pika.ConnectionParameters(
        "127.0.0.1", cluster.nodes[0].amqp_port, "/", pika.PlainCredentials(user, password)
    )
    names = [f"fault.c{i}" for i in range(CLASSIC)] + [f"fault.q{i}" for i in range(QUORUM)]
    with pika.BlockingConnection(params) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        for name in names:
            arguments = {"x-queue-type": "quorum"} if ".q" in name else {}
            channel.queue_declare(name, durable=True, arguments=arguments)
            for number in range(MESSAGES):
                channel.basic_publish("", name, str(number).encode(), pika.BasicProperties(delivery_mode=2))
    return {name: set(range(MESSAGES)) for name in names}


def drain_ids(cluster: LocalCluster, names: list[str]) -> dict[str, set[int]]:
    user, password = cluster.credentials
    params = pika.ConnectionParameters(
        "127.0.0.1", cluster.nodes[0].amqp_port, "/", pika.PlainCredentials(user, password)
    )
    found: dict[str, set[int]] = {}
    with pika.BlockingConnection(params) as connection:
        channel = connection.channel()
        for name in names:
            found[name] = set()
            while (message := channel.basic_get(name, auto_ack=True))[0] is not None:
                found[name].add(int(message[2]))
    return found


def temporary_policies(client: ManagementClient) -> list[str]:
    return [p["name"] for p in client.policies() if str(p["name"]).startswith(POLICY_PREFIX)]


def in_sync(client: ManagementClient, names: list[str]) -> bool:
    for name in names:
        queue = client.queue_now("/", name)
        if set(queue.get("slave_nodes") or ()) - set(queue.get("synchronised_slave_nodes") or ()):
            return False
    return True


def balance_process(cluster: LocalCluster) -> subprocess.Popen[str]:
    env = {**os.environ, ENV_BASE_DIR: str(cluster.base_dir)}
    for name in ("RABBITMQ_MANAGEMENT_URL", "RABBITMQ_USER", "RABBITMQ_PASSWORD", "RABBITMQ_EVAL_COMMAND"):
        env.pop(name, None)
    command = [sys.executable, "-m", "queue_balancer.cli", "--local", "balance", "--concurrency", "2"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("when", ["at the start", "mid-run"])
def test_an_interrupted_balance_loses_nothing_and_leaves_no_policy(
    clean_cluster: LocalCluster, client: ManagementClient, signum: int, when: str
) -> None:
    expected = seed_numbered(clean_cluster, client)
    names = sorted(expected)
    wait_until(lambda: in_sync(client, names), timeout=60, what="seeded mirrors in sync")
    process = balance_process(clean_cluster)
    began = time.monotonic()
    if when == "at the start":
        wait_until(
            lambda: temporary_policies(client) or process.poll() is not None, timeout=60, what="a first move"
        )
    else:
        wait_until(
            lambda: (
                (
                    len(temporary_policies(client)) < CLASSIC
                    and any(
                        client.queue_now("/", n)["node"] != clean_cluster.nodes[0].name
                        for n in names
                        if ".c" in n
                    )
                )
                or process.poll() is not None
            ),
            timeout=90,
            what="a first classic move done",
        )
    process.send_signal(signum)
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert time.monotonic() - began < 150
    assert temporary_policies(client) == [], err  # before any cleanup
    if process.returncode == 130:
        assert "interrupted" in err
    wait_until(lambda: in_sync(client, names), timeout=90, what="every queue's mirrors back in sync")
    assert drain_ids(clean_cluster, names) == expected


def test_a_second_run_is_refused_naming_the_holder(
    clean_cluster: LocalCluster,
    client: ManagementClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed_numbered(clean_cluster, client)
    monkeypatch.setenv(ENV_BASE_DIR, str(clean_cluster.base_dir))
    holder = ClusterLock(client, "someone@elsewhere pid 1 (queue-balancer balance)", "first")
    holder.acquire()
    try:
        assert main(["--local", "balance"]) == 1
        assert main(["--local", "cleanup"]) == 1
    finally:
        holder.release()
    err = capsys.readouterr().err
    assert "another balancer run holds this cluster: run first of someone@elsewhere" in err
    assert temporary_policies(client) == []
    assert main(["--local", "balance"]) == 0  # released: the next run goes
    assert client.delete_global_parameter("queue-balancer-lock") is False  # and released its own lock


def test_a_hostile_vhost_and_queue_name_move_without_touching_a_decoy(
    clean_cluster: LocalCluster, client: ManagementClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    vhost = "v/ü ^$.*"
    client.request("PUT", f"vhosts/{quote(vhost, safe='')}")
    user = clean_cluster.credentials[0]
    client.request(
        "PUT",
        f"permissions/{quote(vhost, safe='')}/{quote(user, safe='')}",
        body={"configure": ".*", "write": ".*", "read": ".*"},
    )
    client.put_policy(
        vhost,
        "ha",
        pattern=".*",
        definition={"ha-mode": "exactly", "ha-params": 2, "ha-sync-mode": "automatic"},
        priority=0,
    )
    names = ["a.b (c)|[d]+ ü", "a.b (c)|[d]+ üx", "x" * 255]
    for name in names:
        client.request(
            "PUT",
            f"queues/{quote(vhost, safe='')}/{quote(name, safe='')}",
            body={"durable": True, "node": clean_cluster.nodes[0].name},
        )
    monkeypatch.setenv(ENV_BASE_DIR, str(clean_cluster.base_dir))
    assert main(["--local", "balance"]) == 0
    assert temporary_policies(client) == []
    leaders = {q["name"]: q["node"] for q in client.queues(vhost)}
    assert len(set(leaders.values())) >= 2
