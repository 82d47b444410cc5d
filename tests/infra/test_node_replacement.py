"""A node's whole life on real nodes: the bootstrap's and the termination hook's cluster steps of
stacks/node_bootstrap.sh, run as they are against local RabbitMQ 3.10 nodes while a publisher runs.

Three replacements in a row, each under a new node name, with quorum and mirrored classic queues:

1. launch-before-terminate (the rolling update's order): the new node boots, ``become_member`` checks it is
   a member with a majority running, grows the queues, waits until any one node may go; then
   ``leave_cluster`` (the termination hook) grows each quorum queue onto the new node, waits until that
   member caught up, and only then drains, shrinks and forgets the old one. A watcher reads every quorum
   queue's Raft state meanwhile: no queue ever has fewer than 3 caught-up members (grow before shrink).
2. terminate-before-launch: ``leave_cluster`` on the old node first, then the new node boots.
3. a node that dies without its hook (SIGKILL): the next node to boot forgets it (``forget_departed_members``).

After each: every member runs, no departed name is left, quorum queues have 3 online members, mirrored
queues 2 synchronised mirrors; at the end no confirmed message is missing. Then one node stops (its
successor still pending) and another, which holds only a follower of a queue, is terminated: it must
refuse to leave. Only ``peer_nodes`` (the Auto Scaling group's instances, an AWS call) is replaced by the
test. Cost: about 3-4 minutes on 2 cores (six node starts, about 110 RabbitMQ CLI calls of ~1 s each);
10-12 minutes when the machine is shared (a CLI call then takes 2-4 s), hence its own timeout. Every node
is stopped however the test ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pika
import pika.exceptions
import pytest

from queue_balancer.local.cluster import RABBITMQ_BIN, LocalCluster, LocalClusterConfig, LocalNode
from queue_balancer.local.layout import LocalClusterError
from stacks.node_user_data import BOOTSTRAP_SCRIPT
from tests.conftest import wait_until
from tests.infra.local_ports import node_ports

QUORUM = [f"orders-q{i}" for i in range(3)]
MIRRORED = [f"audit-c{i}" for i in range(3)]
FOLLOWED = "critical-q"  # declared at the end on a node other than the one that tries to leave
PREFILLED = 200
SETTINGS = {
    "CLUSTER_NAME": "replacement-test",
    "RABBITMQ_VERSION": "3.10.8",
    "NODE_COUNT": "3",
    "QUEUE_TYPE": "classic",
    "POLL_SECONDS": "1",
    "JOIN_TIMEOUT": "120",
    "SYNC_TIMEOUT": "180",
    "LEAVE_WAIT_SECONDS": "120",
}


@dataclass
class Group:
    """The local stand-in for the Auto Scaling group: a cluster object and which nodes are instances."""

    cluster: LocalCluster
    instances: list[LocalNode] = field(default_factory=list)
    next_index: int = 4

    def cli_env(self) -> dict[str, str]:
        """What the RabbitMQ CLI needs to reach these nodes (their cookie and epmd), as on a node."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            {
                "HOME": str(self.cluster.home),
                "ERL_EPMD_PORT": str(self.cluster.config.epmd_port),
                "ERL_EPMD_ADDRESS": "127.0.0.1",
                "RABBITMQ_CONF_ENV_FILE": str(self.cluster.base_dir / "rabbitmq-env.conf"),
                "RABBITMQ_CTL_DIST_PORT_MIN": "0",
                "RABBITMQ_CTL_DIST_PORT_MAX": "0",
                "RABBITMQ_CTL_ERL_ARGS": "-start_epmd false",
            }
        )
        return env

    def run(self, steps: str, timeout: float = 400) -> str:
        """The script's own functions, sourced, with the CLI tools of this machine and the group's names."""
        tools = "".join(
            f'{tool}() {{ "{RABBITMQ_BIN / tool}" "$@"; }}\n'
            for tool in ("rabbitmqctl", "rabbitmq-queues", "rabbitmq-upgrade")
        )
        names = " ".join(n.name for n in self.instances)
        script = (
            f'set -Eeuo pipefail\nsource "$1"\n{tools}peer_nodes() {{ printf "%s\\n" {names}; }}\n{steps}'
        )
        done = subprocess.run(
            ["bash", "-c", script, "bash", str(BOOTSTRAP_SCRIPT)],
            capture_output=True,
            text=True,
            env={**self.cli_env(), **SETTINGS},
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"{steps.strip()} failed:\n{done.stdout}{done.stderr[-4000:]}"
        return done.stderr  # the script logs to stderr

    def status(self, via: LocalNode) -> dict[str, object]:
        out = self.cluster.rabbitmqctl("cluster_status", "--formatter", "json", node=via)
        parsed: dict[str, object] = json.loads(out)
        return parsed

    def start_successor(self) -> LocalNode:
        """A new instance under a new node name; it boots and peer discovery clusters it (as on AWS)."""
        node = self.cluster.config.node(self.next_index)
        self.next_index += 1
        self.cluster.nodes = [*self.cluster.nodes, node]
        self.cluster.up()
        self.instances.append(node)
        return node

    def stop(self, node: LocalNode, sig: signal.Signals = signal.SIGTERM) -> None:
        """The instance goes away (its process ends); the group no longer lists it."""
        pid = next(s.pid for s in self.cluster.status() if s.name == node.name)
        assert pid is not None
        os.kill(pid, sig)
        wait_until(
            lambda: not any(s.running for s in self.cluster.status() if s.name == node.name),
            timeout=60,
            what=f"{node.name} to stop",
        )
        self.instances.remove(node)
        self.cluster.nodes = [n for n in self.cluster.nodes if n.name != node.name]


@dataclass
class Publisher:
    """Publishes with confirms to every test queue, round robin, reconnecting to any running node."""

    nodes: Callable[[], list[LocalNode]]
    credentials: tuple[str, str]
    confirmed: Counter[str] = field(default_factory=Counter)
    in_doubt: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        queues = QUORUM + MIRRORED
        sent = 0
        while not self.stop.is_set():
            channel = self._connect()
            if channel is None:
                continue
            try:
                while not self.stop.is_set():
                    queue = queues[sent % len(queues)]
                    try:
                        channel.basic_publish("", queue, b"m", pika.BasicProperties(delivery_mode=2))
                    except pika.exceptions.AMQPError:
                        self.in_doubt[queue] += 1
                        raise
                    self.confirmed[queue] += 1
                    sent += 1
            except pika.exceptions.AMQPError:
                self.reconnects += 1
            finally:
                with contextlib.suppress(Exception):
                    channel.connection.close()

    def _connect(self) -> pika.adapters.blocking_connection.BlockingChannel | None:
        user, password = self.credentials
        for node in self.nodes():
            try:
                connection = pika.BlockingConnection(
                    pika.ConnectionParameters(
                        "127.0.0.1",
                        node.amqp_port,
                        credentials=pika.PlainCredentials(user, password),
                        connection_attempts=1,
                        socket_timeout=5,
                        blocked_connection_timeout=30,
                    )
                )
            except pika.exceptions.AMQPError:
                continue
            channel = connection.channel()
            channel.confirm_delivery()
            return channel
        self.stop.wait(0.5)  # every node refused: let the cluster settle before the next round
        return None


@dataclass
class CaughtUpWatcher:
    """Reads each quorum queue's Raft state (``quorum_status``) through a node that stays, over and over, and
    keeps the fewest caught-up members seen: running members whose log reaches the leader's commit index
    (within 100 entries: the queues are read one after the other while the publisher runs). It reads with
    the CLI, not with the script's own eval, so that it checks the script instead of sharing its mistakes. A
    reading without a leader or that fails is not counted."""

    group: Group
    via: LocalNode
    fewest: dict[str, int] = field(default_factory=dict)
    readings: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            for name in QUORUM:
                try:
                    out = self.group.cluster.rabbitmq_queues(
                        "-q", "quorum_status", name, "--formatter", "json", node=self.via
                    )
                except LocalClusterError:  # a failed reading is skipped, never counted
                    continue
                rows: list[dict[str, object]] = json.loads(out)
                commits = [int(str(r["Commit Index"])) for r in rows if r.get("Raft State") == "leader"]
                if not commits:
                    continue
                caught_up = sum(
                    1
                    for r in rows
                    if r.get("Raft State") in ("leader", "follower")
                    and int(str(r.get("Log Index", -1))) >= commits[0] - 100
                )
                self.readings += 1
                self.fewest[name] = min(self.fewest.get(name, caught_up), caught_up)


@pytest.fixture(autouse=True)
def quiet_pika() -> Iterator[None]:
    """The publisher reconnects on purpose; pika logs every refused attempt as an error."""
    logger = logging.getLogger("pika")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


@pytest.fixture
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Group]:
    first, epmd = node_ports(88), node_ports(99)
    config = LocalClusterConfig(
        base_dir=tmp_path_factory.mktemp("replacement"),
        nodes=6,  # three instances and their three successors (slots 88..93)
        amqp_base=first.amqp,
        management_base=first.management,
        dist_base=first.dist,
        epmd_port=epmd.epmd,
        node_prefix="life",
    )
    cluster = LocalCluster(config)
    cluster.nodes = config.all_nodes()[:3]
    try:
        cluster.up()
        yield Group(cluster, instances=list(cluster.nodes))
    finally:
        cluster.down(purge=True)


