"""The ``queue-balancer`` command, by job:

- ``main``: the parser and the entry point; ``exit_codes``: the exit codes of every command;
- ``options``: the options several commands share; ``output``: what commands print and how;
- ``connection`` + ``engine``: the engine commands, run in-process against a RabbitMQ cluster;
- ``stack`` (where the workflow is), ``aws`` (the AWS gateway), ``events`` (an event -> one AWS call) and
  ``workflow``: the workflow commands against Step Functions on AWS or the local endpoint.
"""

from __future__ import annotations

from queue_balancer.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
