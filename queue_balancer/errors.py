"""Exceptions that carry what a user needs to act: what failed, where, and why."""

from __future__ import annotations


class BalancerError(Exception):
    """Base of every error the balancer raises on purpose; the CLI prints it as one line."""


class ConfigurationError(BalancerError):
    """Bad input from the user: an invalid regex, an unknown vhost, a missing URL."""


class ManagementError(BalancerError):
    """The management API answered with an error, or could not be reached."""

    def __init__(self, message: str, *, method: str = "", url: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.method = method
        self.url = url
        self.status = status

    def __str__(self) -> str:
        where = f"{self.method} {self.url}".strip()
        status = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.args[0]}{status}" + (f" [{where}]" if where else "")


class NotFound(ManagementError):
    """The addressed object (queue, vhost, policy) does not exist, e.g. a queue deleted while being moved."""


class ClusterNotReady(BalancerError):
    """The cluster is not in a state where moving leaders is safe (node down, partition, alarm)."""


class TrafficGateClosed(ClusterNotReady):
    """Traffic is above the run's limits: not a fault, the workflow skips the run (the CLI refuses it)."""


class LeaderTransferError(BalancerError):
    """The Erlang-eval port used for quorum leader transfers failed."""


class MoveStateError(BalancerError):
    """A step was asked of a move whose progress does not allow it (a bug or a hand-edited progress)."""


class NodeDown(BalancerError):
    """A node a move needs (its source, its target, a mirror it keeps) is not running."""