def queue_rows(group: Group) -> list[dict[str, object]]:
    out = group.cluster.rabbitmqctl(
        "-q", "list_queues", "name", "type", "members", "online", "slave_pids", "synchronised_slave_pids",
        "messages", "--formatter", "json", node=group.instances[0],
    )  # fmt: skip
    rows: list[dict[str, object]] = json.loads(out)
    return rows


def assert_healthy(group: Group, departed: list[str]) -> None:
    """Membership is exactly the group's instances, all running; every queue has its replicas."""
    names = sorted(n.name for n in group.instances)
    for node in group.instances:
        status = group.status(node)
        assert sorted(status["disk_nodes"]) == names, status  # type: ignore[call-overload]
        assert sorted(status["running_nodes"]) == names, status  # type: ignore[call-overload]
        assert status["partitions"] == {}
    rows = {str(r["name"]): r for r in queue_rows(group)}
    assert set(rows) == set(QUORUM + MIRRORED)
    for name in QUORUM:
        members = rows[name]["members"]
        assert isinstance(members, list) and sorted(members) == names, rows[name]
        assert sorted(rows[name]["online"]) == names, rows[name]  # type: ignore[call-overload]
        assert not set(members) & set(departed)
    for name in MIRRORED:
        mirrors, synced = rows[name]["slave_pids"], rows[name]["synchronised_slave_pids"]
        assert isinstance(mirrors, list) and isinstance(synced, list)
        assert len(mirrors) == len(synced) == 2, rows[name]


