"""Maintenance mode on real nodes of both versions: a node drained with `rabbitmq-upgrade drain` is never a
target, as for the built-in rebalance (4.0 reports it in /api/nodes; 3.10 only through the Erlang CLI)."""

from __future__ import annotations

import json

import pytest

from queue_balancer import eval_document
from queue_balancer.cli import main
from queue_balancer.local.cluster import ENV_BASE_DIR, LocalCluster
from queue_balancer.local.seed import delete_seeded, seed
from queue_balancer.maintenance import drained_reader
from queue_balancer.management import ManagementClient
from tests.conftest import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(params=["3.10", "4.0"])
def cluster(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> LocalCluster:
    """The session cluster of each version, reachable by the CLI's local default."""
    chosen: LocalCluster = request.getfixturevalue(
        "local_cluster" if request.param == "3.10" else "local_cluster_4"
    )
    monkeypatch.setenv(ENV_BASE_DIR, str(chosen.base_dir))
    for name in ("RABBITMQ_MANAGEMENT_URL", "RABBITMQ_USER", "RABBITMQ_PASSWORD", "RABBITMQ_EVAL_COMMAND"):
        monkeypatch.delenv(name, raising=False)
    return chosen


def test_a_drained_node_is_never_a_target(cluster: LocalCluster, capsys: pytest.CaptureFixture[str]) -> None:
    def targets() -> set[str]:
        capsys.readouterr()
        assert main(["--local", "plan", "--pattern", r"^drain\.", "--format", "json"]) == 0
        return {m["to"] for m in json.loads(capsys.readouterr().out)["moves"]}

    seed(cluster, queues=6, messages=0, queue_type="quorum", prefix="drain")
    drained = cluster.nodes[2]
    try:
        cluster.rabbitmq_upgrade("drain", node=drained)
        while_drained = targets()
        assert cluster.nodes[1].name in while_drained and drained.name not in while_drained
        cluster.rabbitmq_upgrade("revive", node=drained)
        # Judged on the drained node alone: on a loaded machine an election may move a leader off node 1
        # (node 1 becomes a target), and 3.10's maintenance flag reads back a moment after `revive`.
        wait_until(
            lambda: drained.name in targets(), timeout=90, what=f"{drained.name} a target once revived"
        )
    finally:
        cluster.rabbitmq_upgrade("revive", node=drained)
        delete_seeded(cluster, prefix="drain")


def test_balance_and_the_workflow_snapshot_never_target_a_drained_node_on_3_10(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """3.10 has no being_drained in /api/nodes: every round of `balance` (the later ones re-plan on a
    settled snapshot) and the workflow's snapshot (the SSM document's `drained` operation, evaluated here
    by rabbitmqctl as SSM would) read it through the eval. About 30-60 s: 6 empty queues, one balance."""
    cluster = local_cluster
    monkeypatch.setenv(ENV_BASE_DIR, str(cluster.base_dir))
    for name in ("RABBITMQ_MANAGEMENT_URL", "RABBITMQ_USER", "RABBITMQ_PASSWORD", "RABBITMQ_EVAL_COMMAND"):
        monkeypatch.delenv(name, raising=False)
    drained = cluster.nodes[2]

    def through_the_document(expression: str) -> str:
        given = eval_document.parameters(expression)
        return cluster.eval_erlang(eval_document.eval_expression(given["operation"][0], given["items"][0]))

    seed(cluster, queues=6, messages=0, queue_type="mixed", prefix="drainbal")
    try:
        cluster.rabbitmq_upgrade("drain", node=drained)
        node_one = cluster.nodes[0]
        workflow_client = ManagementClient(
            node_one.management_url,
            cluster.config.user,
            cluster.config.password,
            drained=drained_reader(through_the_document),
        )
        assert workflow_client.snapshot().drained_nodes == (drained.name,)
        assert workflow_client.members_snapshot().drained_nodes == (drained.name,)

        capsys.readouterr()
        code = main(["--local", "balance", "--pattern", r"^drainbal\.", "--rounds", "3", "--format", "json"])
        summary = json.loads(capsys.readouterr().out)
        assert code == 0, summary["moves"]
        assert summary["moves"] and {m["to"] for m in summary["moves"]} == {cluster.nodes[1].name}
        leaders = {
            str(q["name"]): q.get("node")
            for q in workflow_client.queues()
            if str(q["name"]).startswith("drainbal.")
        }
        assert drained.name not in leaders.values(), leaders
    finally:
        cluster.rabbitmq_upgrade("revive", node=drained)
        delete_seeded(cluster, prefix="drainbal")
