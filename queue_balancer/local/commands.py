"""``queue-balancer local ...``: start, inspect, stop and load the local cluster from the command line.

Results go to stdout, progress of long work to stderr, and an error becomes one line on stderr with exit
code 1, so the commands compose in scripts. Settings come from the environment once, here, not from
scattered lookups: ``QUEUE_BALANCER_LOCAL_DIR`` (where the cluster lives), ``RABBITMQ_USER`` and
``RABBITMQ_PASSWORD`` (the administrator ``up`` creates and every command uses; default admin/admin).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from queue_balancer.arguments import NON_NEGATIVE, POSITIVE
from queue_balancer.cli.exit_codes import EXIT_ERROR, EXIT_NOT_RUNNING, EXIT_OK
from queue_balancer.errors import BalancerError, ManagementError
from queue_balancer.local.cluster import (
    ENV_BASE_DIR,
    LocalCluster,
    LocalClusterConfig,
    LocalClusterError,
    NodeStatus,
    default_base_dir,
)
from queue_balancer.local.endpoint import (
    DEFAULT_PORT,
    LocalEndpointError,
    local_outputs,
    start_endpoint,
    stop_endpoint,
)
from queue_balancer.local.runtime import RABBITMQ_VERSIONS
from queue_balancer.local.seed import QUEUE_TYPES, seed

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class LocalSettings:
    """The environment, read once: where the cluster lives and which administrator it has."""

    user: str
    password: str = dataclasses.field(repr=False)

    @classmethod
    def from_env(cls) -> LocalSettings:
        """Credentials from ``RABBITMQ_USER``/``RABBITMQ_PASSWORD`` (admin/admin when unset)."""
        return cls(
            user=os.environ.get("RABBITMQ_USER") or "admin",
            password=os.environ.get("RABBITMQ_PASSWORD") or "admin",
        )


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``local`` command group (up, status, down, seed) to the main CLI's subparsers."""
    local = subparsers.add_parser(
        "local",
        help="a real 3-node RabbitMQ cluster on 127.0.0.1 for trying and testing the balancer",
        description=(
            "Run a RabbitMQ cluster on loopback from Debian's rabbitmq-server: own node names, ports, "
            "Erlang cookie and data directory; nothing on the default ports. "
            f"Environment: {ENV_BASE_DIR} (default ~/.local/state/queue-balancer/cluster), "
            "RABBITMQ_USER / RABBITMQ_PASSWORD (default admin/admin)."
        ),
    )
    commands = local.add_subparsers(dest="local_command", metavar="COMMAND", required=True)

    up = commands.add_parser(
        "up",
        help="start the cluster (idempotent) and wait until it is formed",
        description=(
            "Start the nodes that are not running (new nodes all at once; nodes with data from an earlier "
            "run one at a time, node 1 first, so a stopped or crashed cluster restarts every time), form the "
            "cluster, create the administrator (RABBITMQ_USER/RABBITMQ_PASSWORD) and delete guest. Returns "
            "when every node runs, is clustered and answers on its management API. Ports of node N: "
            "AMQP 5700+N, management 15700+N, distribution 25700+N; epmd 4701."
        ),
    )
    up.add_argument(
        "--nodes",
        type=POSITIVE,
        default=None,
        help="number of nodes (default: as last started in this directory, else 3)",
    )
    up.add_argument(
        "--rabbitmq",
        choices=RABBITMQ_VERSIONS,
        default=None,
        help=(
            "3: Debian's own rabbitmq-server (3.10 on Debian 12); 4: RabbitMQ 4.0.5 from a Debian 13 root "
            "file system built once per machine with debootstrap (about a minute, 390 MB; needs root), "
            "on its own port block (AMQP 5710+N, management 15710+N, distribution 25710+N, epmd 4711). "
            "Default: as last started in this directory, else 3"
        ),
    )
    up.add_argument(
        "--timeout", type=float, default=240.0, help="seconds to wait for the cluster (default 240)"
    )
    up.add_argument(
        "--endpoint-port",
        type=int,
        default=DEFAULT_PORT,
        help=f"port of the local AWS endpoint on 127.0.0.1 (default {DEFAULT_PORT})",
    )
    up.add_argument(
        "--no-endpoint", action="store_true", help="start the cluster only, no local AWS endpoint"
    )
    up.set_defaults(func=_one_line_errors(cmd_up))

    status = commands.add_parser(
        "status",
        help="show each node, whether it runs, its pid and ports",
        description="Show the local cluster's nodes. Exit status 3 when a node is not running.",
    )
    status.set_defaults(func=_one_line_errors(cmd_status))

    down = commands.add_parser(
        "down",
        help="stop the nodes and the epmd that `local up` started (data is kept)",
        description=(
            "Stop only what `local up` started in this directory (the nodes' and epmd's pid files); "
            "other RabbitMQ nodes on the machine are left alone. Idempotent."
        ),
    )
    down.add_argument("--purge", action="store_true", help="also delete the cluster's directory (all data)")
    down.set_defaults(func=_one_line_errors(cmd_down))

    seed_parser = commands.add_parser(
        "seed",
        help="create an unbalanced workload: queues with messages, every leader on node 1",
        description=(
            "Create QUEUES queues <prefix>.<n> whose leaders are all on node 1 and publish MESSAGES "
            "persistent messages to each, with publisher confirms. classic = mirrored classic queues "
            "(policy <prefix>-ha: ha-mode all, automatic sync), quorum = quorum queues, mixed = half each. "
            "Existing queues are reused and get more messages. Returns when mirrors are synchronised."
        ),
    )
    seed_parser.add_argument("--queues", type=POSITIVE, required=True, help="number of queues")
    seed_parser.add_argument("--messages", type=NON_NEGATIVE, required=True, help="messages per queue")
    seed_parser.add_argument(
        "--type", dest="queue_type", choices=QUEUE_TYPES, required=True, help="queue type"
    )
    seed_parser.add_argument("--vhost", default="/", help='virtual host, created if missing (default "/")')
    seed_parser.add_argument("--prefix", default="seed", help='queue name prefix (default "seed")')
    seed_parser.set_defaults(func=_one_line_errors(cmd_seed))