@pytest.mark.timeout(1800)
def test_three_replacements_keep_the_majority_the_replicas_and_every_message(group: Group) -> None:
    cluster = group.cluster
    first = group.instances[0]
    group.run(f"apply_default_policy {first.name}")  # the bootstrap's ha-all policy (queueType classic)
    user, password = cluster.credentials
    with pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1", first.amqp_port, credentials=pika.PlainCredentials(user, password)
        )
    ) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        for name in QUORUM:
            channel.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
        for name in MIRRORED:
            channel.queue_declare(name, durable=True)
        for name in QUORUM + MIRRORED:
            for _ in range(PREFILLED):
                channel.basic_publish("", name, b"p", pika.BasicProperties(delivery_mode=2))
    wait_until(lambda: _replicated(group), timeout=60, what="every queue replicated on 3 nodes")

    publisher = Publisher(nodes=lambda: list(reversed(group.instances)), credentials=(user, password))
    thread = threading.Thread(target=publisher.run, daemon=True)
    thread.start()
    departed: list[str] = []
    try:
        # 1. launch-before-terminate: the successor is a member with its replicas before the old node goes.
        old = group.instances[0]
        new = group.start_successor()
        group.run(f"become_member {new.name}")
        watcher = CaughtUpWatcher(group, via=group.instances[1])
        watching = threading.Thread(target=watcher.run, daemon=True)
        watching.start()
        try:
            log = group.run(f"leave_cluster {old.name}")
        finally:
            watcher.stop.set()
            watching.join(timeout=60)
        assert watcher.readings >= len(QUORUM) and watcher.fewest == dict.fromkeys(QUORUM, 3), watcher
        assert log.count(f"onto {new.name} before {old.name} leaves") == len(QUORUM), log
        group.stop(old)
        departed.append(old.name)
        assert_healthy(group, departed)

        # 2. terminate-before-launch: the hook runs on the old node, then the successor boots.
        old = group.instances[0]
        group.run(f"leave_cluster {old.name}")
        group.stop(old)
        departed.append(old.name)
        new = group.start_successor()
        group.run(f"become_member {new.name}")
        assert_healthy(group, departed)

        # 3. an instance that dies without its hook: the successor forgets it before growing the queues.
        old = group.instances[0]
        group.stop(old, signal.SIGKILL)
        new = group.start_successor()
        log = group.run(f"become_member {new.name}")
        assert f"forgetting {old.name}" in log
        departed.append(old.name)
        assert_healthy(group, departed)
    finally:
        publisher.stop.set()
        thread.join(timeout=30)

    def counts_in_range() -> dict[str, int] | None:
        """Every queue holds its confirmed messages (and at most the ones in doubt); None until then:
        a quorum queue's `messages` comes from metrics its leader refreshes every few seconds."""
        found = {str(r["name"]): int(str(r["messages"])) for r in queue_rows(group)}
        for name in QUORUM + MIRRORED:
            low = PREFILLED + publisher.confirmed[name]
            if not low <= found[name] <= low + publisher.in_doubt[name]:
                return None
        return found

    with contextlib.suppress(pytest.fail.Exception):
        wait_until(counts_in_range, timeout=30, what="queue counts to settle")
    counts = {str(r["name"]): int(str(r["messages"])) for r in queue_rows(group)}
    confirmed = sum(publisher.confirmed.values())
    print(
        f"\n3 replacements: {confirmed} messages confirmed during them, {sum(publisher.in_doubt.values())} "
        f"in doubt, {publisher.reconnects} publisher reconnects; queue counts {counts}"
    )
    assert confirmed > 0 and publisher.reconnects > 0
    for name in QUORUM + MIRRORED:
        low = PREFILLED + publisher.confirmed[name]
        assert low <= counts[name] <= low + publisher.in_doubt[name], (name, counts[name], low)

    # 4. a quorum-critical node: one node is down (its replacement still pending) when another is terminated.
    leaving, first, down = group.instances
    assert_refuses_to_leave(group, leaving, first, down)


