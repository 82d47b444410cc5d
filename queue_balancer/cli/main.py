"""The ``queue-balancer`` parser and entry point: global options, the command groups, one-line errors and
the exit codes of ``exit_codes`` for every command."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, NoReturn

from queue_balancer import __version__
from queue_balancer.cli import engine, workflow
from queue_balancer.cli.exit_codes import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK
from queue_balancer.cli.options import add_connection_options
from queue_balancer.cli.output import interrupted_text
from queue_balancer.errors import BalancerError, ManagementError
from queue_balancer.runner import RunInterrupted


class Parser(argparse.ArgumentParser):
    """argparse with the project's exit codes: a usage error is an input error (1), not argparse's 2, which
    means "some moves failed" here."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def build_parser(extra: Sequence[Callable[[Any], None]] = ()) -> argparse.ArgumentParser:
    """The engine commands plus ``extra`` command groups (``register(subparsers)`` functions)."""
    parser = Parser(
        prog="queue-balancer",
        description="Spread RabbitMQ queue leaders (classic mirrored masters, quorum leaders) evenly over "
        "the cluster's nodes, with the fewest moves and without losing a message.",
        epilog="Environment: RABBITMQ_MANAGEMENT_URL, RABBITMQ_USER, RABBITMQ_PASSWORD, RABBITMQ_EVAL_COMMAND. "
        "Without a URL the local cluster of `queue-balancer local up` is used. Exit codes: 0 done, "
        "1 error (bad input, unreachable cluster or AWS, refused command), 2 some moves failed, "
        "130 interrupted.",
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


def error_line(exc: BalancerError, args: argparse.Namespace) -> str:
    """The one line an error becomes, with the way out where the cause is a usual mistake."""
    line = f"queue-balancer: error: {exc}"
    if isinstance(exc, ManagementError) and exc.status == 401:
        line += " (the password comes from RABBITMQ_PASSWORD, the user from --user or RABBITMQ_USER)"
    elif isinstance(exc, ManagementError) and exc.status is None and _uses_local_cluster(args):
        line += " (is the local cluster running? run `queue-balancer local up`)"
    return line


def _uses_local_cluster(args: argparse.Namespace) -> bool:
    url = getattr(args, "url", None) or os.environ.get("RABBITMQ_MANAGEMENT_URL")
    return bool(getattr(args, "local", False)) or not url


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if any(w == "--password" or w.startswith("--password=") for w in words):  # never echo what follows
        print(
            "queue-balancer: error: there is no --password option: export RABBITMQ_PASSWORD instead "
            "(a command line is visible to every user of the machine)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    args = full_parser().parse_args(words)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except BalancerError as exc:
        print(error_line(exc, args), file=sys.stderr)
        return EXIT_ERROR
    except RunInterrupted as interrupted:
        print(interrupted_text(interrupted), file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("queue-balancer: interrupted; no move was under way", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`status | head -1`): what it read is all it wanted; no traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    finally:
        signal.signal(signal.SIGTERM, previous)
    return code