# ---- handlers ------------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    """``local up``: start or complete the cluster, then print where to reach it."""
    settings = LocalSettings.from_env()
    base_dir = default_base_dir()
    # Keep the ports of a cluster started here before (e.g. by a test with other ports); --nodes may grow it.
    config = LocalClusterConfig.recorded(base_dir) or _default_config(base_dir, args.rabbitmq or "3")
    if args.rabbitmq and args.rabbitmq != config.rabbitmq:
        raise LocalClusterError(
            f"{base_dir} holds a RabbitMQ {config.rabbitmq} cluster; stop and delete it with "
            f"`queue-balancer local down --purge`, or use another {ENV_BASE_DIR} for RabbitMQ {args.rabbitmq}"
        )
    config = dataclasses.replace(
        config, nodes=args.nodes or config.nodes, user=settings.user, password=settings.password
    )
    cluster = LocalCluster(config)
    cluster.up(progress=_progress, timeout=args.timeout)
    memory = cluster.memory_rss_bytes() / 2**20
    for node in cluster.nodes:
        print(f"{node.name:<16} amqp://127.0.0.1:{node.amqp_port}  {node.management_url}")
    print(
        f"user {settings.user!r}; {len(cluster.nodes)} node(s) using {memory:.0f} MiB; data in {cluster.base_dir}"
    )
    if not args.no_endpoint:
        outputs = start_endpoint(cluster.base_dir, args.endpoint_port, cluster.config)
        print(f"local AWS endpoint {outputs.EndpointUrl}: state machine {outputs.StateMachineArn}")
    return EXIT_OK


def _default_config(base_dir: Path, rabbitmq: str) -> LocalClusterConfig:
    """The default layout; RabbitMQ 4 gets its own port block, so it never meets a RabbitMQ 3 cluster."""
    if rabbitmq == "3":
        return LocalClusterConfig(base_dir=base_dir)
    return LocalClusterConfig(
        base_dir=base_dir,
        amqp_base=5711,
        management_base=15711,
        dist_base=25711,
        epmd_port=4711,
        rabbitmq=rabbitmq,
    )


