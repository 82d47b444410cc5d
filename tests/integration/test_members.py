"""Quorum members on real nodes: spread by `balance --members`, and the replacement of a node under a new name.

Cost: the first two tests run on the shared session clusters (~15 s and ~5 s a version); each replacement
test starts its own cluster (3 nodes, then 5 nodes) on its own port block (the session block + 70), stops
one node, starts a new one under a new name and forgets the old one (~1 min each on 2 cores). Every cluster
is stopped however the test ends.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from queue_balancer.cli import main
from queue_balancer.counts import AmqpCounter
from queue_balancer.local.cluster import ENV_BASE_DIR, LocalCluster, LocalClusterConfig
from queue_balancer.management import ManagementClient
from queue_balancer.member_changes import member_changer
from queue_balancer.model import Queue, QueueRef
from stacks.node_user_data import BOOTSTRAP_SCRIPT
from tests.conftest import TEST_PORTS, wait_until
from tests.integration.test_balance import declare, publish

REPLACEMENT_PORT_SHIFT = 70  # test_local_cluster uses the session block + 50


def members_per_node(client: ManagementClient) -> Counter[str]:
    """Quorum members per node, from the real-time view (the statistics view lags member changes)."""
    return Counter(n for q in client.queues_now() for n in Queue.from_api(q).members)


def counts(cluster: LocalCluster, names: list[str]) -> dict[str, int]:
    user, password = cluster.credentials
    counter = AmqpCounter("127.0.0.1", cluster.nodes[0].amqp_port, user, password)
    try:
        found = counter.message_counts([QueueRef("/", n) for n in names])
    finally:
        counter.close()
    return {ref.name: count.messages if count else -1 for ref, count in found.items()}


def run_cli(base_dir: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """`queue-balancer --local ... --format json` against the cluster in ``base_dir``."""
    monkeypatch.setenv(ENV_BASE_DIR, str(base_dir))
    for name in ("RABBITMQ_MANAGEMENT_URL", "RABBITMQ_USER", "RABBITMQ_PASSWORD", "RABBITMQ_EVAL_COMMAND"):
        monkeypatch.delenv(name, raising=False)
    return main(["--local", *args, "--format", "json"])


@pytest.fixture(params=["3.10", "4.0"])
def versioned(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """The session cluster of each version: 3.10 changes members through eval, 4.0 through the HTTP API."""
    chosen: LocalCluster = request.getfixturevalue(
        "clean_cluster" if request.param == "3.10" else "local_cluster_4"
    )
    yield chosen
    user, password = chosen.credentials
    client = ManagementClient(chosen.nodes[0].management_url, user, password)
    for queue in client.queues_now():
        if str(queue["name"]).startswith("members-"):
            client.request("DELETE", f"queues/%2F/{queue['name']}")


def test_balance_members_spreads_replicas_and_keeps_every_message(
    versioned: LocalCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = versioned
    user, password = cluster.credentials
    client = ManagementClient(cluster.nodes[0].management_url, user, password)
    changer = member_changer(client, cluster.eval_erlang)
    assert changer is not None
    names = [f"members-{i}" for i in range(6)]
    first, second, third = (n.name for n in cluster.nodes)
    for name in names:
        declare(client, "/", name, **{"x-queue-type": "quorum", "x-quorum-initial-group-size": 2})
        publish(client, "/", name, 20)
    refs = [QueueRef("/", n) for n in names]
    # Skew them: every queue on the first two nodes only.
    changer.add([(r, node) for r in refs for node in (first, second)])
    changer.remove([(r, third) for r in refs])
    wait_until(lambda: members_per_node(client) == {first: 6, second: 6}, timeout=30, what="skewed members")
    before = counts(cluster, names)
    assert set(before.values()) == {20}

    code = run_cli(cluster.base_dir, monkeypatch, "balance", "--members")
    summary = json.loads(capsys.readouterr().out)
    assert code == 0, summary["failed"]
    assert summary["changes"] == 8  # 4 members move: an add and a remove each
    assert members_per_node(client) == {first: 4, second: 4, third: 4}
    assert counts(cluster, names) == before
    for queue in client.queues_now():
        parsed = Queue.from_api(queue)
        assert len(parsed.members) == 2 and set(parsed.in_sync) == set(parsed.replicas), parsed


def test_grown_queues_keep_their_members_unless_a_smaller_group_size_is_asked_for(
    versioned: LocalCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """After `rabbitmq-queues grow <node> all` queues have more members than declared: the plan leaves them
    (an explicit --group-size shrinks); a target group size (4.x policy key, 3.x argument) is read as
    declared."""
    cluster = versioned
    user, password = cluster.credentials
    client = ManagementClient(cluster.nodes[0].management_url, user, password)
    changer = member_changer(client, cluster.eval_erlang)
    assert changer is not None
    nodes = [n.name for n in cluster.nodes]
    grown = [f"members-grown-{i}" for i in range(3)]
    for name in grown:
        declare(client, "/", name, **{"x-queue-type": "quorum", "x-quorum-initial-group-size": 2})
    on_4 = not client.version().startswith("3.")
    target = {"x-quorum-target-group-size": 3} if not on_4 else {}  # 3.x has no such policy key
    declare(
        client,
        "/",
        "members-target",
        **{"x-queue-type": "quorum", "x-quorum-initial-group-size": 1},
        **target,
    )
    if on_4:
        client.put_policy(
            "/", "members-target", pattern="^members-target$", definition={"target-group-size": 3}, priority=0
        )
    try:
        listed = {q["name"]: Queue.from_api(q) for q in client.queues_now()}
        changer.add(
            [(QueueRef("/", n), node) for n in grown for node in nodes if node not in listed[n].members]
        )

        def ready() -> bool:
            queues = {q.name: q for q in client.members_snapshot().queues}
            return all(len(queues[n].members) == 3 == 1 + len(queues[n].in_sync) for n in grown) and (
                queues["members-target"].target_group_size == 3  # the statistics view shows the policy late
            )

        wait_until(ready, timeout=30, what="every grown queue with 3 members online, the target read")
        scope = ("--pattern", "^members-")  # the 4.0 session cluster may hold other tests' queues

        assert run_cli(cluster.base_dir, monkeypatch, "plan", "--members", *scope) == 0
        kept = json.loads(capsys.readouterr().out)
        changes = {m["queue"]: (len(m["add"]), len(m["remove"])) for m in kept["moves"]}
        assert changes == {"members-target": (2, 0)}  # grown to its target group size, nothing shrunk

        assert run_cli(cluster.base_dir, monkeypatch, "plan", "--members", "--group-size", "2", *scope) == 0
        shrunk = json.loads(capsys.readouterr().out)
        changes = {m["queue"]: (len(m["add"]), len(m["remove"])) for m in shrunk["moves"]}
        assert changes == {**dict.fromkeys(grown, (0, 1)), "members-target": (2, 0)}
    finally:
        if on_4:
            client.delete_policy("/", "members-target")


@pytest.fixture(params=[3, 5], ids=["3-nodes", "5-nodes"])
def replaced(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    """A cluster of N nodes whose config has room for one more: node N+1 replaces node N in the test."""
    size = int(request.param)
    shift = REPLACEMENT_PORT_SHIFT
    config = LocalClusterConfig(
        base_dir=tmp_path_factory.mktemp(f"replacement-{size}"),
        nodes=size + 1,
        amqp_base=TEST_PORTS["amqp_base"] + shift,
        management_base=TEST_PORTS["management_base"] + shift,
        dist_base=TEST_PORTS["dist_base"] + shift,
        epmd_port=TEST_PORTS["epmd_port"] + shift,
    )
    cluster = LocalCluster(config)
    cluster.nodes = config.all_nodes()[:size]  # the replacement node starts later
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down(purge=True)


def replace_last_node(cluster: LocalCluster) -> tuple[str, str]:
    """Stop the last node, start a new one under a new name, forget the old one (the cluster-life steps)."""
    size = len(cluster.nodes)
    cluster.nodes = cluster.config.all_nodes()  # the replacement node joins the ones the fixture started
    old, new = cluster.node(size), cluster.node(size + 1)
    cluster.stop_node(size)
    cluster.start_node(size + 1)
    cluster.rabbitmqctl("forget_cluster_node", old.name)
    cluster.nodes = [n for n in cluster.nodes if n != old]
    return old.name, new.name


def test_a_replaced_node_gets_its_share_of_members_and_the_departed_one_none(
    replaced: LocalCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = replaced
    size = len(cluster.nodes)
    user, password = cluster.credentials
    client = ManagementClient(cluster.nodes[0].management_url, user, password)
    names = [f"replicated-{i:02}" for i in range(2 * size)]
    for name in names:
        declare(client, "/", name, **{"x-queue-type": "quorum", "x-quorum-initial-group-size": 3})
        publish(client, "/", name, 10)
    wait_until(lambda: sum(members_per_node(client).values()) == 3 * len(names), timeout=30, what="members")
    before = counts(cluster, names)

    old, new = replace_last_node(cluster)
    left = members_per_node(client)
    assert left[new] == 0
    code = run_cli(cluster.base_dir, monkeypatch, "balance", "--members")
    summary = json.loads(capsys.readouterr().out)
    print(f"\nreplacement on {size} nodes: {json.dumps(summary)}")
    assert code == 0, summary["failed"]
    after = members_per_node(client)
    assert old not in after
    nodes = [n.name for n in cluster.nodes]
    assert max(after[n] for n in nodes) - min(after[n] for n in nodes) <= 1
    assert after[new] >= 3 * len(names) // size
    assert counts(cluster, names) == before
    for queue in client.queues_now():
        parsed = Queue.from_api(queue)
        assert len(parsed.members) == 3 and set(parsed.in_sync) == set(parsed.replicas), parsed
    assert summary["remaining_changes"] == 0


def test_plan_members_reports_the_mirror_spread_of_ha_exactly_queues(
    clean_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    user, password = clean_cluster.credentials
    client = ManagementClient(clean_cluster.nodes[0].management_url, user, password)
    client.put_policy(
        "/", "two", pattern="^mirrored-", definition={"ha-mode": "exactly", "ha-params": 2}, priority=0
    )
    for i in range(3):
        declare(client, "/", f"mirrored-{i}")
    wait_until(  # the statistics view, where the mirror report reads policies, lags a few seconds
        lambda: (
            [len(Queue.from_api(q).members) for q in client.queues() if q.get("effective_policy_definition")]
            == [2, 2, 2]
        ),
        timeout=30,
        what="two copies of every mirrored queue in the statistics view",
    )
    assert run_cli(clean_cluster.base_dir, monkeypatch, "plan", "--members") == 0
    planned = json.loads(capsys.readouterr().out)
    assert sum(planned["mirrors"].values()) == 6 and set(planned["mirrors"]) == {
        n.name for n in clean_cluster.nodes
    }
    assert planned["moves"] == []
    assert run_cli(clean_cluster.base_dir, monkeypatch, "report") == 0  # the same spread in `report`
    reported = json.loads(capsys.readouterr().out)
    assert reported["exactly_copies"] == planned["mirrors"]


def _script_constant(name: str) -> str:
    """A single-quoted constant of the node script, as bash reads it."""
    text = BOOTSTRAP_SCRIPT.read_text()
    start = text.index(f"{name}='") + len(name) + 2
    return text[start : text.index("'", start)]


def _statuses(cluster: LocalCluster) -> dict[tuple[str, str], list[dict[str, object]]]:
    """What the node hooks' one eval (QUORUM_STATUSES_ERL) reads on node 1, by vhost and name."""
    out = cluster.rabbitmqctl("-q", "eval", _script_constant("QUORUM_STATUSES_ERL"), node=cluster.nodes[0])
    read = [
        json.loads(base64.b64decode(line.removeprefix("status:")))
        for line in out.splitlines()
        if line.startswith("status:")
    ]
    return {(q["vhost"], q["name"]): q["status"] for q in read}


