"""Which cluster a workload is seeded into: a ``LocalCluster`` or any cluster behind a management URL,
resolved once into the management client, node names and the seeding node's AMQP listener."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from queue_balancer.errors import BalancerError
from queue_balancer.local.cluster import LocalCluster
from queue_balancer.management import ManagementClient, encode


class SeedError(BalancerError):
    """The workload could not be created or verified; the message says which queue and what to do."""


@dataclass(frozen=True)
class SeedTarget:
    """Any cluster reachable through its management API (``seed`` also accepts a ``LocalCluster``).

    AMQP goes to the listener the chosen node reports in ``/api/overview``; ``amqp_host`` replaces a
    wildcard listener address (0.0.0.0 / ::) with something this machine can connect to.
    """

    management_url: str
    user: str
    password: str = field(repr=False)
    amqp_host: str = "127.0.0.1"

    def __repr__(self) -> str:  # never show the password
        return f"SeedTarget({self.management_url!r}, user={self.user!r})"


@dataclass(frozen=True)
class SeedEndpoint:
    """The resolved connection details: management client, node names, and the seeding node's AMQP."""

    client: ManagementClient
    cluster: LocalCluster | None
    node_names: tuple[str, ...]  # index order (1-based index = position + 1)
    leader_node: str
    amqp_host: str
    amqp_port: int
    user: str
    password: str = field(repr=False)


def check_prefix(prefix: str) -> None:
    """Refuse a queue-name prefix RabbitMQ would reject or that would hit its own ``amq.`` names."""
    if not prefix or prefix.startswith("amq.") or any(c in prefix for c in "\r\n\0"):
        raise SeedError(f"invalid queue name prefix {prefix!r} (empty, 'amq.' or control characters)")


def resolve_target(target: LocalCluster | SeedTarget, on_node: int) -> SeedEndpoint:
    """The management client, node names and AMQP listener of node ``on_node`` (1-based) of ``target``."""
    if isinstance(target, LocalCluster):
        node = target.node(on_node)
        user, password = target.credentials
        # Management calls go to the seeding node itself: it is the one that must have the vhost running.
        client = ManagementClient(node.management_url, user, password, timeout=30)
        return SeedEndpoint(
            client=client,
            cluster=target,
            node_names=tuple(n.name for n in target.nodes),
            leader_node=node.name,
            amqp_host="127.0.0.1",
            amqp_port=node.amqp_port,
            user=user,
            password=password,
        )
    client = ManagementClient(target.management_url, target.user, target.password, timeout=30)
    names = tuple(sorted(str(n["name"]) for n in client.nodes()))
    if not 1 <= on_node <= len(names):
        raise SeedError(
            f"there is no node {on_node}: the cluster has nodes 1..{len(names)} ({', '.join(names)})"
        )
    leader = names[on_node - 1]
    host, port = _amqp_listener(client.overview(), leader, target.amqp_host)
    return SeedEndpoint(client, None, names, leader, host, port, target.user, target.password)


def _amqp_listener(overview: Mapping[str, Any], node: str, fallback_host: str) -> tuple[str, int]:
    for listener in overview.get("listeners", []):
        if listener.get("node") == node and listener.get("protocol") == "amqp":
            ip = str(listener.get("ip_address", ""))
            host = fallback_host if ip in ("", "0.0.0.0", "::") else ip
            return host, int(listener["port"])
    raise SeedError(
        f"{node} has no plain AMQP listener in /api/overview; seed needs one to declare on that node"
    )


def queues_now(client: ManagementClient, vhost: str) -> list[dict[str, Any]]:
    """Queues of the vhost as their processes see them now (leader, mirrors, sync); no statistics."""
    result: list[dict[str, Any]] = client.get(f"queues/{encode(vhost)}", disable_stats="true")
    return result


def leader_of(queue: Mapping[str, Any]) -> str:
    """The node a queue's leader (quorum) or master (classic) runs on; "?" when not reported."""
    return str(queue.get("leader") or queue.get("node") or "?")
