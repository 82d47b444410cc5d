"""The RabbitMQ cluster a command talks to: named by flags or the environment (``RABBITMQ_MANAGEMENT_URL``,
``RABBITMQ_USER``, ``RABBITMQ_PASSWORD``, ``RABBITMQ_EVAL_COMMAND``), else the local cluster of
``queue-balancer local up``. The password is never printed: it comes from the environment, not a flag."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import os
import secrets
import socket
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from queue_balancer.cli.output import notice
from queue_balancer.counts import AmqpCounter, amqp_endpoint, discover_amqp
from queue_balancer.errors import ConfigurationError
from queue_balancer.leader_transfer import CommandEval, RaLeaderTransfer
from queue_balancer.lock import ClusterLock
from queue_balancer.maintenance import drained_reader
from queue_balancer.management import ManagementClient
from queue_balancer.model import Snapshot
from queue_balancer.movers import Mover, MoveSettings
from queue_balancer.planner import PlanOptions
from queue_balancer.stream_transfer import StreamLeaderTransfer

if TYPE_CHECKING:
    from queue_balancer.local.cluster import LocalCluster


@dataclass(frozen=True)
class Connection:
    """A management client plus, where reachable, the leader-transfer port for quorum queues."""

    client: ManagementClient
    leader_transfer: RaLeaderTransfer | None
    counter: AmqpCounter | None

    def snapshot(self) -> Snapshot:
        """Nodes, queues and version; on 3.10 maintenance mode through the eval port, where configured
        (``connect`` gives the client its ``drained`` reader)."""
        return self.client.snapshot()

    def members_snapshot(self) -> Snapshot:
        """The members plan's snapshot (quorum queues in the real-time view), maintenance mode as above."""
        return self.client.members_snapshot()

    run_id: str = dataclasses.field(default_factory=lambda: secrets.token_hex(4))
    """This process's run: it owns the lock and names the temporary policies."""

    def mover(self, settings: MoveSettings | None = None) -> Mover:
        return Mover(
            self.client,
            self.leader_transfer,
            settings or MoveSettings(),
            self.counter,
            run_id=self.run_id,
            drained=self.client.drained,
            stream_transfer=StreamLeaderTransfer(self.leader_transfer.run_eval)
            if self.leader_transfer
            else None,
        )

    def lock(self, command: str) -> ClusterLock:
        owner = f"{getpass.getuser()}@{socket.gethostname()} pid {os.getpid()} (queue-balancer {command})"
        return ClusterLock(self.client.fork(), owner, self.run_id)


def connect(args: argparse.Namespace) -> Connection:
    """The cluster the flags or the environment name; the local cluster when none is named."""
    url = args.url or os.environ.get("RABBITMQ_MANAGEMENT_URL")
    user = args.user or os.environ.get("RABBITMQ_USER")
    password = os.environ.get("RABBITMQ_PASSWORD")
    eval_command = args.eval_command or os.environ.get("RABBITMQ_EVAL_COMMAND")
    if url and not args.local:
        if not user or password is None:
            raise ConfigurationError(
                f"credentials for {url} missing: set RABBITMQ_USER and RABBITMQ_PASSWORD (or --user)"
            )
        transfer = RaLeaderTransfer(CommandEval.parse(eval_command)) if eval_command else None
        # Several URLs (comma-separated): the client fails over to the next when a node goes away.
        urls = [u.strip() for u in url.split(",") if u.strip()]
        client = ManagementClient(
            urls[0],
            user,
            password,
            timeout=args.timeout,
            fallbacks=urls[1:],
            drained=drained_reader(transfer.run_eval) if transfer else None,
        )
        host, port = discover_amqp(urls[0], client.overview(), args.amqp_port)
        amqp_fallbacks = tuple(amqp_endpoint(u, port) for u in urls[1:])
        counter = AmqpCounter(host, port, user, password, fallbacks=amqp_fallbacks, on_unreachable=notice)
        return Connection(client, transfer, counter)
    from queue_balancer.local.cluster import LocalCluster, LocalClusterConfig, default_base_dir

    base_dir = default_base_dir()
    config = LocalClusterConfig.recorded(
        base_dir, user=user or "admin", password=password if password is not None else "admin"
    )
    if config is None:
        raise ConfigurationError(
            f"no cluster given and no local cluster in {base_dir}: run `queue-balancer local up`, "
            "or pass --url / set RABBITMQ_MANAGEMENT_URL"
        )
    cluster = LocalCluster(config)
    node_one, *peers = cluster.nodes
    run_eval = partial(_eval_on_any_node, cluster)
    client = ManagementClient(
        node_one.management_url,
        config.user,
        config.password,
        timeout=args.timeout,
        fallbacks=[n.management_url for n in peers],
        drained=drained_reader(run_eval),
    )
    counter = AmqpCounter(
        "127.0.0.1",
        node_one.amqp_port,
        config.user,
        config.password,
        fallbacks=tuple(("127.0.0.1", n.amqp_port) for n in peers),
    )
    return Connection(client, RaLeaderTransfer(run_eval), counter)


def _eval_on_any_node(cluster: LocalCluster, expression: str) -> str:
    """``rabbitmqctl eval`` on the first node that answers: a node gone must not stop quorum moves."""
    from queue_balancer.local.layout import LocalClusterError

    failures = []
    for node in cluster.nodes:
        try:
            return cluster.eval_erlang(expression, node=node)
        except LocalClusterError as exc:
            failures.append(str(exc).splitlines()[0][:200])
    raise LocalClusterError("; ".join(failures))


def plan_options(args: argparse.Namespace, connection: Connection | None) -> PlanOptions:
    """The scope options (``--vhost``, ``--pattern``, ``--per-vhost``, ``--max-moves``) as the planner's."""
    return PlanOptions(
        vhosts=tuple(args.vhost or ()),
        pattern=args.pattern,
        per_vhost=args.per_vhost,
        max_moves=getattr(args, "max_moves", None),
        move_streams=getattr(args, "move_streams", False),
        quorum_transfer=connection is None or connection.leader_transfer is not None,
    )
