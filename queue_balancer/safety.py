"""Safety rules shared by the CLI and the workflow: whether the cluster is fit for moves at all."""

from __future__ import annotations

from queue_balancer.errors import ClusterNotReady
from queue_balancer.model import Node, Snapshot


def preflight(snapshot: Snapshot) -> None:
    """Refuse to move anything while a node is down, partitioned or in alarm."""
    problems = [problem for node in snapshot.nodes for problem in _node_problems(node)]
    if problems:
        raise ClusterNotReady("cluster not ready for moves: " + "; ".join(problems))


def _node_problems(node: Node) -> list[str]:
    problems = []
    if not node.running:
        problems.append(f"node {node.name} is not running")
    if node.partitions:
        problems.append(f"node {node.name} is partitioned from {', '.join(node.partitions)}")
    if node.memory_alarm:
        problems.append(f"node {node.name} has a memory alarm")
    if node.disk_alarm:
        problems.append(f"node {node.name} has a disk alarm")
    return problems
