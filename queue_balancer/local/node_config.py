"""What one node of a local cluster is started with: its directory, rabbitmq.conf and environment.

Written on every start, so a node always runs with the layout ``up`` was given (ports, peers, limits),
whatever an earlier run left in its directory.
"""

from __future__ import annotations

from pathlib import Path

from queue_balancer.local.environment import ERL_LOOPBACK_ARGS, base_env
from queue_balancer.local.layout import LocalClusterConfig, LocalNode


def node_dir(base_dir: Path, node: LocalNode) -> Path:
    """The node's own directory under ``base_dir`` (configuration, data, logs, pid files)."""
    return base_dir / node.short_name


def write_node_files(base_dir: Path, config: LocalClusterConfig, node: LocalNode) -> Path:
    """Create the node's directories and (re)write its configuration; returns the node directory."""
    directory = node_dir(base_dir, node)
    for sub in ("data", "log", "plugins-expand"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    (base_dir / "rabbitmq-env.conf").touch()
    (directory / "rabbitmq.conf").write_text(rabbitmq_conf(config, node))
    (directory / "enabled_plugins").write_text("[rabbitmq_management].\n")
    return directory


def has_booted_before(base_dir: Path, node: LocalNode) -> bool:
    """True when the node has a database from an earlier boot (its restart rules differ from a first boot)."""
    database = node_dir(base_dir, node) / "data" / node.name
    return database.is_dir() and any(database.iterdir())


def node_log(base_dir: Path, node: LocalNode) -> Path:
    """The node's main log file."""
    return node_dir(base_dir, node) / "log" / f"{node.name}.log"


def node_env(*, base_dir: Path, home: Path, config: LocalClusterConfig, node: LocalNode) -> dict[str, str]:
    """The environment of the node's ``rabbitmq-server``: every path inside its own directory."""
    directory = node_dir(base_dir, node)
    env = base_env(base_dir=base_dir, home=home, epmd_port=config.epmd_port)
    env.update(
        {
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(directory / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(directory / "data"),
            "RABBITMQ_MNESIA_DIR": str(directory / "data" / node.name),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(directory / "plugins-expand"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_PID_FILE": str(directory / "node.pid"),
            # Seeds the admin user (instead of guest) when the cluster is created; joining nodes
            # inherit users from the cluster, and `up` re-asserts the user on every run anyway.
            "RABBITMQ_DEFAULT_USER": config.user,
            "RABBITMQ_DEFAULT_PASS": config.password,
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": ERL_LOOPBACK_ARGS,
        }
    )
    return env


# RabbitMQ 3: fresh nodes booting together: the first to take the formation lock finds no peer with
# tables (the others wait for the lock), so retrying discovery only delays it (default 10 x 500 ms).
# Waiting nodes poll the lock every 200 ms instead of global's backoff of up to 8 s (default 10 internal
# retries, then 30 s between attempts). Restarts skip all this. RabbitMQ 4 rewrote peer discovery: with a
# single discovery attempt a node that boots slower than its peers forms a cluster of its own, so it keeps
# the defaults.
_FAST_FORMATION_3 = (
    "cluster_formation.discovery_retry_limit = 1",
    "cluster_formation.discovery_retry_interval = 200",
    "cluster_formation.internal_lock_retries = 1",
    "cluster_formation.lock_retry_limit = 600",
    "cluster_formation.lock_retry_timeout = 200",
)


def rabbitmq_conf(config: LocalClusterConfig, node: LocalNode) -> str:
    """The node's rabbitmq.conf: loopback listeners on its ports, classic-config peer discovery."""
    lines = [
        "# Written by `queue-balancer local up` on every start; edits are overwritten.",
        f"listeners.tcp.default = 127.0.0.1:{node.amqp_port}",
        "management.tcp.ip = 127.0.0.1",
        f"management.tcp.port = {node.management_port}",
        "distribution.listener.interface = 127.0.0.1",
        f"distribution.listener.port_range.min = {node.dist_port}",
        f"distribution.listener.port_range.max = {node.dist_port}",
        "cluster_name = queue-balancer-local",
        # Leaders go where they are declared; `local seed` relies on it, and so does the default.
        "queue_master_locator = client-local",
        *(["queue_leader_locator = client-local"] if config.rabbitmq == "4" else []),
        "cluster_formation.peer_discovery_backend = classic_config",
        *(f"cluster_formation.classic_config.nodes.{n.index} = {n.name}" for n in config.all_nodes()),
        *(_FAST_FORMATION_3 if config.rabbitmq == "3" else ()),
        f"vm_memory_high_watermark.absolute = {config.memory_high_watermark}",
        f"disk_free_limit.absolute = {config.disk_free_limit}",
        "log.file.level = info",
        "log.console = false",
    ]
    return "\n".join(lines) + "\n"