def cmd_status(args: argparse.Namespace) -> int:
    """``local status``: one line per node; exit status 3 unless every node runs."""
    cluster = _existing_cluster()
    statuses = cluster.status()
    print(_status_table(statuses))
    try:
        print(f"AWS endpoint: {local_outputs(cluster.base_dir).EndpointUrl} (running)")
    except LocalEndpointError:
        print("AWS endpoint: not running (`queue-balancer local up` starts it)")
    return EXIT_OK if all(s.running for s in statuses) else EXIT_NOT_RUNNING


def cmd_down(args: argparse.Namespace) -> int:
    """``local down``: stop this directory's nodes and epmd (and delete it with ``--purge``)."""
    cluster = _existing_cluster()
    if stop_endpoint(cluster.base_dir):
        _progress("stopped the local AWS endpoint")
    running = [s.name for s in cluster.status() if s.running]
    if running:
        _progress(f"stopping {', '.join(running)}")
    cluster.down(purge=args.purge)
    _progress(f"stopped; {'deleted' if args.purge else 'data kept in'} {cluster.base_dir}")
    return EXIT_OK


def cmd_seed(args: argparse.Namespace) -> int:
    """``local seed``: create the unbalanced workload on the running local cluster."""
    cluster = _existing_cluster()
    stopped = [s.name for s in cluster.status() if not s.running]
    if stopped:
        raise LocalClusterError(
            f"the local cluster is not running ({', '.join(stopped)} stopped): start it with `queue-balancer local up`"
        )
    try:
        summary = seed(
            cluster,
            queues=args.queues,
            messages=args.messages,
            queue_type=args.queue_type,
            vhost=args.vhost,
            prefix=args.prefix,
            progress=_progress,
        )
    except ManagementError as exc:
        if exc.status != 401:
            raise
        raise LocalClusterError(
            f"the local cluster rejects user {cluster.config.user!r}: set RABBITMQ_USER/RABBITMQ_PASSWORD to "
            "the credentials it was started with, or run `queue-balancer local up` to apply the current ones"
        ) from exc
    leaders = ", ".join(f"{node}={count}" for node, count in summary.leaders_per_node.items())
    first, last = summary.queue_names[0], summary.queue_names[-1]
    print(
        f"{summary.queues} queue(s) {first}..{last} in vhost {summary.vhost!r} "
        f"({summary.classic} classic mirrored, {summary.quorum} quorum; {summary.created} created, "
        f"{summary.reused} reused), {summary.messages_per_queue} message(s) added to each "
        f"({summary.messages_published} confirmed); leaders: {leaders}; {summary.seconds:.1f} s"
    )
    return EXIT_OK


# ---- helpers -------------------------------------------------------------------------------------


def _existing_cluster() -> LocalCluster:
    """The cluster as last started in the base directory (its node count and ports), else the default."""
    settings = LocalSettings.from_env()
    base_dir = default_base_dir()
    config = LocalClusterConfig.recorded(base_dir, user=settings.user, password=settings.password)
    return LocalCluster(
        config or LocalClusterConfig(base_dir=base_dir, user=settings.user, password=settings.password)
    )


def _status_table(statuses: list[NodeStatus]) -> str:
    rows = [("NODE", "STATE", "PID", "AMQP", "MANAGEMENT", "DIST")]
    for s in statuses:
        rows.append(
            (
                s.name,
                "running" if s.running else "stopped",
                str(s.pid or "-"),
                str(s.amqp_port),
                f"http://127.0.0.1:{s.management_port}",
                str(s.dist_port),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _progress(message: str) -> None:
    print(f"local: {message}", file=sys.stderr, flush=True)


def _one_line_errors(handler: Handler) -> Handler:
    """Turn the balancer's own errors into one line on stderr and exit code 1 (no traceback)."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except BalancerError as exc:
            message = " ".join(str(exc).split())  # one line, whatever the message contained
            print(f"queue-balancer local {args.local_command}: error: {message}", file=sys.stderr)
            return EXIT_ERROR

    return run
