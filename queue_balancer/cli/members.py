"""``plan --members`` and ``balance --members``: quorum members (replicas) instead of leaders."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from queue_balancer import report
from queue_balancer.cli.connection import Connection
from queue_balancer.cli.exit_codes import EXIT_MOVES_FAILED, EXIT_OK
from queue_balancer.cli.options import GROUP_SIZE_HELP
from queue_balancer.cli.output import emit
from queue_balancer.errors import ConfigurationError
from queue_balancer.member_changes import member_changer
from queue_balancer.member_moves import MemberMover, MemberProgress, run_member_moves
from queue_balancer.members import MembersOptions, MembersPlan, plan_members
from queue_balancer.members_run import MembersSummary
from queue_balancer.model import Snapshot
from queue_balancer.planner import PlanOptions
from queue_balancer.safety import preflight


def add_member_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--members",
        action="store_true",
        help="quorum queue members instead of leaders: every queue keeps its members (at least its "
        "declared size), on running nodes only, spread evenly with the fewest member changes",
    )
    parser.add_argument(
        "--group-size",
        type=int,
        metavar="N",
        help=GROUP_SIZE_HELP,
    )
    parser.add_argument(
        "--exclude-node",
        action="append",
        metavar="NODE",
        help="with --members: a node that must hold no members (drained, in maintenance); repeatable",
    )


def members_options(args: argparse.Namespace, selection: PlanOptions) -> MembersOptions:
    return MembersOptions(
        selection=selection,
        group_size=args.group_size,
        excluded=frozenset(args.exclude_node or ()),
    )


def plan_members_text(result: MembersPlan) -> str:
    nodes = sorted(result.before)
    lines = ["members per node".ljust(28) + "before  after"]
    for node in nodes:
        note = "" if node in result.nodes else "  (not eligible: stopped, excluded or gone)"
        lines.append(f"{node:<28}{result.before[node]:>6}  {result.after.get(node, 0):>5}{note}")
    lines.append(
        f"{result.changes} member changes in {len(result.moves)} queues, {len(result.skipped)} skipped"
    )
    for move in result.moves:
        change = ", ".join([*(f"+{n}" for n in move.add), *(f"-{n}" for n in move.remove)])
        lines.append(f"  {move.ref} ({move.messages} msgs): {change}")
    lines += report.skipped_lines(result.skipped, 20)
    lines += report.exactly_lines(result.mirrors)
    return "\n".join(lines)


def cmd_plan_members(args: argparse.Namespace, snapshot: Snapshot, selection: PlanOptions) -> int:
    result = plan_members(snapshot, members_options(args, selection))
    emit(args.format, result.to_dict(), lambda: plan_members_text(result))
    return EXIT_OK


def cmd_balance_members(
    args: argparse.Namespace,
    connection: Connection,
    selection: PlanOptions,
    check: Callable[[], None] = lambda: None,
) -> int:
    """Plan, carry out (add before remove, each change verified), re-read and report; exit 2 on failures."""
    options = members_options(args, selection)
    snapshot = connection.members_snapshot()
    current = plan_members(snapshot, options)
    if args.dry_run:
        emit(args.format, current.to_dict(), lambda: plan_members_text(current))
        return EXIT_OK
    preflight(snapshot)
    run_eval = connection.leader_transfer.run_eval if connection.leader_transfer else None
    changer = member_changer(connection.client, run_eval)
    if changer is None:
        raise ConfigurationError(
            "RabbitMQ 3.x changes quorum members only through `rabbitmqctl eval`: give --eval-command"
        )
    began = time.monotonic()
    progress = _Printer(len(current.moves))
    result = run_member_moves(
        MemberMover(connection.client, changer, counter=connection.counter),
        current.moves,
        concurrency=args.concurrency,
        on_change=progress,
        check=check,
    )
    after = plan_members(connection.members_snapshot(), options)
    summary = MembersSummary(current, after, result.moves, time.monotonic() - began)
    emit(args.format, summary.to_dict(), summary.text)
    return EXIT_MOVES_FAILED if result.failed else EXIT_OK


class _Printer:
    """One line per finished queue on stderr, like the leader moves' progress outside a terminal."""

    def __init__(self, total: int) -> None:
        self.total, self.finished = total, 0

    def __call__(self, progress: MemberProgress) -> None:
        if not progress.finished:
            return
        self.finished += 1
        move = progress.move
        change = ", ".join([*(f"+{n}" for n in move.add), *(f"-{n}" for n in move.remove)])
        outcome = progress.phase.value + (f" ({progress.outcome})" if progress.outcome else "")
        sys.stderr.write(
            f"members {self.finished}/{self.total}: {move.ref} {change}: {outcome} in {progress.seconds:.2f} s\n"
        )
        sys.stderr.flush()
