"""The ``queue-balancer`` command.

Connection settings come from flags or the environment (``RABBITMQ_MANAGEMENT_URL``, ``RABBITMQ_USER``,
``RABBITMQ_PASSWORD``, ``RABBITMQ_EVAL_COMMAND``); without a URL the local cluster of ``queue-balancer
local up`` is used. The password is never printed: pass it through the environment, not a flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from queue_balancer import __version__, report
from queue_balancer.cli_members import add_member_flags, cmd_balance_members, cmd_plan_members
from queue_balancer.counts import AmqpCounter, amqp_endpoint
from queue_balancer.errors import BalancerError, ConfigurationError
from queue_balancer.leader_transfer import CommandEval, RaLeaderTransfer
from queue_balancer.lock import ClusterLock, Heartbeat, holding
from queue_balancer.management import ManagementClient
from queue_balancer.model import Plan, Snapshot, spread
from queue_balancer.movers import MoveProgress, Mover, MoveSettings, Phase, cleanup
from queue_balancer.planner import PlanOptions, plan
from queue_balancer.runner import RunInterrupted, run_moves
from queue_balancer.safety import preflight

EXIT_OK, EXIT_ERROR, EXIT_MOVES_FAILED = 0, 1, 2


@dataclass(frozen=True)
class Connection:
    """A management client plus, where reachable, the leader-transfer port for quorum queues."""

    client: ManagementClient
    leader_transfer: RaLeaderTransfer | None
    counter: AmqpCounter | None

    def snapshot(self) -> Snapshot:
        return self.client.snapshot()

    run_id: str = dataclasses.field(default_factory=lambda: secrets.token_hex(4))
    """This process's run: it owns the lock and names the temporary policies."""

    def mover(self, settings: MoveSettings | None = None) -> Mover:
        return Mover(
            self.client, self.leader_transfer, settings or MoveSettings(), self.counter, run_id=self.run_id
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
        host, port = amqp_endpoint(url, args.amqp_port)
        counter = AmqpCounter(host, port, user, password)
        return Connection(ManagementClient(url, user, password, timeout=args.timeout), transfer, counter)
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
    client = ManagementClient(
        cluster.nodes[0].management_url, config.user, config.password, timeout=args.timeout
    )
    counter = AmqpCounter("127.0.0.1", cluster.nodes[0].amqp_port, config.user, config.password)
    return Connection(client, RaLeaderTransfer(cluster.eval_erlang), counter)


def plan_options(args: argparse.Namespace, connection: Connection | None) -> PlanOptions:
    return PlanOptions(
        vhosts=tuple(args.vhost or ()),
        pattern=args.pattern,
        per_vhost=args.per_vhost,
        max_moves=getattr(args, "max_moves", None),
        quorum_transfer=connection is None or connection.leader_transfer is not None,
    )


# ---- commands ----------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    connection = connect(args)
    print(report.render(report.Report.of(connection.snapshot(), plan_options(args, connection)), args.format))
    return EXIT_OK


def cmd_snapshot(args: argparse.Namespace) -> int:
    client = connect(args).client
    json.dump({"nodes": client.nodes(), "queues": client.queues()}, sys.stdout, indent=1, ensure_ascii=False)
    print()
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    if args.members:
        if args.snapshot:
            return cmd_plan_members(args, load_snapshot(args.snapshot), plan_options(args, None))
        connection = connect(args)
        return cmd_plan_members(args, connection.client.members_snapshot(), plan_options(args, connection))
    if args.snapshot:
        snapshot = load_snapshot(args.snapshot)
        result = plan(snapshot, plan_options(args, None))
    else:
        connection = connect(args)
        result = plan(connection.snapshot(), plan_options(args, connection))
    print(
        json.dumps(result.to_dict(), indent=2, ensure_ascii=False)
        if args.format == "json"
        else plan_text(result)
    )
    return EXIT_OK


def load_snapshot(path: str) -> Snapshot:
    try:
        data = json.loads(sys.stdin.read() if path == "-" else Path(path).read_text())
        return Snapshot.from_api(data["nodes"], data["queues"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(f"cannot read snapshot {path}: {exc}") from exc


def plan_text(result: Plan) -> str:
    lines = ["node".ljust(24) + "before  after"]
    lines += [f"{n:<24}{result.before[n]:>6}  {result.after[n]:>5}" for n in result.nodes]
    lines.append(f"{len(result.moves)} moves, {len(result.skipped)} queues skipped")
    lines += [
        f"  {m.ref} ({m.type.value}, {m.messages} msgs): {m.source} -> {m.target}" for m in result.moves
    ]
    lines += report.skipped_lines(result.skipped, 20)
    return "\n".join(lines)


def cmd_balance(args: argparse.Namespace) -> int:
    if args.concurrency < 1:
        raise ConfigurationError(f"--concurrency must be at least 1, got {args.concurrency}")
    connection = connect(args)
    options = plan_options(args, connection)
    if args.members:
        run_eval = connection.leader_transfer.run_eval if connection.leader_transfer else None
        if args.dry_run:
            return cmd_balance_members(args, connection.client, run_eval, connection.counter, options)
        with holding(connection.lock("balance --members")):
            return cmd_balance_members(args, connection.client, run_eval, connection.counter, options)
    snapshot = connection.snapshot()
    before = report.Report.of(snapshot, options)
    if args.dry_run:
        print(plan_text(plan(snapshot, options)))
        return EXIT_OK
    preflight(snapshot)
    with holding(connection.lock("balance")) as heartbeat:
        return _balance(args, connection, options, before, heartbeat)


def _balance(
    args: argparse.Namespace,
    connection: Connection,
    options: PlanOptions,
    before: report.Report,
    heartbeat: Heartbeat,
) -> int:
    """The rounds of a balancing run, under the cluster's lock."""
    snapshot = connection.snapshot()
    mover = connection.mover()
    began = time.monotonic()
    history: list[MoveProgress] = []
    current = plan(snapshot, options)
    for round_number in range(1, args.rounds + 1):
        if not current.moves:
            break
        progress = Progress(len(current.moves), sys.stderr, f"round {round_number}")
        result = run_moves(
            mover,
            current.moves,
            concurrency=args.concurrency,
            on_change=progress.update,
            notice=_notice,
            check=heartbeat.check,
        )
        progress.close()
        history.extend(result.moves)
        snapshot = connection.snapshot()
        if not result.failed:
            break
        # Some moves failed: another round only while it still makes the distribution more even.
        if options.max_moves is not None:
            options = dataclasses.replace(options, max_moves=max(options.max_moves - len(history), 0))
        current = plan(snapshot, options)
        if spread(current.after) >= spread(current.before):
            break
    summary = report.RunSummary(
        before, report.Report.of(snapshot, options), tuple(history), time.monotonic() - began
    )
    if args.format == "json":
        print(json.dumps(summary.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(report.summary_text(summary))
    return EXIT_MOVES_FAILED if summary.failed else EXIT_OK


def cmd_cleanup(args: argparse.Namespace) -> int:
    connection = connect(args)
    lock = connection.lock("cleanup")
    with holding(lock):
        removed = cleanup(connection.client, lock.live_runs())
    for vhost, name in removed:
        print(f"removed temporary policy {name} in vhost {vhost}")
    print(f"{len(removed)} temporary policies removed")
    return EXIT_OK


class Progress:
    """A progress bar on a terminal, one line per finished move elsewhere (logs, CI)."""

    def __init__(self, total: int, stream: TextIO, label: str) -> None:
        self.total, self.stream, self.label = total, stream, label
        self.done = self.failed = 0
        self.tty = stream.isatty()

    def update(self, progress: MoveProgress) -> None:
        if not progress.finished:
            return
        if progress.phase is Phase.DONE:
            self.done += 1
        else:
            self.failed += 1
        move = progress.move
        if self.tty:
            finished = self.done + self.failed
            bar = "#" * (30 * finished // self.total)
            self.stream.write(
                f"\r{self.label} [{bar:<30}] {finished}/{self.total} moved, {self.failed} failed"
            )
        else:
            result = progress.phase.value + (f" ({progress.outcome})" if progress.outcome else "")
            self.stream.write(
                f"{self.label}: {move.ref} {move.source} -> {move.target}: {result} in {progress.seconds:.2f} s\n"
            )
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


# ---- parser ------------------------------------------------------------------------------------


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vhost", action="append", metavar="V", help="only queues of this vhost (repeatable)"
    )
    parser.add_argument("--pattern", metavar="REGEX", help="only queues whose name matches this regex")
    parser.add_argument(
        "--per-vhost",
        action="store_true",
        help="balance every vhost on its own (max - min <= 1 within each vhost)",
    )


def build_parser(extra: Sequence[Callable[[Any], None]] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="queue-balancer",
        description="Spread RabbitMQ queue leaders (classic mirrored masters, quorum leaders) evenly over "
        "the cluster's nodes, with the fewest moves and without losing a message.",
        epilog="Environment: RABBITMQ_MANAGEMENT_URL, RABBITMQ_USER, RABBITMQ_PASSWORD, RABBITMQ_EVAL_COMMAND. "
        "Without a URL the local cluster of `queue-balancer local up` is used.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--url", help="management API URL, e.g. http://rabbit:15672 (env RABBITMQ_MANAGEMENT_URL)"
    )
    parser.add_argument(
        "--user", help="management user (env RABBITMQ_USER); the password only from RABBITMQ_PASSWORD"
    )
    parser.add_argument(
        "--local", action="store_true", help="use the local cluster of `queue-balancer local up`"
    )
    parser.add_argument(
        "--eval-command",
        metavar="CMD",
        help="how to run `rabbitmqctl eval` on a cluster node for quorum leader transfers, e.g. "
        "'rabbitmqctl -n rabbit@node1 eval' (env RABBITMQ_EVAL_COMMAND); without it quorum "
        "queues of a remote cluster are skipped",
    )
    parser.add_argument(
        "--amqp-port",
        type=int,
        default=5672,
        help="AMQP port on the management URL's host, for exact message counts (default 5672)",
    )
    parser.add_argument("--timeout", type=float, default=15.0, help="HTTP timeout in seconds (default 15)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    sub = commands.add_parser("report", help="leaders per node, by queue type and vhost, and skipped queues")
    sub.add_argument("--format", choices=("text", "json", "markdown"), default="text")
    _add_filters(sub)
    sub.set_defaults(func=cmd_report)

    sub = commands.add_parser(
        "snapshot", help="write the cluster's nodes and queues as JSON (for `plan --snapshot`)"
    )
    sub.set_defaults(func=cmd_snapshot)

    sub = commands.add_parser("plan", help="compute the moves without touching anything")
    sub.add_argument(
        "--snapshot", metavar="FILE", help="plan from a file written by `snapshot` ('-' for stdin)"
    )
    sub.add_argument("--format", choices=("text", "json"), default="text")
    sub.add_argument(
        "--max-moves", type=int, metavar="M", help="plan at most M moves (the most useful first)"
    )
    _add_filters(sub)
    add_member_flags(sub)
    sub.set_defaults(func=cmd_plan)

    sub = commands.add_parser("balance", help="carry the plan out, verify every move, report before/after")
    sub.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    sub.add_argument("--concurrency", type=int, default=8, metavar="K", help="moves at once (default 8)")
    sub.add_argument(
        "--max-moves", type=int, metavar="M", help="at most M moves in all (the most useful first)"
    )
    sub.add_argument(
        "--rounds",
        type=int,
        default=3,
        metavar="R",
        help="re-plan after failed moves up to R rounds while that still improves (default 3)",
    )
    sub.add_argument("--format", choices=("text", "json"), default="text")
    _add_filters(sub)
    add_member_flags(sub)
    sub.set_defaults(func=cmd_balance)

    sub = commands.add_parser("cleanup", help="remove temporary policies left behind by an interrupted run")
    sub.set_defaults(func=cmd_cleanup)

    for register in extra:
        register(commands)
    return parser


def _notice(message: str) -> None:
    print(f"\nqueue-balancer: {message}", file=sys.stderr, flush=True)


def interrupted_text(interrupted: RunInterrupted) -> str:
    """What happened to each queue the interrupted run touched, and what it left behind."""
    lines = ["queue-balancer: interrupted"]
    for p in interrupted.moves:
        what = "moved" if p.phase is Phase.DONE else p.outcome or p.phase.value
        lines.append(f"  {p.move.ref} ({p.move.source} -> {p.move.target}): {what}")
    leftovers = list(interrupted.leftovers) + [p for p in interrupted.moves if p.policy]
    for p in leftovers:
        policy = f"temporary policy {p.policy} left in vhost {p.move.vhost}" if p.policy else "no policy left"
        lines.append(f"  {p.move.ref}: rollback ABANDONED while {p.phase.value}: {policy}")
    if leftovers:
        lines.append(
            "  run `queue-balancer cleanup` and check these queues' mirrors with `queue-balancer report`"
        )
    return "\n".join(lines)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # roll back moves under way exactly as for Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    from queue_balancer.control import register as register_workflow
    from queue_balancer.local.commands import register as register_local

    args = build_parser([register_local, register_workflow]).parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        code: int = args.func(args)
    except BalancerError as exc:
        print(f"queue-balancer: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except RunInterrupted as interrupted:
        print(interrupted_text(interrupted), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("queue-balancer: interrupted; no move was under way", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return code


if __name__ == "__main__":
    sys.exit(main())
