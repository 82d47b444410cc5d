"""The exit codes of every ``queue-balancer`` command, engine and workflow alike (documented once, here and
in the README's CLI reference)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1  # an error: bad input, unknown vhost, unreachable cluster or AWS, a refused event
EXIT_MOVES_FAILED = 2  # the command ran but some moves failed (`balance`, `run --wait`)
EXIT_NOT_RUNNING = 3  # `local status` when a node is not running (the LSB convention)
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT)
