"""The engine commands: ``report``, ``snapshot``, ``plan``, ``balance``, ``cleanup`` — the balancer run
in-process against the cluster the connection options name."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from queue_balancer import arguments, report
from queue_balancer.cli.connection import Connection, connect, plan_options
from queue_balancer.cli.exit_codes import EXIT_ERROR, EXIT_MOVES_FAILED, EXIT_OK
from queue_balancer.cli.members import add_member_flags, cmd_balance_members, cmd_plan_members
from queue_balancer.cli.options import FORMATS, add_format_option, add_scope_options
from queue_balancer.cli.output import Progress, emit, notice, stderr_line
from queue_balancer.errors import ConfigurationError
from queue_balancer.lock import Heartbeat, holding
from queue_balancer.model import Plan, QueueType, Snapshot
from queue_balancer.movers import MoveProgress, cleanup
from queue_balancer.movers.stream import streams_left
from queue_balancer.observe import settle
from queue_balancer.planner import PlanOptions, plan
from queue_balancer.runner import run_moves
from queue_balancer.safety import another_round, preflight

EVAL_COMMAND_HINT = "pass --eval-command 'rabbitmqctl -n rabbit@<node> eval' (or set RABBITMQ_EVAL_COMMAND)"


def eval_notices(connection: Connection, snapshot: Snapshot) -> None:
    """Lines before the output for what the run cannot see or do without an eval command, and how to fix it:
    quorum queues that cannot be moved, and maintenance mode that 3.x reports only over the Erlang CLI."""
    if not snapshot.drain_reported:
        stderr_line(
            "queue-balancer: maintenance mode cannot be read (RabbitMQ "
            f"{snapshot.platform.version or '3.x'} reports it only through rabbitmqctl): every node is "
            f"treated as not drained, so a drained node may be a target; {EVAL_COMMAND_HINT}"
        )
    count = sum(1 for q in snapshot.queues if q.type is QueueType.QUORUM)
    if connection.leader_transfer is None and count:
        stderr_line(
            f"queue-balancer: {count} quorum queues cannot be moved: no leader-transfer command; "
            + EVAL_COMMAND_HINT
        )


def cmd_report(args: argparse.Namespace) -> int:
    connection = connect(args)
    snapshot = connection.snapshot()
    eval_notices(connection, snapshot)
    found = report.Report.of(snapshot, plan_options(args, connection))
    emit(
        args.format,
        found.to_dict(),
        lambda: report.text(found, per_vhost=args.per_vhost),
        lambda: report.markdown(found),
    )
    return EXIT_OK


def cmd_snapshot(args: argparse.Namespace) -> int:
    client = connect(args).client
    # The version travels with the snapshot: `plan --snapshot` of a 4.x cluster must not move classic queues.
    snapshot = {
        "nodes": client.nodes(),
        "queues": client.queues(),
        "overview": {"rabbitmq_version": client.version()},
    }
    json.dump(snapshot, sys.stdout, indent=1, ensure_ascii=False)
    print()
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    if args.members:
        if args.snapshot:
            return cmd_plan_members(args, load_snapshot(args.snapshot), plan_options(args, None))
        connection = connect(args)
        return cmd_plan_members(args, connection.members_snapshot(), plan_options(args, connection))
    if args.snapshot:
        snapshot = load_snapshot(args.snapshot)
        result = plan(snapshot, plan_options(args, None))
    else:
        connection = connect(args)
        snapshot = connection.snapshot()
        eval_notices(connection, snapshot)
        result = plan(snapshot, plan_options(args, connection))
    pinned = report.pinned_queues(snapshot)
    emit(
        args.format,
        {**result.to_dict(), "pinned": [p.to_dict() for p in pinned]},
        lambda: "\n".join([plan_text(result), *report.pinned_lines(pinned)]),
    )
    return EXIT_OK


def load_snapshot(path: str) -> Snapshot:
    """A file written by ``snapshot``; anything else (non-finite numbers, deep nesting, wrong shapes) is
    one line of error."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        data = json.loads(text, parse_float=_finite, parse_constant=_refuse_constant)
        return Snapshot.from_api(data["nodes"], data["queues"], data.get("overview"))
    except RecursionError:
        raise ConfigurationError(f"cannot read snapshot {path}: nested too deeply") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
        raise ConfigurationError(f"cannot read snapshot {path}: {type(exc).__name__}: {exc}") from exc


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def _refuse_constant(text: str) -> float:
    raise ValueError(f"{text} is not a number a snapshot can hold")


def plan_text(result: Plan) -> str:
    lines = ["node".ljust(24) + "before  after"]
    lines += [f"{n:<24}{result.before[n]:>6}  {result.after[n]:>5}" for n in result.nodes]
    lines.append(f"{len(result.moves)} moves, {len(result.skipped)} queues skipped")
    lines += [
        f"  {m.ref} ({m.type.value}, {m.messages} msgs): {m.source} -> {m.target}"
        + (" (best effort: restarts the stream)" if m.type is QueueType.STREAM else "")
        for m in result.moves
    ]
    lines += report.skipped_lines(result.skipped, 20)
    return "\n".join(lines)


