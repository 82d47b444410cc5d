"""Rules shared by the CLI and the workflow: whether the cluster is fit for moves, and when to go on.

- ``preflight``: no moves while a node is down, partitioned or in alarm;
- ``traffic_gate``: no moves while the cluster's traffic is above the run's limits;
- ``another_round``: the one round policy (re-plan after a round while that improves the spread).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from queue_balancer.errors import ClusterNotReady, TrafficGateClosed
from queue_balancer.model import Node, Plan, Snapshot, spread


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


def traffic_gate(
    overview: Mapping[str, Any], max_publish_rate: float | None, max_deliver_rate: float | None
) -> None:
    """The seed's low-traffic window: cluster-wide publish and deliver rates under the given limits."""
    stats = overview.get("message_stats") or {}
    limits = {"publish": max_publish_rate, "deliver_get": max_deliver_rate}
    over = []
    for key, limit in limits.items():
        if limit is None:
            continue
        rate = float((stats.get(f"{key}_details") or {}).get("rate") or 0.0)
        if rate > limit:
            over.append(f"{key.replace('_get', '')} rate {rate:.1f}/s is above {limit:g}/s")
    if over:
        raise TrafficGateClosed("traffic gate closed: " + "; ".join(over))


def another_round(replanned: Plan, finished_rounds: int, rounds: int) -> bool:
    """The round policy of the CLI and the workflow: after a round, re-read the cluster and re-plan
    (queues that were syncing are movable by then, failed moves are planned again); go on while rounds
    are left and the new plan still makes the spread smaller."""
    if finished_rounds >= rounds or not replanned.moves:
        return False
    return spread(replanned.after) < spread(replanned.before)