def assert_refuses_to_leave(group: Group, leaving: LocalNode, first: LocalNode, down: LocalNode) -> None:
    """The hook's safety check times out, and leave_cluster, called as watch_lifecycle calls it (an ``if``
    condition, where bash ignores ``set -e``), must fail before it drains, shrinks or forgets anything. A
    queue declared on ``first`` leads there: ``leaving`` holds only a follower of it, and the script's own
    check counts the caught-up members of every queue of the node, whatever RabbitMQ's own check
    (await_online_quorum_plus_one) says about followers."""
    user, password = group.cluster.credentials
    with pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1", first.amqp_port, credentials=pika.PlainCredentials(user, password)
        )
    ) as connection:
        connection.channel().queue_declare(FOLLOWED, durable=True, arguments={"x-queue-type": "quorum"})
    quorum = [*QUORUM, FOLLOWED]
    wait_until(
        lambda: all(len(r["members"]) == 3 for r in queue_rows(group) if r["name"] in quorum),  # type: ignore[arg-type]
        timeout=60,
        what="every quorum queue on 3 nodes",
    )
    group.stop(down)
    wait_until(
        lambda: down.name not in group.status(leaving)["running_nodes"],  # type: ignore[operator]
        timeout=60,
        what=f"{leaving.name} to see {down.name} down",
    )

    log = group.run(
        "export LEAVE_WAIT_SECONDS=2 LEAVE_DEADLINE_SECONDS=4\n"
        f'if ! leave_cluster {leaving.name}; then echo "hook: leaving refused" >&2; fi',
        timeout=300,
    )

    assert "hook: leaving refused" in log and "still quorum- or sync-critical" in log, log
    assert "maintenance (drain) mode" not in log, log
    three = sorted(n.name for n in (first, leaving, down))
    rows = [r for r in queue_rows(group) if r["name"] in quorum]
    assert len(rows) == len(quorum) and all(sorted(r["members"]) == three for r in rows), rows  # type: ignore[call-overload]
    assert leaving.name in group.status(first)["running_nodes"]  # type: ignore[operator]


def _replicated(group: Group) -> bool:
    rows = queue_rows(group)
    return len(rows) == 6 and all(
        len(r["members"]) == 3 if r["type"] == "quorum" else len(r["synchronised_slave_pids"]) == 2  # type: ignore[arg-type]
        for r in rows
    )
