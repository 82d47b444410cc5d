"""Where a local cluster lives and which loopback ports it owns.

The layout (node count, port blocks, node-name prefix) is what ``up`` records in ``cluster.json`` so that
``status`` and ``down`` act on exactly the nodes that were started, and what refuses a second cluster on
ports or node names another one uses.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from queue_balancer.errors import BalancerError

ENV_BASE_DIR = "QUEUE_BALANCER_LOCAL_DIR"
LAYOUT_FILE = "cluster.json"
# Ports other RabbitMQ installations use by default; the local cluster must leave them alone.
DEFAULT_RABBITMQ_PORTS = (4369, 5672, 15672, 25672)
_MEMORY_SIZE = re.compile(r"\d+(kB|MB|GB|KiB|MiB|GiB|k|K|M|G)?")


class LocalClusterError(BalancerError):
    """The local cluster could not be started, stopped or reached; the message says what to do."""


def default_base_dir() -> Path:
    """Where the local cluster lives: ``$QUEUE_BALANCER_LOCAL_DIR``, else ~/.local/state/queue-balancer/cluster."""
    configured = os.environ.get(ENV_BASE_DIR)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".local" / "state" / "queue-balancer" / "cluster"


@dataclass(frozen=True)
class LocalNode:
    """One node of the local cluster and the loopback ports it owns."""

    index: int  # 1-based
    name: str  # e.g. "qb1@localhost"
    amqp_port: int
    management_port: int
    dist_port: int

    @property
    def short_name(self) -> str:
        """The part before ``@``; also the name of the node's directory under ``base_dir``."""
        return self.name.split("@", 1)[0]

    @property
    def management_url(self) -> str:
        """Base URL of this node's management API (no trailing slash)."""
        return f"http://127.0.0.1:{self.management_port}"

    @property
    def amqp_url(self) -> str:
        """AMQP URL of this node, without credentials."""
        return f"amqp://127.0.0.1:{self.amqp_port}/"


@dataclass(frozen=True)
class NodeStatus:
    """What ``status`` observed about one node: is its VM running, under which pid, on which ports."""

    index: int
    name: str
    running: bool
    pid: int | None
    amqp_port: int
    management_port: int
    dist_port: int


@dataclass(frozen=True)
class LocalClusterConfig:
    """Where the local cluster lives, how many nodes it has, and the port blocks it owns.

    Node ``i`` (1-based) gets ``amqp_base + i - 1``, ``management_base + i - 1`` and ``dist_base + i - 1``;
    all nodes share one private epmd on ``epmd_port``. Two clusters with different ``base_dir`` and
    non-overlapping port blocks run side by side.
    """

    base_dir: Path = dataclasses.field(default_factory=default_base_dir)
    nodes: int = 3
    amqp_base: int = 5701
    management_base: int = 15701
    dist_base: int = 25701
    epmd_port: int = 4701
    node_prefix: str = "qb"
    rabbitmq: str = "3"  # "3": Debian's own rabbitmq-server; "4": trixie's 4.0.5 from a chroot (runtime.py)
    user: str = "admin"
    password: str = dataclasses.field(default="admin", repr=False)
    # Per node; RabbitMQ blocks publishers above it, so keep it well above what `local seed` needs.
    memory_high_watermark: str = "1GB"
    disk_free_limit: str = "50MB"

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise LocalClusterError(f"a local cluster needs at least one node, not {self.nodes}")
        if not self.node_prefix or not all(
            c.isascii() and (c.isalnum() or c in "_-") for c in self.node_prefix
        ):
            raise LocalClusterError(
                f"node prefix {self.node_prefix!r} must be ASCII letters, digits, '_' or '-'"
            )
        if not self.user or not self.password:
            raise LocalClusterError("the admin user name and password must not be empty")
        for label, size in (
            ("memory_high_watermark", self.memory_high_watermark),
            ("disk_free_limit", self.disk_free_limit),
        ):
            # RabbitMQ silently falls back to its defaults (40 % of RAM for memory) on a value it cannot parse.
            if not _MEMORY_SIZE.fullmatch(size):
                raise LocalClusterError(f"{label} {size!r} is not a size like 512MB, 1GB or 1073741824")
        ports = self.ports()
        for label, port in ports.items():
            if not 1024 <= port <= 65535:
                raise LocalClusterError(
                    f"{label} port {port} is outside 1024..65535; choose other base ports"
                )
            if port in DEFAULT_RABBITMQ_PORTS:
                raise LocalClusterError(
                    f"{label} port {port} is a default RabbitMQ port, which the local cluster leaves free; "
                    "choose other base ports"
                )
        by_port: dict[int, str] = {}
        for label, port in ports.items():
            if port in by_port:
                raise LocalClusterError(f"{label} and {by_port[port]} would both use port {port}")
            by_port[port] = label

    def node(self, index: int) -> LocalNode:
        """Node ``index`` (1-based) of this layout."""
        offset = index - 1
        return LocalNode(
            index=index,
            name=f"{self.node_prefix}{index}@localhost",
            amqp_port=self.amqp_base + offset,
            management_port=self.management_base + offset,
            dist_port=self.dist_base + offset,
        )

    def all_nodes(self) -> list[LocalNode]:
        """Every node of this layout, in index order."""
        return [self.node(i) for i in range(1, self.nodes + 1)]

    def ports(self) -> dict[str, int]:
        """Every port this layout owns, labelled for error messages."""
        labelled = {"epmd": self.epmd_port}
        for node in self.all_nodes():
            labelled[f"AMQP of {node.name}"] = node.amqp_port
            labelled[f"management of {node.name}"] = node.management_port
            labelled[f"distribution of {node.name}"] = node.dist_port
        return labelled

    def layout(self) -> dict[str, Any]:
        """The part of the configuration that ``up`` records in ``cluster.json`` (no credentials)."""
        return {
            "nodes": self.nodes,
            "amqp_base": self.amqp_base,
            "management_base": self.management_base,
            "dist_base": self.dist_base,
            "epmd_port": self.epmd_port,
            "node_prefix": self.node_prefix,
            "rabbitmq": self.rabbitmq,
        }

    @classmethod
    def recorded(
        cls, base_dir: Path, *, user: str = "admin", password: str = "admin"
    ) -> LocalClusterConfig | None:
        """The layout the last ``up`` in ``base_dir`` started, so ``status``/``down`` match it exactly."""
        path = base_dir / LAYOUT_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LocalClusterError(f"cannot read {path}: {exc}; delete it if the cluster is down") from exc
        try:
            return cls(
                base_dir=base_dir,
                user=user,
                password=password,
                rabbitmq=str(data.get("rabbitmq", "3")),
                **{k: data[k] for k in cls._layout_keys()},
            )
        except (KeyError, TypeError) as exc:
            raise LocalClusterError(f"{path} is not a layout written by `local up` ({exc})") from exc

    @staticmethod
    def _layout_keys() -> tuple[str, ...]:
        return ("nodes", "amqp_base", "management_base", "dist_base", "epmd_port", "node_prefix")


def describe_layout(layout: Mapping[str, Any]) -> str:
    """One line naming a recorded layout, for errors about a cluster with another layout."""
    return (
        f"RabbitMQ {layout.get('rabbitmq', '3')}, {layout['nodes']} node(s) {layout['node_prefix']}N, "
        f"amqp from {layout['amqp_base']}, "
        f"management from {layout['management_base']}, epmd {layout['epmd_port']}"
    )
