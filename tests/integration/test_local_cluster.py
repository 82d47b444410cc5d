"""The local cluster and the seed workload against real RabbitMQ nodes.

What matters to the rest of the project: the cluster is really formed and reachable only on its own
loopback ports, `down` touches nothing it did not start, and `seed` leaves exactly the unbalanced state it
promises (every leader on node 1, the requested message counts, mirrors in sync).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

from queue_balancer.local import cluster as cluster_module
from queue_balancer.local import commands
from queue_balancer.local.cluster import LocalCluster, LocalClusterConfig, LocalClusterError
from queue_balancer.local.layout import LocalNode
from queue_balancer.local.procfs import has_exited, port_accepts
from queue_balancer.local.seed import QueueType, seed, seed_unmirrored
from tests.conftest import TEST_PORTS, wait_until

if TYPE_CHECKING:
    from tests.integration.conftest import Management

pytestmark = pytest.mark.integration
WaitFor = Callable[..., Any]

# Ports a default RabbitMQ (or the developer's own cluster) would use; the test cluster must not.
DEFAULT_PORTS = {4369, 5672, 15672, 25672}
# A second, 1-node cluster for the `down` test: another directory and another port block.
OTHER_EPMD_PORT = TEST_PORTS["epmd_port"] + 50


def _other_config(base_dir: Path) -> LocalClusterConfig:
    """A second, 1-node cluster: another directory and another port block than the session cluster."""
    return LocalClusterConfig(
        base_dir=base_dir,
        nodes=1,
        amqp_base=TEST_PORTS["amqp_base"] + 50,
        management_base=TEST_PORTS["management_base"] + 50,
        dist_base=TEST_PORTS["dist_base"] + 50,
        epmd_port=OTHER_EPMD_PORT,
    )


STATS_SETTLE = 30.0  # the statistics view lags ~5 s; allow for a busy machine


# ---- up / status ---------------------------------------------------------------------------------


def test_a_cli_call_on_a_stopped_cluster_is_refused_and_starts_no_epmd(tmp_path: Path) -> None:
    """rabbitmqctl would start an `epmd -daemon` of its own on the cluster's port, outliving it and
    blocking its next `up`; no node is needed to show the refusal."""
    stopped = LocalCluster(_other_config(tmp_path / "stopped"))
    with pytest.raises(LocalClusterError, match=r"epmd \(127.0.0.1:\d+\) is not running"):
        stopped.eval_erlang("ok.")
    assert not port_accepts(OTHER_EPMD_PORT)


def test_up_is_idempotent(local_cluster: LocalCluster) -> None:
    before = {s.name: s.pid for s in local_cluster.status()}
    started = time.monotonic()
    local_cluster.up()
    assert time.monotonic() - started < 15, "a second up must not restart anything"
    assert {s.name: s.pid for s in local_cluster.status()} == before


def test_one_node_is_restarted_killed_and_brought_back_alone(
    local_cluster: LocalCluster, management: Management
) -> None:
    others = {s.name: s.pid for s in local_cluster.status()[:2]}
    node3 = local_cluster.node(3)
    pid = local_cluster.status()[2].pid

    local_cluster.restart_node(3)
    restarted = local_cluster.status()[2]
    assert restarted.running and restarted.pid != pid and node3.name in _running(management)

    local_cluster.kill_node(3)
    assert restarted.pid and has_exited(restarted.pid) and not local_cluster.status()[2].running
    local_cluster.up()
    assert local_cluster.status()[2].running and node3.name in _running(management)
    assert {s.name: s.pid for s in local_cluster.status()[:2]} == others, "the other nodes are untouched"


def test_up_restarts_a_cluster_whose_nodes_all_crashed(
    local_cluster: LocalCluster, management: Management
) -> None:
    """Issue 8: nodes clustered before, started at once, now and then failed their feature-flag check.

    Restarted nodes start one at a time, node 1 first (the last that `down` stops), each past that check
    (serving its API, or waiting for its peers' tables) before the next starts. After a crash of every
    node none knows it stopped last, so each waits for the others: the hardest restart.
    (`test_down_stops_only_its_own_nodes` covers `up` after a clean `down`.)

    The nodes die while queues are declared and deleted on all of them: a crash that cuts a Mnesia
    transaction in two leaves a node waiting silently, in Mnesia's own start, for a peer that knows its
    outcome (about one such kill in three on 2 cores). `up` must then start the next node, not wait for ever.
    """
    with _declaring_queues(local_cluster, management):
        for node in local_cluster.nodes:
            local_cluster.kill_node(node.index)
    messages: list[str] = []
    try:
        local_cluster.up(messages.append)
        restarted = [m.split()[1] for m in messages if m.startswith("restarting ")]
        assert restarted == [n.name for n in local_cluster.nodes]
        assert _running(management) == {n.name for n in local_cluster.nodes}
    finally:
        print("\n".join(messages))  # shown if the test fails: which node waited, and how
        for queue in management.get("queues", columns="name"):
            management.delete(f"queues/%2F/{queue['name']}")


@contextlib.contextmanager
def _declaring_queues(cluster: LocalCluster, management: Management) -> Iterator[None]:
    """Declare and delete durable queues on every node, from 6 threads, until the block ends; wait until
    the nodes have seen some of them first."""
    stop = threading.Event()
    declared: list[str] = []

    def declare_and_delete(node: LocalNode, worker: int) -> None:
        with requests.Session() as session:
            session.auth = (management.user, management.password)
            for i in itertools.count():
                if stop.is_set():
                    return
                name = f"crash-{node.index}-{worker}-{i}"
                with contextlib.suppress(requests.RequestException):
                    url = f"{node.management_url}/api/queues/%2F/"
                    if session.put(url + name, json={"durable": True}, timeout=5).ok:
                        declared.append(name)
                    session.delete(url + f"crash-{node.index}-{worker}-{i - 1}", timeout=5)

    threads = [
        threading.Thread(target=declare_and_delete, args=(node, worker), daemon=True)
        for node in cluster.nodes
        for worker in range(2)
    ]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: len(declared) >= 30, timeout=60, what="queues declared on the nodes")
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)


def test_status_lists_three_running_nodes_with_the_configured_names_and_ports(
    local_cluster: LocalCluster, management: Management
) -> None:
    statuses = local_cluster.status()
    assert [s.name for s in statuses] == ["qb1@localhost", "qb2@localhost", "qb3@localhost"]
    assert all(s.running and s.pid for s in statuses)
    assert len({s.pid for s in statuses}) == 3
    config = local_cluster.config
    assert (config.amqp_base, config.management_base, config.dist_base) == (
        TEST_PORTS["amqp_base"],
        TEST_PORTS["management_base"],
        TEST_PORTS["dist_base"],
    )
    for i, s in enumerate(statuses):
        assert (s.amqp_port, s.management_port, s.dist_port) == (
            config.amqp_base + i,
            config.management_base + i,
            config.dist_base + i,
        )
    nodes = management.get("nodes", columns="name,running")
    assert sorted((n["name"], n["running"]) for n in nodes) == [(s.name, True) for s in statuses]


def test_every_node_serves_its_management_api_and_amqp(local_cluster: LocalCluster) -> None:
    for node in local_cluster.nodes:
        whoami = requests.get(f"{node.management_url}/api/whoami", auth=local_cluster.credentials, timeout=10)
        assert whoami.status_code == 200
        assert "administrator" in whoami.json()["tags"]
        assert _accepts(node.amqp_port)
        assert _accepts(node.dist_port)
    guest = requests.get(
        f"{local_cluster.nodes[0].management_url}/api/users/guest", auth=local_cluster.credentials, timeout=10
    )
    assert guest.status_code == 404, "guest must be deleted"


def test_listens_only_on_its_own_ports_and_only_on_loopback(local_cluster: LocalCluster) -> None:
    owned = {local_cluster.config.epmd_port}
    for node in local_cluster.nodes:
        owned |= {node.amqp_port, node.management_port, node.dist_port}
    pids = [s.pid for s in local_cluster.status() if s.pid]
    epmd_pid = int((local_cluster.base_dir / "epmd.pid").read_text())
    listeners = {sock for pid in [*pids, epmd_pid] for sock in _listening_sockets(pid)}
    assert {port for _, port in listeners} == owned
    assert not {port for _, port in listeners} & DEFAULT_PORTS
    assert {address for address, _ in listeners} <= {"127.0.0.1", "::1"}, listeners


def test_cookie_is_private_and_the_cli_reaches_every_node(local_cluster: LocalCluster) -> None:
    cookie = local_cluster.base_dir / "home" / ".erlang.cookie"
    assert cookie.stat().st_mode & 0o777 == 0o400
    for node in local_cluster.nodes:
        assert local_cluster.eval_erlang("node()", node=node) == node.name
    status = local_cluster.rabbitmqctl("cluster_status", "--formatter", "json")
    assert all(node.name in status for node in local_cluster.nodes)


def test_cli_errors_name_the_command_and_hide_the_password(local_cluster: LocalCluster) -> None:
    with pytest.raises(LocalClusterError) as error:
        local_cluster.rabbitmqctl("change_password", "no-such-user", local_cluster.config.password)
    message = str(error.value)
    assert "rabbitmqctl" in message and "exit code" in message and "no-such-user" in message
    assert f" {local_cluster.config.password}`" not in message


# ---- failure messages ----------------------------------------------------------------------------


def test_a_taken_port_is_named(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        config = LocalClusterConfig(
            base_dir=tmp_path,
            nodes=1,
            amqp_base=port,
            management_base=TEST_PORTS["management_base"] + 60,
            dist_base=TEST_PORTS["dist_base"] + 60,
            epmd_port=TEST_PORTS["epmd_port"] + 60,
        )
        with pytest.raises(LocalClusterError, match=f"AMQP port {port} .* in use by pid {os.getpid()}"):
            LocalCluster(config).up()
    assert not (tmp_path / "epmd.pid").exists(), "nothing may be started when a port is taken"


def test_missing_rabbitmq_server_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster_module, "RABBITMQ_SERVER", tmp_path / "no" / "rabbitmq-server")
    with pytest.raises(LocalClusterError, match="apt-get install rabbitmq-server"):
        LocalCluster(_other_config(tmp_path)).up()


# ---- seed ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("queue_type", "vhost", "classic", "quorum"),
    [("classic", "/", 4, 0), ("quorum", "seed test/é", 0, 4), ("mixed", "mixed", 2, 2)],
)
def test_seed_puts_every_leader_on_node_1_with_the_requested_messages(
    clean_cluster: LocalCluster,
    management: Management,
    wait_for: WaitFor,
    queue_type: QueueType,
    vhost: str,
    classic: int,
    quorum: int,
) -> None:
    summary = seed(clean_cluster, queues=4, messages=50, queue_type=queue_type, vhost=vhost)

    node1 = clean_cluster.nodes[0].name
    others = {n.name for n in clean_cluster.nodes[1:]}
    assert summary.queue_names == ("seed.001", "seed.002", "seed.003", "seed.004")
    assert (summary.created, summary.reused, summary.classic, summary.quorum) == (4, 0, classic, quorum)
    assert summary.messages_published == 200
    assert dict(summary.leaders_per_node) == {node1: 4}
    _assert_settled(wait_for, management, vhost, dict.fromkeys(summary.queue_names, 50), node1, others)

    again = seed(clean_cluster, queues=4, messages=25, queue_type=queue_type, vhost=vhost)
    assert (again.created, again.reused, again.messages_published) == (0, 4, 100)
    _assert_settled(wait_for, management, vhost, dict.fromkeys(summary.queue_names, 75), node1, others)


def test_seed_moves_leaders_back_to_node_1(
    clean_cluster: LocalCluster, management: Management, wait_for: WaitFor
) -> None:
    seed(clean_cluster, queues=2, messages=20, queue_type="mixed", prefix="back")
    node3 = clean_cluster.nodes[2].name
    for module, name in (("rabbit_mirror_queue_misc", "back.001"), ("rabbit_quorum_queue", "back.002")):
        clean_cluster.eval_erlang(
            f'{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"/">>, queue, <<"{name}">>)), '
            f"{module}:transfer_leadership(Q, '{node3}')"
        )
    wait_for(
        lambda: {_leader(q) for q in management.queues("/", disable_stats="true")} == {node3},
        timeout=30,
        what="both leaders on node 3",
    )

    summary = seed(clean_cluster, queues=2, messages=0, queue_type="mixed", prefix="back")

    node1 = clean_cluster.nodes[0].name
    assert summary.transferred == 2
    assert dict(summary.leaders_per_node) == {node1: 2}
    others = {n.name for n in clean_cluster.nodes[1:]}
    _assert_settled(wait_for, management, "/", {"back.001": 20, "back.002": 20}, node1, others)


def test_seed_unmirrored_adds_fixed_load_no_policy_matches(
    clean_cluster: LocalCluster, management: Management, wait_for: WaitFor
) -> None:
    seed(clean_cluster, queues=2, messages=5, queue_type="classic")  # the seed-ha policy must not match
    summary = seed_unmirrored(clean_cluster, queues=4, with_messages=2, messages=7)

    node1 = clean_cluster.nodes[0].name
    assert summary.queue_names == ("fixed.001", "fixed.002", "fixed.003", "fixed.004")
    assert dict(summary.leaders_per_node) == {node1: 4}

    def settled() -> bool:
        queues = {q["name"]: q for q in management.queues("/") if q["name"].startswith("fixed.")}
        return {n: q.get("messages") for n, q in queues.items()} == {
            "fixed.001": 7,
            "fixed.002": 7,
            "fixed.003": 0,
            "fixed.004": 0,
        } and all(not q.get("policy") and not q.get("slave_nodes") for q in queues.values())

    wait_for(settled, timeout=STATS_SETTLE, what="unmirrored queues with 7, 7, 0, 0 messages")


# ---- CLI -----------------------------------------------------------------------------------------


def test_cli_status_and_seed(
    clean_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QUEUE_BALANCER_LOCAL_DIR", str(clean_cluster.base_dir))
    monkeypatch.setenv("RABBITMQ_USER", clean_cluster.config.user)
    monkeypatch.setenv("RABBITMQ_PASSWORD", clean_cluster.config.password)

    assert _cli("local", "status") == 0
    out = capsys.readouterr().out
    # One line per node; the AWS endpoint line says "running" too when a test started an endpoint.
    node_lines = [line for line in out.splitlines() if "@" in line and "running" in line]
    assert len(node_lines) == 3 and clean_cluster.nodes[0].management_url in out

    assert (
        _cli("local", "seed", "--queues", "3", "--messages", "4", "--type", "quorum", "--prefix", "cli") == 0
    )
    captured = capsys.readouterr()
    assert "3 queue(s) cli.001..cli.003" in captured.out
    assert "publishing 4 persistent message(s)" in captured.err


def test_cli_error_is_one_line_and_exit_code_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QUEUE_BALANCER_LOCAL_DIR", str(tmp_path / "never-started"))
    assert _cli("local", "seed", "--queues", "1", "--messages", "1", "--type", "classic") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "queue-balancer local up" in err
    assert _cli("local", "status") == 3  # nothing running there


def test_cli_up_refuses_another_rabbitmq_version_in_the_same_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    four = dataclasses.replace(_other_config(tmp_path), rabbitmq="4")
    (tmp_path / "cluster.json").write_text(json.dumps(four.layout()))
    monkeypatch.setenv("QUEUE_BALANCER_LOCAL_DIR", str(tmp_path))
    assert _cli("local", "up", "--rabbitmq", "3", "--no-endpoint") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a RabbitMQ 4 cluster" in err and "down --purge" in err
    assert LocalClusterConfig.recorded(tmp_path) == four


# ---- down ----------------------------------------------------------------------------------------


def test_down_stops_only_its_own_nodes(local_cluster: LocalCluster, tmp_path: Path) -> None:
    other = LocalCluster(_other_config(tmp_path / "other"))
    try:
        other.up()
        other_pid = other.status()[0].pid
        ours = [s.pid for s in local_cluster.status()]

        local_cluster.down()

        assert not any(s.running for s in local_cluster.status())
        assert all(has_exited(pid) for pid in ours if pid)
        assert not _accepts(local_cluster.config.epmd_port), "our epmd must be stopped too"
        assert other.status()[0].running and other.status()[0].pid == other_pid
        overview = requests.get(
            f"{other.nodes[0].management_url}/api/overview", auth=other.credentials, timeout=10
        )
        assert overview.status_code == 200
        assert _accepts(OTHER_EPMD_PORT)
        local_cluster.down()  # idempotent
    finally:
        other.down(purge=True)
        messages: list[str] = []
        local_cluster.up(messages.append)  # the session cluster is shared: leave it running for later tests
    restarted = [m.split()[1] for m in messages if m.startswith("restarting ")]
    assert restarted == [n.name for n in local_cluster.nodes], "clustered nodes restart one at a time"
    assert not other.status()[0].running
    assert not _accepts(OTHER_EPMD_PORT)
    assert not (tmp_path / "other").exists(), "--purge deletes the cluster's directory"


# ---- helpers -------------------------------------------------------------------------------------


def _running(management: Management) -> set[str]:
    return {n["name"] for n in management.get("nodes", columns="name,running") if n["running"]}


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="queue-balancer")
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def _leader(queue: dict[str, Any]) -> str:
    return str(queue.get("leader") or queue.get("node"))


def _assert_settled(
    wait_for: WaitFor,
    management: Management,
    vhost: str,
    expected: dict[str, int],
    leader: str,
    others: set[str],
) -> None:
    """Wait until the statistics show the expected counts, then check leaders, members and mirrors."""

    def counts() -> bool:
        queues = {q["name"]: q.get("messages") for q in management.queues(vhost, columns="name,messages")}
        return queues == expected

    wait_for(counts, timeout=STATS_SETTLE, what=f"message counts {expected} in vhost {vhost!r}")
    for queue in management.queues(vhost, disable_stats="true"):
        assert _leader(queue) == leader, queue
        if queue["type"] == "quorum":
            assert set(queue["members"]) == {leader, *others}, queue
        else:
            assert set(queue["synchronised_slave_nodes"]) == others, queue


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket ``pid`` listens on, read from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A = LISTEN
                continue
            address_hex, port_hex = fields[1].split(":")
            raw = bytes.fromhex(address_hex)
            # /proc prints addresses as host-order 32-bit words.
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add((socket.inet_ntop(family, packed), int(port_hex, 16)))
    return found
