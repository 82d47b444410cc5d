"""Error types the state machine matches by name (a handler's exception class is its ``errorType``)."""

from __future__ import annotations

from queue_balancer.errors import BalancerError


class InvalidInput(BalancerError):
    """The execution's input is invalid (unknown action, bad concurrency, bad regex...); nothing changed."""


class ManagementUnavailable(BalancerError):
    """The management API timed out or answered 5xx: transient, the state machine retries with backoff."""
