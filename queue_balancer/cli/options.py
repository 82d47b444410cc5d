"""Options that several commands share, declared once: where the cluster or the workflow is, which queues
(scope), the output format, and a run's settings."""

from __future__ import annotations

import argparse

from queue_balancer import arguments
from queue_balancer.lifecycle import DEFAULT_POLL_SECONDS, MAX_POLL_SECONDS
from queue_balancer.members import DEFAULT_GROUP_SIZE

FORMATS = ("text", "json", "markdown")
GROUP_SIZE_HELP = (
    "with --members: give every selected quorum queue exactly N members: grows smaller queues and "
    "SHRINKS larger ones (never below a target-group-size). Default: no queue shrinks; each keeps its "
    "members and grows to its target-group-size or x-quorum-initial-group-size "
    f"(else {DEFAULT_GROUP_SIZE})"
)
"""``--group-size`` of ``balance --members`` and ``workflow run --members``: the only way to shrink."""


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """How to reach RabbitMQ: flags or the environment; the local cluster when neither names one."""
    parser.add_argument(
        "--url",
        help="management API URL, e.g. http://rabbit:15672, or several, comma-separated: the client fails "
        "over to the next when a node goes away (env RABBITMQ_MANAGEMENT_URL)",
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
        type=arguments.PORT,
        default=None,
        help="AMQP port on the management URL's host, for exact message counts (default: the port "
        "the management API lists for its node's AMQP listener)",
    )
    parser.add_argument(
        "--timeout", type=arguments.seconds, default=15.0, help="HTTP timeout in seconds (default 15)"
    )


MOVE_STREAMS_HELP = (
    "move stream leaders too, best effort (RabbitMQ 3.12+; off by default): the stream coordinator restarts "
    "the stream with the target as preferred leader and may choose another member; up to 3 attempts per "
    "stream, EACH RESTARTING THE STREAM'S WRITER (its clients pause; AMQP 0-9-1 ones for 0.1-0.6 s on 4.0.5). "
    "A stream left on another member is reported 'best effort: coordinator chose X', not failed"
)

PER_VHOST_PLAN_HELP = "balance every vhost on its own (max - min <= 1 within each vhost)"


def add_scope_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    max_moves: bool = True,
    per_vhost_help: str = PER_VHOST_PLAN_HELP,
) -> None:
    """Which queues a command looks at (``--vhost``, ``--pattern``), how evenness is judged
    (``--per-vhost``) and, for commands that plan, how many moves at most (``--max-moves``)."""
    parser.add_argument(
        "--vhost", action="append", metavar="V", help="only queues of this vhost (repeatable)"
    )
    parser.add_argument("--pattern", metavar="REGEX", help="only queues whose name matches this regex")
    parser.add_argument(
        "--per-vhost",
        action="store_true",
        help=per_vhost_help,
    )
    if max_moves:
        parser.add_argument(
            "--max-moves",
            type=arguments.NON_NEGATIVE,
            metavar="M",
            help="at most M moves in all (the most useful first)",
        )
        parser.add_argument("--move-streams", action="store_true", help=MOVE_STREAMS_HELP)


def add_format_option(parser: argparse.ArgumentParser, choices: tuple[str, ...] = FORMATS[:2]) -> None:
    """``--format``: text (tables for people), json (one document for machines), markdown where offered."""
    parser.add_argument(
        "--format",
        choices=choices,
        default="text",
        help="text: tables for people (default); json: one document for machines"
        + ("; markdown: as the SNS notification says it" if "markdown" in choices else ""),
    )


def add_workflow_target(parser: argparse.ArgumentParser) -> None:
    """Where the workflow runs: a deployed stack (``--stack``) or the local endpoint (the default)."""
    where = parser.add_argument_group("where the workflow runs")
    choice = where.add_mutually_exclusive_group()
    choice.add_argument(
        "--stack", metavar="NAME", help="the BalancerStack deployed on AWS (reads its outputs)"
    )
    choice.add_argument(
        "--local",
        dest="workflow_local",
        action="store_true",
        help="the local endpoint of `queue-balancer local up` (the default)",
    )
    where.add_argument("--region", help="AWS region of the stack (default: your AWS configuration)")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The settings of a workflow run (the execution's input)."""
    run = parser.add_argument_group("the run (the execution's input; see the README, 'The workflow')")
    run.add_argument(
        "--concurrency", type=int, metavar="K", help="classic moves at once, as in `balance` (default 8)"
    )
    run.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        help="moves stored and recorded together; pause/stop take effect within seconds anyway "
        "(default max(100, K))",
    )
    run.add_argument(
        "--rounds", type=int, metavar="R", help="verify-and-replan rounds while that improves (default 3)"
    )
    add_scope_options(run)
    run.add_argument(
        "--max-publish-rate",
        type=float,
        metavar="N",
        help="refuse to start while the cluster publishes more than N msg/s",
    )
    run.add_argument(
        "--max-deliver-rate",
        type=float,
        metavar="N",
        help="refuse to start while the cluster delivers more than N msg/s",
    )
    run.add_argument(
        "--poll-seconds",
        type=int,
        metavar="S",
        help=f"wait between two slices of a long mirror sync, 1-{MAX_POLL_SECONDS} (default {DEFAULT_POLL_SECONDS})",
    )
    run.add_argument(
        "--members",
        action="store_true",
        help="quorum queue members instead of leaders, as `balance --members` (the input's members: true)",
    )
    run.add_argument(
        "--group-size",
        type=int,
        metavar="N",
        help=GROUP_SIZE_HELP,
    )
    run.add_argument(
        "--exclude-node",
        action="append",
        metavar="NODE",
        help="with --members: a node that must hold no members; repeatable",
    )
    run.add_argument("--wait", action="store_true", help="follow the run until it ends and print its report")
    run.add_argument(
        "--wait-timeout", type=float, default=3600.0, metavar="S", help="give up waiting after S s"
    )