def test_the_node_hooks_one_eval_reads_each_quorum_queue_as_quorum_status_prints_it(
    versioned: LocalCluster,
) -> None:
    """The boot's and the termination hook's catch-up check reads every quorum queue of a node in one CLI
    call (QUORUM_STATUSES_ERL in stacks/node_bootstrap.sh) instead of one `quorum_status` per queue: the
    rows must be the ones `quorum_status` prints, on both versions, whatever the queue's name; with a
    member's node down, every queue is still read (its row for that node names no running Raft state)."""
    cluster = versioned
    user, password = cluster.credentials
    client = ManagementClient(cluster.nodes[0].management_url, user, password)
    names = ["members-status", "members-st\u00e4tus \"quoted\" 'x'"]
    for name in names:
        declare(client, "/", name, **{"x-queue-type": "quorum"})
    first, third = cluster.nodes[0], cluster.nodes[2]
    wait_until(
        lambda: all(len(Queue.from_api(client.queue_now("/", n)).members) == 3 for n in names),
        timeout=30,
        what="both queues on 3 members",
    )
    found = _statuses(cluster)
    assert {("/", n) for n in names} <= set(found), found
    for name in names:
        printed = sorted(
            json.loads(
                cluster.rabbitmq_queues("-q", "quorum_status", name, "--formatter", "json", node=first)
            ),
            key=lambda r: str(r["Node Name"]),
        )
        rows = sorted(found["/", name], key=lambda r: str(r["Node Name"]))
        assert [sorted(r) for r in rows] == [sorted(r) for r in printed]
        for row, expected in zip(rows, printed, strict=True):
            for column in ("Node Name", "Raft State", "Commit Index", "Membership"):
                assert row.get(column) == expected.get(column), (name, column, row, expected)

    cluster.stop_node(3)
    try:
        found = _statuses(cluster)
        for name in names:
            states = {str(r["Node Name"]): str(r["Raft State"]) for r in found["/", name]}
            assert states[third.name] not in ("leader", "follower"), states
            assert "leader" in states.values(), states
    finally:
        cluster.start_node(3)
