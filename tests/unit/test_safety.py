"""The preflight rule the CLI and the workflow share: one problem per line of the refusal, none when healthy."""

from __future__ import annotations

import pytest

from queue_balancer.errors import ClusterNotReady
from queue_balancer.model import Node, Snapshot
from queue_balancer.safety import preflight


def test_a_healthy_cluster_passes() -> None:
    preflight(Snapshot(nodes=(Node("rabbit@a", True), Node("rabbit@b", True)), queues=()))


def test_every_node_problem_is_named() -> None:
    nodes = (
        Node("rabbit@a", False),
        Node("rabbit@b", True, partitions=("rabbit@c",)),
        Node("rabbit@c", True, memory_alarm=True, disk_alarm=True),
    )
    with pytest.raises(ClusterNotReady) as refused:
        preflight(Snapshot(nodes=nodes, queues=()))
    assert str(refused.value) == (
        "cluster not ready for moves: node rabbit@a is not running; "
        "node rabbit@b is partitioned from rabbit@c; "
        "node rabbit@c has a memory alarm; node rabbit@c has a disk alarm"
    )