def cmd_balance(args: argparse.Namespace) -> int:
    if args.concurrency < 1:
        raise ConfigurationError(f"--concurrency must be at least 1, got {args.concurrency}")
    connection = connect(args)
    options = plan_options(args, connection)
    if args.members:
        if args.dry_run:
            return cmd_balance_members(args, connection, options)
        with holding(connection.lock("balance --members"), connection.client) as heartbeat:
            remove_dead_runs_policies(connection, heartbeat)
            return cmd_balance_members(args, connection, options, heartbeat.check)
    snapshot = connection.snapshot()
    eval_notices(connection, snapshot)
    before = report.Report.of(snapshot, options)
    if args.dry_run:
        dry = plan(snapshot, options)
        emit(args.format, dry.to_dict(), lambda: plan_text(dry))
        return EXIT_OK
    preflight(snapshot)
    with holding(connection.lock("balance"), connection.client) as heartbeat:
        remove_dead_runs_policies(connection, heartbeat)
        return _balance(args, connection, options, before, heartbeat)


def remove_dead_runs_policies(connection: Connection, heartbeat: Heartbeat) -> None:
    """Under the lock, first: the temporary policies of runs that died (SIGKILL, a lost network during a
    rollback, a stopped workflow) still pin their queues to a node and hide the queues' own policies."""
    cleaned = cleanup(connection.client, heartbeat.lock.live_runs())
    for vhost, name in cleaned.removed:
        notice(f"removed temporary policy {name} in vhost {vhost}, left by a run that is not live")
    for vhost, name, detail in cleaned.syncing:
        notice(f"kept temporary policy {name} in vhost {vhost} ({detail}): still syncing, run cleanup again")


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
        try:
            result = run_moves(
                mover,
                current.moves,
                concurrency=args.concurrency,
                on_change=progress.update,
                notice=notice,
                check=heartbeat.check,
            )
        finally:
            progress.close()  # an interruption's report starts on a line of its own
        history.extend(result.moves)
        # Re-read (waiting a bounded time for queues still syncing) and re-plan: failed moves and
        # queues skipped as syncing get another round while that improves the spread.
        snapshot = settle(connection, sleep=time.sleep, clock=time.monotonic)
        current = plan(snapshot, round_options(options, history))
        if not another_round(current, round_number, args.rounds):
            break
    summary = report.RunSummary(
        before, report.Report.of(snapshot, options), tuple(history), time.monotonic() - began
    )
    emit(args.format, summary.to_dict(), lambda: report.summary_text(summary))
    return EXIT_MOVES_FAILED if summary.failed else EXIT_OK


def round_options(run: PlanOptions, history: Sequence[MoveProgress]) -> PlanOptions:
    """The next round's options: ``--max-moves`` bounds the whole run, so a round may make what the run's
    limit leaves after every move made so far (counted once, from the run's own limit); a stream the
    coordinator left elsewhere is not restarted again in this run."""
    left = streams_left(history)
    if run.max_moves is None:
        return dataclasses.replace(run, streams_left=left)
    return dataclasses.replace(run, max_moves=max(run.max_moves - len(history), 0), streams_left=left)


def cmd_cleanup(args: argparse.Namespace) -> int:
    connection = connect(args)
    lock = connection.lock("cleanup")
    with holding(lock, connection.client):
        cleaned = cleanup(connection.client, lock.live_runs())
    lines = [f"removed temporary policy {name} in vhost {vhost}" for vhost, name in cleaned.removed]
    lines += [
        f"kept temporary policy {name} in vhost {vhost}: {detail}; still syncing, run cleanup again"
        for vhost, name, detail in cleaned.syncing
    ]
    lines.append(f"{len(cleaned.removed)} temporary policies removed, {len(cleaned.syncing)} still syncing")
    emit(args.format, cleaned.to_dict(), lambda: "\n".join(lines))
    return EXIT_ERROR if cleaned.syncing else EXIT_OK


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the engine commands to the main CLI's subparsers."""
    sub = commands.add_parser("report", help="leaders per node, by queue type and vhost, and skipped queues")
    add_format_option(sub, FORMATS)
    add_scope_options(
        sub,
        max_moves=False,
        per_vhost_help="show the per-vhost table (leaders per node and spread of each vhost) even for one "
        "vhost; it is shown whenever the selection spans several",
    )
    sub.set_defaults(func=cmd_report)

    sub = commands.add_parser(
        "snapshot", help="write the cluster's nodes and queues as JSON (for `plan --snapshot`)"
    )
    sub.set_defaults(func=cmd_snapshot)

    sub = commands.add_parser("plan", help="compute the moves without touching anything")
    sub.add_argument(
        "--snapshot", metavar="FILE", help="plan from a file written by `snapshot` ('-' for stdin)"
    )
    add_format_option(sub)
    add_scope_options(sub)
    add_member_flags(sub)
    sub.set_defaults(func=cmd_plan)

    sub = commands.add_parser("balance", help="carry the plan out, verify every move, report before/after")
    sub.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    sub.add_argument("--concurrency", type=int, default=8, metavar="K", help="moves at once (default 8)")
    sub.add_argument(
        "--rounds",
        type=arguments.POSITIVE,
        default=3,
        metavar="R",
        help="rounds: re-read and re-plan after each (failed moves, queues that were syncing) while "
        "that still improves the spread (default 3)",
    )
    add_format_option(sub)
    add_scope_options(sub)
    add_member_flags(sub)
    sub.set_defaults(func=cmd_balance)

    sub = commands.add_parser(
        "cleanup",
        help="remove temporary policies left behind by an interrupted run, each once its queue's copies are in sync",
    )
    add_format_option(sub)
    sub.set_defaults(func=cmd_cleanup)
