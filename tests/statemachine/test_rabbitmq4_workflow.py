"""The real ASL on RabbitMQ 4.0.5: `queue-balancer run --wait` with the default input, as a user of
`local up --rabbitmq 4` runs it.

The endpoint runs as a process of its own next to the 4.0 session cluster's files (as `local up` starts
it): moto's backends are process-wide, so a second endpoint in this process would share the 3.10
endpoint's state machine, table and lock item. The workload is quorum queues on node 1 plus a classic
queue and a stream that 4.x cannot (or by default does not) move: per-type spread <= 1 for quorum,
nothing lost, no policy left, the lifecycle back in IDLE and the cluster lock released.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pika
import pytest

from queue_balancer.cli import main
from queue_balancer.lifecycle import State
from queue_balancer.local.cluster import ENV_BASE_DIR, LocalCluster
from queue_balancer.local.endpoint import start_endpoint, stop_endpoint
from queue_balancer.local.seed import delete_seeded, seed, seed_unmirrored
from queue_balancer.lock import LOCK_PARAMETER
from queue_balancer.management import ManagementClient
from queue_balancer.model import Queue, QueueType, spread
from queue_balancer.movers import POLICY_PREFIX
from tests.statemachine.conftest import free_port

QUORUM, MESSAGES = 12, 20


@pytest.fixture
def endpoint_4(local_cluster_4: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalCluster]:
    """The 4.0 cluster with its own endpoint process, which is always stopped."""
    monkeypatch.setenv(ENV_BASE_DIR, str(local_cluster_4.base_dir))
    for name in ("RABBITMQ_MANAGEMENT_URL", "RABBITMQ_USER", "RABBITMQ_PASSWORD", "RABBITMQ_EVAL_COMMAND"):
        monkeypatch.delenv(name, raising=False)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(key, raising=False)
    start_endpoint(local_cluster_4.base_dir, free_port(), local_cluster_4.config)
    try:
        yield local_cluster_4
    finally:
        stop_endpoint(local_cluster_4.base_dir)


def _counts(cluster: LocalCluster, names: list[str]) -> dict[str, int]:
    """Each queue's message count from its leader process (a passive declare over AMQP)."""
    node = cluster.nodes[0]
    params = pika.ConnectionParameters(
        "127.0.0.1", node.amqp_port, "/", pika.PlainCredentials(*cluster.credentials)
    )
    with pika.BlockingConnection(params) as connection:
        channel = connection.channel()
        return {n: channel.queue_declare(n, passive=True).method.message_count for n in names}


def test_the_workflow_balances_quorum_leaders_on_rabbitmq_4(
    endpoint_4: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = endpoint_4
    client = ManagementClient(cluster.nodes[0].management_url, *cluster.credentials)
    seed(cluster, queues=QUORUM, messages=MESSAGES, queue_type="quorum", prefix="wf4")
    seed_unmirrored(cluster, queues=1, with_messages=1, messages=MESSAGES, prefix="wf4c")
    try:
        before = {q.name: q for q in map(Queue.from_api, client.queues_now()) if q.name.startswith("wf4")}
        assert {q.leader for q in before.values()} == {cluster.nodes[0].name}
        counts = _counts(cluster, sorted(before))

        assert main(["run", "--wait", "--local"]) == 0, "0: every move of the run succeeded"

        after = {q.name: q for q in map(Queue.from_api, client.queues_now()) if q.name.startswith("wf4")}
        quorum = Counter({n.name: 0 for n in cluster.nodes})
        quorum.update(q.leader for q in after.values() if q.type is QueueType.QUORUM)
        assert spread(quorum) <= 1, f"quorum leaders per node after the run: {dict(quorum)}"
        assert after["wf4c.001"].leader == before["wf4c.001"].leader, "classic queues stay on 4.x"
        assert _counts(cluster, sorted(after)) == counts, "a message was lost or created"
        assert not [p["name"] for p in client.policies() if p["name"].startswith(POLICY_PREFIX)]
        assert not [p for p in client.get("global-parameters") if p["name"] == LOCK_PARAMETER]
        capsys.readouterr()
        assert main(["status", "--local"]) == 0
        assert f"cluster local: {State.IDLE}" in capsys.readouterr().out
    finally:
        delete_seeded(cluster, prefix="wf4")
        delete_seeded(cluster, prefix="wf4c")
