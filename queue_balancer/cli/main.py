"""The ``queue-balancer`` parser and entry point: global options, the command groups, one-line errors."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from queue_balancer import __version__
from queue_balancer.cli import engine, workflow
from queue_balancer.cli.exit_codes import EXIT_ERROR, EXIT_INTERRUPTED
from queue_balancer.cli.options import add_connection_options
from queue_balancer.cli.output import interrupted_text
from queue_balancer.errors import BalancerError
from queue_balancer.runner import RunInterrupted


def build_parser(extra: Sequence[Callable[[Any], None]] = ()) -> argparse.ArgumentParser:
    """The engine commands plus ``extra`` command groups (``register(subparsers)`` functions)."""
    parser = argparse.ArgumentParser(
        prog="queue-balancer",
        description="Spread RabbitMQ queue leaders (classic mirrored masters, quorum leaders) evenly over "
        "the cluster's nodes, with the fewest moves and without losing a message.",
        epilog="Environment: RABBITMQ_MANAGEMENT_URL, RABBITMQ_USER, RABBITMQ_PASSWORD, RABBITMQ_EVAL_COMMAND. "
        "Without a URL the local cluster of `queue-balancer local up` is used.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_connection_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    engine.register(commands)
    for register in extra:
        register(commands)
    return parser


def full_parser() -> argparse.ArgumentParser:
    """Every command: engine, ``local`` and workflow."""
    from queue_balancer.local.commands import register as register_local

    return build_parser([register_local, workflow.register])


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # roll back moves under way exactly as for Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    args = full_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        code: int = args.func(args)
    except BalancerError as exc:
        print(f"queue-balancer: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except RunInterrupted as interrupted:
        print(interrupted_text(interrupted), file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("queue-balancer: interrupted; no move was under way", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    return code
