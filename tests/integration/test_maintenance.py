"""Maintenance mode on real nodes of both versions: a node drained with `rabbitmq-upgrade drain` is never a
target, as for the built-in rebalance (4.0 reports it in /api/nodes; 3.10 only through the Erlang CLI)."""

from __future__ import annotations

import json

import pytest

from queue_balancer.cli import main
from queue_balancer.local.cluster import ENV_BASE_DIR, LocalCluster
from queue_balancer.local.seed import delete_seeded, seed
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
            lambda: drained.name in targets(), timeout=30, what=f"{drained.name} a target once revived"
        )
    finally:
        cluster.rabbitmq_upgrade("revive", node=drained)
        delete_seeded(cluster, prefix="drain")
